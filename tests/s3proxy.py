"""TCP stand-ins for a troubled S3 store, for tests/test_remote_s3.py: a relay
that cuts connections after some bytes or hides a request header, a port that
accepts and never answers, and a server that answers every request with one status."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from typing import List, Optional


class Relay:
    """Relays 127.0.0.1:``port`` to ``target_port``.

    ``cut_after``: the first ``cuts`` connections are closed once that many bytes
    went to the client. ``hide``: request bytes replaced on the way (a header
    renamed, so the store never sees it)."""

    def __init__(self, target_port: int, cut_after: Optional[int] = None, cuts: int = 0, hide: bytes = b"") -> None:
        self.target_port, self.cut_after, self.cuts, self.hide = target_port, cut_after, cuts, hide
        self.connections = 0
        self.cut = 0
        self._lock = threading.Lock()
        self._sockets: List[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self.connections += 1
                limit = self.cut_after if self.cut < self.cuts else None
                if limit is not None:
                    self.cut += 1
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, None, self.hide), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, limit, b""), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, limit: Optional[int], hide: bytes) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if hide:
                    data = data.replace(hide, b"X-Hidden" + b"-" * (len(hide) - 8))
                if limit is not None and sent + len(data) >= limit:
                    sink.sendall(data[: limit - sent])
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (source, sink):  # a cut: the client reads what was sent, then the end
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._server.close()
        for s in self._sockets:
            s.close()


class Silent:
    """A port that accepts connections (the kernel's backlog) and never answers."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.endpoint = f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def close(self) -> None:
        self._server.close()


def closed_port() -> str:
    """The endpoint of a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


class Failing:
    """An HTTP server answering every request with ``status`` and an S3 error body; counts requests."""

    def __init__(self, status: int, code: str) -> None:
        outer = self
        self.requests = 0
        body = f"<Error><Code>{code}</Code><Message>test</Message></Error>".encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer  # noqa: N815 - http.server's names

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
