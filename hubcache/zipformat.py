"""The zip format's records, flags and bounds (APPNOTE.TXT), and the member
description that :mod:`hubcache.zip`'s streaming reader hands the writer."""

from __future__ import annotations

import struct
from typing import Tuple

from .records import Record

LOCAL_SIG, CENTRAL_SIG, EOCD_SIG = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
ZIP64_EOCD_SIG, ZIP64_LOCATOR_SIG, DESCRIPTOR_SIG = b"PK\x06\x06", b"PK\x06\x07", b"PK\x07\x08"
# The records after their signatures (APPNOTE 4.3): local header, central
# directory entry, end record, zip64 end record and its locator.
LOCAL_RECORD = struct.Struct("<HHHHHIIIHH")  # version, flags, method, time, date, crc, sizes, name and extra lengths
CENTRAL_RECORD = struct.Struct("<BBHHHHHIIIHHHHHII")  # made by (version, host), ..., lengths, disk, attributes, offset
EOCD_RECORD = struct.Struct("<HHHHIIH")  # disk, directory's disk, entries (there, in all), size, offset, comment length
ZIP64_EOCD_RECORD = struct.Struct("<QHHIIQQQQ")  # record size, versions, then as the end record's fields
ZIP64_LOCATOR_RECORD = struct.Struct("<IQI")  # disk, offset of the zip64 end record, disks

STORED, DEFLATED = 0, 8
FLAG_ENCRYPTED, FLAG_DESCRIPTOR, FLAG_STRONG, FLAG_UTF8, FLAG_MASKED = 0x1, 0x8, 0x40, 0x800, 0x2000
ENCRYPTION = FLAG_ENCRYPTED | FLAG_STRONG | FLAG_MASKED
ZIP64_EXTRA, UNICODE_PATH_EXTRA, AES_EXTRA = 0x0001, 0x7075, 0x9901
UNIX = 3  # the "version made by" host whose external attributes hold a Unix mode
MAX32, MAX16 = 0xFFFFFFFF, 0xFFFF
METHODS = {1: "shrink", 6: "implode", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstd", 95: "xz", 98: "ppmd"}

#: The most bytes of extra fields in one header: real ones hold timestamps, Unix
#: ids and zip64 sizes (under 100 bytes); zipalign pads to 4 KiB pages.
MAX_EXTRA = 16 << 10
#: The most bytes of a member's comment in the central directory (rarely any).
MAX_COMMENT = 16 << 10
#: The most bytes of one central directory entry, its name's 16-bit length included.
MAX_ENTRY = 46 + MAX16 + MAX_EXTRA + MAX_COMMENT
#: The most bytes of a zip64 end record's "extensible data" (no common tool writes any).
MAX_ZIP64_EXTENSIBLE = 64 << 10
#: The longest symlink target (PATH_MAX): a symlink's target is its member's data.
MAX_LINK_TARGET = 4096

DESCRIPTOR_SIG_VALUE = struct.unpack("<I", DESCRIPTOR_SIG)[0]
MEMBER, DATA_END, CENTRAL_END = "member", "end of data", "central directory"  # the events' tags


def is_zip(head: bytes) -> bool:
    """Whether ``head`` starts like a zip: a member's header, or the end record of an empty zip."""
    return head.startswith((LOCAL_SIG, EOCD_SIG))


class Member(Record):
    """A zip member, as :class:`hubcache.writer.Member` describes one."""

    __slots__ = ("name", "kind", "mode", "size", "linkname", "type")

    def __init__(self, name: str, kind: str, mode: int, size: int, linkname: str, type: bytes) -> None:
        self.name = name
        self.kind = kind  # file or dir; symlinks are only known at the central directory
        self.mode = mode  # 0o644: Unix modes are in the central directory, after the data is written
        self.size = size  # the local header's size; 0 when it comes after the data (a data descriptor)
        self.linkname, self.type = linkname, type


class Streamed:
    """What a member's local header and data were, for the central directory to agree with."""

    def __init__(
        self,
        raw_name: bytes,
        name: str,
        flags: int,
        method: int,
        offset: int,
        header: Tuple[int, int, int],
        zip64: bool,
    ) -> None:
        self.raw_name, self.name, self.flags, self.method, self.offset = raw_name, name, flags, method, offset
        self.header = header  # the local header's CRC-32 and sizes (0 if unknown)
        self.zip64 = zip64  # the local header has a zip64 field
        self.crc = self.csize = self.usize = 0  # the data's, once it is read
