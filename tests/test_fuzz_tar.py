"""A fuzzer for the tar reader and the safe writer.

Valid archives (ustar, pax, GNU long names, links, directories, global pax
headers, ustar prefixes) are mutated, case by case from fixed seeds: header
fields set to hostile numbers, names, link targets and type flags, pax records
rewritten with wrong lengths and hostile values, blocks truncated, duplicated,
dropped and spliced, and some cases compressed (gzip, bz2, xz) and then
damaged. The checksum of a mutated header is mostly recomputed, so that
mutations reach past the first check.

Every case must end within CASE_BOUND seconds, raise nothing but ArchiveError
(or succeed), and create nothing outside its destination.

``HUBCACHE_FUZZ_CASES=N`` runs N cases (default 3000: 20-40 s on two cores);
``HUBCACHE_FUZZ_SEED`` changes the seed; ``HUBCACHE_FUZZ_CASE=i`` runs case i
alone, to reproduce a failure.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import random
import tarfile

from hubcache.archive import Limits
from hubcache.tar import MAX_NUMBER, _FieldError, checksum_ok, number, pax_records

from archives import BLOCK, END, chunked, extended, fuzz_one, header, member, pax_record, raw_tar

CASES = int(os.environ.get("HUBCACHE_FUZZ_CASES", "3000"))
SEED = int(os.environ.get("HUBCACHE_FUZZ_SEED", "0"))
ONLY = os.environ.get("HUBCACHE_FUZZ_CASE")
CASE_BOUND = 10  # seconds
EVIL = "hubcache-fuzz-evil"  # the name hostile paths use, to look for escapes by name too
LIMITS = Limits(max_size=64 << 20, max_files=10_000, max_ratio=1000)


# -------------------------------------------------------------------- seeds


def _tarfile(fmt, add):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, data, target in add:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            info.type = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE}[kind]
            info.mode = 0o755
            info.linkname = target
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == "f" else None)
    return buf.getvalue()


def seeds():
    """Valid plain tar archives, each exercising other parts of the format."""
    files = [
        ("model", "d", b"", ""),
        ("model/saved_model.pb", "f", b"pb" * 300, ""),
        ("model/variables", "d", b"", ""),
        ("model/variables/variables.data-00000-of-00001", "f", bytes(range(256)) * 9, ""),
        ("model/alias", "l", b"", "saved_model.pb"),
        ("model/empty", "f", b"", ""),
    ]
    long_name = "model/" + "long-directory-name/" * 8 + "file.bin"
    long_files = files + [
        (long_name, "f", b"long" * 50, ""),
        ("model/ünïcode-✓.txt", "f", b"utf8", ""),
        ("model/" + "l" * 120, "l", b"", "../model/" + "t" * 110),
    ]
    hand = raw_tar(
        extended(pax_record("comment", "global") + pax_record("path", "ignored"), b"g", "pax_global_header"),
        member("file.txt", b"in the prefix", prefix=b"prefixed/dir"),
        member("old-dir/", type=b"\0"),
        member("contiguous", b"seven", b"7"),
        extended(pax_record("path", "pax/path.txt") + pax_record("size", "3") + pax_record("mtime", "1.5")),
        member("short", b"abc"),
        extended(b"gnu/long/name/" + b"n" * 100 + b"\0", b"L", "././@LongLink"),
        member("cut", b"gnu"),
        extended(b"gnu/link/" + b"k" * 100 + b"\0", b"K", "././@LongLink"),
        member("gnu-link", type=b"2", linkname=b"cut"),
    )
    sparse = raw_tar(  # as GNU tar --sparse --format=posix writes it: refused, but its parsing is fuzzed
        member("before", b"x"),
        extended(pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.name", "sparse.bin")),
        member("GNUSparseFile.1/sparse.bin", b"1\n0\n5\n".ljust(BLOCK, b"\0") + b"hello"),
    )
    return [
        _tarfile(tarfile.USTAR_FORMAT, files),
        _tarfile(tarfile.PAX_FORMAT, long_files),
        _tarfile(tarfile.GNU_FORMAT, long_files),
        hand,
        hand,
        sparse,
    ]


def headers_of(data):
    """The offsets of the header blocks of an archive, as far as they can be told."""
    out, at = [], 0
    while at + BLOCK <= len(data) and data[at : at + BLOCK] != bytes(BLOCK):
        out.append(at)
        try:
            size = number(data[at + 124 : at + 136])
        except _FieldError:
            break
        at += BLOCK + -(-size // BLOCK) * BLOCK
    return out


# ---------------------------------------------------------------- mutations

FIELDS = {"name": (0, 100), "mode": (100, 8), "size": (124, 12), "chksum": (148, 8), "type": (156, 1),
          "linkname": (157, 100), "magic": (257, 8), "prefix": (345, 155), "gnu": (345, 150)}
NUMBERS = [b"-1\0", b"-0000000001\0", b"\xff" * 12, b"\xff" * 11 + b"\xfb", b"\x80" + b"\xff" * 11,
           b"\x80" + bytes(10) + b"\x05", b"\x80" + bytes(7) + b"\x01" + bytes(3), b"\x81" + bytes(11),
           b"77777777777\0", b"00000001000\0", b"00000000001\0", b" 0\0", b"", b"0o7\0", b"1_0\0", b"+7\0",
           b"1 2\0", b"99\0", b"\0" * 12, b" " * 12, b"00000100000 "]
TYPES = list(b"0125673456\0xgXLKSVMDNA")
DEEP = "d/" * 300 + EVIL


def names(outer):
    return ["../" + EVIL, "../../" + EVIL, "../../../../" + EVIL, f"{outer}/{EVIL}", "/" + EVIL,
            "a/../../" + EVIL, "./", "", ".", "..", "a//b", "a\0b", "C:" + EVIL, "\\" + EVIL, "x" * 300,
            DEEP, "model/alias/" + EVIL, "model/alias", "model", "model/saved_model.pb/x", "link/" + EVIL,
            "\udcff\udcfe", "model/./variables/../" + EVIL, "GNUSparseFile.1/x"]


def targets(outer):
    return ["..", "../", "/", outer, "../../" + EVIL, ".", "link", "model", "b/c/../..", "x" * 5000,
            "model/../../..", "a/" * 300, "self", "saved_model.pb/../..", "variables/../../../", "in\0side", ""]


def pax_garbage(rng, outer):
    keys = ["path", "linkpath", "size", "GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.name",
            "GNU.sparse.map", "GNU.sparse.size", "hdrcharset", "comment", "mtime", "uid", ""]
    values = names(outer) + targets(outer) + ["-1", "5", "0", "99999999999999999999", "1e3", " 5", "BINARY",
                                              "0,1,2", str(MAX_NUMBER + 1), "\udcff"]
    out = b""
    for _ in range(rng.randrange(1, 5)):
        record = pax_record(rng.choice(keys), rng.choice(values).encode("utf-8", "surrogateescape"))
        roll = rng.random()
        if roll < 0.15:  # a wrong length
            record = str(rng.choice([0, 1, 3, 5, len(record) - 1, len(record) + 1, 10 ** 6])).encode() + \
                record[record.index(b" ") :]
        elif roll < 0.2:
            record = record[:-1]  # no newline
        elif roll < 0.25:
            record = record.replace(b"=", b"", 1)
        out += record
    if rng.random() < 0.1:
        out += rng.randbytes(rng.randrange(1, 20))
    return out


def put(block, field, value):
    at, width = FIELDS[field]
    block[at : at + width] = value[:width].ljust(width, b"\0")


def insert(data, at, new, touched):
    """Put ``new`` into ``data`` at ``at``; returns the touched header offsets, moved."""
    data[at:at] = new
    return {t + len(new) if t >= at else t for t in touched}


def mutate(data, rng, outer, spares):
    """One hostile variant of the valid archive ``data``."""
    data = bytearray(data)
    offsets = headers_of(bytes(data)) or [0]
    touched = set()
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        op = rng.random()
        at = rng.choice(offsets)
        block = data[at : at + BLOCK]
        if len(block) < BLOCK:
            continue
        if op < 0.15:
            for _ in range(rng.randrange(1, 5)):
                block[rng.randrange(BLOCK)] = rng.randrange(256)
        elif op < 0.35:
            put(block, rng.choice(["size", "size", "mode", "chksum"]), rng.choice(NUMBERS + [rng.randbytes(12)]))
        elif op < 0.45:
            block[156] = rng.choice(TYPES + [rng.randrange(256)])
        elif op < 0.6:
            put(block, "name", rng.choice(names(outer)).encode("utf-8", "surrogateescape"))
        elif op < 0.67:  # a link, its target in the header or (any length, any byte) in a pax record
            target = rng.choice(targets(outer)).encode("utf-8", "surrogateescape")
            block[156] = rng.choice(b"122")
            if rng.random() < 0.5:
                put(block, "linkname", target)
            else:
                data[at : at + BLOCK] = block
                touched = insert(data, at, extended(pax_record("linkpath", target)), touched | {at})
                offsets = headers_of(bytes(data)) or offsets
                continue
        elif op < 0.72:
            put(block, rng.choice(["magic", "prefix", "gnu"]),
                rng.choice([b"ustar\x0000", b"ustar  \0", b"\0" * 8, b"../evil/x", rng.randbytes(8)]))
        elif op < 0.82:  # a new extended header before this one
            payload = pax_garbage(rng, outer) if rng.random() < 0.7 else \
                rng.choice(names(outer)).encode("utf-8", "surrogateescape") + b"\0"
            touched = insert(data, at, extended(payload, bytes([rng.choice(b"xgXLK")]), "PaxHeaders/x"), touched)
            touched.add(at)
            offsets = headers_of(bytes(data)) or offsets
            continue
        elif op < 0.88:  # truncate
            del data[rng.randrange(len(data)) :]
            continue
        elif op < 0.94:  # duplicate, drop or splice in blocks
            start = rng.randrange(0, max(1, len(data) // BLOCK)) * BLOCK
            piece = rng.choice([bytes(data[start : start + BLOCK * rng.randrange(1, 4)]), rng.choice(spares)[:2048]])
            if rng.random() < 0.5:
                data[start:start] = piece
            else:
                del data[start : start + BLOCK]
            continue
        else:  # something after the end
            data += rng.choice([bytes(rng.randrange(1, 1 << 16)), rng.randbytes(rng.randrange(1, 3000)), END])
            continue
        data[at : at + BLOCK] = block
        touched.add(at)
    for at in touched:
        if rng.random() < 0.85 and at + BLOCK <= len(data):  # most mutations should get past the checksum
            block = bytearray(data[at : at + BLOCK])
            block[148:156] = b" " * 8
            block[148:156] = b"%06o\0 " % (sum(block) & 0o777777)
            data[at : at + BLOCK] = block
    return bytes(data)


def compress(data, rng):
    roll = rng.random()
    if roll < 0.6:
        return data
    packed = gzip.compress(data, 1, mtime=0) if roll < 0.85 else bz2.compress(data, 1) if roll < 0.93 else \
        lzma.compress(data, preset=0)
    packed = bytearray(packed)
    roll = rng.random()
    if roll < 0.1:
        packed[rng.randrange(len(packed))] ^= 1 << rng.randrange(8)
    elif roll < 0.15:
        del packed[rng.randrange(len(packed)) :]
    elif roll < 0.25:
        packed += rng.choice([bytes(rng.randrange(1, 5000)), gzip.compress(b"", mtime=0) * 3, b"junk",
                              gzip.compress(rng.randbytes(100), mtime=0)])
    return bytes(packed)


def test_fuzz_the_tar_reader_and_writer(tmp_path):
    outer = str(tmp_path / "outer")
    box = os.path.join(outer, "a", "box")
    os.makedirs(box)
    base = seeds()
    failures = []
    cases = [int(ONLY)] if ONLY is not None else range(CASES)
    for case in cases:
        rng = random.Random(f"{SEED}:{case}")
        data = compress(mutate(rng.choice(base), rng, outer, base), rng)
        failures += fuzz_one(case, chunked(data, rng), outer, box, CASE_BOUND, LIMITS)
        if len(failures) >= 20:
            break
    for ancestor in [tmp_path, *tmp_path.parents]:
        assert not os.path.lexists(os.path.join(ancestor, EVIL)), f"{EVIL} was written in {ancestor}"
    assert not failures, f"seed {SEED}; rerun one with HUBCACHE_FUZZ_CASE=i:\n" + "\n".join(failures)


def test_fuzz_the_field_parsers():
    """Numbers, checksums and pax records from random bytes: a value in range,
    or the parser's own error; never a hang or another exception."""
    rng = random.Random(SEED)
    alphabet = b"0123456789 =\n\0-+xa\xff\x80"
    for _ in range(max(CASES * 10, 1000)):
        field = bytes(rng.choice(alphabet) for _ in range(12)) if rng.random() < 0.7 else rng.randbytes(12)
        with contextlib.suppress(_FieldError):
            assert 0 <= number(field) <= MAX_NUMBER
        checksum_ok(rng.randbytes(BLOCK) if rng.random() < 0.5 else header(rng.randbytes(50)))
        text = bytes(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        if rng.random() < 0.5:
            text = pax_record("path", rng.randbytes(rng.randrange(20))) + text
        try:
            for key, value in pax_records(text):
                assert key and isinstance(value, str)
        except _FieldError:
            pass
