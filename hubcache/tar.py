"""The tar format, read as a stream: ustar, pax and GNU headers.

:class:`TarReader` turns a stream of byte chunks into members (name, kind,
mode, size, link target) and hands each member's data on as memoryviews of
the chunks, without copies. It knows the format and nothing of the disk: the
safe writer in :mod:`hubcache.archive` decides what is written where.

Everything here reads untrusted bytes, so every number is checked (octal
digits or GNU base-256, never negative, at most ``MAX_NUMBER``), pax records
are parsed strictly, every loop advances or stops, and what is buffered is
bounded: extended header data (pax records, GNU long names) by
``MAX_HEADER_PAYLOAD`` per member, bytes after the end-of-archive marker by
``MAX_TRAILER``. Anything malformed raises :class:`ArchiveError`.

Sparse members (GNU ``S`` headers, and pax ``GNU.sparse.*`` records, as
``tar --sparse`` writes them) are reported under their real name with the
kind ``"sparse"``, for the writer to refuse: their data is a map, not the
file.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, Tuple

from .errors import ArchiveError
from .pipeline import Cursor
from .records import Record

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

# The fields of a header block, as POSIX ustar names them (pax, tar.h).
NAME = slice(0, 100)
MODE = slice(100, 108)
SIZE = slice(124, 136)
CHKSUM = slice(148, 156)
TYPEFLAG = slice(156, 157)
LINKNAME = slice(157, 257)
MAGIC = slice(257, 263)  # "ustar\0" (POSIX); GNU's "ustar  \0" runs into the version field
PREFIX = slice(345, 500)  # POSIX only: in GNU headers this is atime, ctime, sparse map...
POSIX_MAGIC = b"ustar\0"

# Type flags, as tar.h (and GNU's tar.h) names them.
REGTYPE, AREGTYPE, CONTTYPE = b"0", b"\0", b"7"
LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE = b"1", b"2", b"3", b"4", b"5", b"6"
XHDTYPE, XGLTYPE, SOLARIS_XHDTYPE = b"x", b"g", b"X"  # pax: next member / global
GNUTYPE_LONGNAME, GNUTYPE_LONGLINK, GNUTYPE_SPARSE = b"L", b"K", b"S"
EXTENDED = (XHDTYPE, SOLARIS_XHDTYPE, XGLTYPE, GNUTYPE_LONGNAME, GNUTYPE_LONGLINK)

KINDS = {
    REGTYPE: "file",
    AREGTYPE: "file",
    CONTTYPE: "file",
    DIRTYPE: "dir",
    SYMTYPE: "symlink",
    LNKTYPE: "hardlink",
    CHRTYPE: "device",
    BLKTYPE: "device",
    FIFOTYPE: "fifo",
    GNUTYPE_SPARSE: "sparse",
}

#: The most bytes of extended header data (pax records, GNU long names and link
#: targets) before one member, all its extended headers together. Real ones hold
#: a path or two (PATH_MAX is 4 KiB); without a bound, each is buffered whole.
MAX_HEADER_PAYLOAD = 1 << 20
#: The most extended headers in a row before a member (writers put one to three there).
MAX_EXTENDED_HEADERS = 16
#: The most bytes read after the end-of-archive marker: tar pads its output to a
#: record (10 KiB by default, 1 MiB with ``-b 2048``); more is not padding.
MAX_TRAILER = 1 << 20
#: The largest number a header may hold: a file size has to fit in an ``off_t``.
MAX_NUMBER = (1 << 63) - 1

_HIGH_BYTES = bytes(range(128, 256))
_PAX_KEYS = ("path", "linkpath", "size", "GNU.sparse.name")  # the records hubcache uses


class _Extended:
    """What the extended headers since the last member said about the next one."""

    def __init__(self) -> None:
        self.pax: Dict[str, str] = {}
        self.sparse = False  # a pax record named GNU.sparse.*
        self.long_name: Optional[str] = None
        self.long_link: Optional[str] = None
        self.count = 0
        self.payload = 0


_NONE = _Extended()  # no extended headers before this member (never changed)


class _FieldError(Exception):
    """A malformed field; the reader turns it into an ArchiveError that names the archive."""


class Member(Record):
    __slots__ = ("name", "kind", "mode", "size", "linkname", "type")

    def __init__(self, name: str, kind: str, mode: int, size: int, linkname: str, type: bytes) -> None:
        self.name = name
        self.kind = kind  # file, dir, symlink, hardlink, device, fifo, sparse, other
        self.mode, self.size, self.linkname, self.type = mode, size, linkname, type


def number(raw: bytes) -> int:
    """A numeric header field: octal digits (padded with spaces, ended by NUL
    or space; empty means 0), or GNU base-256 (a leading 0x80 byte)."""
    if raw[0] & 0x80:
        if raw[0] != 0x80:  # 0xFF: a negative base-256 number; other high bytes mean nothing
            raise _FieldError("a negative or malformed number")
        value = int.from_bytes(raw[1:], "big")
        if value > MAX_NUMBER:
            raise _FieldError("a number too large")
        return value
    text = raw.split(b"\0", 1)[0].strip()
    if text.isdigit():  # ASCII digits only: no sign, "0o" or "_", which int() would take
        try:
            return int(text, 8)  # 12 octal digits stay under MAX_NUMBER
        except ValueError:
            pass  # an 8 or a 9
    elif not text:
        return 0
    raise _FieldError("a number that is not octal")


def _decimal(text: str) -> int:
    """A pax number (decimal digits only: no sign, no space, no fraction)."""
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise _FieldError(f"a bad number in a pax record ({text[:40]!r})")
    value = int(text)
    if value > MAX_NUMBER:
        raise _FieldError("a number too large in a pax record")
    return value


def checksum_ok(block: bytes) -> bool:
    """Whether the header's checksum field holds the sum of its bytes (the
    field itself counted as eight spaces), as unsigned or, as some old tars
    (Sun, BSD) computed it, as signed chars."""
    chk = block[CHKSUM]
    field = chk.split(b"\0", 1)[0].strip()
    if not field.isdigit():  # no sign, "0o" or "_", which int() would take
        return False
    try:
        stored = int(field, 8)
    except ValueError:  # an 8 or a 9
        return False
    unsigned = sum(block) - sum(chk) + 8 * 32
    if stored == unsigned:
        return True
    high = (BLOCK - len(block.translate(None, _HIGH_BYTES))) - (8 - len(chk.translate(None, _HIGH_BYTES)))
    return stored == unsigned - 256 * high  # each byte over 127 counts 256 less as a signed char


def is_header(head: bytes) -> bool:
    return len(head) >= BLOCK and checksum_ok(head[:BLOCK])


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def pax_records(data: bytes) -> Iterator[Tuple[str, str]]:
    """The (keyword, value) records of a pax header, each ``"<length>
    <keyword>=<value>\\n"`` with ``<length>`` counting the whole record."""
    pos, end = 0, len(data)
    while pos < end:
        space = data.find(b" ", pos, pos + 20)  # 19 digits say more than MAX_HEADER_PAYLOAD
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise _FieldError("a pax record without a length")
        stop = pos + int(digits)
        if stop < space + 4 or stop > end or data[stop - 1] != 0x0A:  # at least "k=\n" after the space
            raise _FieldError("a pax record whose length is wrong")
        keyword, equals, value = data[space + 1 : stop - 1].partition(b"=")
        if not equals or not keyword:
            raise _FieldError("a pax record without a keyword")
        yield keyword.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")
        pos = stop  # at least 5 bytes on


class TarReader:
    """The members of a tar stream arriving as chunks; member data is handed
    on as memoryviews of the chunks, without copies.

    ``charge(name, size)`` is called for every header, extended ones included,
    before its data is read: the caller's limits on members and bytes see all
    the archive holds, and can stop it by raising.
    """

    def __init__(self, chunks: Iterator[bytes], handle: str, charge: Callable[[str, int], None]) -> None:
        self._in = Cursor(chunks)
        self._handle = handle
        self._charge = charge
        self._unread = 0  # data of the current member not consumed yet

    def data(self, n: int) -> Iterator[memoryview]:
        """The next ``n`` bytes of the current member's data, as views."""
        if not 0 <= n <= self._unread:
            raise ValueError("reading past the member's data")
        self._unread -= n
        return self._pieces(n)

    def _pieces(self, n: int) -> Iterator[memoryview]:
        while n > 0:
            piece = self._in.piece(n)
            if not piece:
                raise self._truncated()
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

    def _corrupt(self, why: str, member: Optional[str] = None) -> ArchiveError:
        return ArchiveError(
            f"the archive for {self._handle} is not a valid tar archive ({why}): it is corrupt, "
            "or was not written by a standard tar. Try again; if it persists, report it to the "
            "publisher.",
            handle=self._handle,
            member=member,
        )

    def _refused(self, member: str, why: str) -> ArchiveError:
        return ArchiveError(
            f"the archive for {self._handle} was refused: {why} ({member!r}); no tar writes "
            "that, so the archive is corrupt or malicious. Nothing was installed; report it to "
            "the publisher.",
            handle=self._handle,
            member=member,
        )

    def members(self) -> Iterator[Member]:
        """Each member in turn, up to the end-of-archive marker; read or skip
        its data (:meth:`data`) before asking for the next."""
        ext = _NONE
        while True:
            block = self._in.take(BLOCK)
            if len(block) < BLOCK:
                raise self._truncated()
            if block == ZERO_BLOCK:
                return  # the end-of-archive marker
            if not checksum_ok(block):
                raise self._corrupt("a header's checksum is wrong; a download cut short?")
            type_ = block[TYPEFLAG]
            name = _text(block[NAME])
            try:
                size = number(block[SIZE])
                mode = number(block[MODE])
            except _FieldError as e:
                raise self._corrupt(f"{e} in the header of {name!r}", name) from None
            if type_ in EXTENDED:
                ext = _Extended() if ext is _NONE else ext
                self._extended(type_, name, size, ext)
                continue
            if block[PREFIX.start] and block[MAGIC] == POSIX_MAGIC:
                name = _text(block[PREFIX]) + "/" + name
            link = _text(block[LINKNAME])
            kind = KINDS.get(type_, "other")
            if ext is not _NONE:  # pax records, then GNU long names, override the header
                name = ext.pax.get("path", ext.long_name if ext.long_name is not None else name)
                link = ext.pax.get("linkpath", ext.long_link if ext.long_link is not None else link)
                if ext.sparse or kind == "sparse":
                    kind, name = "sparse", ext.pax.get("GNU.sparse.name", name)
                if "size" in ext.pax:
                    try:
                        size = _decimal(ext.pax["size"])
                    except _FieldError as e:
                        raise self._corrupt(f"{e} for {name!r}", name) from None
                ext = _NONE
            if kind == "file" and type_ == AREGTYPE and name.endswith("/"):
                kind = "dir"  # old tar: a directory is a file named with a slash
            self._charge(name, size)
            self._unread = size
            yield Member(name, kind, mode, size, link, type_)
            self._skip(self._unread + -size % BLOCK)  # whatever the writer did not read
            self._unread = 0

    def _extended(self, type_: bytes, name: str, size: int, ext: _Extended) -> None:
        """Read a pax or GNU extended header's data into ``ext``, for the next member."""
        ext.count += 1
        ext.payload += size
        if ext.count > MAX_EXTENDED_HEADERS:
            raise self._refused(name, f"more than {MAX_EXTENDED_HEADERS} extended headers in a row")
        if ext.payload > MAX_HEADER_PAYLOAD:
            raise self._refused(
                name,
                f"more than {MAX_HEADER_PAYLOAD >> 20} MiB of extended header data (pax records "
                "or GNU long names) before one member",
            )
        self._charge(name, size)
        data = self._in.take(size)
        if len(data) < size:
            raise self._truncated()
        self._skip(-size % BLOCK)
        try:
            if type_ == GNUTYPE_LONGNAME:
                ext.long_name = _text(data)
            elif type_ == GNUTYPE_LONGLINK:
                ext.long_link = _text(data)
            else:
                for key, value in pax_records(data):  # global records ("g") are checked, unused
                    if type_ != XGLTYPE:
                        ext.sparse = ext.sparse or key.startswith("GNU.sparse.")
                        if key in _PAX_KEYS:
                            ext.pax[key] = value
        except _FieldError as e:
            raise self._corrupt(f"{e} in {name!r}", name) from None

    def finish(self) -> None:
        """Read the rest of the stream after the end-of-archive marker (for the
        compressed stream's own end and CRC), refusing more than MAX_TRAILER."""
        extra = len(self._in.view)
        self._in.view = memoryview(b"")
        for chunk in self._in.chunks:
            extra += len(chunk)
            if extra > MAX_TRAILER:
                break
        if extra > MAX_TRAILER:
            raise trailer_error(self._handle)


def trailer_error(handle: str) -> ArchiveError:
    return ArchiveError(
        f"the archive for {handle} goes on for more than {MAX_TRAILER >> 10} KiB after tar's "
        "end-of-archive marker: it is damaged, not a single archive, or the server sends an "
        "endless body. Nothing was installed; report it to the publisher.",
        handle=handle,
    )
