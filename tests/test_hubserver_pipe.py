"""The loopback hub's shared pipe and body counters (tests/hubserver.py), which
benchmarks/cluster.py relies on: one rate for all connections together, shared
evenly, and whole bodies counted apart from requests."""

from __future__ import annotations

import http.client
import threading
import time
from urllib.parse import urlsplit

import pytest

from hubserver import HubServer, Pipe

RATE = 2 << 20  # bytes per second, all bodies together
SIZE = 512 << 10


@pytest.fixture
def server():
    s = HubServer("pipe")
    yield s
    s.stop()


def _get(url: str, headers=None) -> bytes:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", parts.path, headers=headers or {})
        return conn.getresponse().read()
    finally:
        conn.close()


def test_concurrent_bodies_share_one_rate_evenly(server):
    data = bytes(range(256)) * (SIZE // 256)
    url = server.put("/blob", data)
    server.pipe = Pipe(RATE)
    finished, bodies = [], []
    began = time.monotonic()

    def fetch():
        bodies.append(_get(url))
        finished.append(time.monotonic() - began)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bodies == [data] * 4
    # 2 MiB through a 2 MiB/s pipe: about a second, less one 64 KiB piece of head start.
    assert min(finished) >= 0.75 * 4 * SIZE / RATE, finished  # shared evenly: nobody got the link to itself
    assert max(finished) >= (4 * SIZE - (64 << 10)) / RATE, finished  # the total is capped, not each body
    server.wait_idle()
    assert server.pipe.sent == 4 * SIZE
    assert (server.completed("/blob"), server.count("/blob"), server.max_in_flight) == (4, 4, 4)


def test_without_a_pipe_bodies_are_not_throttled(server):
    url = server.put("/blob", b"x" * SIZE)
    began = time.monotonic()
    assert _get(url) == b"x" * SIZE
    assert time.monotonic() - began < SIZE / RATE  # the pipe above is what made it slow


def test_completed_counts_bodies_through_the_last_byte(server):
    url = server.put("/blob", b"y" * 1000)
    assert _get(url, {"Range": "bytes=0-99"}) == b"y" * 100  # not to the end
    server.fault("/blob", cut_after=500, times=1)
    with pytest.raises(http.client.IncompleteRead):
        _get(url)  # cut short
    server.wait_idle()
    assert (server.completed("/blob"), server.sent_bytes("/blob")) == (0, 600)
    assert _get(url, {"Range": "bytes=500-"}) == b"y" * 500  # a resume that finishes the blob
    assert _get(url) == b"y" * 1000  # a whole body
    server.wait_idle()
    assert (server.completed("/blob"), server.count("/blob"), server.sent_bytes("/blob")) == (2, 4, 2100)


def test_a_pipe_needs_a_positive_rate():
    with pytest.raises(ValueError, match="positive"):
        Pipe(0)
