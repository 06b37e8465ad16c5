"""The cache on disk: layout, validation, locking and atomic publication.

Layout under the root, for an entry whose key is ``K`` (SHA-1 of the handle):

=============================  ================================================
``K/``                         the model, exactly as tensorflow_hub lays it out
``K.descriptor.txt``           tensorflow_hub's descriptor (informational)
``K.hubcache.json``            hubcache's metadata; marks the entry complete
``K.hubcache.used``            empty; its mtime is the entry's last use
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
import re
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from ._version import __version__
from .errors import ArchiveError, CacheError, CacheLockTimeout, HubcacheError, IntegrityError

log = logging.getLogger("hubcache")

METADATA_SUFFIX = ".hubcache.json"
USED_SUFFIX = ".hubcache.used"
LOCK_SUFFIX = ".hubcache.lock"
TMP_INFIX = ".hubcache-tmp."
TRASH_INFIX = ".hubcache-trash."
IMPORT_PREFIX = ".hubcache-import."  # a bundle being imported: .hubcache-import.<host>.<pid>.<r>/
DESCRIPTOR_SUFFIX = ".descriptor.txt"
METADATA_FORMAT = 1
USE_RESOLUTION_NS = 3600 * 10**9  # last-use times are kept to the hour: one write an hour
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by hubcache.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

#: Entries validated in full by this process: directory -> (identity of its
#: metadata file when checked, recorded sha256). Later lookups only stat the
#: metadata file.
_validated: Dict[str, Tuple[Tuple[int, int], Optional[str]]] = {}


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

    def lookup(
        self, key: str, *, require_saved_model: bool, sha256: Optional[str] = None, touch: bool = False
    ) -> Status:
        """Check the entry ``key`` without locking. With ``sha256``, the entry
        must also have been fetched from an archive with that hash. With
        ``touch``, a valid entry's last-use time is brought up to date (to the
        hour, in the mtime of ``K.hubcache.used``, a file nothing reads: with
        relatime, reading any file may bump its atime; silently skipped where
        the cache is read-only)."""
        directory = self.entry_dir(key)
        marker = self._sibling(key, METADATA_SUFFIX)
        try:
            st = os.stat(marker)
        except FileNotFoundError:
            status = self._lookup_foreign(directory, require_saved_model)
            if status.valid and sha256:
                return Status(None, "it was not fetched by hubcache, so it has no SHA-256 to check")
            if status.valid and touch:
                self._touch(key)
            return status
        except OSError as e:
            return Status(None, f"its metadata cannot be read ({e.strerror})")
        identity = (st.st_ino, st.st_mtime_ns)
        known = _validated.get(directory)
        if known is None or known[0] != identity:
            if not os.path.isdir(directory):
                return Status(None)  # metadata written, rename not done: an interrupted publish
            metadata, problem = _check_entry(directory, marker, require_saved_model)
            if problem:
                _validated.pop(directory, None)
                return Status(None, problem)
            known = _validated[directory] = (identity, metadata.get("sha256"))
        if sha256 and known[1] != sha256.lower():
            return Status(None, f"it was fetched from an archive with SHA-256 {known[1]}, not {sha256}")
        if touch:
            self._touch(key)
        return Status(directory)

    def _touch(self, key: str) -> None:
        """Record a use of entry ``key``, to the hour."""
        path = self._sibling(key, USED_SUFFIX)
        try:
            if time.time_ns() - os.stat(path).st_mtime_ns < USE_RESOLUTION_NS:
                return
            os.utime(path)
        except FileNotFoundError:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
            except OSError:
                pass  # a read-only cache: uses are not recorded
        except OSError:
            pass

    def last_used(self, key: str) -> Optional[float]:
        """When entry ``key`` was last used (resolved), as a timestamp, or None."""
        try:
            return os.stat(self._sibling(key, USED_SUFFIX)).st_mtime
        except OSError:
            return None

    def remove(self, key: str, handle: str) -> bool:
        """Remove entry ``key`` unless a process holds its lock (downloading or
        loading it): then leave it and return False. The directory is renamed
        aside first, so a reader never sees half an entry."""
        from filelock import Timeout

        lock = _EntryLock(self._sibling(key, LOCK_SUFFIX), handle, 0)
        try:
            lock.acquire_now()
        except Timeout:
            return False
        try:
            directory = self.entry_dir(key)
            _validated.pop(directory, None)
            if os.path.lexists(directory):
                trash = self._sibling(key, f"{TRASH_INFIX}{secrets.token_hex(4)}")
                os.rename(directory, trash)
                _remove_tree(trash)
            for suffix in (METADATA_SUFFIX, DESCRIPTOR_SUFFIX, USED_SUFFIX):
                try:
                    os.unlink(self._sibling(key, suffix))
                except FileNotFoundError:
                    pass
            return True
        finally:
            lock.release()

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
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_SH)
        except (ImportError, OSError):
            pass  # no flock here (Windows): removal is still atomic
        try:
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def read_metadata(self, key: str) -> Optional[Dict[str, Any]]:
        """hubcache's metadata of entry ``key``, or None (not cached by hubcache)."""
        try:
            with open(self._sibling(key, METADATA_SUFFIX), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

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
        if require_saved_model:
            if not names.intersection(SAVED_MODEL_FILES):
                return Status(None, "it has no saved_model.pb")
            problem = _variables_problem(os.path.join(directory, "variables"))
            if problem:
                return Status(None, problem)
        return Status(directory)

    def fetch(
        self,
        key: str,
        handle: str,
        produce: Producer,
        *,
        require_saved_model: bool,
        lock_timeout: float,
        sha256: Optional[str] = None,
    ) -> str:
        """The valid entry for ``key``, made by ``produce`` if need be.

        Concurrent callers wait on a per-entry lock; the first downloads, the
        others find its entry published when the lock is released. With
        ``sha256``, an entry fetched from another archive is fetched again, and
        a download with another hash raises :class:`IntegrityError`.
        """
        status = self.lookup(key, require_saved_model=require_saved_model, sha256=sha256)
        if status.valid:
            assert status.path is not None
            return status.path
        with _cache_errors(handle, self.root):
            self.ensure_root()
            with self._locked(key, handle, lock_timeout):
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
                return self._make(key, handle, produce, require_saved_model, sha256)

    def _make(
        self, key: str, handle: str, produce: Producer, require_saved_model: bool, sha256: Optional[str]
    ) -> str:
        self._remove_leftovers(key)
        tmp = self._sibling(key, f"{TMP_INFIX}{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}")
        os.mkdir(tmp)  # mode 0o777 less the umask: a shared cache stays readable
        try:
            info = produce(tmp)
            if sha256 and info.get("sha256") != sha256.lower():
                raise IntegrityError(
                    f"the archive downloaded for {handle} has SHA-256 {info.get('sha256')}, not "
                    f"the expected {sha256}: nothing was cached. The model changed upstream or "
                    "the download was tampered with; check the pinned hash.",
                    handle=handle,
                )
            problem = _check_content(tmp, info["files"], require_saved_model)
            if problem:
                raise ArchiveError(
                    f"the archive for {handle} {problem}, so it is not a usable model; nothing "
                    "was cached. Check that the handle points at a SavedModel archive.",
                    handle=handle,
                )
            return self._publish(key, handle, tmp, info, require_saved_model, sha256)
        finally:
            _remove_tree(tmp)

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
            _remove_tree(trash)
        metadata = dict(info)
        metadata.setdefault("fetched_at", _now_iso())  # an imported entry keeps its own
        metadata.update(
            format=METADATA_FORMAT,
            handle=handle,
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
        self._touch(key)
        st = os.stat(marker)
        _validated[directory] = ((st.st_ino, st.st_mtime_ns), metadata.get("sha256"))
        log.info("Cached %s in %s", handle, directory)
        return directory

    def ensure_root(self) -> None:
        """Create the cache root, tagged so that backup tools skip it."""
        os.makedirs(self.root, exist_ok=True)
        tag = os.path.join(self.root, "CACHEDIR.TAG")
        if not os.path.exists(tag):
            _write_atomic(tag, CACHEDIR_TAG)

    def _remove_leftovers(self, key: str) -> None:
        """Delete what dead processes left of ``key``: trash, and temporary
        directories whose process (named in the directory) is gone."""
        with os.scandir(self.root) as it:
            names = [e.name for e in it if e.name.startswith(key)]
        for name in names:
            if name.startswith(key + TRASH_INFIX) or (
                name.startswith(key + TMP_INFIX) and owner_is_dead(name[len(key + TMP_INFIX) :])
            ):
                log.info("Removing %s, left by an interrupted download", name)
                _remove_tree(os.path.join(self.root, name))

    def _locked(self, key: str, handle: str, timeout: float):  # type: ignore[no-untyped-def]
        return _EntryLock(self._sibling(key, LOCK_SUFFIX), handle, timeout)


class _EntryLock:
    """The per-entry file lock. The OS drops it if its holder dies, so a waiter
    goes on as soon as a crashed download's process is gone."""

    def __init__(self, path: str, handle: str, timeout: float) -> None:
        from filelock import FileLock  # imported here: only writers need it

        # 0o666: in a cache shared by several users, any of them may take the lock.
        self._lock = FileLock(path, mode=0o666)
        self._path = path
        self._handle = handle
        self._timeout = timeout

    def acquire_now(self) -> None:
        """Take the lock or raise ``filelock.Timeout`` at once."""
        self._lock.acquire(timeout=0)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> "_EntryLock":
        from filelock import Timeout

        try:
            self.acquire_now()
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
        self.release()


def owner_is_dead(suffix: str) -> bool:
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


def _check_entry(directory: str, marker: str, require_saved_model: bool) -> Tuple[Dict[str, Any], Optional[str]]:
    """(metadata, why the entry at ``directory`` is not intact, or None if it is)."""
    try:
        with open(marker, encoding="utf-8") as f:
            metadata = json.load(f)
        files = dict(metadata["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}, "its metadata file is unreadable"
    return metadata, _check_files(directory, files, require_saved_model)


def _check_files(directory: str, files: Dict[str, int], require_saved_model: bool) -> Optional[str]:
    """Why the files recorded for ``directory`` are not all there, or None."""
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


_SHARD = re.compile(r"variables\.data-(\d+)-of-(\d+)$")


def _variables_problem(variables: str) -> Optional[str]:
    """Why a SavedModel's ``variables/`` is incomplete, or None: every shard
    that ``variables.data-i-of-n`` names, and the index, must be there."""
    try:
        names = set(os.listdir(variables))
    except FileNotFoundError:
        return None  # a SavedModel without variables
    except OSError as e:
        return f"its variables cannot be read ({e.strerror})"
    counts = {int(m.group(2)) for m in map(_SHARD.match, names) if m}
    if not counts:
        return "variables/variables.index is there without its data" if "variables.index" in names else None
    if "variables.index" not in names:
        return "variables/variables.index went missing"
    n = max(counts)
    missing = [i for i in range(n) if f"variables.data-{i:05d}-of-{n:05d}" not in names]
    if missing:
        return f"variables/variables.data-{missing[0]:05d}-of-{n:05d} went missing"
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
