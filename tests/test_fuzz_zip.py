"""A fuzzer for the zip reader and the safe writer.

Valid zips (zipfile's stored, deflated, streamed with data descriptors and
zip64; Info-ZIP's, to a file and to a pipe; hand-made ones with symlinks, zip64
end records and Unicode path fields) are mutated, case by case from fixed
seeds: bits flipped, header fields (found by their signatures) set to hostile
numbers, the bytes truncated, duplicated, dropped and spliced with other zips,
junk or padding appended; and hand-made zips are built from hostile names,
symlink targets, flags, methods and descriptors.

Every case must end within CASE_BOUND seconds, raise nothing but ArchiveError
(or succeed), and create nothing outside its destination.

``HUBCACHE_FUZZ_ZIP_CASES=N`` runs N cases (default 6000: ~10 s on two cores);
``HUBCACHE_FUZZ_SEED`` changes the seed; ``HUBCACHE_FUZZ_ZIP_CASE=i`` runs case
i alone, to reproduce a failure.
"""

from __future__ import annotations

import os
import random
import re
import struct
import tempfile

from hubcache.archive import Limits

from archives import ZipEntry, chunked, fuzz_one, info_zip, make_zip, raw_zip, write_tree

CASES = int(os.environ.get("HUBCACHE_FUZZ_ZIP_CASES", "6000"))
SEED = int(os.environ.get("HUBCACHE_FUZZ_SEED", "0"))
ONLY = os.environ.get("HUBCACHE_FUZZ_ZIP_CASE")
CASE_BOUND = 10  # seconds
EVIL = "hubcache-fuzz-evil"  # the name hostile paths use, to look for escapes by name too
LIMITS = Limits(max_size=64 << 20, max_files=10_000, max_ratio=1000)
SIGNATURES = re.compile(b"PK(\x03\x04|\x01\x02|\x05\x06|\x06\x06|\x06\x07|\x07\x08)")
# Where each record's numeric fields are, after its signature: (offset, width).
FIELDS = {
    b"\x03\x04": [(2, 2), (4, 2), (6, 2), (10, 4), (14, 4), (18, 4), (22, 2), (24, 2)],
    b"\x01\x02": [(1, 1), (4, 2), (6, 2), (12, 4), (16, 4), (20, 4), (24, 2), (26, 2), (28, 2), (30, 2), (34, 4),
                  (38, 4)],
    b"\x05\x06": [(0, 2), (2, 2), (4, 2), (6, 2), (8, 4), (12, 4), (16, 2)],
    b"\x06\x06": [(0, 8), (12, 4), (16, 4), (20, 8), (28, 8), (36, 8), (44, 8)],
    b"\x06\x07": [(0, 4), (4, 8), (12, 4)],
    b"\x07\x08": [(0, 4), (4, 4), (8, 4)],
}


def names(outer):
    return ["../" + EVIL, "../../../../" + EVIL, f"{outer}/{EVIL}", "/" + EVIL, "a/../../" + EVIL, "./", "", ".",
            "..", "a//b", "a\0b", "C:" + EVIL, "C:/" + EVIL, "\\" + EVIL, "a\\..\\..\\" + EVIL, "x" * 300,
            "d/" * 200 + EVIL, "link/" + EVIL, "link", "dir/", "dir", "f", "f/x", "\udcff"]


def targets(outer):
    return ["..", "../", "/", outer, "../../" + EVIL, ".", "link", "dir", "b/c/../..", "x" * 5000, "a/" * 300,
            "self", "f/../..", "in\0side", ""]


def seeds(work):
    files = {"saved_model.pb": b"pb" * 300, "variables/variables.index": b"", "variables/data": bytes(range(256)) * 9,
             "assets/vocab.txt": b"a\nb\nc\n"}
    tree = os.path.join(work, "tree")
    write_tree(tree, files)
    os.symlink("saved_model.pb", os.path.join(tree, "alias"))
    info_zip(tree, "-r", "-y", os.path.join(work, "file.zip"), ".")
    with open(os.path.join(work, "file.zip"), "rb") as f:
        from_file = f.read()
    link = {"external": 0o120777 << 16}
    hand = raw_zip([ZipEntry("dir/", b""), ZipEntry("dir/a", b"alpha" * 50, 8, descriptor="nosig"),
                    ZipEntry("link", b"dir/a", central=link), ZipEntry("b", b"beta", 8, descriptor="sig")],
                   zip64_end=True, comment=b"a comment")
    return [make_zip(files, "store"), make_zip(files), make_zip(files, stream=True),
            make_zip(files, stream=True, zip64=True), make_zip(files, symlinks={"alias": "saved_model.pb"}),
            info_zip(tree, "-r", "-", "."), from_file, hand]


def hostile(rng, outer):
    """A hand-made zip of hostile members, all its fields consistent."""
    entries = []
    for _ in range(rng.randrange(1, 5)):
        pool = names(outer) if rng.random() < 0.4 else ["ok", "dir/ok", "link", "f", "dir/", "dir", "link/x", "b"]
        name = rng.choice(pool).encode("utf-8", "surrogateescape")
        link = rng.random() < 0.4
        data = rng.choice(targets(outer)).encode("utf-8", "surrogateescape") if link else \
            rng.choice([b"", b"data", rng.randbytes(rng.randrange(1, 3000))])
        method = rng.choice([0, 8, 8, 8]) if rng.random() < 0.9 else rng.choice([12, 99, rng.randrange(256)])
        entry = ZipEntry(name, data if method in (0, 8) else b"", method if method in (0, 8) else 0,
                         flags=rng.choice([0] * 6 + [0x800] * 3 + [1]))
        if method not in (0, 8):
            entry.local = entry.central = {"method": method}
        if link or rng.random() < 0.1:
            mode = 0o120777 if link else rng.choice([0o40755, 0o10644, 0o20644])
            entry.central = dict(entry.central or {}, external=mode << 16)
        if rng.random() < 0.3 and entry.method == 8:
            entry.descriptor = rng.choice(["sig", "nosig"])
        entries.append(entry)
    return raw_zip(entries, zip64_end=rng.random() < 0.2)


NUMBERS = [0, 1, 0xFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 0x7FFFFFFF, 1 << 32, 44]


def mutate(data, rng, spares):
    data = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        op = rng.random()
        if not data:
            break
        if op < 0.2:
            for _ in range(rng.randrange(1, 5)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op < 0.55:  # a numeric field of a record, found by its signature
            records = [(m.start(), m.group(1)) for m in SIGNATURES.finditer(data)]
            if records:
                at, kind = rng.choice(records)
                offset, width = rng.choice(FIELDS[kind])
                value = rng.choice(NUMBERS + [rng.randrange(1 << (8 * width))])
                if rng.random() < 0.3:
                    old = int.from_bytes(data[at + 4 + offset : at + 4 + offset + width], "little")
                    value = old + rng.choice([-1, 1, 2, -4, 16])
                value &= (1 << (8 * width)) - 1
                data[at + 4 + offset : at + 4 + offset + width] = value.to_bytes(width, "little")
        elif op < 0.7:  # truncate
            del data[rng.randrange(len(data)) :]
        elif op < 0.85:  # duplicate, drop or splice in bytes
            start = rng.randrange(len(data))
            piece = rng.choice([bytes(data[start : start + rng.randrange(1, 200)]), rng.choice(spares)[:400],
                                rng.choice(spares)[-200:]])
            if rng.random() < 0.5:
                data[start:start] = piece
            else:
                del data[start : start + rng.randrange(1, 100)]
        else:  # something after the end, or before the start
            junk = rng.choice([bytes(rng.randrange(1, 1 << 16)), rng.randbytes(rng.randrange(1, 300)),
                               rng.choice(spares), b"PK\x05\x06" + bytes(18)])
            data = data + junk if rng.random() < 0.8 else bytearray(junk) + data
    return bytes(data)


def test_fuzz_the_zip_reader_and_writer(tmp_path):
    outer = str(tmp_path / "outer")
    box = os.path.join(outer, "a", "box")
    os.makedirs(box)
    base = seeds(tempfile.mkdtemp(dir=tmp_path))
    failures = []
    cases = [int(ONLY)] if ONLY is not None else range(CASES)
    for case in cases:
        rng = random.Random(f"zip:{SEED}:{case}")
        roll = rng.random()
        if roll < 0.25:
            data = hostile(rng, outer)
            if rng.random() < 0.3:
                data = mutate(data, rng, base)
        else:
            data = mutate(rng.choice(base), rng, base)
        failures += fuzz_one(case, chunked(data, rng), outer, box, CASE_BOUND, LIMITS)
        if len(failures) >= 20:
            break
    for ancestor in [tmp_path, *tmp_path.parents]:
        assert not os.path.lexists(os.path.join(ancestor, EVIL)), f"{EVIL} was written in {ancestor}"
    assert not failures, f"seed {SEED}; rerun one with HUBCACHE_FUZZ_ZIP_CASE=i:\n" + "\n".join(failures)


def test_fuzz_struct_fields_stay_in_range():
    """The records the fuzzer knows are the ones the reader parses (a check on the fuzzer itself)."""
    import hubcache.zipformat as z

    assert z.LOCAL_RECORD.size == 26 and z.CENTRAL_RECORD.size == 42 and z.EOCD_RECORD.size == 18
    assert struct.calcsize("<IQI") == z.ZIP64_LOCATOR_RECORD.size
