"""Public ``gs://`` directories (SavedModels that were never archived):
listed through the storage JSON API and fetched object by object into a cache
entry, so they work offline afterwards.

The listing is untrusted input like an archive: its pages are bounded in
size and number, every object name goes through the same
:class:`~hubcache.writer.SafeWriter` as archive members (nothing outside the
entry, no ``..``, bounded depth), and the archive limits (files, bytes) apply.
Each object is streamed with the download's retries, resume and storage
checksum (``x-goog-hash``), and must have the size the listing gave.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import quote, urlencode

from .answers import get_json
from .archive import Budget
from .config import Settings
from .errors import DownloadError, IntegrityError
from .resolvers import DirectoryPlan
from .transport import Transport, redact
from .writer import SafeWriter

MAX_PAGE = 16 << 20  # bytes of one listing page (a thousand objects take ~1 MiB)
MAX_PAGES = 10_000
MAX_NAME = 1024  # bytes of an object name: GCS's own bound


@dataclass
class _Object:
    """One listed object, as a member for :class:`SafeWriter`."""

    name: str
    kind: str
    size: int
    url: str
    type: bytes = b"0"
    mode: int = 0o644
    linkname: str = ""


def fetch_directory(how: DirectoryPlan, dest: str, *, handle: str, settings: Settings) -> Dict[str, Any]:
    """Fetch every object under ``how.prefix`` into ``dest``; return what the
    cache records about it."""
    transport = Transport(handle, settings, None)
    try:
        objects = _list(transport, how, handle, settings)
        writer = SafeWriter(dest, handle)
        total = 0
        for obj in objects:
            writer.add(obj, _Reader(transport, obj, handle))
            total += obj.size
        writer.check_links()
    finally:
        transport.close()
    return {
        "source_url": how.shown,
        "bytes": total,
        "sha256": None,  # no archive: each object was checked against its own checksum
        "files": writer.result.files,
        "crc32": writer.result.crc32,
        "links": writer.result.links,
    }


def _list(transport: Transport, how: DirectoryPlan, handle: str, settings: Settings) -> List[_Object]:
    budget = Budget(handle, settings.limits())
    objects: List[_Object] = []
    token: Optional[str] = None
    tokens = set()  # a listing that loops is not an endless one
    for _ in range(MAX_PAGES):
        query = {"prefix": how.prefix, "fields": "items(name,size),nextPageToken"}
        if token:
            query["pageToken"] = token
        page = _get_json(transport, f"{how.listing}?{urlencode(query)}", handle)
        items = page.get("items", [])
        if not isinstance(items, list):
            raise _bad_listing(handle, how, "its items are not a list")
        for item in items:
            name, size = _name_and_size(item, how, handle)
            rel = name[len(how.prefix) :]
            if not rel:
                continue  # the directory's own placeholder object
            kind = "dir" if rel.endswith("/") else "file"
            budget.charge(rel, size)
            objects.append(_Object(rel, kind, size, f"{how.objects}/{quote(name, safe='/')}"))
        token = page.get("nextPageToken")
        if not token:
            break
        if not isinstance(token, str) or token in tokens:
            raise _bad_listing(handle, how, "its page token is not a string, or repeats")
        tokens.add(token)
    else:
        raise _bad_listing(handle, how, f"it goes on for more than {MAX_PAGES} pages")
    if not any(o.kind == "file" for o in objects):
        raise DownloadError(
            f"{handle} names no objects: {how.shown} is empty or not public. Check the path (a gs:// "
            "directory is fetched through the public storage API, without credentials).",
            handle=handle,
        )
    return objects


def _get_json(transport: Transport, url: str, handle: str) -> Dict[str, Any]:
    page, final_url = get_json(transport, url, limit=MAX_PAGE, doing="listing the directory")
    if not isinstance(page, dict):
        raise DownloadError(
            f"listing {handle} at {redact(final_url)} did not answer a JSON listing (of at most "
            f"{MAX_PAGE >> 20} MiB): is HUBCACHE_GCS_ENDPOINT a storage JSON API?",
            handle=handle,
            url=redact(final_url),
        )
    return page


def _name_and_size(item: Any, how: DirectoryPlan, handle: str) -> Tuple[str, int]:
    name = item.get("name") if isinstance(item, dict) else None
    size = item.get("size") if isinstance(item, dict) else None
    if not isinstance(name, str) or len(name) > MAX_NAME or not name.startswith(how.prefix):
        raise _bad_listing(handle, how, f"it lists {str(name)[:100]!r}, outside the directory")
    if not (isinstance(size, (str, int)) and str(size).isascii() and str(size).isdigit()):
        raise _bad_listing(handle, how, f"the size of {name[:100]!r} is not a number")
    return name, int(size)


def _bad_listing(handle: str, how: DirectoryPlan, why: str) -> DownloadError:
    return DownloadError(
        f"the listing of {how.shown} for {handle} is malformed: {why}. Nothing was cached; check "
        "HUBCACHE_GCS_ENDPOINT, or report it to the bucket's owner.",
        handle=handle,
    )


class _Reader:
    """An object's bytes for :meth:`SafeWriter.add`, checked against its listed size."""

    def __init__(self, transport: Transport, obj: _Object, handle: str) -> None:
        self.transport, self.obj, self.handle = transport, obj, handle

    def data(self, size: int) -> Iterator[bytes]:
        from .download import open_object

        got = 0
        with open_object(self.transport, self.obj.url) as body:
            for piece in body.chunks():
                got += len(piece)
                if got > size:
                    break
                yield piece
        if got != size:
            raise IntegrityError(
                f"{self.obj.name} of {self.handle} has {'more' if got > size else 'fewer'} bytes than "
                f"the listing gave ({size}): it changed during the download. Nothing was cached; try again.",
                handle=self.handle,
            )
