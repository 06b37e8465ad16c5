"""Safe streaming extraction of tar archives (plain, gzip, bz2 or xz).

:func:`extract` reads an iterable of byte chunks (the HTTP body) once, in a
pipeline of three threads so that network, inflate and disk overlap on two
cores (hashlib, zlib/isal and ``os.write`` release the GIL): chunks are pulled
in one thread, inflated in a second (by python-isal when installed,
``hubcache[fast]``), and the tar stream (:mod:`hubcache.tar`) is parsed and
written in the calling thread. Queues are short: memory does not grow with the
archive, and no copy of it is kept.

:class:`_SafeWriter` (for any archive format) refuses absolute names, ``..``,
paths over ``MAX_DEPTH`` deep, hard links, devices, fifos, sparse files,
symlinks leading outside (checked again on disk at the end, iteratively) and
writes through symlinks. Every input is bounded, so a hostile body can neither
hang extraction nor grow its memory: :class:`Limits`, ``MAX_SILENT_INPUT``,
``XZ_MEMLIMIT``, the tar reader's bounds, and ``tar.MAX_TRAILER`` after the
end-of-archive marker, inflated and as downloaded.

What the archive causes raises :class:`ArchiveError` (naming the handle and
the member), names the filesystem refuses or that clash included; disk faults
(ENOSPC, EDQUOT, EACCES, EPERM, EROFS, EIO) stay OSError, the cache's. The
caller publishes the directory only if :func:`extract` returns.
"""

from __future__ import annotations

import bz2
import errno
import functools
import lzma
import os
import posixpath
import queue
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from .errors import ArchiveError
from .tar import BLOCK, MAX_TRAILER, Member, TarReader, is_header, trailer_error

try:  # the optional accelerated inflate and CRC (pip install 'hubcache[fast]')
    from isal import isal_zlib as _gzip_lib
except ImportError:
    _gzip_lib = zlib  # type: ignore[misc]

OUT_SIZE = 2 << 20  # most bytes one inflate step hands on
QUEUE_DEPTH = 4  # chunks waiting between two stages
RATIO_FLOOR = 256 << 20  # the ratio bound applies once this many bytes came out
#: The most compressed bytes in a row that may yield nothing: a bz2 block takes
#: ~900 KB before its first byte; more is padding, empty streams or a hostile
#: header field (a gzip comment has no length), not data.
MAX_SILENT_INPUT = 8 << 20
#: The xz decoder's memory: ``xz -9`` needs 65 MiB, but a stream may ask for a
#: dictionary of up to 4 GiB, which fills as it decompresses.
XZ_MEMLIMIT = 128 << 20
#: The most components in a member's path (twice that in a symlink's target):
#: tree walks stay shallow, link checks cheap.
MAX_DEPTH = 128
MAX_LINK_HOPS = 40  # symlinks followed to resolve one path, as Linux's MAXSYMLINKS
_LINK_STEPS = (1 << 20, 64)  # steps to resolve every symlink: a base, plus per link
_GZIP_MAGIC = b"\x1f\x8b"
_BZ2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY
# Errors from creating a member that its name causes (too long, a clash with
# another member, a name the filesystem refuses): the archive's fault, not the cache's.
_NAME_ERRNOS = {getattr(errno, n, None) for n in (
    "ENAMETOOLONG", "EEXIST", "ENOTDIR", "EISDIR", "ELOOP", "EINVAL", "EILSEQ", "EMLINK", "ENOTEMPTY")} - {None}

ACCELERATED = _gzip_lib is not zlib


def crc32(data: Any, value: int) -> int:
    """CRC-32, by isal for large pieces. Small ones go to zlib, which keeps the
    GIL for them: isal always releases it, and with the inflate thread busy each
    release costs a thread switch (20,000 small files: 4.3 s against 0.6 s)."""
    if ACCELERATED and len(data) >= 1 << 16:
        return _gzip_lib.crc32(data, value)
    return zlib.crc32(data, value)
_DECODE_ERRORS = (zlib.error, getattr(_gzip_lib, "error", zlib.error), lzma.LZMAError, OSError, EOFError, ValueError)


@dataclass(frozen=True)
class Limits:
    """Bounds on one archive, against bombs and absurd inputs (0: no bound)."""

    max_size: int = 0  # bytes of member data in all (extended tar headers' data too)
    max_files: int = 0  # members of any type (extended tar headers too)
    max_ratio: float = 0  # decompressed bytes per compressed byte, past RATIO_FLOOR


@dataclass
class Extracted:
    """What :func:`extract` wrote: regular files (relative path -> size, and ->
    CRC-32 of the content, for later verification) and symlinks."""

    files: Dict[str, int] = field(default_factory=dict)
    crc32: Dict[str, int] = field(default_factory=dict)
    links: Dict[str, str] = field(default_factory=dict)


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
    member) for data that is not a tar archive, is corrupt or truncated, holds
    a member that would escape ``dest`` or that the filesystem cannot hold, or
    exceeds ``limits``.
    """
    pipes: List[_Pipe] = []
    try:
        source = _Pipe(iter(chunks), "hubcache-fetch")
        pipes.append(source)
        head, raw = _peek(iter(source), BLOCK)
        fmt = _format_of(head, handle)
        if fmt is None:
            tar_bytes: Iterator[bytes] = raw
        else:
            inflater = _Pipe(_inflate(raw, fmt, handle, limits.max_ratio), "hubcache-inflate")
            pipes.append(inflater)
            tar_bytes = iter(inflater)
        reader = TarReader(tar_bytes, handle, _Budget(handle, limits).charge)
        writer = _SafeWriter(dest, handle)
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
            raise self._refuse(name, f"is beyond the {most_files} members allowed (tar's extended "
                               "headers count)", "has that many files", f"HUBCACHE_MAX_FILES (now {most_files})")
        if most_bytes and self.size > most_bytes:
            raise self._refuse(name, f"({_human(size)}) takes the archive past the {_human(most_bytes)} "
                               "allowed", "is that large", f"HUBCACHE_MAX_SIZE (now {_human(most_bytes)})")

    def _refuse(self, name: str, why: str, really: str, setting: str) -> ArchiveError:
        return ArchiveError(
            f"the archive for {self.handle} was refused: member {name!r} {why}. Nothing was "
            f"installed. If the model really {really}, raise {setting}; 0 turns the bound off. "
            "If not, the archive may be malicious: report it to its publisher.",
            handle=self.handle,
            member=name,
        )


# ----------------------------------------------------------------- threading


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class _Pipe:
    """Runs ``source`` in a daemon thread; iterating the pipe yields its items
    through a short queue, and re-raises its exception where it is consumed."""

    def __init__(self, source: Iterator[Any], name: str) -> None:
        self._queue: "queue.Queue[Any]" = queue.Queue(QUEUE_DEPTH)
        self._stop = threading.Event()
        self._pulled = 0  # bytes taken from the source
        self._limit: float = float("inf")  # and what to raise past it
        self._over: BaseException = ArchiveError("")
        self._thread = threading.Thread(target=self._run, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _run(self, source: Iterator[Any]) -> None:
        try:
            for item in source:
                self._pulled += len(item)
                if self._pulled > self._limit:
                    raise self._over
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # handed to the consumer, re-raised there
            self._put(_Raised(e))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # e.g. the download's progress bar

    def stop_after(self, n: int, error: BaseException) -> None:
        """Raise ``error`` after ``n`` more bytes from the source: counted here, it
        stops even while the next stage yields nothing (zeros after a gzip)."""
        self._over = error
        self._limit = self._pulled + n

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop the producer (if it still runs) and wait a moment for it."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=2)


def _peek(it: Iterator[bytes], n: int) -> Tuple[bytes, Iterator[bytes]]:
    """The first ``n`` bytes of ``it`` (fewer at its end), and an iterator over all."""
    head: List[bytes] = []
    got = 0
    for chunk in it:
        head.append(chunk)
        got += len(chunk)
        if got >= n:
            break
    joined = b"".join(head)

    def again() -> Iterator[bytes]:
        if joined:
            yield joined
        yield from it

    return joined[:n], again()


# ------------------------------------------------------------------- formats


@dataclass(frozen=True)
class _Format:
    name: str
    magic: bytes
    new: Callable[[], Any]  # a decoder: decompress(data, max_length), eof, unused_data, needs_input


class _ZlibGzip:
    """zlib's (or isal's) gzip decoder behind the interface of bz2/lzma decompressors."""

    def __init__(self) -> None:
        self._d = _gzip_lib.decompressobj(16 + zlib.MAX_WBITS)

    def __getattr__(self, name: str) -> Any:  # eof, unused_data
        return getattr(self._d, name)

    @property
    def needs_input(self) -> bool:
        return not self._d.unconsumed_tail

    def decompress(self, data: bytes, max_length: int) -> bytes:
        tail = self._d.unconsumed_tail
        return self._d.decompress(tail + data if tail else data, max_length)


_FORMATS = (
    _Format("gzip", _GZIP_MAGIC, _ZlibGzip),
    _Format("bz2", _BZ2_MAGIC, bz2.BZ2Decompressor),
    _Format("xz", _XZ_MAGIC, functools.partial(lzma.LZMADecompressor, memlimit=XZ_MEMLIMIT)),
)


def is_compressed(head: bytes) -> bool:
    """Whether ``head`` starts like gzip, bz2 or xz data."""
    return any(head.startswith(f.magic) for f in _FORMATS)


def _format_of(head: bytes, handle: str) -> Optional[_Format]:
    """The compression of data starting with ``head``; None for a plain tar."""
    for fmt in _FORMATS:
        if head.startswith(fmt.magic):
            return fmt
    if is_header(head):
        return None
    raise ArchiveError(
        f"the download for {handle} is not an archive: it starts with {_describe(head)}, "
        "not tar, gzip, bz2 or xz data. Check that the handle points at a model archive.",
        handle=handle,
    )


def _inflate(chunks: Iterator[bytes], fmt: _Format, handle: str, max_ratio: float) -> Iterator[bytes]:
    """The decompressed bytes of ``chunks``, at most OUT_SIZE at a time; several
    concatenated streams (gzip, bz2 and xz allow that) and zero padding after
    the last are accepted, anything else after it is not."""
    decoder = fmt.new()
    fed = False  # the current decoder has been given data
    ended = False  # the current decoder's stream is over and its leftovers taken
    bytes_in = bytes_out = silent = 0  # silent: compressed bytes since the last output
    carry = b""  # bytes after a stream's end, too few yet to tell what they are
    for data in chunks:
        bytes_in += len(data)
        silent += len(data)
        while True:
            if decoder.eof and not ended:
                data, ended = decoder.unused_data + data, True
            if ended:
                data, carry = (carry + data).lstrip(b"\0"), b""
                if len(data) < len(fmt.magic):
                    carry = data
                    break
                if not data.startswith(fmt.magic):
                    raise _trailing_data(handle)
                decoder, fed, ended = fmt.new(), False, False
            if not data and decoder.needs_input:
                break
            try:
                out = decoder.decompress(data, OUT_SIZE)
            except _DECODE_ERRORS as e:
                hint = f"it needs over {XZ_MEMLIMIT >> 20} MiB to inflate, or " if "memory" in str(e).lower() else ""
                raise ArchiveError(
                    f"the archive for {handle} has corrupt {fmt.name} data ({e}): {hint}the "
                    "download is damaged; try again.",
                    handle=handle,
                ) from None
            data, fed = b"", True
            if out:
                bytes_out += len(out)
                silent = 0
                if max_ratio and bytes_out > RATIO_FLOOR and bytes_out > max_ratio * bytes_in:
                    raise ArchiveError(
                        f"the archive for {handle} was refused: it expands more than "
                        f"{max_ratio:g} times (a decompression bomb?). Nothing was installed. If "
                        "the model really is that compressible, raise HUBCACHE_MAX_RATIO (now "
                        f"{max_ratio:g}; 0 turns the bound off).",
                        handle=handle,
                    )
                yield out
        if silent > MAX_SILENT_INPUT:
            raise ArchiveError(
                f"the archive for {handle} has over {MAX_SILENT_INPUT >> 20} MiB of {fmt.name} data "
                "in a row that holds nothing (padding, empty streams, header fields): it is "
                "damaged or malicious. Nothing was installed; report it to the publisher.",
                handle=handle,
            )
    leftover = carry + (decoder.unused_data if decoder.eof and not ended else b"")
    if leftover.strip(b"\0"):
        raise _trailing_data(handle)
    if fed and not decoder.eof:
        raise ArchiveError(
            f"the archive for {handle} ends in the middle of its compressed data: the download "
            "was cut short; try again.",
            handle=handle,
        )


def _trailing_data(handle: str) -> ArchiveError:
    return ArchiveError(
        f"the archive for {handle} has unexpected data after its compressed stream: it is "
        "damaged or not a single archive. Try again; if it persists, report it to the publisher.",
        handle=handle,
    )


def _describe(head: bytes) -> str:
    if head[:64].lstrip()[:1] == b"<":
        return "an HTML/XML page"
    if not head:
        return "nothing (an empty body)"
    return repr(head[:16])


# ---------------------------------------------------------------- safe writer

_MALICIOUS = "the archive may be malicious, so report it to its publisher"
_REFUSED_KINDS = {"hardlink": "is a hard link", "device": "is a device file", "fifo": "is a fifo",
                  "sparse": "is a sparse file (tar --sparse), which hubcache does not extract"}


class _SafeWriter:
    """Writes members under ``dest``, refusing any that could escape it."""

    def __init__(self, dest: str, handle: str) -> None:
        self.dest = dest
        self.handle = handle
        self.result = Extracted()
        self._dirs = {""}  # relative dirs known to be real directories we made
        self._names = set()  # every member name seen, to refuse duplicates

    def _refuse(self, name: str, why: str, advice: str = _MALICIOUS) -> ArchiveError:
        return ArchiveError(
            f"the archive for {self.handle} was refused: member {name!r} {why}. Nothing was "
            f"installed; {advice}.",
            handle=self.handle,
            member=name,
        )

    def _os(self, name: str, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)``, blaming the archive for the errors a member's name causes."""
        try:
            return call(*args)
        except OSError as e:
            if e.errno not in _NAME_ERRNOS:
                raise  # the disk's or the cache's: full, read-only...
            raise self._refuse(name, f"cannot be created ({e.strerror}): the filesystem refuses its "
                               "name, or it clashes with another member", "report it to its publisher") from None

    def add(self, member: Member, reader: TarReader) -> None:
        kind = member.kind
        if kind in _REFUSED_KINDS:
            link = f" (to {member.linkname!r})" if kind == "hardlink" else ""
            advice = "re-create the archive without --sparse (-S)" if kind == "sparse" else _MALICIOUS
            raise self._refuse(member.name, _REFUSED_KINDS[kind] + link, advice)
        if kind not in ("file", "dir", "symlink"):
            raise self._refuse(member.name, f"has an unsupported type ({member.type!r})")
        rel = self._relative(member.name)
        if rel in self._names:
            raise self._refuse(member.name, "appears twice in the archive")
        if rel == "":
            if kind == "dir":
                return  # the archive root ("./")
            raise self._refuse(member.name, "has an empty name")
        self._names.add(rel)
        slash = rel.rfind("/")
        if slash > 0:
            self._make_dirs(rel[:slash], member.name)
        target = os.path.join(self.dest, rel)
        if kind == "file":
            self._write_file(member, reader, rel, target)
        elif kind == "symlink":
            self._make_symlink(member, rel, target)
        elif rel not in self._dirs:
            self._os(member.name, os.mkdir, target)
            self._dirs.add(rel)

    def _relative(self, name: str) -> str:
        if "\0" in name:
            raise self._refuse(name, "has a NUL byte in its name")
        if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
            raise self._refuse(name, "has an absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._refuse(name, "has '..' in its path")
        if len(parts) > MAX_DEPTH:
            raise self._refuse(name, f"is {len(parts)} levels deep, more than the {MAX_DEPTH} allowed")
        return "/".join(parts)

    def _make_dirs(self, rel_dir: str, name: str) -> None:
        if rel_dir in self._dirs:
            return
        path = ""
        for part in rel_dir.split("/"):
            path = f"{path}/{part}" if path else part
            if path in self._dirs:
                continue
            if path in self.result.links:
                raise self._refuse(name, f"would be written through the symlink {path!r}")
            if path in self.result.files:
                raise self._refuse(name, f"would be written under the file {path!r}")
            self._os(name, os.mkdir, os.path.join(self.dest, path))
            self._dirs.add(path)

    def _write_file(self, member: Member, reader: TarReader, rel: str, target: str) -> None:
        mode = 0o777 if member.mode & 0o100 else 0o666  # the umask trims it
        fd = self._os(member.name, os.open, target, _CREATE, mode)
        crc = 0
        try:
            for piece in reader.data(member.size):
                crc = crc32(piece, crc)
                while piece:
                    piece = piece[os.write(fd, piece) :]
        finally:
            os.close(fd)
        self.result.files[rel] = member.size
        self.result.crc32[rel] = crc

    def _make_symlink(self, member: Member, rel: str, target: str) -> None:
        link = member.linkname
        if not link or link.startswith("/") or (len(link) > 1 and link[1] == ":") or "\0" in link:
            raise self._refuse(member.name, f"is a symlink to an absolute or invalid path ({link!r})")
        if link.count("/") >= 2 * MAX_DEPTH:
            raise self._refuse(member.name, f"is a symlink to a path over {2 * MAX_DEPTH} levels deep")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
        if resolved == ".." or resolved.startswith("../"):
            raise self._refuse(member.name, f"is a symlink pointing outside the model ({link!r})")
        self._os(member.name, os.symlink, link, target)
        self.result.links[rel] = link

    def check_links(self) -> None:
        """Resolve every symlink against the final tree, as the kernel would: a
        chain of links, each harmless when made, must not lead outside ``dest``,
        not even on the way back into it (``dest`` is renamed when published).
        Iterative, and bounded in links followed and in work."""
        steps = _LINK_STEPS[0] + _LINK_STEPS[1] * len(self.result.links)
        targets: Dict[str, Optional[str]] = {}  # relative path -> its link target, None if no link
        for rel, link in self.result.links.items():
            todo = rel.split("/")[::-1]  # the components still to walk, the next one last
            reached: List[str] = []  # the directories walked through, as relative paths
            hops = 0
            while todo:
                steps -= 1
                if steps < 0:
                    raise self._refuse(rel, "is one of too many symlinks, or too tangled ones, to check")
                part = todo.pop()
                if part == "..":
                    if not reached:
                        raise self._refuse(rel, f"is a symlink that resolves outside the model ({link!r})")
                    reached.pop()
                elif part not in ("", "."):
                    path = f"{reached[-1]}/{part}" if reached else part
                    if path not in targets:  # (islink is False for what is not there, or too long to be)
                        full = os.path.join(self.dest, path)
                        targets[path] = os.readlink(full) if os.path.islink(full) else None
                    if targets[path] is None:
                        reached.append(path)
                        continue
                    hops += 1
                    if hops > MAX_LINK_HOPS:
                        raise self._refuse(rel, f"is a symlink loop or a chain of over {MAX_LINK_HOPS} links")
                    todo.extend(targets[path].split("/")[::-1])  # relative: refused otherwise
