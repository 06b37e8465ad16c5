"""A server that drips its response head (status line and headers) a byte at a
time never trips the per-read timeout. The head must arrive whole within twice
HUBCACHE_TIMEOUT, else the attempt fails like a dropped connection."""

import socket
import threading
import time

import pytest

import hubcache

from helpers import leftovers


@pytest.fixture
def dripping_server():
    """A raw HTTP server that answers each request by sending its head one byte
    every 0.1 s (forever, since the head never ends), counting connections."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    connections = []
    stop = threading.Event()

    def drip(conn):
        head = b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"a" * 100_000
        try:
            conn.recv(65536)
            for byte in head:
                if stop.is_set():
                    return
                conn.sendall(bytes([byte]))
                time.sleep(0.1)
        except OSError:
            pass
        finally:
            conn.close()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(time.monotonic())
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", connections
    stop.set()
    listener.close()


def test_a_dripped_response_head_times_out_and_is_retried(env, monkeypatch, cache_dir, dripping_server):
    url, connections = dripping_server
    monkeypatch.setenv("HUBCACHE_TIMEOUT", "0.5")
    monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "2")
    started = time.monotonic()
    with pytest.raises(hubcache.DownloadError, match=r"no complete response head within 1 s.*gave up after 2 retries"):
        hubcache.resolve(f"{url}/model.tar.gz")
    elapsed = time.monotonic() - started
    # Three attempts of 1 s each (twice the read timeout), not forever.
    assert 2.9 < elapsed < 6, elapsed
    assert len(connections) == 3
    assert leftovers(cache_dir) == []


def test_a_silent_server_still_fails_by_the_read_timeout_first(env, monkeypatch):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        monkeypatch.setenv("HUBCACHE_TIMEOUT", "0.3")
        monkeypatch.setenv("HUBCACHE_MAX_RETRIES", "0")
        with pytest.raises(hubcache.DownloadError, match=r"no data for 0.3 s"):
            hubcache.resolve(f"http://127.0.0.1:{silent.getsockname()[1]}/m.tar.gz")
    finally:
        silent.close()
