"""The shared tier on the fetch path: how a cache miss uses ``HUBCACHE_REMOTE``
(see :mod:`hubcache.remote` for the store and its layout).

Inside the entry's lock, a miss reads the handle's index record. If it names a
blob, the blob is streamed through the same safe extractor while it is hashed;
it is used only if its size, SHA-256 and any pin all agree. With no record, a
read-write node takes the handle's lease (a conditional create) and reads the
index again, since the last holder may have finished in between. The holder
downloads upstream, teeing the archive into a spool file next to the entry;
after the entry is published it uploads the blob, writes the index and gives
the lease up (:meth:`SharedFetch.finish`). The others poll the index with a
jittered backoff, take over a lease whose holder died, and go upstream after
``HUBCACHE_REMOTE_WAIT``.

The tier may only save time: whatever goes wrong with it (unreachable, 403,
5xx, silence, a damaged blob) costs one warning and the fetch goes upstream.
Correctness rests on hashes and atomic publication, never on the lease.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional, Set, Tuple

from .errors import ArchiveError, RemoteError

if TYPE_CHECKING:
    from .config import Settings
    from .remote import Remote

log = logging.getLogger("hubcache")

#: Upstream download into ``dest``, handing each of the archive's chunks to the
#: callable given (None: no copy wanted); returns what the cache records.
Upstream = Callable[[str, Optional[Callable[[bytes], None]]], Dict[str, Any]]

#: After a store fails, it is left alone this long: a dead bucket then costs one
#: timeout per minute, not one per model.
SKIP_SECONDS = 60.0
#: The poll for another node's upload starts at the first and grows to the second
#: (each wait jittered down to half). A GET a second per waiting machine is cheap
#: beside the download it saves, and a waiter then starts at most ~1 s late.
POLL_FIRST, POLL_MOST = 0.25, 1.0

_lock = threading.Lock()
_remotes: Dict[Tuple[Any, ...], "Remote"] = {}  # opened once per process and configuration
_skip_until: Dict[str, float] = {}  # store -> monotonic time it is next tried
_warned: Set[str] = set()  # stores whose failure has been shown (once per process)


def opened(settings: "Settings") -> "Optional[Remote]":
    """The configured store, opened once per process (a botocore client costs ~100 ms);
    None when there is none, when offline, or while a failed one is left alone."""
    from .remote import open_remote

    if settings.remote is None or settings.offline:
        return None
    config = (settings.remote, settings.remote_endpoint, settings.remote_mode, settings.remote_timeout)
    with _lock:
        if time.monotonic() < _skip_until.get(settings.remote, 0.0):
            return None
        remote = _remotes.get(config)
    if remote is None:
        try:
            remote = open_remote(settings)
        except RemoteError as e:
            failed(settings.remote, e)
            return None
        if remote is None:
            return None
        with _lock:
            remote = _remotes.setdefault(config, remote)
    return remote


def failed(store: str, error: RemoteError) -> None:
    """Leave ``store`` alone for a while, and say why once per process."""
    with _lock:
        _skip_until[store] = time.monotonic() + SKIP_SECONDS
        first = store not in _warned
        _warned.add(store)
    if first:
        log.warning("%s Downloading from upstream instead.", error)
    else:
        log.info("%s Downloading from upstream instead.", error)


class SharedFetch:
    """One cache miss's use of the shared tier: :meth:`produce` runs in the entry's
    lock, :meth:`finish` after it, always."""

    def __init__(
        self,
        remote: "Remote",
        key: str,
        shown: str,
        settings: "Settings",
        pin: Optional[str],
        require_saved_model: bool,
        spool_path: str,
    ) -> None:
        from .remote import lease_owner

        self.remote, self.key, self.shown, self.settings = remote, key, shown, settings
        self.store = remote.url
        self.pin = pin.lower() if pin else None
        self.require_saved_model = require_saved_model
        self.owner = lease_owner()
        self.spool_path = spool_path
        self.usable = True  # False once the store failed: nothing more is asked of it
        self.indexed: Optional[Dict[str, Any]] = None  # the index record, as last read
        self.blob_good = False  # the tier holds a good blob of what was indexed
        self.damaged: Optional[str] = None  # the SHA-256 of an indexed blob found missing or damaged
        self.made: Dict[str, Any] = {}  # what an upstream download produced
        self.spooled = False  # the spool holds all of that download's bytes
        self._holding = threading.Event()
        self._stop = threading.Event()
        self._renewer: Optional[threading.Thread] = None
        self._streaming: Optional[_Upload] = None  # the upload that follows the download

    # -- in the entry's lock ---------------------------------------------------

    def produce(self, upstream: Upstream, dest: str) -> Dict[str, Any]:
        """The entry in ``dest``: from the tier if it has a good copy, else upstream."""
        try:
            found = self._from_tier(dest)
            if found is not None:
                return found
        except RemoteError as e:  # e.g. a blob read cut short: what it extracted goes
            self._failed(e)
            _empty(dest)
        return self._upstream(upstream, dest)

    def _from_tier(self, dest: str) -> Optional[Dict[str, Any]]:
        record = self.indexed = self.remote.get_index(self.key)
        if record is None and self.remote.probe_conditional_writes():  # (False in read-only mode)
            record = self.indexed = self._wait_or_lease()
        if record is None:
            return None
        if self.pin and record["sha256"] != self.pin:
            log.warning(
                "The shared tier %s says %s has SHA-256 %s, but %s is expected: not using it.",
                self.store, self.shown, record["sha256"], self.pin,
            )  # fmt: skip
            return None
        return self._read_blob(record, dest)

    def _wait_or_lease(self) -> Optional[Dict[str, Any]]:
        """The index record once another node wrote it; None when this node is to
        download (it holds the lease, or waited ``HUBCACHE_REMOTE_WAIT`` in vain)."""
        deadline = time.monotonic() + self.settings.remote_wait
        delay, lease_due = POLL_FIRST, 0.0
        while True:
            now = time.monotonic()
            if now >= lease_due:
                if self.remote.try_lease(self.key, self.owner, self.settings.remote_lease):
                    self._holding.set()
                    record = self.remote.get_index(self.key)  # the last holder may just have finished
                    if record is None:
                        self._start_renewing()
                    return record
                # A live holder renews its lease every third of it: asking for it at
                # every poll would only double each waiter's requests.
                lease_due = now + self.settings.remote_lease / 4
            record = self.remote.get_index(self.key)
            if record is not None:
                return record
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "Another machine has been fetching %s for the shared tier %s for over "
                    "HUBCACHE_REMOTE_WAIT=%g s; downloading it from upstream too.",
                    self.shown, self.store, self.settings.remote_wait,
                )  # fmt: skip
                return None
            log.debug("Waiting for another machine's upload of %s", self.shown)
            self._sleep(min(left, delay * random.uniform(0.5, 1.0)))
            delay = min(delay * 1.5, POLL_MOST)

    def _read_blob(self, record: Dict[str, Any], dest: str) -> Optional[Dict[str, Any]]:
        """Extract the indexed blob into ``dest``; None (and ``dest`` emptied) when
        the blob is missing or is not, byte for byte, what the index says."""
        from .archive import extract
        from .layout import check_content

        sha256, size = record["sha256"], record["size"]
        self.damaged = sha256  # until it is read whole and checked
        blob = self.remote.open_blob(sha256)
        if blob is None:
            log.warning(
                "The shared tier %s has no blob %s, which its index names for %s.", self.store, sha256, self.shown
            )
            return None
        digest = hashlib.sha256()
        got = 0

        def chunks() -> Iterator[bytes]:
            nonlocal got
            for chunk in blob:
                got += len(chunk)
                if got > size:
                    raise _UnusableError(f"it has more than the {size} bytes its index says")
                digest.update(chunk)
                yield chunk

        started = time.monotonic()
        try:
            if blob.size != size:
                raise _UnusableError(f"it has {blob.size} bytes, not the {size} its index says")
            extracted = extract(chunks(), dest, handle=self.shown, limits=self.settings.limits())
            if got != size or digest.hexdigest() != sha256:
                raise _UnusableError(f"its SHA-256 is {digest.hexdigest()} ({got} bytes), not {sha256}")
            problem = check_content(extracted.files, self.require_saved_model)
            if problem:  # the right bytes of the wrong archive: an index written by a bad hand
                raise _UnusableError(f"it {problem}")
        except (_UnusableError, ArchiveError) as e:
            log.warning(
                "The blob %s in the shared tier %s is damaged (%s); not using it for %s.",
                sha256, self.store, e, self.shown,
            )  # fmt: skip
            _empty(dest)
            return None
        finally:
            blob.close()
        self.blob_good, self.damaged = True, None
        seconds = max(time.monotonic() - started, 1e-6)
        log.info("Read %s from the shared tier %s: %.1f MiB in %.1f s", self.shown, self.store, size / 2**20, seconds)
        return {
            "source_url": record["source"] if record["source"].isprintable() else "",  # no escapes for `info`
            "downloaded_from": f"{self.store} (shared tier)",
            "bytes": size,
            "sha256": sha256,
            "files": extracted.files,
            "crc32": extracted.crc32,
            "links": extracted.links,
        }

    def _upstream(self, upstream: Upstream, dest: str) -> Dict[str, Any]:
        from .spool import Spool, no_copy

        if not self._uploading():
            return upstream(dest, None)
        try:
            spool = Spool(self.spool_path, self.shown)
        except OSError as e:
            no_copy(self.shown, e)
            return upstream(dest, None)
        if self.pin:  # the blob's name is known: upload it while it downloads
            self._streaming = _Upload(self.remote, self.pin, spool.follow())
        try:
            self.made = upstream(dest, spool.write)
        finally:
            self.spooled = spool.finish(downloaded=bool(self.made))
        return self.made

    def _uploading(self) -> bool:
        """Whether this node will upload what it downloads: a writer, and the tier
        lacks a good copy of it (or what it holds is for another archive)."""
        return self.usable and not self.remote.read_only and not self.blob_good

    # -- after the entry's lock ------------------------------------------------

    def finish(self, published: bool) -> None:
        """Upload what this node downloaded (once its entry is published), and give
        the lease up. Never raises for the store: the entry is there either way."""
        try:
            streamed = self._streamed()
            if published and self.spooled and self.made and self._uploading():
                self._upload(streamed)
        except RemoteError as e:
            self._failed(e)
        finally:
            self._stop.set()
            if self._renewer is not None:
                self._renewer.join()
            if self._holding.is_set() and self.usable:
                try:
                    self.remote.release_lease(self.key, self.owner)
                except RemoteError as e:
                    self._failed(e)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spool_path)

    def _streamed(self) -> Optional[int]:
        """The bytes the upload that followed the download stored (None: none did)."""
        from .spool import AbandonedError

        if self._streaming is None:
            return None
        self._streaming.join()
        error = self._streaming.error
        if isinstance(error, RemoteError):
            raise error
        if isinstance(error, AbandonedError):
            return None
        if error is not None:  # IntegrityError (not the pinned archive: nothing was stored), OSError
            log.info("Not uploading %s to the shared tier: %s", self.shown, error)
            return None
        return self._streaming.size

    def _upload(self, streamed: Optional[int]) -> None:

        sha256, size = self.made["sha256"], self.made["bytes"]
        if self.indexed is None and not self._holding.is_set():  # raced without a lease: done by another?
            self.indexed = self.remote.get_index(self.key)
            if self.indexed is not None and self.indexed["sha256"] == sha256:
                return
        started = time.monotonic()
        if self._streaming is not None:
            if streamed != size:
                return
        elif sha256 != self.damaged and has_blob(self.remote, sha256, size):
            log.debug("The shared tier has the blob of %s already (another spelling's upload)", self.shown)
        elif not self._put_blob(sha256, size):
            return
        if self.indexed is None or self.indexed["sha256"] != sha256:
            source = self.made.get("downloaded_from", "")
            self.remote.put_index(self.key, index_record(sha256, size, self.shown, source, self.remote, self.owner))
        seconds = max(time.monotonic() - started, 1e-6)
        how = "while downloading it" if self._streaming is not None else f"in {seconds:.1f} s"
        log.info("Uploaded %s to the shared tier %s: %.1f MiB %s", self.shown, self.store, size / 2**20, how)

    def _put_blob(self, sha256: str, size: int) -> bool:
        """Upload the spool as the blob ``sha256``; whether it went up whole."""
        from .errors import IntegrityError

        try:
            with open(self.spool_path, "rb") as spool:
                return self.remote.put_blob(sha256, spool) == size
        except (IntegrityError, OSError) as e:  # the copy is not the download: never index it
            log.warning("Not uploading %s to the shared tier %s: its copy is unusable (%s).", self.shown, self.store, e)
            return False

    # -- the lease -------------------------------------------------------------

    def _start_renewing(self) -> None:
        """Renew the lease every third of its time while this node works, so that
        a slow download is not taken for a dead one."""

        def renew() -> None:
            every = self.settings.remote_lease / 3
            while not self._stop.wait(every):
                try:
                    if not self.remote.try_lease(self.key, self.owner, self.settings.remote_lease):
                        log.info("The lease on %s in the shared tier was taken over; going on", self.shown)
                except RemoteError as e:
                    log.info("Could not renew the lease on %s: %s", self.shown, e)

        self._renewer = threading.Thread(target=renew, name="hubcache-lease", daemon=True)
        self._renewer.start()

    def _sleep(self, seconds: float) -> None:
        cancellation = self.settings.cancellation
        if cancellation is not None:
            cancellation.sleep(seconds)
        else:
            time.sleep(seconds)

    def _failed(self, error: RemoteError) -> None:
        self.usable = False
        failed(self.settings.remote or self.store, error)


def index_record(
    sha256: str, size: int, shown: str, source: str, remote: "Remote", owner: Optional[str] = None
) -> Dict[str, Any]:
    """The index record of an archive this machine put (or found) in the tier."""
    from .cache import utc_iso
    from .remote import INDEX_FORMAT, lease_owner

    return {
        "format": INDEX_FORMAT,
        "sha256": sha256,
        "size": size,
        "handle": shown,
        "source": source,
        "time": utc_iso(),
        "uploader": owner or lease_owner(),
    }


def has_blob(remote: "Remote", sha256: str, size: int) -> bool:
    """Whether the store has a blob of that hash and size (its bytes are checked by readers)."""
    blob = remote.open_blob(sha256)
    if blob is None:
        return False
    blob.close()
    return blob.size == size


def _empty(dest: str) -> None:
    from .fs import remove_tree

    for name in os.listdir(dest):
        remove_tree(os.path.join(dest, name))


class _UnusableError(Exception):
    """A blob that is not what the index says."""


class _Upload(threading.Thread):
    """An upload of a blob in the background: ``size`` stored, or ``error``."""

    def __init__(self, remote: "Remote", sha256: str, chunks: Iterator[bytes]) -> None:
        super().__init__(name="hubcache-upload", daemon=True)
        self.remote, self.sha256, self.chunks = remote, sha256, chunks
        self.size: Optional[int] = None
        self.error: Optional[BaseException] = None
        self.start()

    def run(self) -> None:
        try:
            self.size = self.remote.put_blob(self.sha256, self.chunks)
        except BaseException as e:  # reported by SharedFetch.finish, in the caller's thread
            self.error = e
