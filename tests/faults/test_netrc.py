"""A ~/.netrc is not a credentials source: requests would attach its entries
(and its ``default`` entry to every host) to each request, outside the rule
that decides where credentials go (hubcache.origins)."""

from __future__ import annotations

import os

from archives import fake_saved_model
from helpers import result_of, spawn_resolver


def test_a_netrc_default_entry_reaches_no_server(hub, env, tmp_path):
    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("default login someone password hunter2\n")
    os.chmod(netrc, 0o600)
    child = {**env, "HOME": str(home), "NETRC": str(netrc)}
    result = result_of(spawn_resolver(f"{hub.tfhub.url}/google/tiny/1", child))
    assert result["ok"], result
    sent = [(s.name, r.path) for s in hub.servers for r in s.log if "authorization" in r.headers]
    assert sent == [], f"netrc credentials were sent: {sent}"


def test_a_url_password_is_used_for_its_host_and_not_replaced_by_netrc(hub, env, tmp_path):
    import base64

    hub.storage.put("/private/m.tar.gz", fake_saved_model(), content_type="application/gzip")
    host = hub.storage.url.partition("://")[2]
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(f"machine {host.partition(':')[0]} login netrc-user password netrc-pw\n")
    os.chmod(netrc, 0o600)
    child = {**env, "HOME": str(home), "NETRC": str(netrc)}
    result = result_of(spawn_resolver(f"http://owner:url-pw@{host}/private/m.tar.gz", child))
    assert result["ok"], result
    [request] = hub.storage.requests_to("/private/m.tar.gz")
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"owner:url-pw").decode()
