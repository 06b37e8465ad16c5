"""A loopback stand-in for tfhub.dev, Kaggle and cloud storage.

Three real HTTP servers, each in a thread of the test process:

* ``tfhub`` (127.0.0.1) answers ``/<publisher>/<model>/<version>?tf-hub-format=compressed``
  with a redirect to Kaggle, as tfhub.dev does since the migration, ``...=uncompressed``
  with a 303 whose body is a ``gs://`` path, and no format with an HTML page.
* ``kaggle`` (127.0.0.1) answers model URLs (short and long form, framework in
  any case) and ``/api/v1/models/.../download`` with a redirect to a signed storage
  URL; gated models need the right ``Authorization`` header.
* ``storage`` (127.0.0.2: another host) serves blobs with Content-Length,
  ``x-goog-hash: md5=...`` and HTTP Range.

Every request is logged (``server.log``, ``server.count(path)``), and faults can
be armed per path: an error status (with Retry-After), a connection cut after N
bytes, a stall, throttling, a wrong Content-Length, Range or If-Range ignored, headers
left out (``drop_headers``), or any of these chosen per request (``server.choose_fault``). Blob bodies are
counted as sent (``server.completed(path)``: bodies that reached the blob's last
byte; ``server.sent_bytes(path)``), apart from requests. A :class:`Pipe` (``server.pipe``,
or :meth:`FakeHub.share_pipe` for all four servers) caps the bytes per second that
all bodies together get, as one shared link upstream would.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Request:
    server: str
    method: str
    path: str
    query: Dict[str, str]
    headers: Dict[str, str]  # lower-case names
    time: float = field(default_factory=time.monotonic)
    body: bytes = b""  # of a POST


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: Dict[str, str] = field(default_factory=dict)
    blob: bool = False  # serve ``body`` as an object: Range, hashes, faults


@dataclass
class Fault:
    """Misbehaviour armed on a path. ``times`` limits it to that many requests."""

    status: Optional[int] = None  # answer this status instead of the content
    retry_after: Optional[str] = None
    cut_after: Optional[int] = None  # close the connection after N body bytes
    stall_after: Optional[int] = None  # go silent after N body bytes...
    stall_seconds: float = 60.0  # ...for this long, then close
    bytes_per_second: Optional[int] = None  # throttle the body
    content_length: Optional[int] = None  # announce this length instead of the real one
    ignore_range: bool = False
    ignore_if_range: bool = False  # answer Range even when If-Range names another version
    drop_headers: Tuple[str, ...] = ()  # leave these out of a blob's answer (e.g. "ETag", "Accept-Ranges")
    times: Optional[int] = None


Route = Callable[[Request], Reply]


class Pipe:
    """One throttled link shared by every body sent through it: at most
    ``bytes_per_second`` in total, however many connections there are (unlike
    ``Fault.bytes_per_second``, which throttles each body on its own).

    Each piece reserves the next free slot of the link and waits for it: a token
    bucket that holds no more than the piece at hand, so an idle link saves up no
    burst, and concurrent bodies, asking piece by piece, share the rate evenly."""

    def __init__(self, bytes_per_second: float) -> None:
        if bytes_per_second <= 0:
            raise ValueError(f"a pipe needs a positive rate, not {bytes_per_second}")
        self.bytes_per_second = bytes_per_second
        self.sent = 0  # bytes let through, all bodies together
        self._free_at = 0.0  # time.monotonic() at which the link is next idle
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        """Return once ``n`` more bytes may go out."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + n / self.bytes_per_second
            self.sent += n
        if start > now:
            time.sleep(start - now)


class HubServer:
    """One loopback HTTP server with exact-path routes."""

    def __init__(self, name: str, host: str = "127.0.0.1", lower_case_paths: bool = False) -> None:
        self.name = name
        self.routes: Dict[str, Route] = {}
        self.faults: Dict[str, Fault] = {}
        self.log: List[Request] = []
        self.in_flight = 0  # blob bodies being sent now...
        self.max_in_flight = 0  # ...and the most at once
        self.pipe: Optional[Pipe] = None  # every body of this server goes through it
        # Called with each request and the fault armed for it (or None); returns the
        # fault to use instead: faults that depend on the request (its Range, its turn).
        self.choose_fault: Optional[Callable[[Request, Optional[Fault]], Optional[Fault]]] = None
        self._completed: Dict[str, int] = {}  # path -> blob bodies sent through the last byte
        self._sent_bytes: Dict[str, int] = {}  # path -> blob body bytes written, cut bodies too
        self._lower = lower_case_paths
        self._lock = threading.Lock()
        self._httpd = _QuietServer((host, 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._httpd.hub = self  # type: ignore[attr-defined]
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name=name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def route(self, path: str, handler: Route) -> None:
        self.routes[self._key(path)] = handler

    def put(self, path: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Serve ``data`` at ``path`` as a blob; returns its URL."""
        self.route(path, lambda req: Reply(body=data, headers={"Content-Type": content_type}, blob=True))
        return self.url + path

    def fault(self, path: str, **kwargs: object) -> Fault:
        f = Fault(**kwargs)  # type: ignore[arg-type]
        self.faults[self._key(path)] = f
        return f

    def count(self, path: Optional[str] = None) -> int:
        with self._lock:
            return sum(1 for r in self.log if path is None or r.path == path)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no blob body is being sent. A client may have the last byte
        (or see the cut) a moment before the server counts the body; once idle,
        :meth:`completed` and :meth:`sent_bytes` include every body sent."""
        deadline = time.monotonic() + timeout
        while self.in_flight:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {self.in_flight} bodies still being sent after {timeout} s")
            time.sleep(0.005)

    def completed(self, path: str) -> int:
        """Blob bodies of ``path`` written through the blob's last byte: a whole 200,
        or a 206 that finished a resumed download. Requests that got an error, a
        HEAD, or a body cut short do not count. Final once :meth:`wait_idle` returns."""
        with self._lock:
            return self._completed.get(path, 0)

    def sent_bytes(self, path: str) -> int:
        """Body bytes of blob ``path`` written, all requests together (cut ones too)."""
        with self._lock:
            return self._sent_bytes.get(path, 0)

    def requests_to(self, path: str) -> List[Request]:
        with self._lock:
            return [r for r in self.log if r.path == path]

    def _key(self, path: str) -> str:
        return path.lower() if self._lower else path

    def _record(self, req: Request) -> None:
        with self._lock:
            self.log.append(req)

    def _take_fault(self, path: str) -> Optional[Fault]:
        with self._lock:
            f = self.faults.get(self._key(path))
            if f is None:
                return None
            if f.times is not None:
                if f.times <= 0:
                    return None
                f.times -= 1
            return f


def goog_hash(data: bytes) -> str:
    """Cloud Storage's ``x-goog-hash`` value for ``data``: CRC32C (when
    google-crc32c is installed) and MD5."""
    parts = []
    try:
        import google_crc32c

        parts.append("crc32c=" + base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode())
    except ImportError:
        pass
    parts.append("md5=" + base64.b64encode(hashlib.md5(data).digest()).decode())
    return ",".join(parts)


_DIGESTS: "OrderedDict[int, Tuple[bytes, str, str]]" = OrderedDict()
_DIGESTS_LOCK = threading.Lock()


def _digests(data: bytes) -> Tuple[str, str]:
    """(ETag, x-goog-hash) of a blob's bytes, remembered for the last few blobs: a
    big blob asked for in many ranges is not hashed again for each request."""
    if type(data) is not bytes:  # mutable: hashed afresh every time
        return f'"{hashlib.sha1(data).hexdigest()}"', goog_hash(data)
    with _DIGESTS_LOCK:
        found = _DIGESTS.get(id(data))
        if found is not None and found[0] is data:
            _DIGESTS.move_to_end(id(data))
            return found[1], found[2]
    etag, whole = f'"{hashlib.sha1(data).hexdigest()}"', goog_hash(data)
    with _DIGESTS_LOCK:
        _DIGESTS[id(data)] = (data, etag, whole)  # the bytes are held: their id stays theirs
        while len(_DIGESTS) > 8:
            _DIGESTS.popitem(last=False)
    return etag, whole


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        pass  # clients hanging up mid-response is what the fault tests do


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hubserver/1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_POST(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        req = Request(
            hub.name,
            self.command,
            parts.path,
            dict(parse_qsl(parts.query, keep_blank_values=True)),
            {k.lower(): v for k, v in self.headers.items()},
        )
        if self.command == "POST":
            req.body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1 << 20))
        hub._record(req)
        fault = hub._take_fault(parts.path)
        if hub.choose_fault is not None:
            fault = hub.choose_fault(req, fault)
        if fault and fault.status:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return self._send(Reply(fault.status, b"injected failure\n", headers), head)
        route = hub.routes.get(hub._key(parts.path))
        reply = route(req) if route else Reply(404, b"not found\n", {"Content-Type": "text/plain"})
        if reply.blob:
            return self._send_blob(reply, req, fault, head)
        self._send(reply, head)

    def _send(self, reply: Reply, head: bool) -> None:
        self.send_response(reply.status)
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if not head:
            pipe: Optional[Pipe] = self.server.hub.pipe  # type: ignore[attr-defined]
            if pipe is not None and reply.body:
                pipe.take(len(reply.body))
            self.wfile.write(reply.body)

    def _send_blob(self, reply: Reply, req: Request, fault: Optional[Fault], head: bool) -> None:
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        data = reply.body
        total = len(data)
        start, end = 0, total  # [start, end)
        status = 200
        etag, whole_hash = _digests(data)
        wanted = req.headers.get("range")
        if req.headers.get("if-range", etag) != etag and not (fault and fault.ignore_if_range):
            wanted = None  # the representation changed: send it whole
        if wanted and not (fault and fault.ignore_range):
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
            if not m or int(m.group(1)) >= total:
                return self._send(Reply(416, b"", {"Content-Range": f"bytes */{total}"}), head)
            start = int(m.group(1))
            end = min(total, int(m.group(2)) + 1) if m.group(2) else total
            status = 206
        body = data[start:end]
        dropped = {h.lower() for h in fault.drop_headers} if fault else set()
        self.send_response(status)
        for k, v in reply.headers.items():
            if k.lower() not in dropped:
                self.send_header(k, v)
        if "x-goog-hash" not in {k.lower() for k in reply.headers} | dropped:
            self.send_header("x-goog-hash", whole_hash)
        if "accept-ranges" not in dropped:
            self.send_header("Accept-Ranges", "bytes")
        if "etag" not in dropped:
            self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{total}")
        announced = fault.content_length if fault and fault.content_length is not None else len(body)
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        if head:
            return
        with hub._lock:
            hub.in_flight += 1
            hub.max_in_flight = max(hub.max_in_flight, hub.in_flight)
        sent, whole = 0, False
        try:
            sent, whole = self._write_body(body, fault)
        finally:
            with hub._lock:  # counted as the body stops being in flight: see wait_idle
                hub.in_flight -= 1
                hub._sent_bytes[req.path] = hub._sent_bytes.get(req.path, 0) + sent
                if whole and end == total:
                    hub._completed[req.path] = hub._completed.get(req.path, 0) + 1

    def _write_body(self, body: bytes, fault: Optional[Fault]) -> Tuple[int, bool]:
        """Write ``body`` as the fault allows; returns the bytes written, and whether
        the body went out whole (every byte, flushed, the connection not cut)."""
        pipe: Optional[Pipe] = self.server.hub.pipe  # type: ignore[attr-defined]
        step = 64 * 1024
        sent = 0
        began = time.monotonic()
        limit = len(body)
        if fault and fault.cut_after is not None:
            limit = min(limit, fault.cut_after)
        if fault and fault.stall_after is not None:
            limit = min(limit, fault.stall_after)
        try:
            while sent < limit:
                if fault and fault.bytes_per_second:  # wait before a piece, never after the last
                    ahead = sent / fault.bytes_per_second - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
                piece = body[sent : min(limit, sent + step)]
                if pipe is not None:
                    pipe.take(len(piece))
                self.wfile.write(piece)
                sent += len(piece)
            self.wfile.flush()
            if fault and fault.stall_after is not None and sent >= fault.stall_after:
                time.sleep(fault.stall_seconds)
            if fault and (fault.cut_after is not None or fault.stall_after is not None) and sent < len(body):
                self._cut()
                return sent, False
            elif fault and fault.content_length is not None:
                self._cut()  # after a false Content-Length, hang up as such servers do
                return sent, False
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return sent, False
        return sent, sent == len(body)

    def _cut(self) -> None:
        """Drop the connection abruptly, mid-body."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class FakeHub:
    """tfhub.dev, Kaggle and storage on loopback, wired together as the real ones are."""

    BUCKET = "kaggle-models"

    def __init__(self) -> None:
        self.tfhub = HubServer("tfhub")
        self.kaggle = HubServer("kaggle", lower_case_paths=True)
        self.storage = HubServer("storage", host="127.0.0.2")
        self.kaggle_api = HubServer("kaggle-api")  # api.kaggle.com: the RPC API of kagglehub 1.x
        self.rpc_models: Dict[tuple, Callable[[], Reply]] = {}  # (owner, model, FRAMEWORK_ENUM, variation, n)
        self.rpc_authorization: Dict[tuple, Optional[str]] = {}
        for method in ("DownloadModelInstanceVersion", "GetModelInstance"):
            self.kaggle_api.route(f"/v1/models.ModelApiService/{method}", self._rpc)
        self.kaggle.route("/models", lambda req: _html("Kaggle Models: browse all models"))
        self.latest: Dict[str, int] = {}
        self.gcs_objects: Dict[str, Dict[str, int]] = {}  # bucket -> object name -> size  # owner/model/framework/variation (lower case) -> current version

    @property
    def servers(self) -> List[HubServer]:
        return [self.tfhub, self.kaggle, self.storage, self.kaggle_api]

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    def env(self) -> Dict[str, str]:
        """Environment that points hubcache's endpoints here."""
        return {
            "HUBCACHE_TFHUB_ENDPOINT": self.tfhub.url,
            "HUBCACHE_KAGGLE_ENDPOINT": self.kaggle.url,
            "HUBCACHE_KAGGLE_API_ENDPOINT": self.kaggle_api.url,
            "HUBCACHE_GCS_ENDPOINT": self.storage.url,
            "HUBCACHE_CN_MIRROR_ENDPOINT": self.storage.url,
        }

    def share_pipe(self, bytes_per_second: float) -> Pipe:
        """Put all four servers behind one :class:`Pipe`: the whole upstream's
        bandwidth, shared by every connection. Returns it (``.sent``: bytes through)."""
        pipe = Pipe(bytes_per_second)
        for s in self.servers:
            s.pipe = pipe
        return pipe

    def total_requests(self) -> int:
        return sum(s.count() for s in self.servers)

    def publish_kaggle(
        self, model: str, archive: bytes, *, authorization: Optional[str] = None
    ) -> str:
        """Publish ``owner/model/framework/variation/version``; returns the storage path.

        With ``authorization``, the Kaggle routes answer 403 unless that exact
        ``Authorization`` header is sent (a gated model)."""
        owner, name, framework, variation, version = model.split("/")
        blob = f"/{self.BUCKET}/{model}/model.tar.gz"
        location = self.gs_location(model)
        self.storage.put(blob, archive)
        signed = f"{self.storage.url}{blob}?X-Goog-Signature=deadbeef&X-Goog-Expires=600"

        def model_page(req: Request) -> Reply:
            if authorization and req.headers.get("authorization") != authorization:
                return Reply(403, b'{"message": "Permission denied"}', {"Content-Type": "application/json"})
            fmt = req.query.get("tf-hub-format")
            if fmt == "compressed":
                return Reply(302, headers={"Location": signed})
            if fmt == "uncompressed":
                return Reply(303, location.encode())
            return _html(f"Kaggle model page of {model}")

        def api_download(req: Request) -> Reply:
            if authorization and req.headers.get("authorization") != authorization:
                return Reply(403, b'{"message": "Permission denied"}', {"Content-Type": "application/json"})
            return Reply(302, headers={"Location": signed})

        self.kaggle.route(f"/models/{owner}/{name}/{framework}/{variation}/{version}", model_page)
        self.kaggle.route(
            f"/models/{owner}/{name}/frameworks/{framework}/variations/{variation}/versions/{version}",
            model_page,
        )
        self.kaggle.route(f"/api/v1/models/{owner}/{name}/{framework}/{variation}/{version}/download", api_download)
        instance = f"{owner}/{name}/{framework}/{variation}"
        self.latest[instance.lower()] = max(int(version), self.latest.get(instance.lower(), 0))

        def api_get(req: Request) -> Reply:  # REST ModelApiService.GetModelInstance
            if authorization and req.headers.get("authorization") != authorization:
                return Reply(403, b'{"code": 403, "message": "Permission denied"}', {"Content-Type": "application/json"})
            answer = {"ownerSlug": owner, "modelSlug": name, "slug": variation, "versionNumber": self.latest[instance.lower()]}
            return Reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

        self.kaggle.route(f"/api/v1/models/{instance}/get", api_get)
        enum = "MODEL_FRAMEWORK_" + {"tensorflow2": "TENSOR_FLOW_2", "tflite": "TF_LITE"}.get(
            framework.lower(), framework.upper()
        )

        def rpc_download() -> Reply:
            return Reply(302, headers={"Location": signed})

        def rpc_get() -> Reply:
            answer = {"ownerSlug": owner, "modelSlug": name, "versionNumber": self.latest[instance.lower()]}
            return Reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

        self.rpc_models[(owner, name, enum, variation, int(version))] = rpc_download
        self.rpc_models[(owner, name, enum, variation, None)] = rpc_get
        self.rpc_authorization[(owner, name)] = authorization
        return blob

    def _rpc(self, req: Request) -> Reply:
        """ModelApiService over JSON, as kagglesdk speaks it: errors as {"code", "message"}."""
        try:
            call = json.loads(req.body)
            key = (call["ownerSlug"], call["modelSlug"], call["framework"], call["instanceSlug"], call.get("versionNumber"))
        except (ValueError, KeyError, TypeError):
            return Reply(400, b'{"code": 400, "message": "bad request"}', {"Content-Type": "application/json"})
        wanted = self.rpc_authorization.get(key[:2])
        if wanted and req.headers.get("authorization") != wanted:
            return Reply(403, b'{"code": 403, "message": "Permission denied"}', {"Content-Type": "application/json"})
        answer = self.rpc_models.get(key)
        if answer is None:
            return Reply(404, b'{"code": 404, "message": "Not found"}', {"Content-Type": "application/json"})
        return answer()

    def publish_tfhub(self, handle_path: str, archive: bytes, *, kaggle: Optional[str] = None) -> str:
        """Publish ``publisher/model/version`` on tfhub, migrated to Kaggle as
        ``kaggle`` (default ``publisher/model/tensorFlow2/model/version``).
        Returns the storage path of the archive."""
        segments = handle_path.split("/")
        publisher, model, version = segments[0], "-".join(segments[1:-1]), segments[-1]
        kaggle = kaggle or f"{publisher}/{model}/tensorFlow2/{model}/{version}"
        blob = self.publish_kaggle(kaggle, archive)
        o, m, f, v, n = kaggle.split("/")
        long_form = f"/models/{o}/{m}/frameworks/{f}/variations/{v}/versions/{n}"

        def tfhub_page(req: Request) -> Reply:
            fmt = req.query.get("tf-hub-format")
            if fmt == "uncompressed":
                return Reply(303, self.gs_location(kaggle).encode())
            if fmt:
                return Reply(302, headers={"Location": f"{self.kaggle.url}{long_form}?tfhub-redirect=true&tf-hub-format={fmt}"})
            return _html(f"tfhub.dev page of {handle_path}")

        self.tfhub.route(f"/{handle_path}", tfhub_page)
        return blob

    def publish_gcs_dir(self, bucket: str, prefix: str, files: Dict[str, bytes], *, page_size: int = 2) -> None:
        """Objects ``prefix/<name>`` in a public ``bucket``, listed by the storage
        JSON API (``/storage/v1/b/<bucket>/o?prefix=...``) ``page_size`` at a time."""
        listed = self.gcs_objects.setdefault(bucket, {})
        for name, data in files.items():
            full = f"{prefix.rstrip('/')}/{name}"
            listed[full] = len(data)
            self.storage.put(f"/{bucket}/{full}", data)

        def listing(req: Request) -> Reply:
            names = sorted(n for n in listed if n.startswith(req.query.get("prefix", "")))
            start = int(req.query.get("pageToken") or 0)
            page = names[start : start + page_size]
            answer: Dict[str, object] = {"kind": "storage#objects"}
            if page:
                answer["items"] = [{"name": n, "size": str(listed[n])} for n in page]
            if start + page_size < len(names):
                answer["nextPageToken"] = str(start + page_size)
            return Reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

        self.storage.route(f"/storage/v1/b/{bucket}/o", listing)

    def gs_location(self, kaggle_model: str) -> str:
        """Where the uncompressed protocol says a Kaggle model lives."""
        return f"gs://{self.BUCKET}/{kaggle_model}/uncompressed"

    def remove_tfhub(self, handle_path: str) -> None:
        """A model that was never migrated: tfhub redirects to the Kaggle listing."""
        self.tfhub.route(
            f"/{handle_path}",
            lambda req: Reply(302, headers={"Location": f"{self.kaggle.url}/models?tfhub-redirect=true"}),
        )


def _html(text: str) -> Reply:
    page = f"<!DOCTYPE html><html><body><h1>{text}</h1></body></html>".encode()
    return Reply(200, page, {"Content-Type": "text/html; charset=utf-8"})
