"""Safe streaming extraction of archives: tar, plain or compressed (gzip, bz2, xz).

:func:`extract` reads an iterable of byte chunks (the HTTP body) once, in a
pipeline of three threads (:mod:`hubcache.pipeline`): chunks are pulled in one
thread, inflated in a second (by python-isal when installed,
``hubcache[fast]``), and the archive is parsed (:mod:`hubcache.tar`) and
written (:mod:`hubcache.writer`) in the calling thread. No copy of the archive
is kept, and memory does not grow with it.

Every input is bounded, so a hostile body can neither hang extraction nor grow
its memory: :class:`Limits` on the members, the pipeline's bounds on the
compressed data, the tar reader's on its headers, and ``tar.MAX_TRAILER``
after the end-of-archive marker, inflated and as downloaded. What the archive
causes raises :class:`ArchiveError`, naming the handle and the member. The
caller publishes the directory only if :func:`extract` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional

from .errors import ArchiveError
from .pipeline import Pipe, compression_of, inflate, peek
from .tar import BLOCK, MAX_TRAILER, TarReader, is_header, trailer_error
from .writer import Extracted, SafeWriter


@dataclass(frozen=True)
class Limits:
    """Bounds on one archive, against bombs and absurd inputs (0: no bound)."""

    max_size: int = 0  # bytes of member data in all (extended tar headers' data too)
    max_files: int = 0  # members of any type (extended tar headers too)
    max_ratio: float = 0  # decompressed bytes per compressed byte, past RATIO_FLOOR


def extract(
    chunks: Iterable[bytes],
    dest: str,
    *,
    handle: str,
    limits: Limits = Limits(),
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
        fmt = compression_of(head)
        if fmt is None:
            if not is_header(head):
                raise _not_an_archive(head, handle)
            tar_bytes: Iterator[bytes] = raw
        else:
            inflater = Pipe(inflate(raw, fmt, handle, limits.max_ratio), "hubcache-inflate")
            pipes.append(inflater)
            tar_bytes = iter(inflater)
        reader = TarReader(tar_bytes, handle, _Budget(handle, limits).charge)
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


def _not_an_archive(head: bytes, handle: str) -> ArchiveError:
    if head[:64].lstrip()[:1] == b"<":
        what = "an HTML/XML page"
    elif not head:
        what = "nothing (an empty body)"
    else:
        what = repr(head[:16])
    return ArchiveError(
        f"the download for {handle} is not an archive: it starts with {what}, "
        "not tar, gzip, bz2 or xz data. Check that the handle points at a model archive.",
        handle=handle,
    )


def _human(n: float) -> str:
    units = ["bytes", "KiB", "MiB", "GiB", "TiB"]
    while n >= 1024 and len(units) > 1:
        n, units = n / 1024, units[1:]
    return f"{n:.1f} {units[0]}" if isinstance(n, float) else f"{n} bytes"


class _Budget:
    """Charges each member (and extended header) against the archive's limits."""

    def __init__(self, handle: str, limits: Limits) -> None:
        self.handle, self.limits = handle, limits
        self.members = self.size = 0

    def charge(self, name: str, size: int) -> None:
        self.members += 1
        self.size += size
        most_files, most_bytes = self.limits.max_files, self.limits.max_size
        if most_files and self.members > most_files:
            raise self._refuse(
                name,
                f"is beyond the {most_files} members allowed (tar's extended headers count)",
                "has that many files",
                f"HUBCACHE_MAX_FILES (now {most_files})",
            )
        if most_bytes and self.size > most_bytes:
            raise self._refuse(
                name,
                f"({_human(size)}) takes the archive past the {_human(most_bytes)} allowed",
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
