"""Reading what servers answer: the progress floor every read is held to
(:class:`Floor`, ``HUBCACHE_MIN_RATE`` over ``HUBCACHE_MIN_RATE_WINDOW``), and
small answers read whole under it (:func:`read_small`, :func:`get_json`), and
the headers that say which bytes of which version an answer holds, and what
they must hash to (:class:`StorageChecksum`). Archive bodies are
:mod:`hubcache.download`'s.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import time
from typing import Any, Dict, Mapping, Optional, Tuple

import requests
import urllib3

from .config import Settings
from .errors import DownloadError
from .transport import Transport, http_error, reason, redact

#: New bytes after a failure that count as progress and start the failure count
#: over: a server that sends a few bytes per attempt must not retry forever.
PROGRESS_BYTES = 64 << 10
#: Headers that name one version of an object: two answers that disagree on
#: one of them hold two versions, which must never be stitched together.
VERSION_HEADERS = ("ETag", "x-goog-hash", "x-goog-generation")

#: What reading a body may raise when the connection fails.
READ_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


class Floor:
    """The progress floor: each window of ``min_rate_window`` seconds must bring
    ``min_rate`` bytes per second on average."""

    def __init__(self, settings: Settings, received: int = 0) -> None:
        self.rate = settings.min_rate
        self.window = settings.min_rate_window
        self.restart(received)

    def restart(self, received: int) -> None:
        self.started, self.start_bytes = time.monotonic(), received

    def check(self, received: int) -> Optional[str]:
        """Why this attempt is too slow, or None."""
        elapsed = time.monotonic() - self.started
        if not self.rate or elapsed < self.window:
            return None
        got = received - self.start_bytes
        if got >= self.rate * elapsed:
            self.restart(received)
            return None
        return (
            f"{got} bytes in the last {elapsed:.0f} s, below the floor of {self.rate} bytes/s "
            f"(HUBCACHE_MIN_RATE) over HUBCACHE_MIN_RATE_WINDOW={self.window:g} s"
        )


def get_json(transport: Transport, url: str, *, limit: int, doing: str, post: Optional[str] = None) -> Tuple[Any, str]:
    """The JSON that ``url`` answers (``post``: the JSON to POST), at most
    ``limit`` bytes of it, or None where it is none; and the URL that answered.
    An HTTP error raises :func:`http_error`, ``doing`` saying what was asked."""
    response, final_url = transport.get(url, {"Accept": "application/json"}, post=post)
    with response:
        if response.status_code != 200:
            raise http_error(response.status_code, final_url, transport, f" ({doing})")
        body = read_small(transport, response, limit, final_url)
    try:
        return (json.loads(body) if len(body) <= limit else None), final_url
    except (ValueError, RecursionError):  # (nesting too deep: hostile, or not meant as JSON)
        return None, final_url


def read_small(transport: Transport, response: requests.Response, limit: int, url: str) -> bytes:
    """Up to ``limit`` + 1 bytes of a small answer (JSON, a location), read as
    they arrive and held to the download's progress :class:`Floor`: a server
    that drips bytes cannot keep the caller, or an entry's lock, for days."""
    raw = response.raw
    read = getattr(raw, "read1", raw.read)
    got, floor = bytearray(), Floor(transport.settings)
    while len(got) <= limit:
        try:
            piece = read(min(64 << 10, limit + 1 - len(got)))
        except READ_ERRORS as e:
            raise DownloadError(
                f"{redact(url)} did not finish its answer for {transport.handle} ({reason(e, transport.settings)}): "
                "try again later.",
                handle=transport.handle,
                url=redact(url),
            ) from None
        if not piece:
            break
        got += piece
        problem = floor.check(len(got))
        if problem:
            raise DownloadError(
                f"{redact(url)} answers too slowly for {transport.handle} ({problem}): try again later.",
                handle=transport.handle,
                url=redact(url),
            )
    return bytes(got)


def content_length(response: requests.Response) -> Optional[int]:
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isascii() and length.isdigit() else None


def content_range(value: str) -> Tuple[Optional[int], Optional[int]]:
    """(first byte, full size) from ``bytes first-last/size`` (size may be ``*``)."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value, re.ASCII)
    if not m:
        return None, None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) != "*" else None)


def other_version(first: Mapping[str, str], then: Mapping[str, str]) -> bool:
    """Whether the answer with headers ``then`` holds another version than ``first``'s."""
    return any(first.get(h) and then.get(h) and first.get(h) != then.get(h) for h in VERSION_HEADERS)


def if_range(etag: Optional[str]) -> Dict[str, str]:
    """The If-Range header for ``etag``: a changed object then comes back whole
    (200). Only a strong ETag may be used; a weak one gives none."""
    return {"If-Range": etag} if etag and not etag.startswith("W/") else {}


def check_part(
    transport: Transport,
    response: requests.Response,
    url: str,
    start: int,
    version: Mapping[str, str],
    size: Optional[int],
) -> None:
    """Refuse an answer to a request for an object's bytes from ``start`` on (206;
    or 200, the whole object: Range ignored) that holds another version than the
    one whose headers are ``version``, another ``size`` (None: unknown), or
    other bytes. The answer is closed first."""
    partial = response.status_code == 206
    first, total = content_range(response.headers.get("Content-Range", "")) if partial else (start, None)
    total = total if partial else content_length(response)
    changed = other_version(version, response.headers) or (None not in (size, total) and total != size)
    if changed or first != start:
        transport.close_response(response)
        if changed:
            raise archive_changed(transport.handle, url)
        raise DownloadError(
            f"the download of {transport.handle} cannot resume: {redact(url)} answered a request for "
            f"bytes from {start} on with another range. Try again.",
            handle=transport.handle,
            url=redact(url),
        )


def archive_changed(handle: str, url: str) -> DownloadError:
    """Parts of two versions of an archive must never be stitched together."""
    return DownloadError(
        f"the archive of {handle} changed on the server during the download; try again to fetch the new one.",
        handle=handle,
        url=redact(url),
    )


class StorageChecksum:
    """The whole-object checksum Cloud Storage sends (``x-goog-hash``), checked
    as the bytes arrive: CRC32C when google-crc32c is installed (hubcache[fast];
    0.06 s/GiB), else MD5 (1.2 s/GiB)."""

    def __init__(self, name: str, expected: bytes, digest: Any) -> None:
        self.name = name
        self._expected = expected
        self._digest = digest

    @classmethod
    def from_header(cls, value: str) -> Optional["StorageChecksum"]:
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
                return cls("CRC32C", found["crc32c"], google_crc32c.Checksum())  # type: ignore[no-untyped-call]
        if "md5" in found and len(found["md5"]) == 16:  # junk is ignored, as for CRC32C
            return cls("MD5", found["md5"], hashlib.md5())
        return None

    def update(self, data: bytes) -> None:
        self._digest.update(data)

    def matches(self) -> bool:
        return bool(self._digest.digest() == self._expected)
