"""Faults 3, 4 and 5: connections dropped mid-body, stalls, retries, bad bodies.

The storage server misbehaves for real on a real socket; hubcache must resume
with Range, restart cleanly when Range is ignored, back off, and give up with a
clear error when it must, publishing nothing.
"""

import hashlib
import json
import os

import pytest

import hubcache
from hubcache.handles import cache_key

from archives import fake_saved_model, fake_saved_model_files, read_tree
from helpers import leftovers

HANDLE = "https://tfhub.dev/google/tiny/1"
SIZE = 400_000


@pytest.fixture
def model(hub):
    archive = fake_saved_model(size=SIZE)
    blob = hub.publish_tfhub("google/tiny/1", archive)
    return archive, blob


def check_cached(cache_dir, archive):
    path = os.path.join(cache_dir, cache_key(HANDLE))
    assert read_tree(path) == fake_saved_model_files(size=SIZE)
    meta = json.load(open(path + ".hubcache.json"))
    assert meta["sha256"] == hashlib.sha256(archive).hexdigest() and meta["bytes"] == len(archive)
    assert leftovers(cache_dir) == []


def nothing_published(cache_dir):
    assert not os.path.exists(os.path.join(cache_dir, cache_key(HANDLE)))
    assert leftovers(cache_dir) == []


def test_dropped_connections_resume_with_range(env, hub, cache_dir, model):
    archive, blob = model
    hub.storage.fault(blob, cut_after=100_000)  # every response is cut after 100 kB
    hubcache.resolve(HANDLE)
    check_cached(cache_dir, archive)
    ranges = [r.headers.get("range") for r in hub.storage.requests_to(blob)]
    assert ranges == [None, "bytes=100000-", "bytes=200000-", "bytes=300000-", "bytes=400000-"][: len(ranges)]
    assert len(ranges) == -(-len(archive) // 100_000)
    # Each resume asks with If-Range, so a changed archive would come back whole.
    assert all(r.headers.get("if-range") for r in hub.storage.requests_to(blob)[1:])


def test_range_ignored_restarts_from_zero_cleanly(env, hub, cache_dir, model):
    archive, blob = model
    hub.storage.fault(blob, cut_after=150_000, ignore_range=True, times=2)
    hubcache.resolve(HANDLE)
    check_cached(cache_dir, archive)
    assert hub.storage.count(blob) == 3


def test_gives_up_after_max_retries_without_progress(env, hub, cache_dir, model, monkeypatch):
    archive, blob = model
    hub.storage.fault(blob, cut_after=1000, ignore_range=True)  # never gets past byte 1000
    monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "3")
    with pytest.raises(hubcache.DownloadError, match="gave up after 3 retries") as e:
        hubcache.resolve(HANDLE)
    assert HANDLE in str(e.value) and "stopped after 1000 of" in str(e.value)
    assert hub.storage.count(blob) == 4  # the first attempt and 3 retries
    nothing_published(cache_dir)


def test_backoff_grows_exponentially(env, hub, cache_dir, model, monkeypatch):
    archive, blob = model
    hub.storage.fault(blob, status=500)
    monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "4")
    monkeypatch.setenv("HUBCACHE_BACKOFF", "0.1")
    with pytest.raises(hubcache.DownloadError, match="HTTP 500.*Gave up after 4 retries"):
        hubcache.resolve(HANDLE)
    times = [r.time for r in hub.storage.requests_to(blob)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 4
    # base 0.1 s doubled each time, jitter in [0.5, 1]: 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.4-0.8
    for i, gap in enumerate(gaps):
        assert 0.1 * 2**i * 0.5 <= gap <= 0.1 * 2**i + 0.5, gaps
    assert gaps == sorted(gaps)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(env, hub, cache_dir, model, status):
    archive, blob = model
    hub.storage.fault(blob, status=status, retry_after="1", times=1)
    hubcache.resolve(HANDLE)
    check_cached(cache_dir, archive)
    first, second = hub.storage.requests_to(blob)[:2]
    assert second.time - first.time >= 0.95


def test_absurd_retry_after_is_reported_not_waited_for(env, hub, cache_dir, model):
    archive, blob = model
    hub.storage.fault(blob, status=503, retry_after="86400")
    with pytest.raises(hubcache.DownloadError, match="asks to wait 86400 s"):
        hubcache.resolve(HANDLE)
    assert hub.storage.count(blob) == 1


@pytest.mark.parametrize("status, attempts", [(400, 1), (401, 1), (403, 1), (404, 1), (410, 1), (408, 2), (429, 2), (502, 2)])
def test_only_transient_statuses_are_retried(env, hub, cache_dir, model, status, attempts):
    archive, blob = model
    hub.storage.fault(blob, status=status, times=1)
    if attempts == 1:
        with pytest.raises(hubcache.DownloadError) as e:
            hubcache.resolve(HANDLE)
        assert e.value.status == status
        nothing_published(cache_dir)
    else:
        hubcache.resolve(HANDLE)
        check_cached(cache_dir, archive)
    assert hub.storage.count(blob) == attempts


def test_stall_times_out_then_resumes(env, hub, cache_dir, model, monkeypatch):
    archive, blob = model
    hub.storage.fault(blob, stall_after=50_000, stall_seconds=10, times=1)
    monkeypatch.setenv("HUBCACHE_TIMEOUT", "0.5")
    hubcache.resolve(HANDLE)
    check_cached(cache_dir, archive)
    assert [r.headers.get("range") for r in hub.storage.requests_to(blob)] == [None, "bytes=50000-"]


def test_permanent_stall_is_an_error_not_a_hang(env, hub, cache_dir, model, monkeypatch):
    archive, blob = model
    hub.storage.fault(blob, stall_after=0, stall_seconds=10)
    monkeypatch.setenv("HUBCACHE_TIMEOUT", "0.3")
    monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "2")
    with pytest.raises(hubcache.DownloadError, match=r"no data for 0.3 s.*gave up after 2 retries"):
        hubcache.resolve(HANDLE)
    nothing_published(cache_dir)


def test_server_that_accepts_and_never_answers(env, monkeypatch, cache_dir):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does), never answers
    try:
        monkeypatch.setenv("HUBCACHE_TFHUB_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("HUBCACHE_TIMEOUT", "0.3")
        monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "1")
        with pytest.raises(hubcache.DownloadError, match=r"did not answer \(no data for 0.3 s\)"):
            hubcache.resolve(HANDLE)
    finally:
        silent.close()


def test_content_length_larger_than_the_body(env, hub, cache_dir, model):
    archive, blob = model
    hub.storage.fault(blob, content_length=len(archive) + 5000)
    with pytest.raises(hubcache.DownloadError, match=f"stopped after {len(archive)} bytes.*announced {len(archive) + 5000}"):
        hubcache.resolve(HANDLE)
    nothing_published(cache_dir)


def test_content_length_smaller_than_the_body(env, hub, cache_dir, model):
    archive, blob = model
    hub.storage.fault(blob, content_length=len(archive) - 5000)
    # Caught by the storage MD5 or by the gzip/tar checks, whichever comes first.
    with pytest.raises((hubcache.ArchiveError, hubcache.IntegrityError), match="cut short|ends in the middle|MD5|CRC32C"):
        hubcache.resolve(HANDLE)
    nothing_published(cache_dir)


def test_corrupt_bytes_fail_the_gzip_check(env, hub, cache_dir):
    archive = bytearray(fake_saved_model(size=SIZE))
    archive[len(archive) // 2] ^= 0xFF
    hub.publish_tfhub("google/tiny/1", bytes(archive))  # storage's MD5 is of the corrupt bytes
    with pytest.raises(hubcache.ArchiveError, match="corrupt gzip data|not a valid tar") as e:
        hubcache.resolve(HANDLE)
    assert HANDLE in str(e.value)
    nothing_published(cache_dir)


@pytest.mark.parametrize(
    "which, header",
    [
        ("CRC32C", lambda good: "crc32c=AAAAAA==," + good.split(",")[1]),  # right MD5, wrong CRC32C
        ("MD5", lambda good: "md5=AAAAAAAAAAAAAAAAAAAAAA=="),  # MD5 only, wrong
    ],
)
def test_storage_checksum_mismatch_is_an_integrity_error(env, hub, cache_dir, which, header):
    pytest.importorskip("google_crc32c")
    from hubserver import Reply, goog_hash

    archive = fake_saved_model(size=SIZE)
    value = header(goog_hash(archive))
    hub.storage.route("/bucket/tiny.tar.gz", lambda req: Reply(body=archive, headers={"x-goog-hash": value}, blob=True))
    with pytest.raises(hubcache.IntegrityError, match=f"{which} .*x-goog-hash"):
        hubcache.resolve("gs://bucket/tiny.tar.gz")
    assert leftovers(cache_dir) == [] and not os.path.exists(os.path.join(cache_dir, cache_key("gs://bucket/tiny.tar.gz")))


def test_storage_checksum_is_checked_across_resumes(env, hub, cache_dir, model):
    archive, blob = model  # the hub sends a correct x-goog-hash for the whole object
    hub.storage.fault(blob, cut_after=150_000, times=2)
    hubcache.resolve(HANDLE)
    check_cached(cache_dir, archive)


def test_html_instead_of_an_archive(env, hub, cache_dir):
    from hubserver import _html

    hub.storage.route("/bucket/page.tar.gz", lambda req: _html("Sign in to continue"))
    with pytest.raises(hubcache.DownloadError, match="web page"):
        hubcache.resolve(hub.storage.url + "/bucket/page.tar.gz")


def test_archive_replaced_on_the_server_mid_download(env, hub, cache_dir, model):
    archive, blob = model
    hub.storage.fault(blob, cut_after=100_000, times=1)
    state = {"served": 0}
    from hubserver import Reply

    newer = fake_saved_model(seed=9, size=SIZE)

    def changing(req):
        state["served"] += 1
        return Reply(body=archive if state["served"] == 1 else newer, blob=True)

    hub.storage.route(blob, changing)
    with pytest.raises(hubcache.DownloadError, match="changed on the server"):
        hubcache.resolve(HANDLE)
    nothing_published(cache_dir)
