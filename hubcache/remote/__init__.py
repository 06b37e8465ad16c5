"""The shared tier: an S3-compatible bucket that a cluster's machines fill and read,
so that each model is downloaded from upstream once (``HUBCACHE_REMOTE``).

Layout under ``s3://bucket/prefix/v1/``, plain objects that ``aws s3 sync`` or
``rclone`` can copy into an air gap:

- ``blobs/sha256/<hex>``: an archive, byte for byte as upstream served it;
- ``index/<key>.json``: what a handle's archive is (:func:`check_index`), where
  ``<key>`` is the handle's cache entry name, the SHA-1 of the handle as written;
- ``leases/<key>.json``: which machine is fetching the handle, for how long;
- ``probe/result.json``: whether the store refuses a second conditional create
  (leases work), as the first machine to check found.

:class:`Remote` is the interface; :func:`open_remote` gives the configured one
(the S3 client, in :mod:`hubcache.remote.s3`, is imported only then). Every
failure to reach or use the store is a :class:`~hubcache.errors.RemoteError`:
the caller warns once and goes upstream. Nothing read from the store is trusted:
an index is size-bounded and validated, and a blob is checked by its reader.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
from typing import TYPE_CHECKING, Any, BinaryIO, Dict, Iterable, Iterator, Optional, Protocol, Union

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("hubcache")

#: The layout's version: the first segment under the prefix.
LAYOUT = "v1"
#: Most bytes an index or lease object may have; a larger one is not read.
MAX_RECORD_BYTES = 64 << 10
#: Most bytes of one blob: 5 TiB, S3's own bound on an object.
MAX_BLOB_BYTES = 5 << 40
INDEX_FORMAT = 1
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TEXT_FIELDS = ("handle", "source", "time", "uploader")
_MAX_TEXT = 4096


class Blob(Protocol):
    """A blob being read: its chunks, in order (resumed where a connection broke)."""

    #: The blob's size as the store reports it.
    size: int

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class Remote(Protocol):
    """A shared tier. ``key`` is a handle's cache entry name (40 hex digits).

    Every method raises :class:`~hubcache.errors.RemoteError` when the store
    cannot be used; writes raise it too in read-only mode, before any request.
    """

    #: True in read-only mode (``HUBCACHE_REMOTE_MODE=ro``).
    read_only: bool
    #: Where the store is, for messages (no secret in it).
    url: str

    def get_index(self, key: str) -> Optional[Dict[str, Any]]:
        """The handle's index record (checked by :func:`check_index`), or None when
        there is none or it is not a valid record (too big, not JSON, wrong fields)."""
        ...

    def put_index(self, key: str, record: Dict[str, Any]) -> None:
        """Write the handle's index record (checked first; replaces any)."""
        ...

    def open_blob(self, sha256: str) -> Optional[Blob]:
        """The blob of that SHA-256 to stream, or None when there is none. Its bytes
        are the store's: the reader checks size and hash."""
        ...

    def put_blob(self, sha256: str, data: Union[BinaryIO, Iterable[bytes]]) -> int:
        """Upload a blob from a binary file (read from its position) or an iterable
        of chunks, in parts for a large one; returns its size. The bytes must hash to
        ``sha256``, else nothing is stored and :class:`~hubcache.errors.IntegrityError`
        is raised."""
        ...

    def try_lease(self, key: str, owner: str, seconds: float) -> bool:
        """Take (or, held by ``owner``, renew) the handle's lease for ``seconds``:
        True when ``owner`` holds it now. An expired lease is taken over."""
        ...

    def release_lease(self, key: str, owner: str) -> None:
        """Give the lease up, if ``owner`` still holds it."""
        ...

    def probe_conditional_writes(self) -> bool:
        """Whether the store refuses a second create of one object (``If-None-Match: *``):
        where it does not, leases cannot work and the caller runs without them."""
        ...


def open_remote(settings: "Settings") -> Optional[Remote]:
    """The configured shared tier, or None (none configured, or offline)."""
    if settings.remote is None or settings.offline:
        return None
    if not settings.remote.startswith("s3://"):  # a directory: only `prefetch --to DIR` names one
        from .directory import DirectoryRemote

        return DirectoryRemote(settings.remote, read_only=settings.remote_mode == "ro")
    from .s3 import S3Remote

    bucket, _, prefix = settings.remote[len("s3://") :].partition("/")
    return S3Remote(
        bucket,
        prefix,
        endpoint=settings.remote_endpoint,
        timeout=settings.remote_timeout,
        read_only=settings.remote_mode == "ro",
    )


def layout_key(prefix: str, *parts: str) -> str:
    """The object key of ``parts`` under ``prefix``: "prefix/v1/part/part"."""
    return "/".join(filter(None, (prefix, LAYOUT, *parts)))


def check_key(key: str) -> str:
    """``key`` if it is a cache entry name (SHA-1 hex), else ValueError."""
    if not isinstance(key, str) or not _HEX40.match(key):
        raise ValueError(f"not an entry key (40 lowercase hex digits): {key!r}")
    return key


def check_sha256(sha256: str) -> str:
    """``sha256`` in lowercase if it is a SHA-256 hex digest, else ValueError."""
    value = sha256.lower() if isinstance(sha256, str) else ""
    if not _HEX64.match(value):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return value


def check_index(data: Any) -> Optional[Dict[str, Any]]:
    """The index record in ``data`` (parsed JSON), or None when it is not one.

    A record is ``{"format": 1, "sha256": <64 hex>, "size": <bytes>, "handle",
    "source", "time", "uploader": <text>}``; other fields are dropped, and a record
    of a later format is not read.
    """
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        return None
    sha256, size = data.get("sha256"), data.get("size")
    if not (isinstance(sha256, str) and _HEX64.match(sha256)):
        return None
    if not (type(size) is int and 0 <= size <= MAX_BLOB_BYTES):  # bool is an int, and is refused
        return None
    record: Dict[str, Any] = {"format": INDEX_FORMAT, "sha256": sha256, "size": size}
    for name in _TEXT_FIELDS:
        value = data.get(name, "")
        if not (isinstance(value, str) and len(value) <= _MAX_TEXT):
            return None
        record[name] = value
    return record


def index_from(raw: bytes, store: str, key: str) -> Optional[Dict[str, Any]]:
    """The index record in a store's object ``raw``, or None (with a warning) when it is not one."""
    record = check_index(parse_record(raw))
    if record is None:
        log.warning("The shared tier %s has a damaged index record for entry %s; ignoring it", store, key)
    return record


def index_bytes(record: Dict[str, Any]) -> bytes:
    """``record`` as stored, once checked (ValueError if it is not an index record)."""
    checked = check_index(record)
    if checked is None:
        raise ValueError(f"not an index record: {record!r}")
    return json.dumps(checked, sort_keys=True, indent=1).encode()


def parse_record(raw: bytes) -> Any:
    """JSON ``raw`` (at most :data:`MAX_RECORD_BYTES`), or None when it is not JSON."""
    if len(raw) > MAX_RECORD_BYTES:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, a 5000-digit number; deep nesting
        return None


def lease_owner() -> str:
    """A name for this process as a lease's owner: host, process id, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
