"""The zip format, read as a stream: local headers and data in order, then the
central directory and end records, cross-checked against what was streamed
(members, order, names, CRCs, sizes, offsets, count). A zip is meant to be read
from its end: what parsers doing so would see differently (data before the first
member or after the end record, a member missing from or added to the directory,
an end record in the comment) is refused, not guessed at.

Read: stored and deflated members, zip64, data descriptors after deflated data,
UTF-8 or cp437 names, Info-ZIP Unicode path fields. Refused: other methods,
encryption, stored members of unknown size (a stream cannot find their end)
unless empty, split archives, backslashes in names. Every length is bounded
(``MAX_EXTRA``, ``MAX_COMMENT``: the directory by ``MAX_ENTRY`` per member
streamed), inflating by ``MAX_SILENT_INPUT`` and the ratio bound, what follows
the end record by ``tar.MAX_TRAILER`` (zeros only). :meth:`ZipReader.events`
runs in a :class:`~hubcache.pipeline.Pipe` thread.
"""

from __future__ import annotations

import stat
import struct
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from . import pipeline
from .errors import ArchiveError
from .pipeline import MAX_SILENT_INPUT, OUT_SIZE, RATIO_FLOOR, Cursor, crc32
from .tar import MAX_TRAILER
from .zipformat import (
    AES_EXTRA,
    CENTRAL_END,
    CENTRAL_RECORD,
    CENTRAL_SIG,
    DATA_END,
    DEFLATED,
    DESCRIPTOR_SIG,
    DESCRIPTOR_SIG_VALUE,
    ENCRYPTION,
    EOCD_RECORD,
    EOCD_SIG,
    FLAG_DESCRIPTOR,
    FLAG_UTF8,
    LOCAL_RECORD,
    LOCAL_SIG,
    MAX16,
    MAX32,
    MAX_COMMENT,
    MAX_EXTRA,
    MAX_LINK_TARGET,
    MAX_ZIP64_EXTENSIBLE,
    MEMBER,
    METHODS,
    STORED,
    UNICODE_PATH_EXTRA,
    UNIX,
    ZIP64_EOCD_RECORD,
    ZIP64_EOCD_SIG,
    ZIP64_EXTRA,
    ZIP64_LOCATOR_RECORD,
    ZIP64_LOCATOR_SIG,
    Member,
    Streamed,
)

_RETRY = "try again; if it persists, report it to the publisher"
_DAMAGED = f"the download is damaged or the archive is corrupt; {_RETRY}"
_MALICIOUS = "the archive is damaged or malicious, so report it to its publisher"
_INCOMPLETE = "try again; if it persists, the published archive is incomplete"


class ZipReader:
    """The members of a zip stream arriving as chunks, as events: ``(MEMBER,
    member)``, its data as bytes-like pieces, ``(DATA_END,)``, and at last
    ``(CENTRAL_END, symlinks)`` once the central directory and end records are
    read and agree with the members streamed.

    ``charge(name, size)`` is called before each member's data, ``grow(name,
    n)`` as the data of a member whose size comes after it comes out.
    """

    def __init__(
        self, chunks: Iterator[bytes], handle: str, charge: Callable[[str, int], None],
        grow: Callable[[str, int], None], max_ratio: float,
    ) -> None:  # fmt: skip
        self._in, self._handle = Cursor(chunks), handle
        self._charge, self._grow, self._max_ratio = charge, grow, max_ratio
        self._pos = 0  # bytes of the stream consumed
        self._out = 0  # bytes of member data produced
        self._streamed: List[Streamed] = []

    def _take(self, n: int, where: str, member: Optional[str] = None) -> bytes:
        """Exactly ``n`` bytes (``n`` is bounded by the caller), or a truncation error."""
        data = self._in.take(n)
        if len(data) < n:
            raise self._truncated(where, member)
        self._pos += n
        return data

    def _error(self, what: str, member: Optional[str], advice: str) -> ArchiveError:
        about = f" (member {member!r})" if member is not None else ""
        message = f"the archive for {self._handle} {what}{about}. Nothing was installed; {advice}."
        return ArchiveError(message, handle=self._handle, member=member)

    def _corrupt(self, why: str, member: Optional[str] = None) -> ArchiveError:
        return self._error(f"is not a valid zip archive: {why}", member, _MALICIOUS)

    def _refused(self, member: Optional[str], why: str, advice: str = _MALICIOUS) -> ArchiveError:
        return self._error(f"was refused: it {why}", member, advice)

    def _truncated(self, where: str, member: Optional[str]) -> ArchiveError:
        return self._error(f"is truncated: it ends {where}, a download cut short?", member, _INCOMPLETE)

    def _mismatch(self, member: str, why: str) -> ArchiveError:
        # Tools that trust the central directory and those that trust the local
        # headers would see different files: an attack, or a broken writer.
        return self._refused(
            member, f"describes a member differently in two places ({why}): other tools may see other files"
        )

    def events(self) -> Iterator[Any]:
        sig = self._take(4, "at its start")
        while sig == LOCAL_SIG:
            member, streamed = self._local_header()
            yield (MEMBER, member)
            yield from self._data(member.name, streamed)
            self._streamed.append(streamed)
            yield (DATA_END,)
            sig = self._take(4, "after a member's data", member.name)
        if sig not in (CENTRAL_SIG, EOCD_SIG, ZIP64_EOCD_SIG):
            raise self._corrupt(f"{sig!r} where a member or the central directory should start")
        symlinks = self._central(sig)
        self._trailer()
        yield (CENTRAL_END, symlinks)

    def _local_header(self) -> Tuple[Member, Streamed]:
        offset, where = self._pos - 4, "in a local header"
        _, flags, method, _, _, crc, csize, usize, name_len, extra_len = LOCAL_RECORD.unpack(
            self._take(LOCAL_RECORD.size, where)
        )
        if extra_len > MAX_EXTRA:
            raise self._corrupt(f"a local header claims {extra_len} bytes of extra fields (over {MAX_EXTRA})")
        raw_name = self._take(name_len, where)
        extras = self._extras(self._take(extra_len, where), raw_name)
        name = self._name(raw_name, flags, extras)
        if flags & ENCRYPTION or AES_EXTRA in extras or method == 99:
            raise self._refused(name, "is encrypted", "hubcache extracts zips without a password only")
        if method not in (STORED, DEFLATED):
            raise self._refused(name, f"is compressed with {METHODS.get(method, f'method {method}')}, which "
                                "hubcache does not extract", "re-create the zip with deflate compression "
                                "(zip's default), or make a .tar.gz")  # fmt: skip
        field = extras.get(ZIP64_EXTRA)
        if field is not None:
            # It holds both sizes (APPNOTE 4.5.3), or, from some writers, the one
            # whose 32-bit field is 0xFFFFFFFF. A 32-bit value other than that
            # must agree with it, so that no reader sees another size.
            if len(field) >= 16:
                usize64, csize64 = struct.unpack_from("<QQ", field)
            elif len(field) == 8 and (usize == MAX32) != (csize == MAX32):
                value = struct.unpack_from("<Q", field)[0]
                usize64, csize64 = (value, csize) if usize == MAX32 else (usize, value)
            else:
                raise self._corrupt("a zip64 field of the wrong length", name)
            if usize not in (MAX32, usize64) or csize not in (MAX32, csize64):
                raise self._corrupt("a zip64 size disagrees with the header's", name)
            usize, csize = usize64, csize64
        elif MAX32 in (csize, usize):
            raise self._corrupt("a size of 0xFFFFFFFF without the zip64 field that holds it", name)
        known = not flags & FLAG_DESCRIPTOR
        if not known and method == STORED and (csize or usize):
            raise self._stored_with_descriptor(name)
        self._charge(name, usize if known else 0)
        member = Member(name, "dir" if name.endswith("/") else "file", 0o644, usize if known else 0, "", b"zip")
        return member, Streamed(raw_name, name, flags, method, offset, (crc, csize, usize), field is not None)

    def _extras(self, extra: bytes, raw_name: bytes) -> Dict[int, bytes]:
        """The extra fields hubcache reads, by id; others are skipped. One given
        twice would let two parsers pick different ones: refused."""
        out: Dict[int, bytes] = {}
        at = 0
        while at + 4 <= len(extra):
            kind, size = struct.unpack_from("<HH", extra, at)
            if at + 4 + size > len(extra):
                raise self._corrupt("an extra field runs past its header", _decode(raw_name))
            if kind in (ZIP64_EXTRA, UNICODE_PATH_EXTRA, AES_EXTRA):
                if kind in out:
                    raise self._corrupt(f"the extra field 0x{kind:04x} appears twice", _decode(raw_name))
                out[kind] = extra[at + 4 : at + 4 + size]
            at += 4 + size
        if extra[at:].strip(b"\0"):  # zipalign pads with zeros, which need not make a whole field
            raise self._corrupt("junk after the extra fields", _decode(raw_name))
        return out

    def _name(self, raw: bytes, flags: int, extras: Dict[int, bytes]) -> str:
        field = extras.get(UNICODE_PATH_EXTRA, b"")
        if len(field) >= 5 and field[0] == 1 and struct.unpack_from("<I", field, 1)[0] == zlib.crc32(raw):
            raw, flags = field[5:], FLAG_UTF8  # Info-ZIP's UTF-8 name for this one, used as unzip does
        try:  # cp437 is the format's default, as Python's zipfile reads it
            name = raw.decode("utf-8") if flags & FLAG_UTF8 else raw.decode("cp437")
        except UnicodeDecodeError:
            raise self._corrupt("a name flagged UTF-8 is not UTF-8", _decode(raw)) from None
        if "\\" in name:  # forbidden by the format; Windows tools take it for a separator ("a\..\..\x")
            raise self._refused(name, "has a backslash in a name", "re-create the zip with forward slashes")
        return name

    def _data(self, name: str, streamed: Streamed) -> Iterator[Any]:
        known = not streamed.flags & FLAG_DESCRIPTOR
        header_crc, csize, usize = streamed.header
        crc = 0
        if streamed.method == STORED:
            left = csize if known else 0  # (unknown: read as empty, checked by the descriptor)
            while left:
                piece = self._in.piece(left)
                if not piece:
                    raise self._truncated("inside a member's data", name)
                self._pos += len(piece)
                left -= len(piece)
                crc = crc32(piece, crc)
                yield piece
            streamed.csize = streamed.usize = csize if known else 0
            self._out += streamed.usize
        else:
            counts = [0, 0, 0]  # compressed and uncompressed sizes, and CRC-32, filled in by _inflate
            yield from self._inflate(name, csize if known else None, usize if known else None, counts)
            streamed.csize, streamed.usize, crc = counts
        streamed.crc = crc
        if name.endswith("/") and streamed.usize:
            raise self._refused(name, "has a directory with data")
        if not known:
            self._descriptor(name, streamed)
        elif crc != header_crc or streamed.usize != usize:
            what = "CRC-32" if crc != header_crc else "size"
            raise self._refused(name, f"has a member whose {what} is not the one its header gives", _DAMAGED)

    def _inflate(self, name: str, csize: Optional[int], usize: Optional[int], counts: List[int]) -> Iterator[bytes]:
        """A raw deflate stream's output. It ends itself: what follows it is put
        back. ``csize``/``usize``: the header's sizes, None if unknown."""
        d = pipeline.zlib_impl.decompressobj(-zlib.MAX_WBITS)
        fed = out = silent = crc = 0
        source, taken = memoryview(b""), 0  # the view the last input came from, and how much of it
        while not d.eof:
            data: Any = d.unconsumed_tail
            if not data and (csize is None or fed < csize):
                if not self._in.view and not self._in.more():
                    raise self._truncated("inside a member's compressed data", name)
                source = self._in.view
                taken = len(source) if csize is None else min(len(source), csize - fed)
                data, self._in.view = source[:taken], source[taken:]
                fed += taken
                silent += taken
            try:
                piece: bytes = d.decompress(data, OUT_SIZE)  # (no data: only what zlib holds may come out)
            except pipeline.DECODE_ERRORS as e:
                raise self._refused(name, f"has corrupt deflate data ({e})", _DAMAGED) from None
            if piece:
                out += len(piece)
                self._out += len(piece)
                silent = 0
                if usize is None:
                    self._grow(name, len(piece))
                self._check_output(name, usize, out, fed)
                crc = crc32(piece, crc)
                yield piece
            elif not data and not d.eof:
                raise self._refused(name, "has a deflate stream longer than its header's compressed size", _DAMAGED)
            elif silent > MAX_SILENT_INPUT:
                raise self._refused(name, f"has over {MAX_SILENT_INPUT >> 20} MiB of deflate data in a row that "
                                    "holds nothing")  # fmt: skip
        unused = len(d.unused_data)
        fed -= unused
        self._in.view = source[taken - unused :]  # the bytes after the stream, from the view they came in
        self._pos += fed
        if csize is not None and fed != csize:
            raise self._refused(name, "has a deflate stream shorter than its header's compressed size", _DAMAGED)
        counts[:] = [fed, out, crc]

    def _check_output(self, name: str, usize: Optional[int], out: int, fed: int) -> None:
        if usize is not None and out > usize:
            raise self._refused(name, f"has a member that inflates to more than the {usize} bytes its header gives")
        ratio = self._max_ratio  # on the member, and on the archive so far
        if ratio and any(o > RATIO_FLOOR and o > ratio * i for o, i in ((out, fed), (self._out, self._pos + fed))):
            raise self._refused(name, f"expands more than {ratio:g} times (a decompression bomb?)", "if the model "
                                f"really is that compressible, raise HUBCACHE_MAX_RATIO (now {ratio:g}; 0 turns "
                                "the bound off)")  # fmt: skip

    def _descriptor(self, name: str, streamed: Streamed) -> None:
        """Read the data descriptor after a member's data; check it, and any
        value the local header gave, against the data."""
        where = "in a data descriptor"
        wide = streamed.zip64 or streamed.csize >= MAX32 or streamed.usize >= MAX32  # as Info-ZIP and Java write it
        rest = 16 if wide else 8
        first = self._take(4, where, name)
        if first == DESCRIPTOR_SIG:  # the signature is optional, and could be the CRC
            second = self._take(4, where, name)
            if streamed.crc != DESCRIPTOR_SIG_VALUE or second == first:
                first, second = second, b""
            head = first + second + self._take(rest - len(second), where, name)
        else:
            head = first + self._take(rest, where, name)
        values = struct.unpack("<IQQ" if wide else "<III", head)
        for what, got, real, local in zip(("CRC-32", "compressed size", "size"), values,
                                          (streamed.crc, streamed.csize, streamed.usize),
                                          streamed.header):  # fmt: skip
            if got != real or local not in (0, real):
                if streamed.method == STORED:
                    raise self._stored_with_descriptor(name)
                raise self._refused(name, f"has a member whose {what} is not the one its data descriptor or "
                                    "header gives", _DAMAGED)  # fmt: skip

    def _stored_with_descriptor(self, name: str) -> ArchiveError:
        # Read as empty (zipfile and Info-ZIP write empty files so to a pipe): a
        # descriptor that says otherwise means data whose end a stream cannot find.
        return self._refused(name, "has a member stored (not compressed) with its size after its data (a data "
                             "descriptor), so a stream cannot tell where it ends", "re-create the zip with "
                             "deflate compression, or written to a file rather than a pipe")  # fmt: skip

    def _central(self, sig: bytes) -> List[str]:
        """Read the central directory and end records; the names of the members declared symlinks."""
        start = self._pos - 4
        symlinks: List[str] = []
        count = 0
        while sig == CENTRAL_SIG:
            self._entry(count, symlinks)
            count += 1
            sig = self._take(4, "in the central directory")
        if count < len(self._streamed):
            raise self._mismatch(self._streamed[count].name, "the central directory does not list it")
        self._end(sig, start, self._pos - 4 - start, count)
        return symlinks

    def _entry(self, index: int, symlinks: List[str]) -> None:
        where = "in the central directory"
        fields = CENTRAL_RECORD.unpack(self._take(CENTRAL_RECORD.size, where))
        _, host, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len = fields[:13]
        disk, attrs, offset = fields[13], fields[15], fields[16]
        if extra_len > MAX_EXTRA or comment_len > MAX_COMMENT:
            raise self._corrupt(f"a central directory entry claims {extra_len} bytes of extra fields and "
                                f"{comment_len} of comment (over {MAX_EXTRA})")  # fmt: skip
        raw = self._take(name_len, where)
        extras = self._extras(self._take(extra_len, where), raw)
        self._take(comment_len, where)
        if index >= len(self._streamed):
            raise self._mismatch(_decode(raw), "the central directory lists it, but the archive holds no such member")
        s = self._streamed[index]
        if (flags ^ s.flags) & (ENCRYPTION | FLAG_UTF8):
            raise self._mismatch(s.name, "its flags differ")
        name = self._name(raw, flags, extras)
        if raw != s.raw_name or name != s.name:
            raise self._mismatch(s.name, f"the central directory names it {name!r}")
        values = [usize, csize, offset]
        field, at = extras.get(ZIP64_EXTRA), 0
        for i, value in enumerate(values):  # those whose 32-bit field is 0xFFFFFFFF, in this order
            if value == MAX32:
                if field is None or at + 8 > len(field):
                    raise self._corrupt("a size or offset of 0xFFFFFFFF without the zip64 field that holds it", s.name)
                values[i] = struct.unpack_from("<Q", field, at)[0]
                at += 8
        for what, central, streamed in zip(("size", "compressed size", "offset", "method", "CRC-32", "disk"),
                                           values + [method, crc, disk], (s.usize, s.csize, s.offset, s.method,
                                                                          s.crc, 0)):  # fmt: skip
            if central != streamed:
                raise self._mismatch(s.name, f"its {what} is {streamed} in the stream, {central} in the directory")
        kind = stat.S_IFMT(attrs >> 16) if host == UNIX else 0
        if kind == stat.S_IFLNK:
            if s.name.endswith("/") or s.usize > MAX_LINK_TARGET:
                raise self._refused(s.name, f"has a symlink that is a directory or has a target over {MAX_LINK_TARGET}"
                                    " bytes")  # fmt: skip
            symlinks.append(s.name)
        elif kind == stat.S_IFDIR and not s.name.endswith("/"):
            raise self._mismatch(s.name, "it is a file in the stream, a directory in the central directory")

    def _end(self, sig: bytes, start: int, size: int, count: int) -> None:
        """Read the end records (zip64 ones first, if any) and check them against the directory read."""
        where = "in the end records"
        zip64: Optional[Tuple[int, ...]] = None
        if sig == ZIP64_EOCD_SIG:
            record_at = self._pos - 4
            length, _, _, *values = ZIP64_EOCD_RECORD.unpack(self._take(ZIP64_EOCD_RECORD.size, where))
            if not 44 <= length <= 44 + MAX_ZIP64_EXTENSIBLE:
                raise self._corrupt(f"a zip64 end record of {length} bytes")
            self._take(length - 44, where)
            zip64 = tuple(values)
            if self._take(4, where) != ZIP64_LOCATOR_SIG:
                raise self._corrupt("a zip64 end record without its locator")
            disk, at, disks = ZIP64_LOCATOR_RECORD.unpack(self._take(ZIP64_LOCATOR_RECORD.size, where))
            if disk != 0 or disks > 1:
                raise self._split()
            if at != record_at:
                raise self._corrupt("a zip64 locator that points elsewhere than its end record")
            sig = self._take(4, where)
        if sig != EOCD_SIG:
            raise self._corrupt(f"{sig!r} where the central directory or its end record should be")
        *values, comment_len = EOCD_RECORD.unpack(self._take(EOCD_RECORD.size, where))
        comment = self._take(comment_len, "in the archive's comment")
        real = (0, 0, count, count, size, start)  # disk, directory's disk, entries (there, in all), size, offset
        for i, (value, true) in enumerate(zip(values, real)):
            if zip64 is not None and value == (MAX16 if i < 4 else MAX32):
                value = zip64[i]
            if value != true:
                if i < 2:
                    raise self._split()
                raise self._corrupt(f"the end record does not match the central directory ({value}, not {true})")
        if zip64 is not None and zip64 != real:
            raise self._corrupt("the zip64 end record does not match the central directory")
        if any(sig in comment for sig in (EOCD_SIG, ZIP64_EOCD_SIG, ZIP64_LOCATOR_SIG)):
            raise self._corrupt("an end record in the archive's comment")  # tools that search from the end find it

    def _split(self) -> ArchiveError:
        return self._refused(None, "is split across several files (a spanned zip)", "re-create it as one zip")

    def _trailer(self) -> None:
        """Whatever follows the end record: zero padding, at most MAX_TRAILER bytes."""
        seen = 0
        view, self._in.view = self._in.view, memoryview(b"")
        while True:
            seen += len(view)
            if view.tobytes().strip(b"\0") or seen > MAX_TRAILER:
                raise self._refused(None, f"goes on after its end record (with more than {MAX_TRAILER >> 10} KiB "
                                    "of zero padding): other zip tools may read other files from it")  # fmt: skip
            if not self._in.more():
                return
            view, self._in.view = self._in.view, memoryview(b"")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")
