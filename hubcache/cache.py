"""The cache on disk: layout, validation, locking and atomic publication.

Layout under the root, for an entry whose key is ``K`` (SHA-1 of the handle):

=============================  ================================================
``K/``                         the model, exactly as tensorflow_hub lays it out
``K.descriptor.txt``           tensorflow_hub's descriptor (informational)
``K.hubcache.json``            hubcache's metadata; marks the entry complete
``K.hubcache.lock``            hubcache's per-entry lock (tensorflow_hub's is
                               ``K.lock``, which hubcache never creates)
``K.hubcache-tmp.<pid>.<r>/``  a download in progress
``K.hubcache-trash.<r>/``      a damaged entry being removed
=============================  ================================================

Readers take no lock: an entry is valid when its directory and metadata are
both present and the files the metadata lists are there with their sizes.
Writers download into a temporary sibling directory, write the metadata, and
rename the directory into place, so a reader never sees half an entry, even if
the writer is killed. The lock only keeps concurrent processes from
downloading the same thing twice.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from ._version import __version__
from .errors import ArchiveError, CacheError, CacheLockTimeout, HubcacheError

log = logging.getLogger("hubcache")

METADATA_SUFFIX = ".hubcache.json"
LOCK_SUFFIX = ".hubcache.lock"
TMP_INFIX = ".hubcache-tmp."
TRASH_INFIX = ".hubcache-trash."
DESCRIPTOR_SUFFIX = ".descriptor.txt"
METADATA_FORMAT = 1
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

#: Entries validated in full by this process: directory -> identity of its
#: metadata file when checked. Later lookups only stat the metadata file.
_validated: Dict[str, Tuple[int, int]] = {}


@dataclass(frozen=True)
class Status:
    """What :meth:`Cache.lookup` found: ``path`` if valid, else why not."""

    path: Optional[str]
    problem: Optional[str] = None  # None and no path: simply not cached

    @property
    def valid(self) -> bool:
        return self.path is not None


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

    def lookup(self, key: str, *, require_saved_model: bool) -> Status:
        """Check the entry ``key`` without locking or writing anything."""
        directory = self.entry_dir(key)
        marker = self._sibling(key, METADATA_SUFFIX)
        try:
            st = os.stat(marker)
        except FileNotFoundError:
            return self._lookup_foreign(directory, require_saved_model)
        except OSError as e:
            return Status(None, f"its metadata cannot be read ({e.strerror})")
        identity = (st.st_ino, st.st_mtime_ns)
        if _validated.get(directory) == identity:
            return Status(directory)
        if not os.path.isdir(directory):
            return Status(None)  # metadata written, rename not done: an interrupted publish
        problem = _check_files(directory, marker, require_saved_model)
        if problem:
            _validated.pop(directory, None)
            return Status(None, problem)
        _validated[directory] = identity
        return Status(directory)

    def _lookup_foreign(self, directory: str, require_saved_model: bool) -> Status:
        """An entry without hubcache metadata: tensorflow_hub made it (or nothing did).
        tensorflow_hub's own rule applies (present and non-empty), plus a
        SavedModel check where one is required."""
        try:
            with os.scandir(directory) as it:
                names = {e.name for e in it}
        except (FileNotFoundError, NotADirectoryError):
            return Status(None)
        except OSError as e:
            return Status(None, f"its directory cannot be read ({e.strerror})")
        if not names:
            return Status(None, "its directory is empty")
        if require_saved_model and not names.intersection(SAVED_MODEL_FILES):
            return Status(None, "it has no saved_model.pb")
        return Status(directory)

    def fetch(
        self,
        key: str,
        handle: str,
        produce: Producer,
        *,
        require_saved_model: bool,
        lock_timeout: float,
    ) -> str:
        """The valid entry for ``key``, made by ``produce`` if need be.

        Concurrent callers wait on a per-entry lock; the first downloads, the
        others find its entry published when the lock is released.
        """
        status = self.lookup(key, require_saved_model=require_saved_model)
        if status.valid:
            assert status.path is not None
            return status.path
        with _cache_errors(handle, self.root):
            os.makedirs(self.root, exist_ok=True)
            with self._locked(key, handle, lock_timeout):
                status = self.lookup(key, require_saved_model=require_saved_model)
                if status.valid:
                    assert status.path is not None
                    return status.path
                if status.problem:
                    log.warning(
                        "The cached copy of %s is damaged (%s); downloading it again.",
                        handle,
                        status.problem,
                    )
                return self._make(key, handle, produce, require_saved_model)

    def _make(self, key: str, handle: str, produce: Producer, require_saved_model: bool) -> str:
        self._remove_leftovers(key)
        tmp = self._sibling(key, f"{TMP_INFIX}{os.getpid()}.{secrets.token_hex(4)}")
        os.mkdir(tmp)  # mode 0o777 less the umask: a shared cache stays readable
        try:
            info = produce(tmp)
            problem = _check_content(tmp, info["files"], require_saved_model)
            if problem:
                raise ArchiveError(
                    f"the archive for {handle} {problem}, so it is not a usable model; nothing "
                    "was cached. Check that the handle points at a SavedModel archive.",
                    handle=handle,
                )
            return self._publish(key, handle, tmp, info)
        finally:
            _remove_tree(tmp)

    def _publish(self, key: str, handle: str, tmp: str, info: Dict[str, Any]) -> str:
        directory = self.entry_dir(key)
        if os.path.lexists(directory):  # a damaged entry: move it out of the way first
            trash = self._sibling(key, f"{TRASH_INFIX}{secrets.token_hex(4)}")
            os.rename(directory, trash)
            _remove_tree(trash)
        metadata = dict(info)
        metadata.update(
            format=METADATA_FORMAT,
            handle=handle,
            fetched_at=_now_iso(),
            hubcache_version=__version__,
            file_count=len(info["files"]),
            size=sum(info["files"].values()),
        )
        marker = self._sibling(key, METADATA_SUFFIX)
        _write_atomic(marker, json.dumps(metadata, indent=1, sort_keys=True))
        _write_atomic(
            self._sibling(key, DESCRIPTOR_SUFFIX),
            f"Module: {handle}\nDownload Time: {datetime.datetime.now()}\n"
            f"Downloader Hostname: {socket.gethostname()} (PID:{os.getpid()})\n",
        )
        os.rename(tmp, directory)
        st = os.stat(marker)
        _validated[directory] = (st.st_ino, st.st_mtime_ns)
        log.info("Cached %s in %s", handle, directory)
        return directory

    def _remove_leftovers(self, key: str) -> None:
        """Delete temporary and trash directories of ``key``: under the lock,
        any that exist were left by a process that died."""
        prefixes = (key + TMP_INFIX, key + TRASH_INFIX)
        with os.scandir(self.root) as it:
            stale = [e.path for e in it if e.name.startswith(prefixes)]
        for path in stale:
            log.info("Removing %s, left by an interrupted download", path)
            _remove_tree(path)

    def _locked(self, key: str, handle: str, timeout: float):  # type: ignore[no-untyped-def]
        return _EntryLock(self._sibling(key, LOCK_SUFFIX), handle, timeout)


class _EntryLock:
    """The per-entry file lock. The OS drops it if its holder dies, so a waiter
    goes on as soon as a crashed download's process is gone."""

    def __init__(self, path: str, handle: str, timeout: float) -> None:
        from filelock import FileLock  # imported here: only writers need it

        self._lock = FileLock(path)
        self._path = path
        self._handle = handle
        self._timeout = timeout

    def __enter__(self) -> "_EntryLock":
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
            return self
        except Timeout:
            pass
        log.info("Waiting for another process that is downloading %s", self._handle)
        started = time.monotonic()
        try:
            self._lock.acquire(timeout=self._timeout)
        except Timeout:
            raise CacheLockTimeout(
                f"gave up waiting for {self._handle} after {time.monotonic() - started:.0f} s: "
                f"another process holds {self._path}. If no hubcache process is running, "
                "delete that file; to wait longer, raise HUBCACHE_LOCK_TIMEOUT.",
                handle=self._handle,
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _check_files(directory: str, marker: str, require_saved_model: bool) -> Optional[str]:
    """Why the entry at ``directory`` is not intact, or None if it is."""
    try:
        with open(marker, encoding="utf-8") as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "its metadata file is unreadable"
    missing = []
    for rel, size in files.items():
        try:
            st = os.stat(os.path.join(directory, *rel.split("/")))
        except OSError:
            missing.append(rel)
            continue
        if st.st_size != size:
            return f"{rel} has {st.st_size} bytes instead of {size}"
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        return f"{missing[0]}{more} went missing"
    return _check_content(directory, files, require_saved_model)


def _check_content(directory: str, files: Dict[str, int], require_saved_model: bool) -> Optional[str]:
    if not files:
        return "holds no files"
    if require_saved_model and not any(name in files for name in SAVED_MODEL_FILES):
        return "has no saved_model.pb at its root"
    return None


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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
