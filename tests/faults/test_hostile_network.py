"""Hostile and pathological networks: dripping bodies, redirects that cannot be
followed, garbage response headers, Ctrl-C in the middle of parallel downloads,
and handles that carry secrets.

Servers are real sockets. Where the response must be something no HTTP library
would send (a body dripped a byte at a time, a Content-Length of "²", UTF-8 in
a header), a small raw-socket server (:class:`RawServer`) writes the bytes by hand.
Ctrl-C is a real SIGINT sent to a real child process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import pytest

import hubcache
from hubcache.handles import cache_key

from archives import fake_saved_model, fake_saved_model_files, make_tar, read_tree
from helpers import child_env, leftovers, result_of, run_cli, spawn_resolver
from hubserver import Reply

# ------------------------------------------------------------------ raw server


@dataclass
class RawRequest:
    index: int  # 0 for the first request the server received
    method: str
    path: str  # without the query
    target: str  # as sent, query included
    headers: Dict[str, str]  # lower-case names
    time: float = field(default_factory=time.monotonic)
    sent: int = 0  # body bytes written so far (by Conn.body)


class _StoppedError(Exception):
    pass


class Conn:
    """One accepted connection, as a handler sees it."""

    def __init__(self, sock: socket.socket, req: RawRequest, stop: threading.Event) -> None:
        self.sock = sock
        self.req = req
        self._stop = stop

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def body(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.req.sent += len(data)

    def sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _StoppedError()


Answer = Callable[[Conn, RawRequest], None]


class RawServer:
    """An HTTP server that writes its answers byte by byte: ``answer(conn, req)``
    writes whatever it likes; the connection is closed when it returns. One
    request per connection (every head says ``Connection: close``)."""

    def __init__(self, answer: Answer, host: str = "127.0.0.2") -> None:
        self.answer = answer
        self.requests: List[RawRequest] = []
        self.active = 0  # handlers running now
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.bind((host, 0))
        self._listener.listen(32)
        self.url = f"http://{host}:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True, name="rawserver").start()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(30)
            raw = b""
            while b"\r\n\r\n" not in raw:
                data = sock.recv(65536)
                if not data:
                    return
                raw += data
            lines = raw.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            with self._lock:
                req = RawRequest(len(self.requests), method, target.partition("?")[0], target, headers)
                self.requests.append(req)
                self.active += 1
            try:
                self.answer(Conn(sock, req, self._stop), req)
            finally:
                with self._lock:
                    self.active -= 1
        except (OSError, _StoppedError):
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()


def head(status: str = "200 OK", headers: Sequence[Tuple[str, Union[str, bytes]]] = ()) -> bytes:
    """A response head; str values are sent as UTF-8 (which no HTTP library would do)."""
    out = [f"HTTP/1.1 {status}".encode(), b"Connection: close"]
    for name, value in headers:
        out.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode("utf-8")))
    return b"\r\n".join(out) + b"\r\n\r\n"


def range_start(req: RawRequest) -> Optional[int]:
    m = re.fullmatch(r"bytes=(\d+)-", req.headers.get("range", ""))
    return int(m.group(1)) if m else None


def blob_head(body: bytes, req: RawRequest, etag: str = '"v1"', extra=()) -> Tuple[bytes, int]:
    """An honest head for ``body`` (206 for a Range request), and where the body starts."""
    start = range_start(req) or 0
    headers = [("Content-Length", str(len(body) - start)), ("ETag", etag), ("Accept-Ranges", "bytes"),
               ("Content-Type", "application/octet-stream")]
    status = "200 OK"
    if start:
        status = "206 Partial Content"
        headers.append(("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}"))
    return head(status, headers + list(extra)), start


def dripping(body: bytes, *, burst: int = 0, step: int = 1, interval: float = 0.2,
             drips: Optional[int] = None) -> Answer:
    """Serve ``body`` honestly (Content-Length, Range, ETag) but slowly: ``burst``
    bytes at once, then ``step`` bytes every ``interval`` seconds. Requests from
    number ``drips`` on (if given) get the body at full speed."""

    def answer(conn: Conn, req: RawRequest) -> None:
        first, start = blob_head(body, req)
        conn.send(first)
        if drips is not None and req.index >= drips:
            conn.body(body[start:])
            return
        pos = min(len(body), start + burst)
        conn.body(body[start:pos])
        while pos < len(body):
            conn.sleep(interval)
            conn.body(body[pos : pos + step])
            pos += step

    return answer


@pytest.fixture
def raw_server():
    servers: List[RawServer] = []

    def start(answer: Answer) -> RawServer:
        server = RawServer(answer)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def within(seconds: float, fn: Callable, *args, **kwargs) -> Dict:
    """Run ``fn`` in a thread; {"value": ...} or {"error": exception}, and how
    long it took. A call still running after ``seconds`` fails the test (a hang)."""
    box: Dict = {}

    def run() -> None:
        started = time.monotonic()
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - any escape is what we look for
            box["error"] = e
        box["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s: a hang"
    return box


def only_hubcache_errors(box: Dict) -> None:
    """The call either succeeded or raised a HubcacheError subclass."""
    e = box.get("error")
    if e is not None and not isinstance(e, hubcache.HubcacheError):
        shown = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        pytest.fail(f"{type(e).__name__} escaped instead of a HubcacheError:\n{shown}")


def wait_for(condition, timeout: float = 30, what: str = "condition", step: float = 0.01) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(step)
    return time.monotonic() - started


def published(cache_dir: str, handle: str) -> bool:
    entry = os.path.join(cache_dir, cache_key(handle))
    return os.path.exists(entry) or os.path.exists(entry + ".hubcache.json")


# ------------------------------------------------------------ 1. progress floor


@pytest.mark.parametrize("burst", [0, 600], ids=["one-byte-drip", "burst-then-drip"])
def test_a_dripping_server_fails_the_progress_floor_and_frees_the_lock(env, raw_server, cache_dir, monkeypatch, burst):
    """1 byte every 0.2 s never trips the 10 s read timeout; the floor (1K/s over
    1 s windows) fails each attempt. Each retry resumes with Range, and the few
    new bytes an attempt brings (up to 600) do not reset the failure count, so
    it gives up after HUBCACHE_MAX_RETRIES. Meanwhile another process waits for
    the lock, and takes over the moment the dripping download gives up."""
    body = fake_saved_model(size=300_000)
    server = raw_server(dripping(body, burst=burst, step=1, interval=0.2, drips=3))
    handle = f"{server.url}/drip/model.tar.gz"
    monkeypatch.setenv("HUBCACHE_MIN_RATE", "1K")
    monkeypatch.setenv("HUBCACHE_MIN_RATE_WINDOW", "1")
    monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "2")
    monkeypatch.setenv("HUBCACHE_BACKOFF", "0.01")

    first = {}
    runner = threading.Thread(target=lambda: first.update(within(30, hubcache.resolve, handle)), daemon=True)
    runner.start()
    wait_for(lambda: server.requests, what="the first request")
    waiter = spawn_resolver(handle, env)  # another process: blocks on the entry's lock
    runner.join(35)
    assert not runner.is_alive()

    error = first.get("error")
    assert isinstance(error, hubcache.DownloadError), first
    assert "HUBCACHE_MIN_RATE" in str(error) and "gave up after 2 retries" in str(error), str(error)
    # Three attempts of one 1 s window each: bounded, not forever.
    assert 2.5 < first["seconds"] < 6, first["seconds"]
    dripped = server.requests[:3]
    offsets = [range_start(r) or 0 for r in dripped]
    assert offsets[0] == 0 and 0 < offsets[1] < offsets[2], offsets  # resumed from the byte reached
    for i in (1, 2):  # never past what the server had sent
        assert offsets[i] <= sum(r.sent for r in dripped[:i]), (offsets, [r.sent for r in dripped])
    if burst:
        assert offsets[2] >= 2 * burst

    # The lock was released at once: the other process took over and got the model.
    result = result_of(waiter, timeout=30)
    assert result["ok"], result
    assert result["path"] == os.path.join(cache_dir, cache_key(handle))
    assert read_tree(result["path"]) == fake_saved_model_files(size=300_000)
    assert len(server.requests) == 4  # 3 dripped attempts, then the waiter's one
    assert leftovers(cache_dir) == []


def test_a_dripping_server_fails_through_the_cli_without_holding_the_lock(env, raw_server, cache_dir):
    """The same through the command line, in a real process: exit 1, a message
    naming HUBCACHE_MIN_RATE, no traceback, no temporary directory left."""
    server = raw_server(dripping(fake_saved_model(size=100_000), step=1, interval=0.2))
    handle = f"{server.url}/drip/model.tar.gz"
    extra = dict(env, HUBCACHE_MIN_RATE="1K", HUBCACHE_MIN_RATE_WINDOW="1", HUBCACHE_MAX_RETRIES="1")
    started = time.monotonic()
    r = run_cli("resolve", handle, env=extra, timeout=30)
    took = time.monotonic() - started
    assert r.returncode == 1, r.stderr
    assert "HUBCACHE_MIN_RATE" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert took < 8, took
    assert len(server.requests) == 2
    assert leftovers(cache_dir) == [] and not published(cache_dir, handle)
    # Nobody holds the lock: a process with a lock timeout of 1 s is not told to wait.
    again = result_of(spawn_resolver(handle, dict(extra, HUBCACHE_LOCK_TIMEOUT="1", HUBCACHE_MAX_RETRIES="0")), 30)
    assert again["error"] == "DownloadError" and "HUBCACHE_MIN_RATE" in again["message"], again


def test_a_slow_but_honest_server_passes_the_floor(env, hub, cache_dir, monkeypatch):
    archive = fake_saved_model(size=600_000)
    blob = "/slow/model.tar.gz"
    hub.storage.put(blob, archive)
    hub.storage.fault(blob, bytes_per_second=200_000)  # ~3 s, 64 KiB pieces
    monkeypatch.setenv("HUBCACHE_MIN_RATE", "50K")
    monkeypatch.setenv("HUBCACHE_MIN_RATE_WINDOW", "1")
    monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "0")  # a single floor failure would be fatal
    started = time.monotonic()
    path = hubcache.resolve(hub.storage.url + blob)
    assert time.monotonic() - started > 2  # it really was slow
    assert read_tree(path) == fake_saved_model_files(size=600_000)
    assert hub.storage.count(blob) == 1
    assert leftovers(cache_dir) == []


@pytest.mark.parametrize("min_rate, completes", [("0", True), ("1K", False)])
def test_min_rate_zero_turns_the_floor_off(env, raw_server, cache_dir, monkeypatch, min_rate, completes):
    """A ~600-byte archive dripped at ~600 bytes/s: under a 1K/s floor it fails
    in the first half-second window; with HUBCACHE_MIN_RATE=0 it completes."""
    archive = make_tar([("a.bin", os.urandom(400))])
    server = raw_server(dripping(archive, step=30, interval=0.05))
    handle = f"{server.url}/drip/small.tar.gz"
    monkeypatch.setenv("HUBCACHE_MIN_RATE", min_rate)
    monkeypatch.setenv("HUBCACHE_MIN_RATE_WINDOW", "0.5")
    monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "0")
    box = within(20, hubcache.resolve, handle)
    if completes:
        assert "value" in box, box
        assert os.path.getsize(os.path.join(box["value"], "a.bin")) == 400
        assert box["seconds"] > 0.5  # longer than a window: the floor was really off
    else:
        assert isinstance(box.get("error"), hubcache.DownloadError), box
        assert "HUBCACHE_MIN_RATE" in str(box["error"])
        assert not published(cache_dir, handle)
    assert len(server.requests) == 1
    assert leftovers(cache_dir) == []


# ------------------------------------------- 2. redirects that cannot be followed

UNFOLLOWABLE = {
    "file": "file:///etc/passwd",
    "ftp": "ftp://x/y",
    "port-out-of-range": "http://h:99999/x",
    "unclosed-ipv6": "http://[::1",
}
MORE_UNFOLLOWABLE = {
    "javascript": "javascript:alert(1)",
    "negative-port": "http://h:-1/x",
    "no-host": "http://:80/x",
    "bad-port": "http://[::1]:80x/",
}


@pytest.fixture
def redirect_to(hub):
    def redirect_to(target: str) -> str:
        path = "/mirror/model.tar.gz"
        hub.storage.route(path, lambda req: Reply(302, headers={"Location": target}))
        return hub.storage.url + path

    return redirect_to


@pytest.mark.parametrize("target", list(UNFOLLOWABLE.values()) + list(MORE_UNFOLLOWABLE.values()),
                         ids=list(UNFOLLOWABLE) + list(MORE_UNFOLLOWABLE))
def test_a_redirect_that_cannot_be_followed_fails_at_once(env, hub, cache_dir, monkeypatch, redirect_to, target):
    handle = redirect_to(target)
    monkeypatch.setenv("HUBCACHE_BACKOFF", "1")  # a retry would cost at least 0.5 s; default retries
    box = within(30, hubcache.resolve, handle)
    only_hubcache_errors(box)
    error = box.get("error")
    assert isinstance(error, hubcache.DownloadError), box
    assert "cannot be requested" in str(error), str(error)
    # The URL named as the one that cannot be requested is the redirect's
    # target, not the handle's own URL (which answered fine).
    assert f"{handle} cannot be requested" not in str(error), str(error)
    assert error.url != handle, error.url
    assert box["seconds"] < 2, box["seconds"]
    assert hub.storage.count("/mirror/model.tar.gz") == 1  # not retried
    assert leftovers(cache_dir) == [] and not published(cache_dir, handle)


@pytest.mark.parametrize("target", list(UNFOLLOWABLE.values()), ids=list(UNFOLLOWABLE))
def test_a_redirect_that_cannot_be_followed_through_the_cli(env, hub, redirect_to, target):
    handle = redirect_to(target)
    started = time.monotonic()
    r = run_cli("resolve", handle, env=dict(env, HUBCACHE_BACKOFF="1"), timeout=30)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("hubcache:") and "Traceback" not in r.stderr, r.stderr
    assert "cannot be requested" in r.stderr, r.stderr
    assert r.stdout == ""
    assert time.monotonic() - started < 5
    assert hub.storage.count("/mirror/model.tar.gz") == 1


def _redirect_with_body(write: Callable[[Conn], None], headers) -> Answer:
    """A 302 to ``/junk/real.tar.gz`` whose own body is hostile; the target is a
    good archive."""

    def answer(conn: Conn, req: RawRequest) -> None:
        if req.path.endswith("/real.tar.gz"):
            conn.send(head("200 OK", [("Content-Length", str(len(BODY)))]))
            conn.body(BODY)
            return
        conn.send(head("302 Found", [("Location", "/junk/real.tar.gz")] + list(headers)))
        write(conn)

    return answer


def _drip_forever(conn: Conn) -> None:
    while True:
        conn.sleep(0.2)
        conn.body(b"x")


def _flood(conn: Conn) -> None:
    block = b"x" * (1 << 16)
    for _ in range(1024):  # 64 MiB
        conn.body(block)


REDIRECT_BODIES = {
    "dripping": (_drip_forever, [("Content-Length", str(10**12))]),
    "64-MiB": (_flood, [("Content-Length", str(64 << 20))]),
    "broken-chunked": (lambda conn: conn.body(b"zz\r\nhello\r\n"), [("Transfer-Encoding", "chunked")]),
    "shorter-than-announced": (lambda conn: conn.body(b"abc"), [("Content-Length", "100")]),
}


@pytest.mark.parametrize("name", sorted(REDIRECT_BODIES))
def test_the_body_of_a_redirect_is_never_read(env, raw_server, cache_dir, monkeypatch, name):
    """A redirect's body means nothing: following it must not wait for it (a
    dripped body never trips the read timeout, and no progress floor applies
    to it) nor hold it in memory (a flood)."""
    write, headers = REDIRECT_BODIES[name]
    server = raw_server(_redirect_with_body(write, headers))
    handle = f"{server.url}/junk/model.tar.gz"
    monkeypatch.setenv("HUBCACHE_TIMEOUT", "2")
    monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "1")
    box = within(10, hubcache.resolve, handle)
    only_hubcache_errors(box)
    assert "value" in box, box
    assert read_tree(box["value"]) == fake_saved_model_files(size=20_000)
    assert box["seconds"] < 3, box["seconds"]
    redirect = server.requests[0]
    assert redirect.sent < 16 << 20, f"{redirect.sent} bytes of the redirect's body were sent (and read)"


# ------------------------------------------------------- 3. garbage headers

BODY = fake_saved_model(size=20_000)
CUT = 1000  # where the first response of the resume cases is cut


def whole(headers, status="200 OK", body=BODY) -> Answer:
    """Every request gets ``body`` whole, under these (hostile) headers."""

    def answer(conn: Conn, req: RawRequest) -> None:
        conn.send(head(status, headers))
        conn.body(body)

    return answer


def cut_then(second: Callable[[RawRequest], Sequence[Tuple[str, Union[str, bytes]]]],
             status: str = "206 Partial Content") -> Answer:
    """The first request gets an honest head and ``CUT`` bytes, then a hang-up;
    later ones (the resumes) get ``second(req)`` as headers and the rest of the body."""

    def answer(conn: Conn, req: RawRequest) -> None:
        if req.index == 0:
            first, _ = blob_head(BODY, req)
            conn.send(first)
            conn.body(BODY[:CUT])
            return
        start = range_start(req) or 0
        conn.send(head(status, second(req)))
        conn.body(BODY[start:])

    return answer


def honest_rest(req, **changes):
    start = range_start(req) or 0
    headers = {"Content-Length": str(len(BODY) - start), "ETag": '"v1"',
               "Content-Range": f"bytes {start}-{len(BODY) - 1}/{len(BODY)}"}
    headers.update(changes)
    return list(headers.items())


def status_then_ok(status_headers, status="503 Service Unavailable", times=1) -> Answer:
    def answer(conn: Conn, req: RawRequest) -> None:
        if req.index < times:
            conn.send(head(status, list(status_headers) + [("Content-Length", "0")]))
            return
        first, start = blob_head(BODY, req)
        conn.send(first)
        conn.body(BODY[start:])

    return answer


GARBAGE = {
    # Content-Length
    "length-superscript-two": whole([("Content-Length", "²")]),
    "length-arabic-digit": whole([("Content-Length", "٣")]),
    "length-negative": whole([("Content-Length", "-5")]),
    "length-plus": whole([("Content-Length", f"+{len(BODY)}")]),
    "length-huge": whole([("Content-Length", "9" * 40)]),
    "length-exponent": whole([("Content-Length", "2e4")]),
    "length-two-values": whole([("Content-Length", f"{len(BODY)}, 7")]),
    "length-zero-with-body": whole([("Content-Length", "0")]),
    "length-smaller": whole([("Content-Length", "300")]),
    # Content-Range on a resume
    "range-fullwidth-digits": cut_then(lambda req: honest_rest(req, **{"Content-Range": f"bytes １０００-{len(BODY) - 1}/{len(BODY)}"})),
    "range-arabic-digits": cut_then(lambda req: honest_rest(req, **{"Content-Range": "bytes ١٠٠٠-٢٠٠٠/٣٠٠٠"})),
    "range-total-superscript": cut_then(lambda req: honest_rest(req, **{"Content-Range": f"bytes {CUT}-{len(BODY) - 1}/²"})),
    "range-negative": cut_then(lambda req: honest_rest(req, **{"Content-Range": "bytes -5-10/100"})),
    "range-total-smaller": cut_then(lambda req: honest_rest(req, **{"Content-Range": f"bytes {CUT}-{CUT + 10}/{CUT + 11}"})),
    "range-huge": cut_then(lambda req: honest_rest(req, **{"Content-Range": f"bytes {CUT}-{'9' * 30}/{'9' * 31}"})),
    "range-missing": cut_then(lambda req: [(k, v) for k, v in honest_rest(req) if k != "Content-Range"]),
    "range-other-start": cut_then(lambda req: honest_rest(req, **{"Content-Range": f"bytes 0-{len(BODY) - 1}/{len(BODY)}"})),
    "etag-changes": cut_then(lambda req: honest_rest(req, ETag='"v2"')),
    "resume-200-other-length": cut_then(lambda req: [("Content-Length", str(len(BODY) + 1)), ("ETag", '"v1"')], status="200 OK"),
    # Retry-After
    "retry-after-fullwidth-nine": status_then_ok([("Retry-After", "９")]),
    "retry-after-bad-date": status_then_ok([("Retry-After", "Wed, 99 Foo 2024 99:99:99 GMT")]),
    "retry-after-year-99999": status_then_ok([("Retry-After", "Fri, 31 Dec 99999 23:59:59 GMT")]),
    "retry-after-year-1": status_then_ok([("Retry-After", "Mon, 01 Jan 0001 00:00:00 GMT")]),
    "retry-after-huge-offset": status_then_ok([("Retry-After", "Mon, 01 Jan 2024 00:00:00 +9999")]),
    "retry-after-negative": status_then_ok([("Retry-After", "-1")]),
    "retry-after-many-digits": status_then_ok([("Retry-After", "9" * 400)]),
    "retry-after-latin1": status_then_ok([("Retry-After", b"\xff\xfe")], status="429 Too Many Requests"),
    # x-goog-hash
    "goog-hash-empty-md5": whole([("Content-Length", str(len(BODY))), ("x-goog-hash", "md5=")]),
    "goog-hash-not-base64": whole([("Content-Length", str(len(BODY))), ("x-goog-hash", "md5=!!!!,crc32c=???")]),
    "goog-hash-unicode": whole([("Content-Length", str(len(BODY))), ("x-goog-hash", "md5=é,crc32c=ü")]),
    "goog-hash-short-md5": whole([("Content-Length", str(len(BODY))), ("x-goog-hash", "md5=AAAA")]),
    "goog-hash-no-equals": whole([("Content-Length", str(len(BODY))), ("x-goog-hash", "md5,crc32c,,,=")]),
    "goog-hash-huge": whole([("Content-Length", str(len(BODY))), ("x-goog-hash", "md5=" + "A" * 60_000)]),
    # The head itself
    "status-not-a-number": whole([("Content-Length", str(len(BODY)))], status="2OO OK"),
    "status-unknown": whole([("Content-Length", str(len(BODY)))], status="299 Whatever"),
    "header-too-long": whole([("Content-Length", str(len(BODY))), ("X-Junk", "a" * 70_000)]),
    "too-many-headers": whole([("Content-Length", str(len(BODY)))] + [(f"X-{i}", "x") for i in range(150)]),
    "chunked-garbage": lambda conn, req: (conn.send(head("200 OK", [("Transfer-Encoding", "chunked")])),
                                          conn.body(b"zz\r\n" + BODY[:100] + b"\r\n0\r\n\r\n")),
    "location-without-redirect": whole([("Content-Length", str(len(BODY))), ("Location", b"http://\xff\xfe/")]),
    "redirect-to-latin1-junk": lambda conn, req: conn.send(head("302 Found", [("Location", b"http://\xff\xfe:\xff/\x00"), ("Content-Length", "0")])),
    "redirect-to-itself-forever": lambda conn, req: conn.send(head("302 Found", [("Location", req.target), ("Content-Length", "0")])),
}

#: Cases whose outcome is certain, beyond "a HubcacheError or a correct model".
EXPECTED = {
    "range-fullwidth-digits": (hubcache.DownloadError, "cannot resume"),
    "range-arabic-digits": (hubcache.DownloadError, "cannot resume"),
    "range-negative": (hubcache.DownloadError, "cannot resume"),
    "range-missing": (hubcache.DownloadError, "cannot resume"),
    "range-other-start": (hubcache.DownloadError, "cannot resume"),
    "etag-changes": (hubcache.DownloadError, "changed on the server"),
    "range-total-smaller": (hubcache.DownloadError, "changed on the server"),
    "resume-200-other-length": (hubcache.DownloadError, "changed on the server"),
    "retry-after-fullwidth-nine": (str, ""),
    "retry-after-bad-date": (str, ""),
    "retry-after-year-99999": (str, ""),
    "retry-after-year-1": (str, ""),
    "retry-after-huge-offset": (str, ""),
    "retry-after-negative": (str, ""),
    "retry-after-latin1": (str, ""),
    "retry-after-many-digits": (hubcache.DownloadError, "asks to wait"),
    "redirect-to-itself-forever": (hubcache.DownloadError, "redirects"),
    "length-zero-with-body": (hubcache.ArchiveError, ""),
    # An MD5 that is not 16 bytes is junk and ignored, as a short CRC32C is:
    # failing would make a correct download fail for ever.
    "goog-hash-short-md5": (str, ""),
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_headers_give_a_hubcache_error_or_the_right_model(env, raw_server, cache_dir, monkeypatch, name):
    server = raw_server(GARBAGE[name])
    handle = f"{server.url}/junk/model.tar.gz"
    monkeypatch.setenv("HUBCACHE_TIMEOUT", "2")
    monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "2")
    box = within(30, hubcache.resolve, handle)
    only_hubcache_errors(box)
    assert box["seconds"] < 15, box["seconds"]
    if "value" in box:  # whatever was cached is the model, byte for byte
        assert read_tree(box["value"]) == fake_saved_model_files(size=20_000)
    else:
        assert not published(cache_dir, handle)
        assert handle in str(box["error"]), str(box["error"])
    if name in EXPECTED:
        kind, text = EXPECTED[name]
        got = box.get("value", box.get("error"))
        assert isinstance(got, kind), f"{name}: expected {kind.__name__}, got {got!r}"
        assert text in str(got), str(got)
    assert leftovers(cache_dir) == []


# ---------------------------------------------- 4. Ctrl-C during a prefetch

API_CHILD = """
import sys, hubcache
jobs = int(sys.argv[1])
try:
    hubcache.prefetch(sys.argv[2:], jobs=jobs)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    sys.exit(130)
print("FINISHED", flush=True)
"""

PREFETCH_SIZE = 2_000_000  # ~10 s each at 200 kB/s


@pytest.fixture
def three_models(hub):
    handles, blobs = [], []
    for i, name in enumerate("abc"):
        blobs.append(hub.publish_tfhub(f"google/{name}/1", fake_saved_model(seed=i, size=PREFETCH_SIZE)))
        handles.append(f"https://tfhub.dev/google/{name}/1")
    return handles, blobs


def temp_dirs(cache_dir: str) -> List[str]:
    if not os.path.isdir(cache_dir):
        return []
    return [n for n in os.listdir(cache_dir) if ".hubcache-tmp." in n and os.path.isdir(os.path.join(cache_dir, n))]


def interrupt(how: str, jobs: int, handles: List[str], env, hub, cache_dir, started: int) -> Tuple[float, str, str, int]:
    """Start a prefetch of ``handles`` in a child; once ``started`` downloads are
    under way, SIGINT it. Returns (seconds from the signal to its exit, stdout, stderr, code)."""
    if how == "api":
        args = [sys.executable, "-c", API_CHILD, str(jobs), *handles]
    else:
        args = [sys.executable, "-m", "hubcache", "prefetch", "-j", str(jobs), *handles]
    child = subprocess.Popen(args, env=child_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: hub.storage.in_flight >= started and len(temp_dirs(cache_dir)) >= started,
                 what=f"{started} downloads to start")
        time.sleep(0.3)  # well into the bodies
        assert child.poll() is None, child.communicate()
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("the child did not exit within 15 s of SIGINT")
        took = time.monotonic() - sent
        out, err = child.communicate()
        return took, out, err, child.returncode
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def check_interrupted(how, took, out, err, code, handles, cache_dir):
    print(f"{how}: exited {took:.2f} s after SIGINT")
    assert code == 130, (code, out, err)
    if how == "api":
        assert "INTERRUPTED" in out and "FINISHED" not in out, (out, err)
    else:
        assert "interrupted" in err, err
    assert "Traceback" not in err, err
    assert took < 1.5, f"exited {took:.2f} s after SIGINT"
    assert leftovers(cache_dir) == []
    for handle in handles:
        assert not published(cache_dir, handle), handle


@pytest.mark.parametrize("how", ["api", "cli"])
def test_ctrl_c_stops_a_parallel_prefetch_of_throttled_downloads(env, hub, cache_dir, three_models, how):
    handles, blobs = three_models
    for blob in blobs:
        hub.storage.fault(blob, bytes_per_second=200_000)
    took, out, err, code = interrupt(how, 3, handles, env, hub, cache_dir, started=3)
    check_interrupted(how, took, out, err, code, handles, cache_dir)
    # The server stops sending: its next write finds the connection gone.
    gone = wait_for(lambda: hub.storage.in_flight == 0, timeout=5, what="the server to stop sending")
    print(f"the server stopped sending {gone:.2f} s after the exit")
    assert gone < 1.0, gone
    assert hub.storage.max_in_flight == 3
    assert all(hub.storage.count(b) == 1 for b in blobs)  # nothing was retried meanwhile


@pytest.mark.parametrize("how", ["api", "cli"])
def test_ctrl_c_stops_a_parallel_prefetch_of_stalled_downloads(env, hub, cache_dir, three_models, how):
    """Workers blocked in recv (the server went silent, the read timeout is 10 s)
    must be woken by the cancellation, not waited for."""
    handles, blobs = three_models
    for blob in blobs:
        hub.storage.fault(blob, stall_after=300_000, stall_seconds=60)
    took, out, err, code = interrupt(how, 3, handles, env, hub, cache_dir, started=3)
    check_interrupted(how, took, out, err, code, handles, cache_dir)


@pytest.mark.parametrize("how", ["api", "cli"])
def test_ctrl_c_stops_a_serial_prefetch(env, hub, cache_dir, three_models, how):
    handles, blobs = three_models
    hub.storage.fault(blobs[0], bytes_per_second=200_000)
    took, out, err, code = interrupt(how, 1, handles, env, hub, cache_dir, started=1)
    check_interrupted(how, took, out, err, code, handles, cache_dir)
    assert hub.storage.count(blobs[1]) == hub.storage.count(blobs[2]) == 0  # never started
    assert hub.storage.count(blobs[0]) == 1
    gone = wait_for(lambda: hub.storage.in_flight == 0, timeout=5, what="the server to stop sending")
    assert gone < 1.0, gone


@pytest.mark.parametrize("how", ["api", "cli"])
def test_ctrl_c_stops_a_serial_stalled_download(env, hub, cache_dir, three_models, how):
    """Ctrl-C while the only download waits on a silent server (read timeout 10 s)."""
    handles, blobs = three_models
    hub.storage.fault(blobs[0], stall_after=300_000, stall_seconds=60)
    took, out, err, code = interrupt(how, 1, handles[:1], env, hub, cache_dir, started=1)
    check_interrupted(how, took, out, err, code, handles[:1], cache_dir)
    assert hub.storage.count(blobs[0]) == 1  # no new request after Ctrl-C


# ---------------------------------------------------- 5. prefetch's arguments


def test_prefetch_of_a_bare_string_is_a_type_error(env, hub):
    with pytest.raises(TypeError, match=r"list") as e:
        hubcache.prefetch("https://tfhub.dev/google/tiny/1")
    assert "prefetch([" in str(e.value)
    with pytest.raises(TypeError, match=r"list"):
        hubcache.prefetch(b"https://tfhub.dev/google/tiny/1")
    # Even the message about a wrong call does not show a secret.
    with pytest.raises(TypeError) as e:
        hubcache.prefetch("https://u:pw-SECRET@h.example/m.tar.gz?token=TOK-SECRET")
    assert "SECRET" not in str(e.value)
    assert hub.total_requests() == 0


def test_prefetch_of_a_local_path_is_reported_as_a_handle_error(env, hub, tmp_path):
    local = tmp_path / "model"
    local.mkdir()
    (local / "saved_model.pb").write_bytes(b"x")
    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    remote = "https://tfhub.dev/google/tiny/1"
    with pytest.raises(hubcache.PrefetchError) as e:
        hubcache.prefetch([str(local), remote])
    assert set(e.value.errors) == {str(local)}
    error = e.value.errors[str(local)]
    assert isinstance(error, hubcache.HandleError) and "local path" in str(error)
    assert set(e.value.paths) == {remote}  # the others are still fetched
    # With jobs too.
    with pytest.raises(hubcache.PrefetchError) as e:
        hubcache.prefetch([str(local), remote], jobs=2)
    assert isinstance(e.value.errors[str(local)], hubcache.HandleError)


@pytest.mark.parametrize("jobs", [0, -1, True, 1.5, "3", None])
def test_prefetch_jobs_must_be_a_whole_number_of_at_least_one(env, hub, jobs):
    with pytest.raises(TypeError, match="jobs"):
        hubcache.prefetch(["https://tfhub.dev/google/tiny/1"], jobs=jobs)
    assert hub.total_requests() == 0


# ------------------------------------------------- 6. secrets in handles

SECRETS = ("s3cretpw", "SIGSECRET", "TOKSECRET", "REDIRSECRET", "CREDSECRET")


def secret_handle(hub, path: str) -> str:
    host = hub.storage.url.partition("://")[2]
    return f"http://user:s3cretpw@{host}{path}?X-Amz-Signature=SIGSECRET&token=TOKSECRET&v=2"


@pytest.fixture
def secret_model(hub):
    """A handle with a password, a signature and a token, whose path redirects
    to a storage URL signed in its turn."""
    hub.storage.put("/secret/blob.tar.gz", fake_saved_model())
    hub.storage.route(
        "/secret/m.tar.gz",
        lambda req: Reply(302, headers={"Location": "/secret/blob.tar.gz?X-Goog-Signature=REDIRSECRET&X-Goog-Credential=CREDSECRET"}),
    )
    return secret_handle(hub, "/secret/m.tar.gz")


def leaks(text: str) -> List[str]:
    return [s for s in SECRETS if s in text]


def files_with_secrets(root: str) -> Dict[str, List[str]]:
    found = {}
    for dirpath, dirs, files in os.walk(root):
        for name in files + dirs:
            full = os.path.join(dirpath, name)
            hits = leaks(full)
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as f:
                    hits += leaks(f.read().decode("latin-1"))
            if hits:
                found[os.path.relpath(full, root)] = hits
    return found


def exception_text(e: BaseException) -> str:
    """Everything a user could see of an exception: the whole formatted chain, and its attributes."""
    parts = ["".join(traceback.format_exception(type(e), e, e.__traceback__)), repr(e), repr(e.args)]
    parts += [repr(v) for k, v in vars(e).items() if k not in ("errors", "paths")]
    return "\n".join(parts)


def leaking_lines(e: BaseException) -> str:
    """The lines of :func:`exception_text` that show a secret ("" if none)."""
    return "\n".join(line for line in exception_text(e).splitlines() if leaks(line))


def test_secrets_in_a_handle_never_reach_logs_errors_or_disk_in_process(env, hub, cache_dir, caplog, secret_model):
    handle = secret_model
    missing = secret_handle(hub, "/secret/missing.tar.gz")
    with caplog.at_level(logging.DEBUG):  # every logger, urllib3's too
        path = hubcache.resolve(handle)
        with pytest.raises(hubcache.DownloadError) as failed:
            hubcache.resolve(missing)
    # tensorflow_hub's name for the entry: the SHA-1 of the handle exactly as written.
    assert os.path.basename(path) == hashlib.sha1(handle.encode("utf8")).hexdigest() == cache_key(handle)
    assert os.path.dirname(path) == cache_dir
    assert read_tree(path) == fake_saved_model_files()
    assert hubcache.resolve(handle) == path  # and found again under that name
    first = hub.storage.requests_to("/secret/m.tar.gz")[0]
    assert first.query["X-Amz-Signature"] == "SIGSECRET"  # fetched exactly as written
    assert first.headers["authorization"].startswith("Basic ")  # the userinfo, by requests

    hubcache_records = [r for r in caplog.records if r.name.startswith("hubcache")]
    assert any(r.levelno == logging.DEBUG for r in hubcache_records), "no hubcache debug records were captured"
    leaked = [f"{r.name}: {r.getMessage()}" for r in hubcache_records if leaks(r.getMessage())]
    assert not leaked, "\n".join(leaked)
    assert failed.value.status == 404
    assert not leaking_lines(failed.value), leaking_lines(failed.value)
    assert "v=2" in str(failed.value) and "127.0.0.2" in str(failed.value)
    assert not files_with_secrets(cache_dir), files_with_secrets(cache_dir)


def test_secrets_in_a_handle_never_reach_a_prefetch_error(env, hub, cache_dir, secret_model):
    """PrefetchError's message lists the failed handles: shown redacted (its
    ``errors`` and ``paths`` keep the handles as given, for the caller to look up)."""
    missing = secret_handle(hub, "/secret/missing.tar.gz")
    for jobs in (1, 2):
        with pytest.raises(hubcache.PrefetchError) as e:
            hubcache.prefetch([secret_model, missing], jobs=jobs)
        assert set(e.value.errors) == {missing} and set(e.value.paths) == {secret_model}
        assert "v=2" in str(e.value)
        assert not leaking_lines(e.value), leaking_lines(e.value)
    assert not files_with_secrets(cache_dir), files_with_secrets(cache_dir)


def test_secrets_in_a_handle_never_reach_third_party_logs(env, hub, caplog, secret_model):
    """With logging at DEBUG for every logger (logging.basicConfig(level=DEBUG)
    in an application), urllib3's connection pool logs each request line."""
    with caplog.at_level(logging.DEBUG):
        hubcache.resolve(secret_model)
    leaked = [f"{r.name}: {r.getMessage()}" for r in caplog.records if leaks(r.getMessage())]
    assert not leaked, "\n".join(leaked)


class CliRuns:
    """Runs the command line, remembering every output (handles shown as names)."""

    def __init__(self, env, names: Dict[str, str]) -> None:
        self.env = env
        self.names = names
        self.outputs: Dict[str, subprocess.CompletedProcess] = {}

    def __call__(self, *args: str, code: int = 0) -> subprocess.CompletedProcess:
        r = run_cli(*args, env=self.env, timeout=60)
        self.outputs["hubcache " + " ".join(self.names.get(a, a) for a in args)] = r
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr or "-v" in args, r.stderr
        return r

    def leaked(self) -> List[str]:
        return [
            f"{cmd} ({stream}): {line.strip()}"
            for cmd, r in self.outputs.items()
            for stream, text in (("stdout", r.stdout), ("stderr", r.stderr))
            for line in text.splitlines()
            if leaks(line)
        ]


def test_secrets_in_a_handle_never_reach_cli_messages_or_disk(env, hub, cache_dir, secret_model):
    handle = secret_model
    missing = secret_handle(hub, "/secret/missing.tar.gz")
    host = hub.storage.url.partition("://")[2]
    run = CliRuns(env, {handle: "HANDLE", missing: "MISSING"})

    run("prefetch", "-v", handle)
    assert os.path.isdir(os.path.join(cache_dir, hashlib.sha1(handle.encode()).hexdigest()))
    ls = run("ls")
    assert "v=2" in ls.stdout and host in ls.stdout, ls.stdout
    listing = json.loads(run("ls", "--json").stdout)
    assert [e["key"] for e in listing["entries"]] == [cache_key(handle)]
    assert "v=2" in listing["entries"][0]["handle"] and host in listing["entries"][0]["handle"]
    assert "v=2" in run("info", handle).stdout
    assert json.loads(run("info", "--json", handle).stdout)["key"] == cache_key(handle)
    run("verify")
    run("verify", handle)
    assert run("resolve", handle).stdout.strip() == os.path.join(cache_dir, cache_key(handle))
    # And a handle that fails.
    run("prefetch", "-v", missing, code=1)
    run("resolve", missing, code=1)
    run("info", missing, code=1)
    run("verify", missing, code=1)
    assert not run.leaked(), "secrets in the output of:\n" + "\n".join(run.leaked())
    assert not files_with_secrets(cache_dir), files_with_secrets(cache_dir)


def test_secrets_in_a_handle_never_reach_cli_json_records(env, hub, cache_dir, secret_model):
    """The --json records of prefetch and resolve echo "the handle as given"."""
    handle = secret_model
    missing = secret_handle(hub, "/secret/missing.tar.gz")
    run = CliRuns(env, {handle: "HANDLE", missing: "MISSING"})
    for args, code in [(("resolve", "--json", handle), 0), (("prefetch", "--json", handle), 0),
                       (("resolve", "--json", missing), 1), (("prefetch", "--json", missing), 1)]:
        records = json.loads(run(*args, code=code).stdout)
        for record in records if isinstance(records, list) else [records]:
            assert "v=2" in record["handle"]
    assert not run.leaked(), "secrets in the output of:\n" + "\n".join(run.leaked())
