"""Offline mode opens no socket at all; Kaggle credentials reach Kaggle only."""

import json
import logging
import subprocess
import sys

import hubcache

from archives import fake_saved_model, fake_saved_model_files, read_tree
from helpers import child_env
from hubserver import HubServer, Reply

HANDLE = "https://tfhub.dev/google/tiny/1"
KAGGLE = "https://www.kaggle.com/models/google/tiny/tensorFlow2/tiny/1"

NO_SOCKETS = """
import json, socket, sys

class NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        raise AssertionError("a socket was opened in offline mode")

socket.socket = NoSocket
import hubcache
out = []
for handle in sys.argv[1:]:
    try:
        out.append(["ok", hubcache.resolve(handle)])
    except hubcache.HubcacheError as e:
        out.append([type(e).__name__, str(e)])
print(json.dumps(out))
"""


def test_offline_mode_never_creates_a_socket(env, hub):
    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    path = hubcache.resolve(HANDLE)
    before = hub.total_requests()
    # (KAGGLE names HANDLE's model, which offline now resolves from HANDLE's entry: another version.)
    handles = [HANDLE, KAGGLE.replace("/tiny/1", "/tiny/2"), "gs://bucket/m.tar.gz", "https://example.com/m.tgz"]
    for extra in ({}, {"TFHUB_MODEL_LOAD_FORMAT": "UNCOMPRESSED"}):
        r = subprocess.run(
            [sys.executable, "-c", NO_SOCKETS, *handles],
            env=child_env(dict(env, HUBCACHE_OFFLINE="1", **extra)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        results = json.loads(r.stdout)
        if extra:  # UNCOMPRESSED asks a server where the model lives: impossible offline
            expected_offline_errors = results
        else:
            assert results[0] == ["ok", path]
            expected_offline_errors = results[1:]
        assert all(kind == "OfflineError" for kind, _ in expected_offline_errors), results
    assert hub.total_requests() == before


def test_credentials_dropped_on_redirect_to_another_port_and_never_logged(env, hub, monkeypatch, caplog):
    token = "kaggle-secret-token-42"
    # Kaggle redirects to a mirror on the same host but another port (another origin).
    mirror = HubServer("mirror")
    try:
        mirror.put("/blob.tar.gz", fake_saved_model())
        hub.kaggle.route(
            "/models/google/tiny/tensorFlow2/tiny/1",
            lambda req: Reply(302, headers={"Location": mirror.url + "/blob.tar.gz"})
            if req.headers.get("authorization") == f"Bearer {token}"
            else Reply(403, b"no"),
        )
        monkeypatch.setenv("KAGGLE_API_TOKEN", token)
        with caplog.at_level(logging.DEBUG):  # every logger, urllib3's too
            path = hubcache.resolve(KAGGLE)
        assert read_tree(path) == fake_saved_model_files()
        assert hub.kaggle.log[0].headers["authorization"] == f"Bearer {token}"
        assert "authorization" not in mirror.log[0].headers
        assert token not in caplog.text
        assert token not in open(path + ".hubcache.json").read()
    finally:
        mirror.stop()


def test_credentials_never_sent_for_plain_urls(env, hub, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok")
    monkeypatch.setenv("HUBCACHE_KAGGLE_ENDPOINT", hub.storage.url)  # even on the Kaggle origin
    hub.storage.put("/plain.tar.gz", fake_saved_model())
    hubcache.resolve(hub.storage.url + "/plain.tar.gz")
    assert "authorization" not in hub.storage.log[0].headers
