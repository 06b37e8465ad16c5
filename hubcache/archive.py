"""Safe streaming extraction of archives: tar, plain or compressed (gzip, bz2,
xz), and zip.

:func:`extract` reads an iterable of byte chunks (the HTTP body) once, in a
pipeline of three threads (:mod:`hubcache.pipeline`): chunks are pulled in one
thread, inflated in a second (by python-isal when installed, ``hubcache[fast]``,
unless the archive is small), and the archive is parsed (:mod:`hubcache.tar`)
and written (:mod:`hubcache.writer`) in the calling thread. No copy of the archive
is kept, and memory does not grow with it.

Every input is bounded, so a hostile body can neither hang extraction nor grow
its memory: :class:`Limits` on the members, the pipeline's bounds on the
compressed data, the tar reader's on its headers, and ``tar.MAX_TRAILER``
after the end-of-archive marker, inflated and as downloaded. What the archive
causes raises :class:`ArchiveError`, naming the handle and the member. The
caller publishes the directory only if :func:`extract` returns.

A zip (:mod:`hubcache.zip`) is read the same way, parsed and inflated in its
own thread, its central directory cross-checked against the members streamed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, List, Optional

from .errors import ArchiveError
from .pipeline import SMALL_ARCHIVE, SMALL_WAIT, Pipe, accelerate, compression_of, inflate, peek
from .records import Record
from .tar import BLOCK, MAX_TRAILER, TarReader, is_header, trailer_error
from .writer import Extracted, SafeWriter
from .zipformat import CENTRAL_END, LOCAL_SIG, MEMBER, is_zip
from .zipformat import Member as ZipMember


class Limits(Record):
    """Bounds on one archive, against bombs and absurd inputs (0: no bound):
    bytes of member data in all, members of any type (tar's extended headers
    count, and their data), and decompressed bytes per compressed byte (past
    RATIO_FLOOR)."""

    __slots__ = ("max_size", "max_files", "max_ratio")

    def __init__(self, max_size: int = 0, max_files: int = 0, max_ratio: float = 0) -> None:
        self.max_size, self.max_files, self.max_ratio = max_size, max_files, max_ratio


NO_LIMITS = Limits()


def extract(
    chunks: Iterable[bytes],
    dest: str,
    *,
    handle: str,
    limits: Limits = NO_LIMITS,
    abort: Optional[Callable[[], None]] = None,
) -> Extracted:
    """Extract the archive whose bytes ``chunks`` yields into the existing,
    empty directory ``dest``.

    Raises :class:`ArchiveError` (naming ``handle`` and, where it applies, the
    member) for data that is not an archive, is corrupt or truncated, holds
    a member that would escape ``dest`` or that the filesystem cannot hold, or
    exceeds ``limits``.
    """
    pipes: List[Pipe] = []
    try:
        source = Pipe(iter(chunks), "hubcache-fetch")
        pipes.append(source)
        head, raw = peek(iter(source), BLOCK)
        if not source.ended_within(SMALL_ARCHIVE, SMALL_WAIT):
            accelerate()
        if is_zip(head):
            from .zip import ZipReader  # imported for zips alone: most archives are tar.gz

            budget = Budget(handle, limits)
            zipped = ZipReader(raw, handle, budget.charge, budget.grow, limits.max_ratio)
            batches = Pipe(_batches(zipped.events()), "hubcache-unzip")
            pipes.append(batches)
            return _unzip(Unzipped(event for batch in batches for event in batch), SafeWriter(dest, handle))
        fmt = compression_of(head)
        if fmt is None:
            if not is_header(head):
                raise _not_an_archive(head, handle)
            tar_bytes: Iterator[bytes] = raw
        else:
            inflater = Pipe(inflate(raw, fmt, handle, limits.max_ratio), "hubcache-inflate")
            pipes.append(inflater)
            tar_bytes = iter(inflater)
        reader = TarReader(tar_bytes, handle, Budget(handle, limits).charge)
        writer = SafeWriter(dest, handle)
        for member in reader.members():
            writer.add(member, reader)
        # Read to the end: a compressed stream's CRC and length are checked there,
        # and the caller hashes the whole download. Only padding should be left,
        # so at most MAX_TRAILER bytes more, inflated and as downloaded.
        source.stop_after(MAX_TRAILER, trailer_error(handle))
        reader.finish()
        writer.check_links()
        return writer.result
    except BaseException:
        # ``abort`` stops the source first (e.g. shuts its socket down), so that
        # a read blocked in the fetch thread ends now, not at its timeout.
        if abort is not None:
            abort()
        raise
    finally:
        for pipe in reversed(pipes):
            pipe.close()


#: The most data, and events, a zip reader's batch holds (see :func:`_batches`).
BATCH_BYTES, BATCH_EVENTS = 1 << 20, 256


def _batches(events: Iterator[Any]) -> Iterator[List[Any]]:
    """``events`` in lists: a queue between threads costs a few microseconds an
    item, as much as writing a small file (5,000 small files: 0.27 s unbatched,
    0.15 s batched). A batch holds up to BATCH_BYTES of data, counting the whole
    chunk a view keeps alive."""
    batch: List[Any] = []
    held = 0
    for event in events:
        batch.append(event)
        held += 0 if isinstance(event, tuple) else len(getattr(event, "obj", event))
        if held >= BATCH_BYTES or len(batch) >= BATCH_EVENTS:
            yield batch
            batch, held = [], 0
    yield batch


class Unzipped:
    """The members and data of a :class:`~hubcache.zip.ZipReader`'s events, for
    the writer; ``symlinks`` once :meth:`members` is done."""

    def __init__(self, events: Iterator[Any]) -> None:
        self._events = events
        self._open = False  # inside a member's data
        self.symlinks: List[str] = []

    def members(self) -> Iterator[ZipMember]:
        for event in self._events:  # (data events are read by _rest, in their member's turn)
            if event[0] == MEMBER:
                self._open = True
                yield event[1]
                for _ in self._rest():  # whatever the writer did not read
                    pass
            elif event[0] == CENTRAL_END:
                self.symlinks = event[1]

    def data(self, size: int) -> Iterator[Any]:
        """The current member's data (its size is checked by the reader, not by ``size``)."""
        return self._rest()

    def _rest(self) -> Iterator[Any]:
        for event in self._events if self._open else ():
            if isinstance(event, tuple):  # (DATA_END,)
                self._open = False
                return
            yield event


def _unzip(unzipped: Unzipped, writer: SafeWriter) -> Extracted:
    for member in unzipped.members():
        writer.add(member, unzipped)
    # A zip says a member is a symlink only in its central directory, after its
    # data (the target) was written as a file: it becomes the symlink now,
    # through the writer's checks, before the tree's links are checked.
    for name in unzipped.symlinks:
        writer.file_to_symlink(name)
    writer.check_links()
    return writer.result


def _not_an_archive(head: bytes, handle: str) -> ArchiveError:
    if LOCAL_SIG in head:
        return ArchiveError(
            f"the archive for {handle} was refused: it has data before its first zip member (a "
            "self-extracting archive, or a zip with something prepended), which other zip tools may read "
            "differently. Nothing was installed; re-create it as a plain zip.",
            handle=handle,
        )
    if head[:64].lstrip()[:1] == b"<":
        what = "an HTML/XML page"
    elif not head:
        what = "nothing (an empty body)"
    else:
        what = repr(head[:16])
    return ArchiveError(
        f"the download for {handle} is not an archive: it starts with {what}, "
        "not tar, zip, gzip, bz2 or xz data. Check that the handle points at a model archive.",
        handle=handle,
    )


def _human(n: float) -> str:
    units = ["bytes", "KiB", "MiB", "GiB", "TiB"]
    while n >= 1024 and len(units) > 1:
        n, units = n / 1024, units[1:]
    return f"{n:.1f} {units[0]}" if isinstance(n, float) else f"{n} bytes"


class Budget:
    """Charges each member (and extended header) against the archive's limits."""

    def __init__(self, handle: str, limits: Limits) -> None:
        self.handle, self.limits = handle, limits
        self.members = self.size = 0

    def charge(self, name: str, size: int) -> None:
        self.members += 1
        most_files = self.limits.max_files
        if most_files and self.members > most_files:
            raise self._refuse(
                name,
                f"is beyond the {most_files} members allowed (tar's extended headers count)",
                "has that many files",
                f"HUBCACHE_MAX_FILES (now {most_files})",
            )
        self.size += size
        self._check_size(name, f"({_human(size)}) ")

    def grow(self, name: str, size: int) -> None:
        """Charge ``size`` more bytes to the member ``name``: the data of a zip
        member whose size comes after it is charged as it comes out."""
        self.size += size
        self._check_size(name, "")

    def _check_size(self, name: str, size: str) -> None:
        most_bytes = self.limits.max_size
        if most_bytes and self.size > most_bytes:
            raise self._refuse(
                name,
                f"{size}takes the archive past the {_human(most_bytes)} allowed",
                "is that large",
                f"HUBCACHE_MAX_SIZE (now {_human(most_bytes)})",
            )

    def _refuse(self, name: str, why: str, really: str, setting: str) -> ArchiveError:
        return ArchiveError(
            f"the archive for {self.handle} was refused: member {name!r} {why}. Nothing was "
            f"installed. If the model really {really}, raise {setting}; 0 turns the bound off. "
            "If not, the archive may be malicious: report it to its publisher.",
            handle=self.handle,
            member=name,
        )
