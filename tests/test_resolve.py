"""hubcache.resolve end to end against the loopback hub: every handle form,
HTTP errors, offline mode, damaged entries, metadata, credentials."""

import hashlib
import json
import logging
import os
import stat

import pytest

import hubcache
from hubcache.handles import cache_key

from archives import Member, fake_saved_model, fake_saved_model_files, make_tar, read_tree

TFHUB = "https://tfhub.dev/google/tiny/1"
KAGGLE = "https://www.kaggle.com/models/google/tiny/tensorFlow2/tiny/1"


def entry(cache_dir, handle):
    return os.path.join(cache_dir, cache_key(handle))


def test_tfhub_handle_follows_the_redirect_chain(env, hub, cache_dir):
    archive = fake_saved_model()
    blob = hub.publish_tfhub("google/tiny/1", archive)
    path = hubcache.resolve(TFHUB)
    assert path == entry(cache_dir, TFHUB)
    assert read_tree(path) == fake_saved_model_files()
    # tfhub -> kaggle -> storage, each once, with the compressed format asked for.
    assert hub.tfhub.requests_to("/google/tiny/1")[0].query == {"tf-hub-format": "compressed"}
    assert hub.kaggle.count() == 1 and hub.storage.count(blob) == 1
    # Warm: no network at all.
    assert hubcache.resolve(TFHUB) == path
    assert hub.total_requests() == 3


def test_metadata_and_tensorflow_hub_descriptor(env, hub, cache_dir):
    archive = fake_saved_model()
    hub.publish_tfhub("google/tiny/1", archive)
    path = hubcache.resolve(TFHUB)
    meta = json.load(open(path + ".hubcache.json"))
    assert meta["handle"] == TFHUB
    assert meta["sha256"] == hashlib.sha256(archive).hexdigest()
    assert meta["bytes"] == len(archive)
    assert meta["file_count"] == 5 and meta["size"] == sum(len(v) for v in fake_saved_model_files().values())
    assert meta["source_url"] == f"{hub.tfhub.url}/google/tiny/1?tf-hub-format=compressed"
    assert "deadbeef" not in json.dumps(meta)  # the storage signature is not recorded
    assert meta["hubcache_version"] == hubcache.__version__ and meta["fetched_at"]
    descriptor = open(path + ".descriptor.txt").read().splitlines()
    assert descriptor[0] == f"Module: {TFHUB}"
    assert descriptor[1].startswith("Download Time: ") and descriptor[2].startswith("Downloader Hostname: ")
    # Nothing tensorflow_hub would wait on, nothing half-done left behind.
    names = os.listdir(cache_dir)
    assert open(os.path.join(cache_dir, "CACHEDIR.TAG")).read().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert cache_key(TFHUB) + ".lock" not in names
    assert not [n for n in names if "tmp" in n or "trash" in n]


def test_trailing_slash_is_another_entry_like_tensorflow_hub(env, hub, cache_dir):
    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    a = hubcache.resolve(TFHUB)
    b = hubcache.resolve(TFHUB + "/")
    assert a != b and b == entry(cache_dir, TFHUB + "/")


@pytest.mark.parametrize(
    "handle",
    [
        KAGGLE,
        "https://www.kaggle.com/models/google/tiny/TensorFlow2/tiny/1",
        "https://www.kaggle.com/models/google/tiny/frameworks/tensorFlow2/variations/tiny/versions/1",
    ],
)
def test_kaggle_handles(env, hub, cache_dir, handle):
    hub.publish_kaggle("google/tiny/tensorFlow2/tiny/1", fake_saved_model())
    path = hubcache.resolve(handle)
    assert path == entry(cache_dir, handle)
    assert read_tree(path) == fake_saved_model_files()
    assert hub.kaggle.log[0].query["tf-hub-format"] == "compressed"


def test_kaggle_falls_back_to_the_download_api(env, hub):
    hub.publish_kaggle("google/tiny/tensorFlow2/tiny/1", fake_saved_model())
    # The model page answers with HTML even with the format query: the API must be used.
    page = "/models/google/tiny/tensorFlow2/tiny/1"
    hub.kaggle.route(page, lambda req: __import__("hubserver")._html("a model page"))
    path = hubcache.resolve(KAGGLE)
    assert read_tree(path) == fake_saved_model_files()
    assert [r.path for r in hub.kaggle.log] == [page, "/api/v1/models/google/tiny/tensorFlow2/tiny/1/download"]


def test_china_mirror_and_gcs(env, hub, cache_dir):
    hub.storage.put("/tfhub-modules/google/tiny/1.tar.gz", fake_saved_model(1))
    hub.storage.put("/bucket/models/tiny.tgz", fake_saved_model(2))
    cn = hubcache.resolve("https://hub.tensorflow.google.cn/google/tiny/1")
    gs = hubcache.resolve("gs://bucket/models/tiny.tgz")
    assert read_tree(cn) == fake_saved_model_files(1)
    assert read_tree(gs) == fake_saved_model_files(2)
    assert all(not r.query for r in hub.storage.log)  # fetched as-is, no format query


def test_plain_url_archive_fetched_as_is_and_format_detected_from_bytes(env, hub):
    # A plain tar served under a .tar.gz name, with a pre-signed style query.
    hub.storage.put("/files/model.tar.gz", make_tar([("weights.bin", b"w" * 1000)], ""))
    url = hub.storage.url + "/files/model.tar.gz?X-Amz-Signature=s1gn"
    path = hubcache.resolve(url)
    assert read_tree(path) == {"weights.bin": b"w" * 1000}
    assert hub.storage.log[0].query == {"X-Amz-Signature": "s1gn"}


def test_plain_url_without_archive_suffix_gets_the_format_query(env, hub):
    hub.storage.put("/models/thing", make_tar([("a.txt", b"a")], "bz2"))
    path = hubcache.resolve(hub.storage.url + "/models/thing?v=3")
    assert read_tree(path) == {"a.txt": b"a"}
    assert hub.storage.log[0].query == {"v": "3", "tf-hub-format": "compressed"}


def test_local_paths_are_returned_not_copied(env, tmp_path, monkeypatch):
    model = tmp_path / "my model"
    model.mkdir()
    assert hubcache.resolve(str(model)) == str(model)
    assert hubcache.resolve(model.as_uri()) == str(model)
    monkeypatch.chdir(tmp_path)
    assert hubcache.resolve("my model") == str(model)
    assert not os.path.exists(env["TFHUB_CACHE_DIR"])  # nothing cached


def test_missing_local_path(env, tmp_path):
    with pytest.raises(hubcache.ModelNotFoundError) as e:
        hubcache.resolve(str(tmp_path / "nope"))
    assert "nope" in str(e.value) and isinstance(e.value, FileNotFoundError)
    with pytest.raises(hubcache.ModelNotFoundError, match="Did you mean https://tfhub.dev/google/nnlm/2"):
        hubcache.resolve("google/nnlm/2")


def test_uncompressed_mode_returns_the_gcs_location_uncached(env, hub, monkeypatch, cache_dir):
    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    monkeypatch.setenv("TFHUB_MODEL_LOAD_FORMAT", "UNCOMPRESSED")
    assert hubcache.resolve(TFHUB) == hub.gs_location("google/tiny/tensorFlow2/tiny/1")
    assert hub.tfhub.log[0].query == {"tf-hub-format": "uncompressed"}
    assert hub.storage.count() == 0 and not os.path.exists(cache_dir)


def test_uncompressed_mode_wrong_answer(env, hub, monkeypatch):
    hub.storage.put("/plain", b"not a redirect")
    monkeypatch.setenv("TFHUB_MODEL_LOAD_FORMAT", "uncompressed")
    with pytest.raises(hubcache.DownloadError, match="expected '303 See Other'.*got HTTP 200"):
        hubcache.resolve(hub.storage.url + "/plain")


def test_bad_load_format_is_reported(env, monkeypatch):
    monkeypatch.setenv("TFHUB_MODEL_LOAD_FORMAT", "COMPRESED")
    with pytest.raises(hubcache.ConfigError, match="TFHUB_MODEL_LOAD_FORMAT"):
        hubcache.resolve(TFHUB)


@pytest.mark.parametrize(
    "status, pattern",
    [
        (404, "was not found \\(HTTP 404"),
        (500, "could not serve .* right now \\(HTTP 500"),
        (429, "HTTP 429"),
        (418, "unexpected HTTP 418"),
    ],
)
def test_http_errors(env, hub, cache_dir, status, pattern):
    blob = hub.publish_tfhub("google/tiny/1", fake_saved_model())
    hub.storage.fault(blob, status=status)
    with pytest.raises(hubcache.DownloadError, match=pattern) as e:
        hubcache.resolve(TFHUB)
    assert e.value.status == status and TFHUB in str(e.value)
    assert "deadbeef" not in str(e.value)  # no signature in messages
    assert isinstance(e.value, ConnectionError)
    assert not os.path.exists(entry(cache_dir, TFHUB))
    assert not [n for n in os.listdir(cache_dir) if "tmp" in n]


def test_unknown_tfhub_model(env, hub):
    with pytest.raises(hubcache.DownloadError, match="not found"):
        hubcache.resolve("https://tfhub.dev/google/nothing/1")


def test_unmigrated_tfhub_model_ends_on_a_web_page(env, hub, cache_dir):
    hub.remove_tfhub("google/old/1")
    with pytest.raises(hubcache.DownloadError, match="web page .* not migrated"):
        hubcache.resolve("https://tfhub.dev/google/old/1")
    assert not os.path.exists(entry(cache_dir, "https://tfhub.dev/google/old/1"))


def test_connection_refused(env, monkeypatch):
    monkeypatch.setenv("HUBCACHE_TFHUB_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(hubcache.DownloadError, match="did not answer .*Connection refused"):
        hubcache.resolve(TFHUB)


def test_archive_without_saved_model_is_refused_for_hub_handles(env, hub, cache_dir):
    hub.publish_tfhub("google/tiny/1", make_tar([("readme.txt", b"hi")]))
    with pytest.raises(hubcache.ArchiveError, match="no saved_model.pb"):
        hubcache.resolve(TFHUB)
    assert not os.path.exists(entry(cache_dir, TFHUB))


def test_empty_archive_is_refused_for_plain_urls(env, hub, cache_dir):
    hub.storage.put("/empty.tar", make_tar([Member("d", kind="dir")], ""))
    with pytest.raises(hubcache.ArchiveError, match="holds no files"):
        hubcache.resolve(hub.storage.url + "/empty.tar")


def test_hostile_archive_publishes_nothing(env, hub, cache_dir, tmp_path):
    hub.storage.put("/evil.tar.gz", make_tar([("ok.txt", b"fine"), Member("../../escape", b"x")]))
    with pytest.raises(hubcache.ArchiveError) as e:
        hubcache.resolve(hub.storage.url + "/evil.tar.gz")
    assert e.value.member == "../../escape"
    assert [n for n in os.listdir(cache_dir) if not n.endswith(".hubcache.lock")] == ["CACHEDIR.TAG"]
    assert not (tmp_path / "escape").exists()


def test_truncated_download_publishes_nothing(env, hub, cache_dir, monkeypatch):
    blob = hub.publish_tfhub("google/tiny/1", fake_saved_model())
    hub.storage.fault(blob, cut_after=50_000)
    monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "0")  # resuming is tested in tests/faults
    with pytest.raises(hubcache.DownloadError, match="stopped after 50000 of 203049 bytes"):
        hubcache.resolve(TFHUB)
    assert not os.path.exists(entry(cache_dir, TFHUB))
    assert not [n for n in os.listdir(cache_dir) if "tmp" in n]


def test_offline_mode_uses_the_cache_and_opens_no_connection(env, hub, monkeypatch, cache_dir):
    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    path = hubcache.resolve(TFHUB)
    before = hub.total_requests()
    monkeypatch.setenv("HUBCACHE_OFFLINE", "1")
    assert hubcache.resolve(TFHUB) == path
    other = KAGGLE.replace("/tiny/1", "/tiny/2")  # (KAGGLE itself is TFHUB's model: it resolves now)
    with pytest.raises(hubcache.OfflineError) as e:
        hubcache.resolve(other)
    message = str(e.value)
    assert other in message and cache_dir in message and "hubcache prefetch" in message
    assert hub.total_requests() == before


def test_damaged_entry_is_downloaded_again_with_a_warning(env, hub, cache_dir, caplog):
    blob = hub.publish_tfhub("google/tiny/1", fake_saved_model())
    path = hubcache.resolve(TFHUB)
    # What a /tmp cleaner does: delete files, leave directories.
    os.remove(os.path.join(path, "variables", "variables.data-00000-of-00001"))
    import hubcache.layout as cache_module

    cache_module.forget_all()  # a new process: nothing validated yet
    with caplog.at_level(logging.WARNING, logger="hubcache"):
        assert hubcache.resolve(TFHUB) == path
    assert "cannot be used" in caplog.text and "variables.data-00000-of-00001" in caplog.text
    assert read_tree(path) == fake_saved_model_files()
    assert hub.storage.count(blob) == 2


def test_damaged_entry_offline_is_an_error_not_a_broken_model(env, hub, monkeypatch):
    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    path = hubcache.resolve(TFHUB)
    os.remove(os.path.join(path, "saved_model.pb"))
    import hubcache.layout as cache_module

    cache_module.forget_all()
    monkeypatch.setenv("HUBCACHE_OFFLINE", "1")
    with pytest.raises(hubcache.OfflineError, match="damaged .*saved_model.pb"):
        hubcache.resolve(TFHUB)


def test_entry_made_by_tensorflow_hub_is_used(env, hub, cache_dir):
    # tensorflow_hub's layout: just the directory (and its descriptor), no hubcache metadata.
    path = entry(cache_dir, TFHUB)
    os.makedirs(os.path.join(path, "variables"))
    for name, data in fake_saved_model_files().items():
        os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
        open(os.path.join(path, name), "wb").write(data)
    assert hubcache.resolve(TFHUB) == path
    assert hub.total_requests() == 0


def test_empty_foreign_entry_is_replaced(env, hub, cache_dir):
    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    os.makedirs(entry(cache_dir, TFHUB))
    assert read_tree(hubcache.resolve(TFHUB)) == fake_saved_model_files()


def test_entries_are_readable_by_others_when_the_umask_allows(env, hub, cache_dir):
    old = os.umask(0o022)
    try:
        hub.publish_tfhub("google/tiny/1", fake_saved_model())
        path = hubcache.resolve(TFHUB)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(os.path.join(path, "variables")).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(os.path.join(path, "saved_model.pb")).st_mode) == 0o644


def test_kaggle_credentials_go_to_kaggle_only(env, hub, monkeypatch, caplog):
    token = "s3cr3t-token"
    hub.publish_kaggle("google/gated/tensorFlow2/gated/1", fake_saved_model(), authorization=f"Bearer {token}")
    handle = "https://www.kaggle.com/models/google/gated/tensorFlow2/gated/1"
    with pytest.raises(hubcache.DownloadError) as e:
        hubcache.resolve(handle)
    assert e.value.status == 403 and "KAGGLE_API_TOKEN" in str(e.value) and "licence" in str(e.value)
    monkeypatch.setenv("KAGGLE_API_TOKEN", token)
    with caplog.at_level(logging.DEBUG, logger="hubcache"):
        path = hubcache.resolve(handle)
    assert read_tree(path) == fake_saved_model_files()
    kaggle_auth = [r.headers.get("authorization") for r in hub.kaggle.log]
    assert kaggle_auth[-1] == f"Bearer {token}"
    assert all("authorization" not in r.headers for r in hub.storage.log)  # the other host
    assert token not in caplog.text
    assert token not in open(path + ".hubcache.json").read()


def test_refused_credentials_are_named_not_shown(env, hub, monkeypatch):
    hub.publish_kaggle("google/gated/tensorFlow2/gated/1", fake_saved_model(), authorization="Bearer right")
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    monkeypatch.setenv("KAGGLE_KEY", "wrongkey")
    with pytest.raises(hubcache.DownloadError) as e:
        hubcache.resolve("https://www.kaggle.com/models/google/gated/tensorFlow2/gated/1")
    assert "KAGGLE_USERNAME/KAGGLE_KEY" in str(e.value) and "wrongkey" not in str(e.value)


def test_user_agent(env, hub):
    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    hubcache.resolve(TFHUB)
    assert hub.tfhub.log[0].headers["user-agent"] == f"hubcache/{hubcache.__version__}"


def test_cache_dir_argument_wins(env, hub, tmp_path):
    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    other = str(tmp_path / "other")
    assert hubcache.resolve(TFHUB, cache_dir=other) == entry(other, TFHUB)


def test_cache_dir_that_cannot_be_created(env, hub, tmp_path, monkeypatch):
    blocker = tmp_path / "file"  # a regular file where a directory is needed (root ignores modes)
    blocker.write_text("x")
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(blocker / "cache"))
    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    with pytest.raises(hubcache.CacheError) as e:
        hubcache.resolve(TFHUB)
    assert str(e.value).startswith(f"could not cache {TFHUB} in {blocker / 'cache'}: NotADirectoryError")
    assert isinstance(e.value, OSError) and hub.total_requests() == 0


def test_prefetch_goes_on_past_failures(env, hub, cache_dir):
    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    bad = "https://tfhub.dev/google/nothing/1"
    with pytest.raises(hubcache.PrefetchError) as e:
        hubcache.prefetch([bad, TFHUB])
    assert e.value.paths == {TFHUB: entry(cache_dir, TFHUB)}
    assert list(e.value.errors) == [bad] and isinstance(e.value.errors[bad], hubcache.DownloadError)
    assert hubcache.prefetch([TFHUB]) == {TFHUB: entry(cache_dir, TFHUB)}


def test_archive_served_as_text_html_is_still_an_archive(env, hub):
    hub.storage.put("/mislabelled.tar.gz", make_tar([("a", b"1")]), content_type="text/html")
    assert read_tree(hubcache.resolve(hub.storage.url + "/mislabelled.tar.gz")) == {"a": b"1"}


def test_stalled_download_times_out(env, hub, monkeypatch, cache_dir):
    blob = hub.publish_tfhub("google/tiny/1", fake_saved_model())
    hub.storage.fault(blob, stall_after=1000, stall_seconds=5)
    monkeypatch.setenv("HUBCACHE_TIMEOUT", "0.5")
    monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "0")
    with pytest.raises(hubcache.DownloadError, match=r"stopped after 1000 of \d+ bytes \(no data for 0.5 s\)"):
        hubcache.resolve(TFHUB)
    assert not os.path.exists(entry(cache_dir, TFHUB))


def test_lock_held_by_another_process_times_out_then_dies(env, hub, monkeypatch, cache_dir):
    import subprocess
    import sys
    import time

    from helpers import child_env

    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    os.makedirs(cache_dir)
    lock = entry(cache_dir, TFHUB) + ".hubcache.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import time, filelock; lock = filelock.FileLock({lock!r}); lock.acquire(); print('held', flush=True); time.sleep(60)"],
        env=child_env({}),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("HUBCACHE_LOCK_TIMEOUT", "0.5")
        with pytest.raises(hubcache.CacheLockTimeout, match="HUBCACHE_LOCK_TIMEOUT") as e:
            hubcache.resolve(TFHUB)
        assert isinstance(e.value, TimeoutError) and lock in str(e.value)
        holder.kill()  # kill -9: the OS drops the lock at once
        holder.wait()
        started = time.monotonic()
        monkeypatch.setenv("HUBCACHE_LOCK_TIMEOUT", "30")
        assert read_tree(hubcache.resolve(TFHUB)) == fake_saved_model_files()
        assert time.monotonic() - started < 5
    finally:
        holder.kill()


def test_proxy_from_the_environment_is_used(env, hub, monkeypatch):
    # The storage server plays the proxy: a proxied request names the full URL.
    monkeypatch.setenv("HTTP_PROXY", hub.storage.url)
    monkeypatch.setenv("NO_PROXY", "")
    with pytest.raises(hubcache.DownloadError, match="HTTP 404"):
        hubcache.resolve(TFHUB)
    assert hub.tfhub.count() == 0
    assert [r.path for r in hub.storage.log] == ["/google/tiny/1"]
