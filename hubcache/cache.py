"""Writing the cache: locks, atomic publication, removal.

The layout and the validity checks live in :mod:`hubcache.layout` (readers
need nothing else). Writers download into a temporary sibling directory, write
the metadata, and rename the directory into place, so a reader never sees half
an entry, even if the writer is killed. The lock only keeps concurrent
processes from downloading the same thing twice.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import secrets
import socket
import time
from contextlib import contextmanager, suppress
from typing import Any, Callable, Dict, Iterator, Optional

from . import layout
from ._version import __version__
from .cancel import Cancellation
from .errors import ArchiveError, CacheError, CacheLockTimeout, HubcacheError, IntegrityError
from .fs import remove_tree
from .layout import (
    ALIAS_SUFFIX,
    DESCRIPTOR_SUFFIX,
    IMPORT_PREFIX,
    LOCK_SUFFIX,
    METADATA_SUFFIX,
    STAMP_SUFFIX,
    TMP_INFIX,
    TRASH_INFIX,
    USED_SUFFIX,
    Status,
)
from .locks import LockFile

log = logging.getLogger("hubcache")

POLL_INTERVAL = 0.05  # seconds between attempts to take a lock another process holds

METADATA_FORMAT = 1
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by hubcache.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)

#: Downloads and extracts into the given empty directory; returns metadata to record
#: (must include "files": {relative path: size}).
Producer = Callable[[str], Dict[str, Any]]


class Cache:
    """A cache root directory, laid out as tensorflow_hub lays out its cache."""

    def __init__(self, root: str) -> None:
        self.root = root

    def entry_dir(self, key: str) -> str:
        return os.path.join(self.root, key)

    def _sibling(self, key: str, suffix: str) -> str:
        return os.path.join(self.root, key + suffix)

    def lookup(
        self, key: str, *, require_saved_model: bool, sha256: Optional[str] = None, touch: bool = False
    ) -> Status:
        """Check entry ``key`` without locking: see :func:`hubcache.layout.lookup`."""
        return layout.lookup(self.root, key, require_saved_model=require_saved_model, sha256=sha256, touch=touch)

    def last_used(self, key: str) -> Optional[float]:
        """When entry ``key`` was last used (resolved), as a timestamp, or None."""
        return layout.last_used(self.entry_dir(key))

    def read_metadata(self, key: str) -> Optional[Dict[str, Any]]:
        """hubcache's metadata of entry ``key``, or None (not cached by hubcache)."""
        return layout.read_metadata(self.entry_dir(key))

    def remove(self, key: str, handle: str) -> bool:
        """Remove entry ``key`` unless a process holds its lock (downloading or
        loading it): then leave it and return False. The directory is renamed
        aside first, so a reader never sees half an entry, and a concurrent
        :func:`~hubcache.layout.lookup` that saw the metadata finds no directory."""
        if not layout.is_key(key):  # never the root, never anything but an entry
            raise ValueError(f"not a cache entry's name: {key!r}")

        lock = LockFile(self._sibling(key, LOCK_SUFFIX))
        if not lock.try_acquire():
            return False
        try:
            directory = self.entry_dir(key)
            model = (self.read_metadata(key) or {}).get("kaggle_model")
            layout.forget(directory)
            if os.path.lexists(directory):
                trash = self._sibling(key, f"{TRASH_INFIX}{secrets.token_hex(4)}")
                os.rename(directory, trash)
                remove_tree(trash)
            for suffix in (METADATA_SUFFIX, DESCRIPTOR_SUFFIX, USED_SUFFIX, STAMP_SUFFIX):
                remove_tree(self._sibling(key, suffix))  # a file, or junk of any kind
            if isinstance(model, str):  # the record that other spellings are made from it
                self._forget_alias(model, key)
            return True
        finally:
            lock.release()

    def _forget_alias(self, model: str, key: str) -> None:
        from .handles import cache_key

        record = os.path.join(self.root, cache_key(model) + ALIAS_SUFFIX)
        if (layout.read_record(record) or {}).get("entry") == key:
            with suppress(OSError):
                os.remove(record)

    @contextmanager
    def reading(self, key: str) -> Iterator[None]:
        """Hold a shared lock on entry ``key`` while its files are read, so that
        ``rm``/``prune`` leave it alone meanwhile. A no-op where the lock file
        cannot be opened (a read-only cache, which nobody prunes)."""
        try:
            fd = os.open(self._sibling(key, LOCK_SUFFIX), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            yield
            return
        # As filelock does: the umask must not lock other users out. It fails
        # for another user's lock file, which is shared already.
        with suppress(OSError):
            os.fchmod(fd, 0o666)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_SH)
        except (ImportError, OSError):
            pass  # no flock here (Windows): removal is still atomic
        try:
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def fetch(
        self,
        key: str,
        handle: str,
        produce: Producer,
        *,
        require_saved_model: bool,
        lock_timeout: float,
        sha256: Optional[str] = None,
        cancellation: Optional[Cancellation] = None,
    ) -> str:
        """The valid entry for ``key``, made by ``produce`` if need be.

        Concurrent callers wait on a per-entry lock; the first downloads, the
        others find its entry published when the lock is released. With
        ``sha256``, an entry fetched from another archive is fetched again, and
        a download with another hash raises :class:`IntegrityError`. A
        ``cancellation`` ends a wait for the lock, and is told of the
        temporary directory so that it can be removed if the producer hangs.
        """
        status = self.lookup(key, require_saved_model=require_saved_model, sha256=sha256)
        if status.valid:
            assert status.path is not None
            return status.path
        with _cache_errors(handle, self.root):
            self.ensure_root()
            with _EntryLock(self._sibling(key, LOCK_SUFFIX), handle, lock_timeout, cancellation):
                status = self.lookup(key, require_saved_model=require_saved_model, sha256=sha256)
                if status.valid:
                    assert status.path is not None
                    return status.path
                if status.problem:
                    log.warning(
                        "The cached copy of %s cannot be used (%s); downloading it again.",
                        handle,
                        status.problem,
                    )
                return self._make(key, handle, produce, require_saved_model, sha256, cancellation)

    def _make(
        self,
        key: str,
        handle: str,
        produce: Producer,
        require_saved_model: bool,
        sha256: Optional[str],
        cancellation: Optional[Cancellation],
    ) -> str:
        self._remove_leftovers(key)
        tmp = self._sibling(key, TMP_INFIX + owner_suffix())
        os.mkdir(tmp)  # mode 0o777 less the umask: a shared cache stays readable
        if cancellation is not None:
            cancellation.track_dir(tmp)
        try:
            info = produce(tmp)
            if sha256 and info.get("sha256") != sha256.lower():
                raise IntegrityError(
                    f"the archive downloaded for {handle} has SHA-256 {info.get('sha256')}, not "
                    f"the expected {sha256}: nothing was cached. The model changed upstream or "
                    "the download was tampered with; check the pinned hash.",
                    handle=handle,
                )
            problem = layout.check_content(info["files"], require_saved_model)
            if problem:
                raise ArchiveError(
                    f"the archive for {handle} {problem}, so it is not a usable model; nothing "
                    "was cached. Check that the handle points at a SavedModel archive.",
                    handle=handle,
                )
            return self._publish(key, handle, tmp, info, require_saved_model, sha256)
        finally:
            remove_tree(tmp)
            if cancellation is not None:
                cancellation.untrack_dir(tmp)

    def _publish(
        self,
        key: str,
        handle: str,
        tmp: str,
        info: Dict[str, Any],
        require_saved_model: bool,
        sha256: Optional[str],
    ) -> str:
        directory = self.entry_dir(key)
        if os.path.lexists(directory):
            # Where locks do not work (some network filesystems), another
            # process may have published meanwhile: keep its entry, readers may use it.
            status = self.lookup(key, require_saved_model=require_saved_model, sha256=sha256)
            if status.path is not None:
                log.info("%s was published by another process meanwhile; using that", handle)
                return status.path
            trash = self._sibling(key, f"{TRASH_INFIX}{secrets.token_hex(4)}")
            os.rename(directory, trash)  # the damaged entry goes out of the way at once
            remove_tree(trash)
        metadata = dict(info)
        metadata.setdefault("fetched_at", utc_iso())  # an imported entry keeps its own
        metadata.update(
            format=METADATA_FORMAT,
            handle=handle,
            hubcache_version=__version__,
            file_count=len(info["files"]),
            size=sum(info["files"].values()),
        )
        marker = self._sibling(key, METADATA_SUFFIX)
        for junk in (marker, self._sibling(key, DESCRIPTOR_SUFFIX), self._sibling(key, STAMP_SUFFIX)):
            if os.path.lexists(junk) and not os.path.isfile(junk):  # a directory there would
                remove_tree(junk)  # make every publish of this entry fail
        write_atomic(marker, json.dumps(metadata, indent=1, sort_keys=True))
        write_atomic(
            self._sibling(key, DESCRIPTOR_SUFFIX),
            f"Module: {handle}\nDownload Time: {datetime.datetime.now()}\n"
            f"Downloader Hostname: {socket.gethostname()} (PID:{os.getpid()})\n",
        )
        os.rename(tmp, directory)
        self.stamp(key, layout.make_stamp(directory, info["files"], metadata.get("sha256")))
        layout.forget(directory)
        layout.record_use(directory)
        layout.remember(directory, metadata)
        log.info("Cached %s in %s", handle, directory)
        return directory

    def stamp(self, key: str, stamp: Optional[Dict[str, Any]]) -> None:
        """Record entry ``key``'s stamp, from :func:`hubcache.layout.make_stamp`:
        it makes the entry's first check in a process cheap. Best effort: without
        one, that check stats every file."""
        if stamp is not None:
            with suppress(OSError):
                write_atomic(self._sibling(key, STAMP_SUFFIX), json.dumps(stamp, separators=(",", ":")))

    def ensure_root(self) -> None:
        """Create the cache root, tagged so that backup tools skip it."""
        os.makedirs(self.root, exist_ok=True)
        tag = os.path.join(self.root, "CACHEDIR.TAG")
        if not os.path.exists(tag):
            write_atomic(tag, CACHEDIR_TAG)

    def _remove_leftovers(self, key: str) -> None:
        """Delete what dead processes left of ``key``: trash, and temporary
        directories and files whose process (named in the name) is gone."""
        with os.scandir(self.root) as it:
            names = [e.name for e in it if e.name.startswith(key)]
        for name in names:
            if stale_leftover(name):
                log.info("Removing %s, left by an interrupted download", name)
                remove_tree(os.path.join(self.root, name))


class _EntryLock:
    """The per-entry lock, waited for up to ``timeout`` seconds. The OS drops it
    if its holder dies, so a waiter goes on as soon as a crashed download's
    process is gone."""

    def __init__(self, path: str, handle: str, timeout: float, cancellation: Optional[Cancellation] = None) -> None:
        self._lock = LockFile(path)
        self._path = path
        self._handle = handle
        self._timeout = timeout
        self._cancellation = cancellation

    def __enter__(self) -> "_EntryLock":
        if self._lock.try_acquire():
            return self
        log.info("Waiting for another process that is downloading %s", self._handle)
        started = time.monotonic()
        while True:
            # In short steps, so that a cancelled wait ends within moments.
            if self._cancellation is not None:
                self._cancellation.check()
            left = self._timeout - (time.monotonic() - started)
            time.sleep(max(0.0, min(left, POLL_INTERVAL)))
            if self._lock.try_acquire():
                return self
            if time.monotonic() - started >= self._timeout:
                raise CacheLockTimeout(
                    f"gave up waiting for {self._handle} after {time.monotonic() - started:.0f} s: "
                    f"another process holds {self._path}. If no hubcache process is running, "
                    "delete that file; to wait longer, raise HUBCACHE_LOCK_TIMEOUT.",
                    handle=self._handle,
                )

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def stale_leftover(name: str) -> bool:
    """Whether hubcache's leftover directory ``name`` (temporary, trash or
    import staging) can go: trash always, the others once their process is gone."""
    if TRASH_INFIX in name:
        return True
    for marker in (TMP_INFIX, IMPORT_PREFIX):
        if marker in name:
            return _owner_is_dead(name.partition(marker)[2])
    return False


def _owner_is_dead(suffix: str) -> bool:
    """Whether the process of a temporary directory (``<host>.<pid>.<random>``)
    is known to be gone: on this host, with no such pid. Other hosts' are kept."""
    owner = suffix.rpartition(".")[0]
    host, _, pid = owner.rpartition(".")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def owner_suffix() -> str:
    """``<host>.<pid>.<random>``: names a temporary file or directory after its
    process, so that what a killed process left can be told from work in progress."""
    return f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path to write ``path``'s new content to; renamed over
    ``path`` when the block ends without error, else deleted. It is named like
    a download's directory, so what a killed process left is known to the next
    download, ``prune --temp`` and ``ls``."""
    tmp = f"{path}{TMP_INFIX}{owner_suffix()}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str, text: str) -> None:
    """Write ``path`` whole or not at all."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def utc_iso(timestamp: Optional[float] = None) -> str:
    """``timestamp`` (default: now) as the ISO 8601 UTC text the metadata and
    bundles record, to the second."""
    when = (
        datetime.datetime.now(datetime.timezone.utc)
        if timestamp is None
        else (datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc))
    )
    return when.isoformat(timespec="seconds")


@contextmanager
def _cache_errors(handle: str, root: str) -> Iterator[None]:
    """Turn OS errors from writing the cache into :class:`CacheError` with advice."""
    try:
        yield
    except HubcacheError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            advice = "the disk is full: free some space, or set TFHUB_CACHE_DIR to a larger disk"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            advice = (
                "the cache directory is not writable: set TFHUB_CACHE_DIR to a writable "
                "directory, or prefetch into this cache from an account that can write it"
            )
        else:
            advice = f"{type(e).__name__}: {e.strerror or e}"
        raise CacheError(
            f"could not cache {handle} in {root}: {advice}. Nothing was left half-written.",
            handle=handle,
        ) from e
