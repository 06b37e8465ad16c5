"""Safe streaming extraction of tar archives (plain, gzip, bz2 or xz).

:func:`extract` reads an iterable of byte chunks (the HTTP body) once, from
front to back: the format is detected from the first bytes, decompression is
incremental with bounded output per step, and members are checked and written
one by one. No copy of the archive is kept and memory use does not grow with
the archive's size.

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
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, Optional, Set

from .errors import ArchiveError

READ_SIZE = 1 << 20  # bytes per read of member data, and per decompression step

_GZIP_MAGIC = b"\x1f\x8b"
_BZ2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


RATIO_FLOOR = 256 << 20  # the ratio bound applies once this many bytes came out


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

    @property
    def size(self) -> int:
        return sum(self.files.values())


def extract(chunks: Iterable[bytes], dest: str, *, handle: str, limits: Limits = Limits()) -> Extracted:
    """Extract the archive whose bytes ``chunks`` yields into the existing,
    empty directory ``dest``.

    Raises :class:`ArchiveError` (naming ``handle`` and, where it applies, the
    member) for data that is not a tar archive, is corrupt or truncated, holds
    a member that would escape ``dest``, or exceeds ``limits``.
    """
    stream = _Decompressed(iter(chunks), handle, limits.max_ratio)
    writer = _SafeWriter(dest, handle, limits)
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=READ_SIZE) as tar:  # type: ignore[call-overload]
            while True:
                member = tar.next()
                if member is None:
                    break
                writer.add(member, tar)
                tar.members.clear()  # a stream is read once: keep no headers around
        # Read to the end: a gzip stream's CRC and length are only checked
        # there, and the caller hashes the whole download.
        while stream.read(READ_SIZE):
            pass
    except tarfile.TarError as e:
        raise ArchiveError(
            f"the archive for {handle} is not a valid tar archive ({e}): it is corrupt or "
            "truncated (a download cut short?); try again, and if it persists report it to the publisher.",
            handle=handle,
        ) from None
    # tarfile takes a stream that stops at a member boundary, or inside a
    # header, for the end of the archive: only the end-of-archive marker (zero
    # blocks) tells a complete archive from a truncated one.
    if not stream.ended_with_zero_block():
        raise ArchiveError(
            f"the archive for {handle} ends without tar's end-of-archive marker: it was cut "
            "short. Try again; if it persists, the published archive is incomplete.",
            handle=handle,
        )
    writer.check_links()
    return writer.result


class _Decompressed:
    """A read-only file object over the decompressed bytes of ``chunks``."""

    def __init__(self, chunks: Iterator[bytes], handle: str, max_ratio: float = 0) -> None:
        self._chunks = self._counted(chunks)
        self._handle = handle
        self._max_ratio = max_ratio
        self._bytes_in = 0
        self._bytes_out = 0
        self._buffer = b""  # raw bytes not yet fed (or, for plain tar, not yet read)
        self._ended = False
        self._tail = b""  # the last bytes handed out, to check for the end-of-archive marker
        self._magic, self._new_decoder = _format_of(self._peek(512), handle)
        self._decoder = self._new_decoder() if self._new_decoder else None
        self._started = False  # whether the current decoder was fed anything

    def _counted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self._bytes_in += len(chunk)
            yield chunk

    def _peek(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        return self._buffer[:n]

    def _next_input(self) -> bytes:
        """The next non-empty raw bytes, or b"" at the end of the body."""
        if self._buffer:
            data, self._buffer = self._buffer, b""
            return data
        for chunk in self._chunks:
            if chunk:
                return chunk
        return b""

    def ended_with_zero_block(self) -> bool:
        return len(self._tail) == 512 and not self._tail.strip(b"\0")

    def read(self, n: int = -1) -> bytes:
        data = self._read(READ_SIZE if n is None or n < 0 else n)
        if data:
            self._tail = data[-512:] if len(data) >= 512 else (self._tail + data)[-512:]
        return data

    def _read(self, n: int) -> bytes:
        if self._decoder is None:
            if not self._buffer:
                self._buffer = self._next_input()
            data, self._buffer = self._buffer[:n], self._buffer[n:]
            return data
        while not self._ended:
            decoder = self._decoder
            if decoder.eof:
                self._after_stream_end(decoder.unused_data)
                continue
            data = self._next_input() if decoder.needs_input else b""
            if not data and decoder.needs_input:
                if self._started:
                    raise ArchiveError(
                        f"the archive for {self._handle} ends in the middle of its compressed "
                        "data: the download was cut short; try again.",
                        handle=self._handle,
                    )
                self._ended = True
                break
            self._started = True
            try:
                out = decoder.decompress(data, n)
            except (zlib.error, lzma.LZMAError, OSError, EOFError) as e:
                name = {_GZIP_MAGIC: "gzip", _BZ2_MAGIC: "bz2"}.get(self._magic, "xz")
                raise ArchiveError(
                    f"the archive for {self._handle} has corrupt {name} data ({e}): the "
                    "download is damaged; try again.",
                    handle=self._handle,
                ) from None
            if out:
                self._bytes_out += len(out)
                if (
                    self._max_ratio
                    and self._bytes_out > RATIO_FLOOR
                    and self._bytes_out > self._max_ratio * self._bytes_in
                ):
                    raise ArchiveError(
                        f"the archive for {self._handle} was refused: it expands more than "
                        f"{self._max_ratio:g} times (a decompression bomb?). Nothing was installed. "
                        "If the model really is that compressible, raise HUBCACHE_MAX_RATIO "
                        "(0 turns the bound off).",
                        handle=self._handle,
                    )
                return out
        return b""

    def _after_stream_end(self, rest: bytes) -> None:
        """A compressed stream ended: what follows is another stream (gzip, bz2
        and xz allow several), zero padding, or the end of the body."""
        self._buffer = rest + self._buffer
        while True:
            head = self._peek(len(self._magic))
            if not head:
                self._ended = True
                return
            if head.strip(b"\0"):
                break
            self._buffer = self._buffer[len(head) :]  # tape-style zero padding
        if not head.startswith(self._magic):
            raise ArchiveError(
                f"the archive for {self._handle} has unexpected data after its compressed "
                "stream: the download is damaged or not a single archive.",
                handle=self._handle,
            )
        assert self._new_decoder is not None
        self._decoder = self._new_decoder()
        self._started = False


class _ZlibGzip:
    """zlib's gzip decoder behind the interface of bz2/lzma decompressors."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)

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
        return self._d.decompress(self._d.unconsumed_tail + data, max_length)


_Decoder = Callable[[], _ZlibGzip]  # bz2/lzma decompressors have the same interface
_COMPRESSED_FORMATS = (
    (_GZIP_MAGIC, _ZlibGzip),
    (_BZ2_MAGIC, bz2.BZ2Decompressor),
    (_XZ_MAGIC, lzma.LZMADecompressor),
)


def _format_of(head: bytes, handle: str) -> "tuple[bytes, Optional[_Decoder]]":
    """(magic, decompressor factory) for data starting with ``head``; the
    factory is None for a plain tar."""
    for magic, factory in _COMPRESSED_FORMATS:
        if head.startswith(magic):
            return magic, factory  # type: ignore[return-value]
    if _is_tar_header(head):
        return b"", None
    raise ArchiveError(
        f"the download for {handle} is not an archive: it starts with {_describe(head)}, "
        "not tar, gzip, bz2 or xz data. Check that the handle points at a model archive.",
        handle=handle,
    )


def is_compressed(head: bytes) -> bool:
    """Whether ``head`` starts like gzip, bz2 or xz data."""
    return any(head.startswith(magic) for magic, _ in _COMPRESSED_FORMATS)


def _is_tar_header(block: bytes) -> bool:
    if len(block) < 512:
        return False
    if block[257:262] == b"ustar":
        return True
    # Old (v7) tar has no magic: check the header checksum instead.
    try:
        stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:512])
    return stored == computed


def _describe(head: bytes) -> str:
    text = head[:64].lstrip()
    if text[:1] == b"<":
        return "an HTML/XML page"
    if not head:
        return "nothing (an empty body)"
    return repr(head[:16])


class _SafeWriter:
    """Writes tar members under ``dest``, refusing any that could escape it."""

    def __init__(self, dest: str, handle: str, limits: Limits) -> None:
        self.dest = dest
        self.handle = handle
        self.limits = limits
        self.result = Extracted()
        self._members = 0
        self._size = 0
        self._dirs: Set[str] = {""}  # relative dirs known to be real directories we made
        self._names: Set[str] = set()  # every member name seen, to refuse duplicates

    def _refuse(self, name: str, why: str) -> ArchiveError:
        return ArchiveError(
            f"the archive for {self.handle} was refused: member {name!r} {why}. Nothing was "
            "installed; the archive may be malicious, so report it to its publisher.",
            handle=self.handle,
            member=name,
        )

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        self._members += 1
        if self.limits.max_files and self._members > self.limits.max_files:
            raise self._refuse(
                member.name,
                f"is beyond the {self.limits.max_files} members allowed (HUBCACHE_MAX_FILES)",
            )
        if member.isreg():
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
            if member.isdir():
                return  # the archive root ("./")
            raise self._refuse(member.name, "has an empty name")
        self._names.add(rel)
        parent = posixpath.dirname(rel)
        self._make_dirs(parent, member.name)
        target = os.path.join(self.dest, *rel.split("/"))
        if member.isreg():
            self._write_file(member, tar, rel, target)
        elif member.isdir():
            if rel not in self._dirs:
                os.mkdir(target)
                self._dirs.add(rel)
        elif member.issym():
            self._make_symlink(member, rel, target)
        elif member.islnk():
            raise self._refuse(member.name, f"is a hard link (to {member.linkname!r})")
        elif member.ischr() or member.isblk():
            raise self._refuse(member.name, "is a device file")
        elif member.isfifo():
            raise self._refuse(member.name, "is a fifo")
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
            os.mkdir(os.path.join(self.dest, *path.split("/")))
            self._dirs.add(path)

    def _write_file(
        self, member: tarfile.TarInfo, tar: tarfile.TarFile, rel: str, target: str
    ) -> None:
        mode = 0o777 if member.mode & 0o100 else 0o666  # the umask trims it
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY
        source = tar.extractfile(member)
        assert source is not None  # regular members always have data
        fd = os.open(target, flags, mode)
        written = crc = 0
        try:
            while True:
                data = source.read(READ_SIZE)
                if not data:
                    break
                crc = zlib.crc32(data, crc)
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                written += len(data)
        finally:
            os.close(fd)
        if written != member.size:
            raise tarfile.ReadError(f"member {member.name!r} is cut short")
        self.result.files[rel] = written
        self.result.crc32[rel] = crc

    def _make_symlink(self, member: tarfile.TarInfo, rel: str, target: str) -> None:
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
            real = os.path.realpath(os.path.join(self.dest, *rel.split("/")))
            if real != root and not real.startswith(root + os.sep):
                raise self._refuse(rel, f"is a symlink that resolves outside the model ({link!r})")
