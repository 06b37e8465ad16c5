"""HTTP: redirects followed by hand, retries with backoff, bodies streamed and resumed.

Redirects are followed here rather than by ``requests`` so that the Kaggle
``Authorization`` header is attached to each hop by one rule: only when the
hop's origin is the Kaggle endpoint's. A signed storage URL never sees it.
Proxies and the CA bundle come from the environment as ``requests`` reads them
(``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``, ...).

Failures are retried: connection errors, timeouts and HTTP 408/429/5xx, with
exponential backoff and jitter, or after ``Retry-After`` when the server says.
A body cut short is resumed with ``Range`` from the byte reached; a server that
ignores ``Range`` is read again from the start, skipping what was received, so
the consumer sees one seamless stream either way. ``max_retries`` failures in
a row, with no new bytes in between, give up.

URLs in messages and logs are shown without query values, which may be
signatures.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import http.client
import logging
import random
import re
import sys
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Tuple
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import requests
import urllib3

from ._version import __version__
from .archive import is_compressed
from .config import Settings, kaggle_credentials
from .errors import DownloadError, IntegrityError
from .resolvers import ArchivePlan, LocationPlan, origin

log = logging.getLogger("hubcache")

CHUNK_SIZE = 256 << 10  # bytes per network read: larger reads only cost memory (measured)
MAX_REDIRECTS = 10
MAX_DELAY = 60.0  # longest wait between two attempts, in seconds
MAX_RETRY_AFTER = 300.0  # a longer Retry-After is reported, not waited for
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_READ_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
_PUBLIC_PARAMS = frozenset({"tf-hub-format", "tfhub-redirect"})


def redact(url: str) -> str:
    """``url`` without user:password and without query parameters other than the
    tfhub protocol's own (the others may be signatures or tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k in _PUBLIC_PARAMS]
    shown = [urlencode(kept)] if kept else []
    if len(kept) < len(query):
        shown.append("...")
    return f"{parts.scheme}://{host}{parts.path}" + ("?" + "&".join(shown) if shown else "")


class Transport:
    """The HTTP side of one fetch: a session, the credentials rule, and the
    count of failed attempts in a row that :meth:`failed` enforces."""

    def __init__(self, handle: str, settings: Settings, credentials_origin: Optional[str]) -> None:
        self.handle = handle
        self.settings = settings
        self.credentials = kaggle_credentials() if credentials_origin else None
        self.credentials_origin = credentials_origin
        self.failures = 0  # failed attempts since the last new byte
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"hubcache/{__version__}"
        # The bytes as stored: archives are compressed already, and an
        # on-the-fly encoding would make byte ranges meaningless.
        self.session.headers["Accept-Encoding"] = "identity"

    def close(self) -> None:
        self.session.close()

    def get(self, url: str, headers: Optional[Dict[str, str]] = None) -> Tuple[requests.Response, str]:
        """GET ``url``, following redirects and retrying transient failures.
        Returns the final answer (any status that is not worth retrying) and its URL."""
        while True:
            try:
                response, final_url = self._follow(url, headers or {})
            except requests.RequestException as e:
                self.failed(f"{redact(url)} did not answer ({_reason(e, self.settings)})", None, url)
                continue
            status = response.status_code
            if status not in RETRY_STATUSES:
                return response, final_url
            retry_after = _retry_after(response.headers.get("Retry-After"))
            response.close()
            if retry_after is not None and retry_after > MAX_RETRY_AFTER:
                raise _http_error(status, final_url, self, f" The server asks to wait {retry_after:.0f} s.")
            self.failed(f"HTTP {status} from {redact(final_url)}", retry_after, final_url, status)

    def failed(self, problem: str, retry_after: Optional[float], url: str, status: Optional[int] = None) -> None:
        """Count a failed attempt: wait before the next, or give up."""
        self.failures += 1
        limit = self.settings.max_retries
        if self.failures > limit:
            if status is not None:
                raise _http_error(status, url, self, f" Gave up after {limit} retries.")
            raise DownloadError(
                f"could not download {self.handle}: {problem}; gave up after {limit} retries. "
                "Check the network (and HTTPS_PROXY / REQUESTS_CA_BUNDLE if you use them) and "
                "try again, or set HUBCACHE_OFFLINE=1 to use only the cache.",
                handle=self.handle,
                url=redact(url),
                status=status,
            )
        if retry_after is None:
            delay = min(MAX_DELAY, self.settings.backoff * 2 ** (self.failures - 1))
            delay *= random.uniform(0.5, 1.0)  # jitter: racing clients spread out
        else:
            delay = retry_after
        log.warning("%s: %s; retrying in %.1f s (%d of %d)", self.handle, problem, delay, self.failures, limit)
        time.sleep(delay)

    def _follow(self, url: str, headers: Dict[str, str]) -> Tuple[requests.Response, str]:
        for _ in range(MAX_REDIRECTS + 1):
            hop_headers = dict(headers)
            if self.credentials is not None and origin(url) == self.credentials_origin:
                hop_headers["Authorization"] = self.credentials.authorization
            response = self.session.get(
                url,
                headers=hop_headers,
                stream=True,
                allow_redirects=False,
                timeout=(self.settings.timeout, self.settings.timeout),
            )
            if not response.is_redirect:
                return response, url
            url = urljoin(url, response.headers["Location"])
            response.close()
        raise DownloadError(
            f"could not download {self.handle}: more than {MAX_REDIRECTS} redirects (last to "
            f"{redact(url)}). The server is misconfigured; report it to the model's publisher.",
            handle=self.handle,
            url=redact(url),
        )


class _ReadFailed(Exception):
    """Reading the body failed; ``args[0]`` says how."""


class Body:
    """An archive download in progress. Iterate :meth:`chunks` once; afterwards
    ``sha256`` and ``bytes_read`` describe every byte of the archive."""

    def __init__(self, transport: Transport, response: requests.Response, requested_url: str, url: str) -> None:
        self.requested_url = requested_url  # where the chain of redirects starts
        self.url = url  # the URL that answered, after redirects
        self.handle = transport.handle
        self.bytes_read = 0
        self._transport = transport
        self._response = response
        headers = response.headers
        self.size = _content_length(response)
        self._etag = headers.get("ETag")
        self._hash = hashlib.sha256()
        self._storage_check = _StorageChecksum.from_header(headers.get("x-goog-hash", ""))
        self._skip = 0  # bytes to drop after a restart from zero
        self._first = self._read()  # peeked, to tell a web page from an archive

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def is_web_page(self) -> bool:
        """Markup where an archive was expected (no archive starts with '<'); the
        Content-Type is believed only when the bytes are not compressed data."""
        if self._first.lstrip()[:1] == b"<":
            return True
        content_type = self._response.headers.get("Content-Type", "").lower()
        return content_type.startswith(("text/html", "application/xhtml")) and not is_compressed(self._first)

    def close(self) -> None:
        self._response.close()

    def chunks(self) -> Iterator[bytes]:
        settings = self._transport.settings
        bar = _progress_bar(self.size, self.handle, settings)
        hook = settings.progress_hook or (lambda received, announced: None)
        hook(0, self.size or 0)
        data = self._first
        try:
            while True:
                if data:
                    self._transport.failures = 0  # progress: the count starts over
                    self.bytes_read += len(data)
                    self._hash.update(data)
                    if self._storage_check is not None:
                        self._storage_check.update(data)
                    bar.update(len(data))
                    hook(len(data), 0)
                    yield data
                try:
                    data = self._read()
                    if data:
                        continue
                    if self.size is None or self.bytes_read >= self.size:
                        break
                    problem = "the connection was closed early"
                except _ReadFailed as e:
                    data, problem = b"", str(e)
                self._resume(problem)
        finally:
            bar.close()
        if self._storage_check is not None and not self._storage_check.matches():
            raise IntegrityError(
                f"the download of {self.handle} does not match the {self._storage_check.name} "
                f"that {redact(self.url)} gave for it (x-goog-hash): it was corrupted on the way. "
                "Nothing was cached; try again.",
                handle=self.handle,
            )

    def _read(self) -> bytes:
        raw = self._response.raw
        while True:
            try:
                # read1 (urllib3 2) hands over what has arrived instead of waiting
                # for a whole chunk, so a failure loses nothing already received.
                if hasattr(raw, "read1"):
                    data = raw.read1(CHUNK_SIZE, decode_content=False)
                else:
                    data = raw.read(CHUNK_SIZE, decode_content=False)
            except _READ_ERRORS as e:
                raise _ReadFailed(_reason(e, self._transport.settings)) from None
            if not self._skip or not data:
                return data
            if len(data) <= self._skip:
                self._skip -= len(data)
                continue
            data, self._skip = data[self._skip :], 0
            return data

    def _resume(self, problem: str) -> None:
        """Reconnect after ``problem`` and continue at ``bytes_read``."""
        total = self.size if self.size is not None else "unknown"
        self._transport.failed(
            f"the download stopped after {self.bytes_read} of {total} bytes ({problem})", None, self.url
        )
        self._response.close()
        headers = {"Range": f"bytes={self.bytes_read}-"}
        if self._etag:
            headers["If-Range"] = self._etag  # a changed archive comes back whole (200)
        # From the start of the chain: a signed storage URL may have expired.
        response, url = self._transport.get(self.requested_url, headers)
        status = response.status_code
        if status == 206:
            start, full = _content_range(response.headers.get("Content-Range", ""))
            if start != self.bytes_read:
                response.close()
                raise DownloadError(
                    f"the download of {self.handle} cannot resume: {redact(url)} answered a "
                    f"request for bytes {self.bytes_read}- with another range. Try again.",
                    handle=self.handle,
                    url=redact(url),
                )
            self._check_same(response, url, full)
            self.size = full if full is not None else self.size
        elif status == 200:
            self._check_same(response, url, _content_length(response))
            log.info("%s: the server ignores Range; reading again from the start", self.handle)
            self._skip = self.bytes_read
        elif status == 416:
            response.close()
            raise DownloadError(
                f"the download of {self.handle} stopped after {self.bytes_read} bytes, and "
                f"{redact(url)} has no more although it announced {self.size}: the server sends a "
                "wrong Content-Length, or the archive changed. Try again; if it persists, report "
                "it to the publisher.",
                handle=self.handle,
                url=redact(url),
                status=416,
            )
        else:
            response.close()
            raise _http_error(status, url, self._transport)
        self._response, self.url = response, url

    def _check_same(self, response: requests.Response, url: str, size: Optional[int]) -> None:
        """Refuse to stitch together two versions of the archive."""
        etag = response.headers.get("ETag")
        if (self._etag and etag and etag != self._etag) or (
            self.size is not None and size is not None and size != self.size
        ):
            response.close()
            raise DownloadError(
                f"the archive of {self.handle} changed on the server during the download; "
                "try again to fetch the new one.",
                handle=self.handle,
                url=redact(url),
            )


@contextmanager
def open_archive(plan: ArchivePlan, *, handle: str, settings: Settings) -> Iterator[Body]:
    """Open the first of ``plan.urls`` that answers with an archive."""
    transport = Transport(handle, settings, plan.credentials_origin)
    try:
        for index, url in enumerate(plan.urls):
            fallback_left = index + 1 < len(plan.urls)
            body = _open_body(transport, url, fallback_left)
            if body is None:
                continue
            try:
                if body.is_web_page():
                    if fallback_left:
                        log.debug("%s: web page at %s, trying the next source", handle, redact(body.url))
                        continue
                    raise DownloadError(
                        f"{handle} answered with a web page from {redact(body.url)} instead of "
                        "an archive: the model may have been removed (tfhub.dev models that were "
                        "not migrated to Kaggle end on a listing page), or the URL is not a "
                        "download link. Check the handle in a browser.",
                        handle=handle,
                        url=redact(body.url),
                    )
                log.info("Downloading %s from %s", handle, redact(body.url))
                yield body
                return
            finally:
                body.close()
    finally:
        transport.close()


def _open_body(transport: Transport, url: str, fallback_left: bool) -> Optional[Body]:
    """The body at ``url`` with its first bytes read, or None for a 404 that
    leaves another source to try."""
    while True:
        response, final_url = transport.get(url)
        if response.status_code == 404 and fallback_left:
            response.close()
            log.debug("%s: 404 from %s, trying the next source", transport.handle, redact(final_url))
            return None
        if not 200 <= response.status_code < 300:
            response.close()
            raise _http_error(response.status_code, final_url, transport)
        try:
            return Body(transport, response, url, final_url)
        except _ReadFailed as e:  # nothing received yet: simply ask again
            response.close()
            transport.failed(f"{redact(final_url)} sent no data ({e})", None, final_url)


def fetch_location(plan: LocationPlan, *, handle: str, settings: Settings) -> str:
    """The ``gs://`` location a server gives for an uncompressed model."""
    transport = Transport(handle, settings, None)
    try:
        response, url = transport.get(plan.url)
        with response:
            body = response.raw.read(4096, decode_content=True) if response.status_code == 303 else b""
    finally:
        transport.close()
    location = body.decode("utf-8", "replace").strip()
    if response.status_code != 303 or not location.startswith("gs://"):
        got = f"HTTP {response.status_code}" + (f" with {location[:80]!r}" if location else "")
        raise DownloadError(
            f"asked {redact(url)} where {handle} lives (TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED) and "
            f"expected '303 See Other' with a gs:// path, but got {got}. Unset "
            "TFHUB_MODEL_LOAD_FORMAT to download the compressed model instead.",
            handle=handle,
            url=redact(url),
            status=response.status_code,
        )
    return location


def _http_error(status: int, url: str, transport: Transport, extra: str = "") -> DownloadError:
    handle, credentials = transport.handle, transport.credentials
    where = redact(url)
    if status in (401, 403) and transport.credentials_origin and origin(url) == transport.credentials_origin:
        sent = (
            f"The credentials from {credentials.source} were sent and refused, or the licence "
            "is not accepted yet."
            if credentials
            else "No Kaggle credentials are configured."
        )
        advice = (
            f"Kaggle refused access to {handle} (HTTP {status}). If the model is gated, accept "
            "its licence on its Kaggle page and configure credentials: KAGGLE_API_TOKEN, or "
            f"KAGGLE_USERNAME and KAGGLE_KEY, or ~/.kaggle/kaggle.json. {sent}"
        )
    elif status in (401, 403):
        advice = (
            f"{where} refused access to {handle} (HTTP {status}): a signed URL may have "
            "expired, or the object is not public. Try again, or check the URL's permissions."
        )
    elif status in (404, 410):
        advice = (
            f"{handle} was not found (HTTP {status} from {where}): check the handle's "
            "spelling and version."
        )
    elif status in RETRY_STATUSES or status >= 500:
        advice = (
            f"the server could not serve {handle} right now (HTTP {status} from {where}): "
            "try again later."
        )
    else:
        advice = f"unexpected HTTP {status} from {where} while downloading {handle}."
    return DownloadError(advice + extra, handle=handle, url=where, status=status)


def _content_length(response: requests.Response) -> Optional[int]:
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _content_range(value: str) -> Tuple[Optional[int], Optional[int]]:
    """(first byte, full size) from ``bytes first-last/size`` (size may be ``*``)."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value)
    if not m:
        return None, None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) != "*" else None)


class _StorageChecksum:
    """The whole-object checksum Cloud Storage sends (``x-goog-hash``), checked
    as the bytes arrive: CRC32C when google-crc32c is installed (hubcache[fast];
    0.06 s/GiB), else MD5 (1.2 s/GiB)."""

    def __init__(self, name: str, expected: bytes, digest: Any) -> None:
        self.name = name
        self._expected = expected
        self._digest = digest

    @classmethod
    def from_header(cls, value: str) -> Optional["_StorageChecksum"]:
        found = {}
        for part in value.split(","):
            name, _, encoded = part.strip().partition("=")
            try:
                found[name] = base64.b64decode(encoded, validate=True)
            except ValueError:
                continue
        if "crc32c" in found and len(found["crc32c"]) == 4:
            try:
                import google_crc32c
            except ImportError:
                pass
            else:
                return cls("CRC32C", found["crc32c"], google_crc32c.Checksum())
        if "md5" in found:
            return cls("MD5", found["md5"], hashlib.md5())
        return None

    def update(self, data: bytes) -> None:
        self._digest.update(data)

    def matches(self) -> bool:
        return bool(self._digest.digest() == self._expected)


_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")


def _reason(e: BaseException, settings: Settings) -> str:
    """A short, query-free description of a network failure."""
    if isinstance(e, requests.ConnectTimeout):
        return f"no connection within {settings.timeout:g} s"
    if isinstance(e, (requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError)):
        return f"no data for {settings.timeout:g} s"
    if isinstance(e, requests.exceptions.SSLError):
        return "TLS certificate verification failed (set REQUESTS_CA_BUNDLE for a private CA)"
    text = str(e)
    found = _ERRNO.search(text)
    if found:
        return found.group(0).strip()
    if "IncompleteRead" in text or "Connection broken" in text or "ProtocolError" in type(e).__name__:
        return "the connection was closed early"
    return type(e).__name__


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: Optional[int], handle: str, settings: Settings):  # type: ignore[no-untyped-def]
    enabled = settings.progress if settings.progress is not None else sys.stderr.isatty()
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    label = handle if len(handle) <= 48 else "…" + handle[-47:]
    return tqdm(
        total=total,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        mininterval=0.25,
    )
