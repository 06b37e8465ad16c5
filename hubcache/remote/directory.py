"""The shared tier in a local (or mounted) directory, in the S3 tier's layout, so
that ``aws s3 sync DIR s3://bucket/prefix`` (or ``rclone copy``) makes exactly
the tier :class:`~hubcache.remote.s3.S3Remote` reads.

Every file appears whole: it is written to ``.<name>.tmp-<random>`` beside its
place, fsynced, then renamed over it. Leases need no lock: see
:meth:`DirectoryRemote.try_lease`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import stat
import time
from contextlib import contextmanager, suppress
from typing import Any, BinaryIO, Dict, Iterable, Iterator, Optional, Tuple, Union

from ..errors import IntegrityError, RemoteError
from . import LAYOUT, MAX_BLOB_BYTES, MAX_RECORD_BYTES, check_key, check_sha256, index_bytes, index_from, parse_record

log = logging.getLogger("hubcache")

CHUNK = 1 << 20  # bytes read or written at a time
#: A claim on a lease (see ``_claim``) older than this is deemed left by a dead process.
CLAIM_SECONDS = 30.0
# Opening a FIFO planted at a record's place must not hang; O_NONBLOCK does nothing to a file.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_Seen = Tuple[Tuple[int, int, int], bytes]  # a lease file as read: (device, inode, mtime_ns), bytes


class DirectoryRemote:
    """The shared tier under the directory ``root`` (see :class:`hubcache.remote.Remote`)."""

    def __init__(self, root: str, *, read_only: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.url = self.root
        self.read_only = read_only
        self._links: Optional[bool] = None  # whether the filesystem has hard links, once probed

    # -- the index -----------------------------------------------------------

    def get_index(self, key: str) -> Optional[Dict[str, Any]]:
        with self._guard("read an index record"):
            found = _read_record(self._path("index", check_key(key) + ".json"))
        return None if found is None else index_from(found[1], self.url, key)

    def put_index(self, key: str, record: Dict[str, Any]) -> None:
        self._writable("write an index record")
        body = index_bytes(record)
        with self._guard("write an index record"):
            self._publish(self._path("index", check_key(key) + ".json"), [body])

    # -- blobs ---------------------------------------------------------------

    def open_blob(self, sha256: str) -> Optional["DirectoryBlob"]:
        path = self._path("blobs", "sha256", check_sha256(sha256))
        with self._guard("open a blob"):
            try:
                fd = os.open(path, _OPEN_FLAGS)
            except FileNotFoundError:
                return None
            try:
                status = os.fstat(fd)
                if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_BLOB_BYTES:
                    raise OSError(errno.EINVAL, f"not a file of at most {MAX_BLOB_BYTES} bytes", path)
            except BaseException:
                os.close(fd)
                raise
        return DirectoryBlob(self, fd, path, status.st_size)

    def put_blob(self, sha256: str, data: Union[BinaryIO, Iterable[bytes]]) -> int:
        self._writable("upload a blob")
        expected = check_sha256(sha256)
        read = getattr(data, "read", None)
        chunks = iter(lambda: bytes(read(CHUNK)), b"") if read is not None else iter(data)
        with self._guard("write a blob"):
            return self._publish(self._path("blobs", "sha256", expected), chunks, expected)

    # -- leases --------------------------------------------------------------

    def try_lease(self, key: str, owner: str, seconds: float) -> bool:
        """Created by ``link(temp, lease)``, which fails if the lease exists (a rename
        would replace it). Renewed, released or taken over only by the one process
        that claims the very file read (``_claim``), so two never both succeed."""
        self._writable("take a lease")
        if not 0 <= seconds <= 1e7:  # NaN too
            raise ValueError(f"a lease lasts 0 to 1e7 seconds, not {seconds!r}")
        path = self._path("leases", check_key(key) + ".json")
        body = json.dumps({"owner": owner, "seconds": seconds, "time": time.time()}).encode()
        with self._guard("take a lease"):
            temp = self._write_temp(path, [body])[0]
            try:
                for _ in range(3):
                    try:
                        os.link(temp, path)
                        return True
                    except FileExistsError:
                        pass
                    seen = _read_lease(path)
                    if seen is None:
                        continue  # released meanwhile
                    if _owner(seen) != owner and not _expired(seen):
                        return False
                    claim = _claim(path, seen)
                    if claim is None:
                        return False  # another process is renewing or taking it over
                    try:
                        os.replace(temp, path)
                    finally:
                        _unclaim(claim)
                    return True
                return False
            finally:
                _unlink(temp)  # after link(), a second name; after replace(), gone

    def release_lease(self, key: str, owner: str) -> None:
        self._writable("release a lease")
        path = self._path("leases", check_key(key) + ".json")
        with self._guard("release a lease"):
            seen = _read_lease(path)
            if seen is not None and _owner(seen) == owner:
                claim = _claim(path, seen)
                if claim is not None:
                    try:
                        os.unlink(path)
                    finally:
                        _unclaim(claim)

    def probe_conditional_writes(self) -> bool:
        if self.read_only:
            return False  # probing writes; a reader takes no lease
        if self._links is None:
            self._links = self._probe()
        return self._links

    def _probe(self) -> bool:
        """Whether this filesystem has hard links (leases are made of them): local and
        network ones do; FAT, exFAT and some FUSE mounts (a USB stick) do not."""
        probe = self._path("leases", f".probe-{secrets.token_hex(8)}")
        with self._guard("probe for hard links"):
            temp = self._write_temp(probe, [b"1"])[0]
            try:
                os.link(temp, probe)
                os.link(temp, probe)
            except FileExistsError:
                return True
            except OSError as e:
                log.warning(
                    "The shared tier %s cannot make hard links (%s): running without leases, so "
                    "machines may download the same model at the same time.",
                    self.url,
                    e.strerror or e,
                )
                return False
            finally:
                _unlink(temp)
                _unlink(probe)
        return False  # a second link over the first: never on a POSIX filesystem

    # -- files ---------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, LAYOUT, *parts)  # parts are checked hex: no way out of root

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise RemoteError(f"the shared tier {self.url} is read-only: cannot {what}. Open it read-write to do so.")

    def _publish(self, path: str, chunks: Iterable[bytes], sha256: Optional[str] = None) -> int:
        """Write ``chunks`` to ``path`` atomically (checking them against ``sha256``); their size."""
        temp, digest, size = self._write_temp(path, chunks)
        try:
            if sha256 is not None and digest != sha256:
                raise IntegrityError(
                    f"the {size} bytes given for blob {sha256} have SHA-256 {digest}: nothing was stored in {self.url}."
                )
            os.replace(temp, path)
        except BaseException:
            _unlink(temp)
            raise
        return size

    def _write_temp(self, path: str, chunks: Iterable[bytes]) -> Tuple[str, str, int]:
        """``chunks`` written to a new temporary file beside ``path`` and fsynced: its
        name, SHA-256 and size. On any failure (a full disk) it is removed."""
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        temp = os.path.join(folder, f".{name}.tmp-{secrets.token_hex(8)}")
        digest, size = hashlib.sha256(), 0
        try:
            with open(temp, "xb") as f:
                for chunk in chunks:
                    digest.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            _unlink(temp)
            raise
        return temp, digest.hexdigest(), size

    @contextmanager
    def _guard(self, operation: str) -> Iterator[None]:
        try:
            yield
        except RemoteError:  # a ConnectionError, so an OSError: not wrapped twice
            raise
        except OSError as e:
            raise self._error(operation, e) from None

    def _error(self, operation: str, e: OSError) -> RemoteError:
        reason = f"{e.strerror or e}: {e.filename}" if e.filename else str(e) or type(e).__name__
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):  # no EDQUOT on Windows
            hint = "Free some space on its disk, or choose another directory"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = "Check that this user may read and write it, or choose another directory"
        else:
            hint = "Check that it is a directory this user may read and write, or choose another one"
        return RemoteError(
            f"the shared tier directory {self.root} cannot be used: {operation} failed ({reason}). {hint}.",
            operation=operation,
            reason=reason,
        )


class DirectoryBlob:
    """A blob file read in chunks of at most :data:`CHUNK` bytes. Blobs are replaced,
    never changed in place, so an open one reads whole unless someone edits it."""

    def __init__(self, remote: DirectoryRemote, fd: int, path: str, size: int) -> None:
        self._remote, self._fd, self._path, self.size = remote, fd, path, size

    def __iter__(self) -> Iterator[bytes]:
        received = 0
        while True:
            with self._remote._guard("read a blob"):
                chunk = os.read(self._fd, CHUNK)
                if len(chunk) > self.size - received or (not chunk and received < self.size):
                    raise OSError(errno.EIO, f"changed while read: {self.size} bytes at first", self._path)
            if not chunk:
                return
            received += len(chunk)
            yield chunk

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "DirectoryBlob":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_record(path: str) -> Optional[Tuple[os.stat_result, bytes]]:
    """The file's status and first MAX_RECORD_BYTES + 1 bytes (more means too big), or
    None when there is none. Anything but a file reads as empty: a damaged record."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return status, b""
        raw = b""
        while len(raw) <= MAX_RECORD_BYTES:  # a read may return less than asked
            more = os.read(fd, MAX_RECORD_BYTES + 1 - len(raw))
            if not more:
                break
            raw += more
        return status, raw
    finally:
        os.close(fd)


def _read_lease(path: str) -> Optional[_Seen]:
    found = _read_record(path)
    if found is None:
        return None
    status, raw = found
    return (status.st_dev, status.st_ino, status.st_mtime_ns), raw


def _owner(seen: _Seen) -> Any:
    lease = parse_record(seen[1])
    return lease.get("owner") if isinstance(lease, dict) else None


def _expired(seen: _Seen) -> bool:
    """Whether the lease has run out: its file's mtime (when it was written) plus
    its ``seconds``, against this machine's clock. An unreadable lease has run out."""
    lease = parse_record(seen[1])
    seconds = lease.get("seconds") if isinstance(lease, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 1e7:
        return True
    return time.time() >= seen[0][2] / 1e9 + seconds


def _claim(path: str, seen: _Seen) -> Optional[str]:
    """A claim on the lease file ``seen``: its name, or None when another process has
    one, or the lease is no longer that file.

    The claim is a hard link to the lease, named after the file seen (inode, mtime,
    bytes), made by ``link(lease, claim)``: only one process can create that name,
    and the link points at whatever the lease is *now*, so reading it back tells
    whether the lease is still the file seen. Its holder then replaces or removes the
    lease, and nobody else changes it meanwhile: creators link only where there is
    no lease, and anyone else who read that file fails to create the same claim
    (nothing is renamed away from under a racer, unlike with "rename the stale lease
    aside", where a racer may move a fresh lease and race to put it back). A claim
    left by a killed process blocks only until CLAIM_SECONDS after the last link to
    the file (its ctime): then the claim of the next level is taken, by one racer.
    """
    folder, name = os.path.split(path)
    tag = hashlib.sha1(repr(seen[0]).encode() + seen[1]).hexdigest()[:16]
    for level in range(100):
        claim = os.path.join(folder, f".{name}.claim-{tag}-{level}")
        try:
            os.link(path, claim)
        except FileNotFoundError:
            return None  # the lease is gone
        except FileExistsError:
            try:
                if time.time() - os.stat(claim).st_ctime < CLAIM_SECONDS:
                    return None
            except FileNotFoundError:
                return None  # its holder is done: the lease has changed
            continue
        if _read_lease(claim) == seen:
            return claim
        _unlink(claim)  # the lease changed since it was read
        return None
    return None


def _unclaim(claim: str) -> None:
    """Remove ``claim`` and those below it, left by killed processes."""
    base, level = claim.rsplit("-", 1)
    for below in range(int(level) + 1):
        _unlink(f"{base}-{below}")


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)
