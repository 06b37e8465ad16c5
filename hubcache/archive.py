"""Safe streaming extraction of tar archives (plain, gzip, bz2 or xz).

:func:`extract` reads an iterable of byte chunks (the HTTP body) once, from
front to back, in a pipeline of three threads so that network, inflate and
disk overlap on two cores (hashlib, zlib/isal and ``os.write`` release the
GIL): the chunks are pulled in one thread, inflated in a second, and the tar
stream is parsed and written in the calling thread. Queues between them are
short, so memory use does not grow with the archive's size, and no copy of the
archive is kept. The format is detected from the first bytes; gzip is inflated
by python-isal when it is installed (``hubcache[fast]``), else by zlib.

The tar reader is hubcache's own (ustar, pax and GNU long names): member data
goes from the inflated buffers to the files without copies, in large writes.
Nothing may land outside the destination: absolute names, ``..``, hard links,
devices and fifos are refused, symlinks must stay inside, and no member is
written through a symlink. Once every member is written, every symlink is
resolved against the files on disk once more. The caller publishes the
directory only if :func:`extract` returns; on :class:`ArchiveError` it deletes it.
"""

from __future__ import annotations

import bz2
import lzma
import os
import posixpath
import queue
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from .errors import ArchiveError

try:  # the optional accelerated inflate and CRC (pip install 'hubcache[fast]')
    from isal import isal_zlib as _gzip_lib
except ImportError:
    _gzip_lib = zlib  # type: ignore[misc]

OUT_SIZE = 2 << 20  # most bytes one inflate step hands on
QUEUE_DEPTH = 4  # chunks waiting between two stages
RATIO_FLOOR = 256 << 20  # the ratio bound applies once this many bytes came out
BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_GZIP_MAGIC = b"\x1f\x8b"
_BZ2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY

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

    max_size: int = 0  # bytes of member data in all
    max_files: int = 0  # members of any type
    max_ratio: float = 0  # decompressed bytes per compressed byte, past RATIO_FLOOR


@dataclass
class Extracted:
    """What :func:`extract` wrote: regular files (relative path -> size, and ->
    CRC-32 of the content, for later verification) and symlinks."""

    files: Dict[str, int] = field(default_factory=dict)
    crc32: Dict[str, int] = field(default_factory=dict)
    links: Dict[str, str] = field(default_factory=dict)


def extract(chunks: Iterable[bytes], dest: str, *, handle: str, limits: Limits = Limits()) -> Extracted:
    """Extract the archive whose bytes ``chunks`` yields into the existing,
    empty directory ``dest``.

    Raises :class:`ArchiveError` (naming ``handle`` and, where it applies, the
    member) for data that is not a tar archive, is corrupt or truncated, holds
    a member that would escape ``dest``, or exceeds ``limits``.
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
        reader = _TarReader(tar_bytes, handle)
        writer = _SafeWriter(dest, handle, limits)
        for member in reader.members():
            writer.add(member, reader)
        # Read to the end: a gzip stream's CRC and length are checked there, and
        # the caller hashes the whole download.
        for _ in tar_bytes:
            pass
        writer.check_links()
        return writer.result
    finally:
        for pipe in reversed(pipes):
            pipe.close()


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
        self._thread = threading.Thread(target=self._run, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _run(self, source: Iterator[Any]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # handed to the consumer, re-raised there
            self._put(_Raised(e))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # e.g. the download's progress bar

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

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._d.unconsumed_tail

    def decompress(self, data: bytes, max_length: int) -> bytes:
        tail = self._d.unconsumed_tail
        return self._d.decompress(tail + data if tail else data, max_length)


_FORMATS = (
    _Format("gzip", _GZIP_MAGIC, _ZlibGzip),
    _Format("bz2", _BZ2_MAGIC, bz2.BZ2Decompressor),
    _Format("xz", _XZ_MAGIC, lzma.LZMADecompressor),
)


def is_compressed(head: bytes) -> bool:
    """Whether ``head`` starts like gzip, bz2 or xz data."""
    return any(head.startswith(f.magic) for f in _FORMATS)


def _format_of(head: bytes, handle: str) -> Optional[_Format]:
    """The compression of data starting with ``head``; None for a plain tar."""
    for fmt in _FORMATS:
        if head.startswith(fmt.magic):
            return fmt
    if _is_tar_header(head):
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
    bytes_in = bytes_out = 0
    carry = b""  # bytes after a stream's end, too few yet to tell what they are
    for data in chunks:
        bytes_in += len(data)
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
                raise ArchiveError(
                    f"the archive for {handle} has corrupt {fmt.name} data ({e}): the download "
                    "is damaged; try again.",
                    handle=handle,
                ) from None
            data, fed = b"", True
            if out:
                bytes_out += len(out)
                if max_ratio and bytes_out > RATIO_FLOOR and bytes_out > max_ratio * bytes_in:
                    raise ArchiveError(
                        f"the archive for {handle} was refused: it expands more than "
                        f"{max_ratio:g} times (a decompression bomb?). Nothing was installed. If "
                        "the model really is that compressible, raise HUBCACHE_MAX_RATIO (0 turns "
                        "the bound off).",
                        handle=handle,
                    )
                yield out
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
        "damaged or not a single archive.",
        handle=handle,
    )


def _is_tar_header(block: bytes) -> bool:
    return len(block) >= BLOCK and _checksum_ok(block[:BLOCK])


def _describe(head: bytes) -> str:
    if head[:64].lstrip()[:1] == b"<":
        return "an HTML/XML page"
    if not head:
        return "nothing (an empty body)"
    return repr(head[:16])


# ------------------------------------------------------------------ tar format


@dataclass
class _Member:
    name: str
    kind: str  # file, dir, symlink, hardlink, device, fifo, sparse, other
    mode: int
    size: int
    linkname: str
    type: bytes


_KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"2": "symlink", b"1": "hardlink",
          b"3": "device", b"4": "device", b"6": "fifo", b"S": "sparse"}


def _checksum_ok(block: bytes) -> bool:
    try:
        stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 256 + sum(block[156:])
    if stored == unsigned:
        return True
    signed = unsigned - 2 * sum(b for b in block if b > 127) + 2 * sum(b for b in block[148:156] if b > 127)
    return stored == signed  # some old tars sum signed bytes


def _number(field_: bytes) -> int:
    """A numeric header field: octal, or GNU base-256 when the high bit is set."""
    if field_[0] & 0x80:
        if field_[0] == 0xFF:
            raise ValueError("negative number")
        return int.from_bytes(bytes([field_[0] & 0x7F]) + field_[1:], "big")
    text = field_.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> Dict[str, str]:
    records: Dict[str, str] = {}
    while data:
        length_text, _, _ = data.partition(b" ")
        length = int(length_text)
        record = data[len(length_text) + 1 : length]
        data = data[length:]
        key, _, value = record.rstrip(b"\n").partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return records


class _TarReader:
    """The members of a tar stream arriving as chunks; member data is handed
    on as memoryviews of the chunks, without copies."""

    def __init__(self, chunks: Iterator[bytes], handle: str) -> None:
        self._chunks = chunks
        self._handle = handle
        self._view = memoryview(b"")
        self._unread = 0  # data of the current member not consumed yet

    def _more(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._view = memoryview(chunk)
                return True
        return False

    def _take(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer at the end of the stream."""
        if len(self._view) >= n:
            out = self._view[:n].tobytes()
            self._view = self._view[n:]
            return out
        parts = [self._view.tobytes()]
        got = len(parts[0])
        self._view = memoryview(b"")
        while got < n and self._more():
            piece = self._view[: n - got]
            parts.append(piece.tobytes())
            self._view = self._view[len(piece) :]
            got += len(piece)
        return b"".join(parts)

    def data(self, n: int) -> Iterator[memoryview]:
        """The next ``n`` bytes of the current member's data, as views."""
        if n > self._unread:
            raise ValueError("reading past the member's data")
        self._unread -= n
        return self._pieces(n)

    def _pieces(self, n: int) -> Iterator[memoryview]:
        while n:
            if not self._view and not self._more():
                raise self._truncated()
            piece = self._view[:n]
            self._view = self._view[len(piece) :]
            n -= len(piece)
            yield piece

    def _skip(self, n: int) -> None:
        for _ in self._pieces(n):
            pass

    def _truncated(self) -> ArchiveError:
        return ArchiveError(
            f"the archive for {self._handle} is truncated: it ends inside a member, before "
            "tar's end-of-archive marker (a download cut short?). Try again; if it persists, the "
            "published archive is incomplete.",
            handle=self._handle,
        )

    def members(self) -> Iterator[_Member]:
        pax: Dict[str, str] = {}
        long_name: Optional[str] = None
        long_link: Optional[str] = None
        while True:
            block = self._take(BLOCK)
            if len(block) < BLOCK:
                raise self._truncated()
            if block == _ZERO_BLOCK:
                return  # the end-of-archive marker
            if not _checksum_ok(block):
                raise ArchiveError(
                    f"the archive for {self._handle} is not a valid tar archive (a header's "
                    "checksum is wrong): it is corrupt or truncated (a download cut short?); try "
                    "again, and if it persists report it to the publisher.",
                    handle=self._handle,
                )
            type_ = block[156:157]
            try:
                size = _number(block[124:136])
                mode = _number(block[100:108])
            except ValueError:
                raise ArchiveError(
                    f"the archive for {self._handle} is not a valid tar archive (a bad number "
                    "in a header): it is corrupt; try again.",
                    handle=self._handle,
                ) from None
            padded = -size % BLOCK
            if type_ in (b"x", b"X", b"g", b"L", b"K"):
                payload = self._take(size)
                if len(payload) < size:
                    raise self._truncated()
                self._skip(padded)
                if type_ in (b"x", b"X"):
                    pax.update(_pax_records(payload))
                elif type_ == b"L":
                    long_name = _text(payload)
                elif type_ == b"K":
                    long_link = _text(payload)
                continue  # "g" (global pax headers) carry nothing hubcache uses
            name = _text(block[0:100])
            if block[257:262] == b"ustar" and block[345:346] != b"\0":
                name = _text(block[345:500]) + "/" + name
            name = pax.get("path", long_name or name)
            linkname = pax.get("linkpath", long_link or _text(block[157:257]))
            if "size" in pax:
                size = int(pax["size"])
                padded = -size % BLOCK
            kind = _KINDS.get(type_, "other")
            if kind == "file" and type_ == b"\0" and name.endswith("/"):
                kind = "dir"  # old tar: a directory is a file named with a slash
            pax, long_name, long_link = {}, None, None
            self._unread = size
            yield _Member(name, kind, mode, size, linkname, type_)
            self._skip(self._unread + padded)  # whatever the writer did not read
            self._unread = 0


# ---------------------------------------------------------------- safe writer


class _SafeWriter:
    """Writes tar members under ``dest``, refusing any that could escape it."""

    def __init__(self, dest: str, handle: str, limits: Limits) -> None:
        self.dest = dest
        self.handle = handle
        self.limits = limits
        self.result = Extracted()
        self._dirs: Set[str] = {""}  # relative dirs known to be real directories we made
        self._names: Set[str] = set()  # every member name seen, to refuse duplicates
        self._members = 0
        self._size = 0

    def _refuse(self, name: str, why: str) -> ArchiveError:
        return ArchiveError(
            f"the archive for {self.handle} was refused: member {name!r} {why}. Nothing was "
            "installed; the archive may be malicious, so report it to its publisher.",
            handle=self.handle,
            member=name,
        )

    def add(self, member: _Member, reader: _TarReader) -> None:
        self._members += 1
        if self.limits.max_files and self._members > self.limits.max_files:
            raise self._refuse(
                member.name, f"is beyond the {self.limits.max_files} members allowed (HUBCACHE_MAX_FILES)"
            )
        kind = member.kind
        if kind == "file":
            self._size += member.size
            if self.limits.max_size and self._size > self.limits.max_size:
                raise self._refuse(
                    member.name,
                    f"({member.size} bytes) takes the archive past the {self.limits.max_size} "
                    "bytes allowed (HUBCACHE_MAX_SIZE)",
                )
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
        elif kind == "dir":
            if rel not in self._dirs:
                os.mkdir(target)
                self._dirs.add(rel)
        elif kind == "symlink":
            self._make_symlink(member, rel, target)
        elif kind == "hardlink":
            raise self._refuse(member.name, f"is a hard link (to {member.linkname!r})")
        elif kind == "device":
            raise self._refuse(member.name, "is a device file")
        elif kind == "fifo":
            raise self._refuse(member.name, "is a fifo")
        elif kind == "sparse":
            raise self._refuse(member.name, "is a sparse file, which hubcache does not extract")
        else:
            raise self._refuse(member.name, f"has an unsupported type ({member.type!r})")

    def _relative(self, name: str) -> str:
        if "\0" in name:
            raise self._refuse(name, "has a NUL byte in its name")
        if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
            raise self._refuse(name, "has an absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._refuse(name, "has '..' in its path")
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
            os.mkdir(os.path.join(self.dest, path))
            self._dirs.add(path)

    def _write_file(self, member: _Member, reader: _TarReader, rel: str, target: str) -> None:
        fd = os.open(target, _CREATE, 0o777 if member.mode & 0o100 else 0o666)  # the umask trims it
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

    def _make_symlink(self, member: _Member, rel: str, target: str) -> None:
        link = member.linkname
        if not link or link.startswith("/") or (len(link) > 1 and link[1] == ":"):
            raise self._refuse(member.name, f"is a symlink to the absolute path {link!r}")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
        if resolved == ".." or resolved.startswith("../"):
            raise self._refuse(member.name, f"is a symlink pointing outside the model ({link!r})")
        os.symlink(link, target)
        self.result.links[rel] = link

    def check_links(self) -> None:
        """Resolve every symlink against the final tree: a chain of links, each
        harmless when made, must not lead outside ``dest`` either."""
        if not self.result.links:
            return
        root = os.path.realpath(self.dest)
        for rel, link in self.result.links.items():
            real = os.path.realpath(os.path.join(self.dest, rel))
            if real != root and not real.startswith(root + os.sep):
                raise self._refuse(rel, f"is a symlink that resolves outside the model ({link!r})")
