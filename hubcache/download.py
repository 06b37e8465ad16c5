"""Archive downloads: a body streamed, checked as it arrives, and resumed.

A body cut short is resumed with ``Range`` from the byte reached; a server that
ignores ``Range`` is read again from the start, skipping what was received, so
the consumer sees one seamless stream either way. ``max_retries`` failures in
a row, with no real progress in between, give up. Every attempt must also keep
up a minimum average rate (``HUBCACHE_MIN_RATE`` over
``HUBCACHE_MIN_RATE_WINDOW``): a server that drips a byte per read interval
never trips the read timeout, and would otherwise hold the entry's lock forever.
Requests themselves (redirects, credentials, retries) are :mod:`hubcache.transport`'s.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Tuple

import requests

from .answers import (
    PROGRESS_BYTES,
    READ_ERRORS,
    Floor,
    StorageChecksum,
    check_part,
    content_length,
    content_range,
    if_range,
)
from .cancel import shutdown
from .config import Settings
from .errors import DownloadError, IntegrityError
from .pipeline import is_compressed
from .resolvers import ArchivePlan, kaggle_fallback
from .transport import Transport, http_error, reason, redact

log = logging.getLogger("hubcache")

CHUNK_SIZE = 1 << 20  # bytes per network read: 1/4 of the GIL handoffs and queue items of 256 KiB
#: A smaller archive stays on one connection: more would save it little.
PARALLEL_MIN_SIZE = 16 << 20

#: A single stream that spends more than this share of its time waiting for
#: bytes, over a tick, goes on over parallel ranges (:mod:`hubcache.ranged`)...
NETWORK_BOUND, WATCH_TICK = 0.5, 0.25
#: ...unless it is this fast already: more connections would take CPU that
#: extraction needs (loopback: one stream 1.6 s for 1 GiB, gone parallel 2.6 s).
FAST_STREAM = 256 << 20  # bytes per second

if TYPE_CHECKING:
    from .ranged import Parallel


class Watch:
    """Whether a single stream waits on the network most of the time."""

    def __init__(self) -> None:
        self.rate = 0.0  # bytes per second over the last tick
        self._since = time.monotonic()
        self._waited = 0.0
        self._bytes = 0

    def read(self, seconds: float, n: int) -> None:
        self._waited += seconds
        self._bytes += n

    def network_bound(self, remaining: int) -> bool:
        """True once a tick was spent mostly in reads, with enough of the
        archive left to gain from more connections."""
        elapsed = time.monotonic() - self._since
        if elapsed < WATCH_TICK:
            return False
        self.rate = self._bytes / elapsed
        bound = self._waited > NETWORK_BOUND * elapsed and self.rate < FAST_STREAM
        bound = bound and remaining >= PARALLEL_MIN_SIZE // 4
        self._since, self._waited, self._bytes = time.monotonic(), 0.0, 0
        return bound


class _ReadError(Exception):
    """Reading the body failed; ``args[0]`` says how."""


class Body:
    """An archive download in progress. Iterate :meth:`chunks` once; afterwards
    ``sha256`` and ``bytes_read`` describe every byte of the archive."""

    def __init__(
        self, transport: Transport, response: requests.Response, requested_url: str, url: str, rangeable: bool = True
    ) -> None:
        self.requested_url = requested_url  # where the chain of redirects starts
        self.url = url  # the URL that answered, after redirects
        self.chain = list(transport.chain)  # every URL on the way (a tfhub.dev chain names the Kaggle model)
        self.model_page: Optional[str] = None  # the Kaggle model version, when a route made it known
        self.handle = transport.handle
        self.bytes_read = 0
        self._transport = transport
        self._response = response
        headers = response.headers
        self.size = content_length(response)
        self._etag = headers.get("ETag")
        self._version = headers  # every later answer must hold the same version (other_version)
        self._hash = hashlib.sha256()
        self._storage_check = StorageChecksum.from_header(headers.get("x-goog-hash", ""))
        self._skip = 0  # bytes to drop after a restart from zero
        self._received = 0  # bytes off the wire, skipped ones included (for the rate floor)
        self._progress_mark = 0  # bytes_read at the last failure
        self._rangeable = rangeable  # whether url answers a GET (not a POST) with these bytes
        self._parallel: Optional[Parallel] = None  # once the body is fetched over several connections
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
        if self._parallel is not None:
            self._parallel.close()
        # Shut down first: a read blocked in the fetch thread holds the response's
        # lock, and only a shutdown makes it return (close alone would wait for it).
        shutdown(self._response)
        self._transport.close_response(self._response)

    def chunks(self) -> Iterator[bytes]:
        settings = self._transport.settings
        bar = _progress_bar(self.size, self.handle, settings)
        hook = settings.progress_hook or (lambda received, announced: None)
        hook(0, self.size or 0)
        try:
            for data in self._stream():
                self.bytes_read += len(data)
                self._hash.update(data)
                if self._storage_check is not None:
                    self._storage_check.update(data)
                bar.update(len(data))
                hook(len(data), 0)
                yield data
        finally:
            bar.close()
        if self._storage_check is not None and not self._storage_check.matches():
            raise IntegrityError(
                f"the download of {self.handle} does not match the {self._storage_check.name} "
                f"that {redact(self.url)} gave for it (x-goog-hash): it was corrupted on the way. "
                "Nothing was cached; try again.",
                handle=self.handle,
            )

    def _stream(self) -> Iterator[bytes]:
        """The archive's bytes in order: from this one answer, resumed after
        failures, or (once it waits on the network most of the time) from
        several connections at once (:mod:`hubcache.ranged`)."""
        floor = Floor(self._transport.settings, self._received)
        watch = self._watch()
        data = self._first
        while True:
            if data:
                yield data
                if self.bytes_read - self._progress_mark >= PROGRESS_BYTES:
                    self._transport.failures = 0  # real progress: the count starts over
                if watch is not None and not self._skip and watch.network_bound((self.size or 0) - self.bytes_read):
                    from .ranged import Parallel

                    self._parallel = Parallel(
                        self._transport,
                        self._response,
                        url=self.url,
                        requested_url=self.requested_url,
                        version=self._version,
                        size=self.size or 0,
                        position=self.bytes_read,
                        rate=watch.rate,
                    )
                    self._parallel.start()  # (once it is ours to close)
                    yield from self._parallel.chunks()
                    return
            problem = floor.check(self._received)
            if problem is None:
                self._transport.check_cancelled()
                try:
                    began = time.monotonic() if watch is not None else 0.0
                    data = self._read()
                    if watch is not None:
                        watch.read(time.monotonic() - began, len(data))
                    if data:
                        continue
                    if self.size is None or self.bytes_read >= self.size:
                        return
                    problem = "the connection was closed early"
                except _ReadError as e:
                    problem = str(e)
            data = b""
            self._resume(problem)
            floor.restart(self._received)

    def _watch(self) -> Optional[Watch]:
        """A :class:`Watch` when this body may be fetched in
        parts: a GET answered whole, big enough, with ``Accept-Ranges`` and a
        way to tell its version (a strong ETag, or a storage checksum)."""
        response, etag = self._response, self._etag or ""
        if not (
            self._transport.settings.connections > 1
            and self._rangeable
            and response.status_code == 200
            and self.size is not None
            and self.size >= PARALLEL_MIN_SIZE
            and "bytes" in response.headers.get("Accept-Ranges", "").lower()
            and ((etag and not etag.startswith("W/")) or self._storage_check is not None)
        ):
            return None
        return Watch()

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
            except READ_ERRORS as e:
                raise _ReadError(reason(e, self._transport.settings)) from None
            self._received += len(data)
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
        self._progress_mark = self.bytes_read
        self._transport.close_response(self._response)
        log.debug("%s: resuming at byte %d", self.handle, self.bytes_read)
        headers = {"Range": f"bytes={self.bytes_read}-", **if_range(self._etag)}
        # From the start of the chain: a signed storage URL may have expired.
        response, url = self._transport.get(self.requested_url, headers)
        status = response.status_code
        if status in (200, 206):
            check_part(self._transport, response, url, self.bytes_read, self._version, self.size)
        if status == 206:
            full = content_range(response.headers.get("Content-Range", ""))[1]
            self.size = full if full is not None else self.size
        elif status == 200:
            log.info("%s: the server ignores Range; reading again from the start", self.handle)
            self._skip = self.bytes_read
        elif status == 416:
            self._transport.close_response(response)
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
            self._transport.close_response(response)
            raise http_error(status, url, self._transport)
        self._response, self.url = response, url


#: Answers after which the next route is tried: Kaggle's page route is seen
#: answering 401, 403 and 5xx where its download API works, and 404 where the
#: page is gone but the API is not.
FALLBACK_STATUSES = frozenset({401, 403, 404, 410, 429}) | frozenset(range(500, 600))


class _WebPageError(DownloadError):
    """Markup where an archive was expected."""


@contextmanager
def open_archive(plan: ArchivePlan, *, handle: str, settings: Settings) -> Iterator[Body]:
    """Open the first of ``plan.urls`` that answers with an archive. A route that
    answers an error in FALLBACK_STATUSES, or a web page, passes to the next;
    a redirect chain that ended on a Kaggle model's page adds that model's
    download API as a route. When every route fails, the error lists them all."""
    rpc_endpoint = (settings.kaggle_api_endpoint,) if plan.rpc else ()
    transport = Transport(handle, settings, plan.credentials_for, rpc_endpoint)
    routes: List[Tuple[str, Optional[str]]] = [(url, None) for url in plan.urls]  # (URL, JSON to POST)
    routes += [plan.rpc] if plan.rpc else []
    model_page = plan.model_page
    tried: List[Tuple[str, DownloadError]] = []
    try:
        while routes:
            url, post = routes.pop(0)
            try:
                body = _open_body(transport, url, post)
                if body.is_web_page():
                    body.close()
                    raise _web_page(transport.handle, body.url)
            except DownloadError as e:
                if not (isinstance(e, _WebPageError) or e.status in FALLBACK_STATUSES):
                    raise
                tried.append((url, e))
                found = kaggle_fallback(e.url or "", settings)  # (the URL is redacted: its path is intact)
                if found is not None:
                    model_page = model_page or found[1]
                    if all(found[0] != u for u, _ in routes + tried):
                        routes.insert(len(routes) - (1 if plan.rpc in routes else 0), (found[0], None))
                if not routes:
                    raise e if len(tried) == 1 else _every_route_failed(handle, tried, model_page) from None
                transport.failures = 0  # the next route starts with all its retries
                log.info("%s: %s; trying %s", handle, _answer(e), redact(routes[0][0]))
                continue
            try:
                body.model_page = model_page
                log.info("Downloading %s from %s", handle, redact(body.url))
                yield body
                return
            finally:
                body.close()
    finally:
        transport.close()


def _open_body(transport: Transport, url: str, post: Optional[str] = None) -> Body:
    """The body at ``url`` (or answered to the JSON ``post`` there) with its first bytes read."""
    while True:
        response, final_url = transport.get(url, post=post)
        if not 200 <= response.status_code < 300:
            transport.close_response(response)
            raise http_error(response.status_code, final_url, transport)
        try:
            # A POST is not repeated to resume: the archive's own URL is asked again
            # (and asked for parts only when it answered a GET, after a redirect).
            rangeable = post is None or len(transport.chain) > 1
            return Body(transport, response, url if post is None else final_url, final_url, rangeable)
        except _ReadError as e:  # nothing received yet: simply ask again
            transport.close_response(response)
            transport.failed(f"{redact(final_url)} sent no data ({e})", None, final_url)


def _web_page(handle: str, url: str) -> DownloadError:
    return _WebPageError(
        f"{handle} answered with a web page from {redact(url)} instead of an archive: the model may "
        "have been removed (tfhub.dev models that were not migrated to Kaggle end on a listing page), "
        "or the URL is not a download link. Check the handle in a browser.",
        handle=handle,
        url=redact(url),
    )


@contextmanager
def open_object(transport: Transport, url: str) -> Iterator[Body]:
    """One stored object, whatever its content (a gs:// directory's file)."""
    body = _open_body(transport, url)
    try:
        yield body
    finally:
        body.close()


def _answer(e: DownloadError) -> str:
    if isinstance(e, _WebPageError):
        return f"a web page from {e.url}"
    return f"HTTP {e.status} from {e.url}"


def _every_route_failed(
    handle: str, tried: List[Tuple[str, DownloadError]], model_page: Optional[str]
) -> DownloadError:
    """One error for every route tried, with the advice of the most telling answer."""
    lines = "".join(f"\n  - {redact(url)}: {_answer(e)}" for url, e in tried)
    # A refusal says most (credentials, licence), then a missing model, then the rest.
    rank = {401: 0, 403: 0, 404: 1, 410: 1}
    worst = min((e for _, e in tried), key=lambda e: rank.get(e.status or 0, 2))
    page = f" The model's page: {model_page}" if model_page else ""
    return DownloadError(
        f"could not download {handle}: every route failed:{lines}\n{worst}{page}",
        handle=handle,
        url=worst.url,
        status=worst.status,
    )


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: Optional[int], handle: str, settings: Settings) -> Any:
    if not settings.show_progress():
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
