"""Parallel ranged downloads (hubcache.ranged, HUBCACHE_CONNECTIONS), black-box.

A big archive (Content-Length >= 16 MiB, Accept-Ranges, an ETag) whose single stream
is network-bound is fetched on several connections: the first goes on from byte 0,
the others ask for later pieces with Range and If-Range, into a bounded reorder
buffer that feeds the usual in-order extractor. The storage server caps every
connection on its own (``Fault(bytes_per_second=...)`` on every request), as a CDN
shapes each flow, so one stream is slow and more connections are faster.

What is checked: the entry and its recorded sha256 are those of the archive; pieces
are asked for with If-Range; a failed piece is asked for again alone, from the byte
reached; an archive that changes on the server fails the download and caches nothing;
servers that cannot do ranges get the single stream; the setting's bounds; the peak
memory of a real process; and that Kaggle's credentials never reach storage.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest

import hubcache
import hubcache.ranged
from hubcache.handles import cache_key

from archives import read_tree
from helpers import child_env, leftovers, run_cli
from hubserver import Fault, Reply, Request

MIB = 1 << 20
RATE = 8 * MIB  # bytes per second, per connection
RANGE = re.compile(r"bytes=(\d+)-(\d+)")


# -- archives: a SavedModel's layout, incompressible weights, made with tarfile ----------


def _random(rng: random.Random, n: int) -> bytes:
    return b"".join(rng.randbytes(min(16 * MIB, n - i)) for i in range(0, n, 16 * MIB))


def model_files(seed: int, weights: int, shards: int = 2) -> Dict[str, bytes]:
    """A SavedModel directory's files: ``weights`` bytes of random variables in ``shards``."""
    rng = random.Random(seed)
    files = {
        "saved_model.pb": rng.randbytes(64 << 10),
        "fingerprint.pb": rng.randbytes(56),
        "variables/variables.index": rng.randbytes(4096),
        "assets/vocab.txt": b"\n".join(b"token%d" % i for i in range(20_000)),  # compressible
    }
    for i in range(shards):
        files[f"variables/variables.data-{i:05d}-of-{shards:05d}"] = _random(rng, weights // shards)
    return files


def tar_gz(files: Dict[str, bytes], level: int = 1) -> bytes:
    """A tar.gz as tfhub.dev serves it (``./saved_model.pb``, ...). Level 0 is
    stored deflate blocks: a valid gzip, made at memory speed, for the biggest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted({os.path.dirname(n) for n in files} - {""}):
            info = tarfile.TarInfo(f"./{d}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), compresslevel=level, mtime=0)


_BUILT: Dict[tuple, Tuple[Dict[str, bytes], bytes]] = {}


def model(seed: int, weights: int, level: int = 1) -> Tuple[Dict[str, bytes], bytes]:
    """(files, archive), built once per test session."""
    key = (seed, weights, level)
    if key not in _BUILT:
        files = model_files(seed, weights)
        _BUILT[key] = (files, tar_gz(files, level))
    return _BUILT[key]


# -- the hub --------------------------------------------------------------------------


def publish(hub, name: str, archive: bytes, **fault) -> Tuple[str, str]:
    """``archive`` as the Cloud Storage object bucket/<name>.tar.gz, every connection
    capped at RATE; returns (gs:// handle, storage path)."""
    blob = f"/bucket/{name}.tar.gz"
    hub.storage.put(blob, archive)
    hub.storage.fault(blob, bytes_per_second=RATE, **fault)
    return f"gs://bucket/{name}.tar.gz", blob


def etag_of(data: bytes) -> str:
    return f'"{hashlib.sha1(data).hexdigest()}"'  # as the hub makes it


def gets(hub, blob: str) -> List[Request]:
    return [r for r in hub.storage.requests_to(blob) if r.method == "GET"]


def ranged(requests: List[Request]) -> List[Request]:
    return [r for r in requests if "range" in r.headers]


def span(req: Request) -> Tuple[int, int]:
    """(first, last) byte a ranged request asks for; only ``bytes=a-b`` is expected."""
    m = RANGE.fullmatch(req.headers["range"].strip())
    assert m, f"a piece should be asked for as bytes=a-b, not {req.headers['range']!r}"
    return int(m.group(1)), int(m.group(2))


def check_entry(path: str, files: Dict[str, bytes], archive: bytes) -> None:
    assert read_tree(path) == files
    meta = json.load(open(path + ".hubcache.json"))
    assert (meta["sha256"], meta["bytes"]) == (hashlib.sha256(archive).hexdigest(), len(archive))


def check_parallel(hub, blob: str, archive: bytes, cap: int = 16) -> List[Request]:
    """The download used several connections: the first from byte 0, pieces with
    If-Range; no more at once than the cap (+1: a connection given up is counted
    by the server until its next write fails). Returns the ranged requests."""
    hub.storage.wait_idle()
    requests = gets(hub, blob)
    pieces = ranged(requests)
    assert "range" not in requests[0].headers, "the first request is the plain stream from byte 0"
    assert len(pieces) >= 2, f"no parallel download: {[r.headers.get('range') for r in requests]}"
    etag = etag_of(archive)
    assert all(r.headers.get("if-range") == etag for r in pieces), [r.headers for r in pieces]
    assert all(0 < span(r)[0] <= span(r)[1] < len(archive) for r in pieces)
    assert 2 <= hub.storage.max_in_flight <= cap + 1, hub.storage.max_in_flight
    return pieces


# -- 1. faster, and the same entry ----------------------------------------------------


def test_parallel_download_is_identical_and_faster_than_one_stream(env, hub, cache_dir, monkeypatch):
    files, archive = model(1, 32 * MIB)
    handle, blob = publish(hub, "parallel", archive)
    started = time.monotonic()
    path = hubcache.resolve(handle)
    parallel = time.monotonic() - started
    check_entry(path, files, archive)
    assert leftovers(cache_dir) == []
    check_parallel(hub, blob, archive)
    assert hub.storage.sent_bytes(blob) < 1.25 * len(archive), "pieces were fetched more than once"

    # HUBCACHE_CONNECTIONS=1: today's single stream, one body request, on the same server.
    monkeypatch.setenv("HUBCACHE_CONNECTIONS", "1")
    hub.storage.max_in_flight = 0
    handle1, blob1 = publish(hub, "single", archive)
    started = time.monotonic()
    path1 = hubcache.resolve(handle1)
    single = time.monotonic() - started  # at least 32 MiB / 8 MiB/s = 4 s, by the server's cap
    check_entry(path1, files, archive)
    hub.storage.wait_idle()
    requests = gets(hub, blob1)
    assert len(requests) == 1 and "range" not in requests[0].headers, [r.headers for r in requests]
    assert hub.storage.max_in_flight == 1
    assert parallel * 1.5 < single, f"parallel {parallel:.2f} s, one stream {single:.2f} s"


def test_the_cap_on_connections_holds(env, hub, monkeypatch):
    files, archive = model(5, 64 * MIB, level=0)  # uncapped, this goes to 8 or more connections
    monkeypatch.setenv("HUBCACHE_CONNECTIONS", "3")
    handle, blob = publish(hub, "three", archive)
    check_entry(hubcache.resolve(handle), files, archive)
    check_parallel(hub, blob, archive, cap=3)


# -- 2. a piece that fails is asked for again, alone ---------------------------------


@pytest.mark.parametrize("how", ["cut", "stall", "503"])
def test_a_failed_piece_is_retried_alone_from_the_byte_reached(env, hub, cache_dir, monkeypatch, how):
    files, archive = model(1, 32 * MIB)
    if how == "stall":
        monkeypatch.setenv("HUBCACHE_TIMEOUT", "1")
    handle, blob = publish(hub, f"failing-{how}", archive)
    lock, seen, hit = threading.Lock(), [], {}

    def choose(req: Request, fault: Optional[Fault]) -> Optional[Fault]:
        with lock:
            if req.path != blob or "range" not in req.headers or hit:
                return fault
            seen.append(req)
            if len(seen) < 2:  # the second piece: others are under way by then
                return fault
            first, last = span(req)
            n = min(256 << 10, (last - first + 1) // 2)  # soon: before anyone would split the piece
            n = 0 if how == "503" else n
            hit.update(req=req, first=first, last=last, reached=first + n)
        if how == "503":
            return Fault(status=503)
        if how == "cut":
            return Fault(bytes_per_second=RATE, cut_after=n)
        return Fault(bytes_per_second=RATE, stall_after=n, stall_seconds=3)

    hub.storage.choose_fault = choose
    path = hubcache.resolve(handle)
    check_entry(path, files, archive)
    assert leftovers(cache_dir) == []
    assert hit, "fewer than two pieces were asked for: nothing to fail"
    hub.storage.wait_idle()
    requests = gets(hub, blob)
    assert sum("range" not in r.headers for r in requests) == 1, "the whole download started over"
    # Asked for again once, from the last read completed before the failure (a
    # connection reads a tenth of a second's worth at a time, at most READ_SIZE: what
    # the failed read had is asked for again); a connection left without work may
    # split what is left of it (and ask for the tail). Nothing before is asked again.
    later = ranged(requests[requests.index(hit["req"]) + 1 :])
    again = [r for r in later if hit["first"] <= span(r)[0] <= hit["last"]]
    asked = [r.headers["range"] for r in again]
    message = f"piece {hit['first']}-{hit['last']} failed at {hit['reached']}; then asked: {asked}"
    lost = hubcache.ranged.READ_SIZE
    assert sum(span(r)[0] <= hit["reached"] for r in again) == 1, message
    assert all(hit["reached"] - lost <= span(r)[0] and span(r)[1] <= hit["last"] for r in again), message
    assert all(r.headers.get("if-range") == etag_of(archive) for r in again)
    assert hub.storage.sent_bytes(blob) < 1.5 * len(archive)


@pytest.mark.parametrize("status", [429, 503])
def test_a_server_that_refuses_more_connections_gets_fewer(env, hub, cache_dir, status):
    """A server that allows two bodies at once answers the rest 429/503 (with
    Retry-After, as rate limiters do): those connections leave their pieces to the
    others at once, rather than waiting out backoffs, and no more are added."""
    files, archive = model(1, 32 * MIB)
    handle, blob = publish(hub, f"refusing-{status}", archive)
    lock, refused = threading.Lock(), []

    def choose(req: Request, fault: Optional[Fault]) -> Optional[Fault]:
        with lock:
            if req.path == blob and hub.storage.in_flight >= 2:
                refused.append(req)
                return Fault(status=status, retry_after="30")
        return fault

    hub.storage.choose_fault = choose
    started = time.monotonic()
    path = hubcache.resolve(handle)
    elapsed = time.monotonic() - started
    check_entry(path, files, archive)
    hub.storage.wait_idle()
    requests = gets(hub, blob)
    assert refused, "no connection beyond the second was tried: nothing was refused"
    assert len(ranged(requests)) - len(refused) >= 1, "the second connection fetched nothing"
    # Refused pieces were not retried after Retry-After's 30 s: the download took
    # about what two connections need (32 MiB at 2 x 8 MiB/s), not 30 s more.
    assert elapsed < 25, elapsed
    # Connections stop being added once one is refused: a handful, not one per tick.
    assert len(refused) <= 4, [r.headers.get("range") for r in refused]
    assert hub.storage.sent_bytes(blob) < 1.25 * len(archive)


# -- 3. the archive changes on the server mid-download -------------------------------


@pytest.mark.parametrize(
    "how",
    [
        "if-range-honoured",  # the server answers the piece 200, whole, with the new ETag
        "same-size",  # a server that ignores If-Range: 206 of the new version, another ETag
        "other-size",  # ... and another total in Content-Range
    ],
)
def test_an_archive_that_changes_mid_download_fails_and_caches_nothing(env, hub, cache_dir, how):
    old_files, old = model(1, 24 * MIB, level=0)
    new_files, new = model(2, 24 * MIB if how != "other-size" else 26 * MIB, level=0)
    assert (len(new) == len(old)) == (how != "other-size")
    handle, blob = publish(hub, f"changing-{how}", old, ignore_if_range=how != "if-range-honoured")
    lock, state = threading.Lock(), {"pieces": 0, "new": False}

    def route(req: Request) -> Reply:
        with lock:
            if "range" in req.headers:
                state["pieces"] += 1
                state["new"] = state["new"] or state["pieces"] >= 2  # replaced once pieces are under way
            data = new if state["new"] else old
        return Reply(body=data, headers={"Content-Type": "application/octet-stream"}, blob=True)

    hub.storage.route(blob, route)
    with pytest.raises(hubcache.DownloadError, match="changed") as e:
        hubcache.resolve(handle)
    assert state["new"], "fewer than two pieces were asked for: the archive never changed"
    assert "changed on the server" in str(e.value) and handle in str(e.value), str(e.value)
    assert not os.path.exists(os.path.join(cache_dir, cache_key(handle)))
    assert leftovers(cache_dir) == []
    hub.storage.wait_idle()

    path = hubcache.resolve(handle)  # a retry fetches the new archive
    check_entry(path, new_files, new)
    assert leftovers(cache_dir) == []


# -- 4. servers that cannot serve pieces ---------------------------------------------


@pytest.mark.parametrize(
    "how",
    [
        "no-accept-ranges",
        "no-validator",  # neither ETag nor x-goog-hash: pieces could not be told to be of one version
        "small",  # under hubcache.download.PARALLEL_MIN_SIZE
    ],
)
def test_single_stream_when_pieces_cannot_be_used(env, hub, cache_dir, how):
    if how == "small":
        files, archive = model(3, 12 * MIB)
        assert len(archive) < 16 * MIB
    else:
        files, archive = model(6, 17 * MIB, level=0)
        assert len(archive) >= 16 * MIB  # big enough for pieces, but for what is left out
    drop = {"no-accept-ranges": ("Accept-Ranges",), "no-validator": ("ETag", "x-goog-hash")}.get(how, ())
    handle, blob = publish(hub, f"single-{how}", archive, drop_headers=drop)
    check_entry(hubcache.resolve(handle), files, archive)
    hub.storage.wait_idle()
    requests = gets(hub, blob)
    assert len(requests) == 1 and "range" not in requests[0].headers, [r.headers for r in requests]
    assert hub.storage.max_in_flight == 1


def test_a_storage_checksum_without_an_etag_is_enough_for_pieces(env, hub, cache_dir):
    files, archive = model(1, 24 * MIB, level=0)
    handle, blob = publish(hub, "checksum-only", archive, drop_headers=("ETag",))
    check_entry(hubcache.resolve(handle), files, archive)
    hub.storage.wait_idle()
    assert len(ranged(gets(hub, blob))) >= 2 and hub.storage.max_in_flight >= 2


def test_the_storage_checksum_is_checked_over_the_pieces(env, hub, cache_dir):
    pytest.importorskip("google_crc32c")
    from hubserver import goog_hash

    _, archive = model(1, 24 * MIB, level=0)
    handle, blob = publish(hub, "bad-checksum", archive)
    crc32c = goog_hash(archive).split(",")[0]
    wrong = f"{crc32c[:-6]}AAAA==,md5=AAAAAAAAAAAAAAAAAAAAAA=="  # both wrong
    assert wrong.split(",")[0] != crc32c
    hub.storage.route(blob, lambda req: Reply(body=archive, headers={"x-goog-hash": wrong}, blob=True))
    with pytest.raises(hubcache.IntegrityError, match="x-goog-hash"):
        hubcache.resolve(handle)
    assert not os.path.exists(os.path.join(cache_dir, cache_key(handle)))
    assert leftovers(cache_dir) == []
    hub.storage.wait_idle()
    assert len(ranged(gets(hub, blob))) >= 2, "not parallel: this checks nothing new"


def test_the_size_below_which_one_stream_is_kept_is_the_documented_one():
    import hubcache.download

    assert hubcache.download.PARALLEL_MIN_SIZE == 16 * MIB  # docs/RELIABILITY.md says 16 MiB


def test_a_server_that_ignores_range_still_gives_the_right_archive(env, hub, cache_dir):
    """It says Accept-Ranges but answers every piece 200, whole: each such answer is read
    skipping to the piece, or given up for fewer connections; the entry is right either way."""
    files, archive = model(6, 17 * MIB, level=0)
    handle, blob = publish(hub, "ignores-range", archive, ignore_range=True)
    check_entry(hubcache.resolve(handle), files, archive)
    assert leftovers(cache_dir) == []
    hub.storage.wait_idle()
    requests = gets(hub, blob)
    assert len(requests) <= 1 + 16, f"{len(requests)} requests: pieces asked for again and again"


# -- 5. the setting -------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "1.5"])
def test_bad_connections_setting_is_a_config_error(env, hub, cache_dir, monkeypatch, bad):
    _, archive = model(3, 12 * MIB)
    handle, blob = publish(hub, "bad-setting", archive)
    monkeypatch.setenv("HUBCACHE_CONNECTIONS", bad)
    with pytest.raises(hubcache.ConfigError, match="HUBCACHE_CONNECTIONS") as e:
        hubcache.resolve(handle)
    assert repr(bad) in str(e.value) or bad in str(e.value), str(e.value)
    assert hub.storage.count(blob) == 0
    if bad == "abc":  # the CLI: a bad setting is a usage error, exit 2
        r = run_cli("resolve", handle, env={**env, "HUBCACHE_CONNECTIONS": bad})
        assert r.returncode == 2 and "HUBCACHE_CONNECTIONS" in r.stderr, (r.returncode, r.stderr)


@pytest.mark.parametrize("good", ["1", "2", "16", "64"])
def test_good_connections_settings_are_accepted(good):
    from hubcache.config import load_settings

    load_settings(environ={"TFHUB_CACHE_DIR": "/c", "HUBCACHE_CONNECTIONS": good})


# -- 6. memory, in a real process -----------------------------------------------------

MEASURE = r"""
import json, sys, time
import hubcache, hubcache.ranged

def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

hubcache.resolve(sys.argv[1])  # warm up: every module a download needs is loaded
before = hwm()
started = time.monotonic()
path = hubcache.resolve(sys.argv[2])
print(json.dumps({"path": path, "growth": hwm() - before, "before": before, "seconds": time.monotonic() - started}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_peak_memory_stays_bounded_whatever_the_size(env, hub, cache_dir):
    """300 MiB on 16 connections whose first piece stalls for 4 s: the others run
    ahead of the consumer, and only the reorder buffer's bound keeps them in check."""
    files, archive = model(4, 300 * MIB, level=0)
    warm_files, warm = model(3, 12 * MIB)
    warm_handle, _ = publish(hub, "warm-up", warm)
    hub.storage.fault("/bucket/warm-up.tar.gz")  # unthrottled
    handle, blob = publish(hub, "huge", archive)
    lock, stalled = threading.Lock(), []

    def choose(req: Request, fault: Optional[Fault]) -> Optional[Fault]:
        with lock:
            if req.path != blob or "range" not in req.headers or stalled:
                return fault
            stalled.append(req)
        return Fault(bytes_per_second=RATE, stall_after=256 << 10, stall_seconds=4)

    hub.storage.choose_fault = choose
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, warm_handle, handle],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stalled, "no piece was asked for: the download was not parallel"
    check_parallel(hub, blob, archive)
    print(f"peak RSS growth: {result['growth'] / MIB:.1f} MiB")  # (for the README: pytest -rP)
    assert result["growth"] < 128 * MIB, f"peak RSS grew {result['growth'] / MIB:.0f} MiB ({result})"
    meta = json.load(open(result["path"] + ".hubcache.json"))
    assert (meta["sha256"], meta["bytes"]) == (hashlib.sha256(archive).hexdigest(), len(archive))
    for name, data in files.items():
        with open(os.path.join(result["path"], name), "rb") as f:
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest(), name


def test_ctrl_c_stops_every_connection_and_leaves_nothing(env, hub, cache_dir):
    files, archive = model(1, 32 * MIB)
    handle, blob = publish(hub, "interrupted", archive)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubcache", "resolve", handle],
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(ranged(gets(hub, blob))) < 2 or hub.storage.in_flight < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the download never went parallel"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 3, f"{time.monotonic() - started:.1f} s to stop after Ctrl-C"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    hub.storage.wait_idle(timeout=5)  # every connection was closed: no body is still being sent
    assert hub.storage.sent_bytes(blob) < len(archive)
    assert not os.path.exists(os.path.join(cache_dir, cache_key(handle)))
    assert leftovers(cache_dir) == []
    check_entry(hubcache.resolve(handle), files, archive)  # and the next try works


# -- 7. Kaggle's credentials stay with Kaggle -----------------------------------------

TOKEN = "kaggle-ranged-secret-4b1e"
BEARER = f"Bearer {TOKEN}"
MODEL = "google/big/tensorFlow2/big/1"


@pytest.mark.parametrize("expired", [False, True])
def test_pieces_of_a_gated_kaggle_model_carry_no_credentials(env, hub, cache_dir, monkeypatch, expired):
    """With ``expired``, storage answers a piece 403, as once a signed URL expires:
    the piece is asked for again through Kaggle (with the credentials) and storage."""
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    files, archive = model(1, 24 * MIB, level=0)
    blob = hub.publish_kaggle(MODEL, archive, authorization=BEARER)
    hub.storage.fault(blob, bytes_per_second=RATE)
    lock, refused = threading.Lock(), []

    def choose(req: Request, fault: Optional[Fault]) -> Optional[Fault]:
        with lock:
            if not expired or req.path != blob or "range" not in req.headers or refused:
                return fault
            refused.append(req)
        return Fault(status=403)

    hub.storage.choose_fault = choose
    path = hubcache.resolve(f"https://www.kaggle.com/models/{MODEL}")
    check_entry(path, files, archive)
    assert hub.kaggle.log and all(r.headers.get("authorization") == BEARER for r in hub.kaggle.log)  # the gate was passed
    assert bool(refused) == expired and (hub.kaggle.count() > 1) == expired, [r.path for r in hub.kaggle.log]
    pieces = check_parallel(hub, blob, archive)
    for req in hub.storage.log:
        shown = " ".join(f"{k}: {v}" for k, v in req.headers.items())
        assert "authorization" not in req.headers and TOKEN not in shown, f"storage got the credentials: {req}"
    # Pieces go to the signed storage URL the redirect gave, not through Kaggle again
    # (unless that URL stopped working: then the chain is walked again, Range and all).
    assert all(r.query.get("X-Goog-Signature") == "deadbeef" for r in pieces)
    assert expired or not ranged(hub.kaggle.log), "a piece was asked of Kaggle"
