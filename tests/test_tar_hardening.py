"""The tar reader and safe writer against hand-made hostile bytes, one class of
defect at a time: each must end quickly in ArchiveError naming the handle (and
the member to blame), never hang, never grow memory without bound, never raise
anything else, and never write outside the destination."""

import bz2
import gzip
import itertools
import json
import lzma
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib

import pytest

from hubcache import ArchiveError
from hubcache.archive import Limits
from hubcache.tar import MAX_HEADER_PAYLOAD, MAX_TRAILER

from archives import BLOCK, END, extended, extract_within, header, member, named, pax_record, raw_tar, read_tree

HANDLE = "https://example.com/evil.tar.gz"
BOUND = 10  # seconds any extraction here may take


def fresh(box):
    """Another empty destination inside the box, for a test that extracts twice."""
    dest = box / str(len(list(box.iterdir())))
    dest.mkdir()
    return dest


NO_LIMITS = Limits()


def run(chunks, dest, limits=NO_LIMITS):
    return extract_within(BOUND, chunks, dest, handle=HANDLE, limits=limits)


def refused(chunks, dest, match=None, member=None, limits=NO_LIMITS):
    with pytest.raises(ArchiveError, match=match) as e:
        run(chunks, dest, limits)
    assert HANDLE in str(e.value)
    if member is not None:
        assert e.value.member == member
    return e.value


def forever(block=bytes(64 << 10)):
    """An endless body: the same chunk, for ever."""
    return itertools.repeat(block)


# ------------------------------------------------- 1. numbers from the headers

BAD_NUMBERS = {
    "octal -1": b"-1\0",
    "octal -00000000001": b"-0000000001\0",
    "octal +7": b"+7\0",
    "python literal 0o7": b"0o7\0",
    "underscore 1_0": b"1_0\0",
    "inner space": b"1 2\0",
    "not octal 89": b"89\0",
    "base-256 -1": b"\xff" * 12,
    "base-256 -5": b"\xff" * 11 + b"\xfb",
    "base-256 over 2**63": b"\x80" + b"\xff" * 11,
    "high byte that is not base-256": b"\x81" + bytes(11),
}


@pytest.mark.parametrize("name", sorted(BAD_NUMBERS))
def test_bad_size_fields_are_refused(box, name):
    data = raw_tar(header("f", BAD_NUMBERS[name]) + bytes(BLOCK))
    refused(data, box, "bad number|negative|not octal|too large", member="f")


@pytest.mark.parametrize("name", ["octal -1", "base-256 -1", "not octal 89"])
def test_bad_mode_fields_are_refused(box, name):
    refused(raw_tar(header("f", 0, mode=BAD_NUMBERS[name][:8])), box, "not octal|negative", member="f")


@pytest.mark.parametrize("value", ["-5", "+5", " 5", "5 ", "1e3", "0x10", "", "٣", "9" * 25, str(1 << 63)])
def test_bad_pax_sizes_are_refused(box, value):
    data = raw_tar(extended(pax_record("size", value)), member("f", b"x" * 5))
    refused(data, box, "bad number|too large", member="f")


def test_a_negative_size_followed_by_an_endless_body_does_not_spin(box):
    # The reported hang: a size of -1 made the reader loop for ever.
    refused(itertools.chain([header("f", b"-1\0")], forever()), box, "negative|not octal", member="f")


def test_base_256_sizes_are_read(box):
    data = raw_tar(header("f", b"\x80" + (5).to_bytes(11, "big")) + b"hello".ljust(BLOCK, b"\0"))
    run(data, box)
    assert (box / "f").read_bytes() == b"hello"


# ------------------------------------------------------------- 2. pax records

BAD_RECORDS = {
    "length 0": b"0 path=x\n",
    "shorter than its own length field": b"3 path=x\n",
    "longer than the payload": b"99 path=x\n",
    "not ending in a newline": b"9 path=xy",
    "without '='": b"9 pathxx\n",
    "empty keyword": b"6 =xyz\n",
    "non-digit length": b"x9 path=x\n",
    "negative length": b"-9 path=x\n",
    "leading space": b" 9 path=x\n",
    "no space": b"9path=xx\n",
    "huge length": b"99999999999999999999999 a=b\n",
    "junk after a good record": pax_record("path", "a") + b"\0\0\0",
    "only NULs": bytes(20),
}


@pytest.mark.parametrize("kind", [b"x", b"X", b"g"])
@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_malformed_pax_records_are_refused(box, name, kind):
    data = raw_tar(extended(BAD_RECORDS[name], kind, "PaxHeaders/f"), member("f", b"data"))
    error = refused(data, box, "pax record", member="PaxHeaders/f")
    assert "not a valid tar archive" in str(error)


def test_well_formed_pax_records_are_used(box):
    records = pax_record("path", "dir/ünïcode.txt") + pax_record("comment", "a=b=c") + pax_record("size", "3")
    run(raw_tar(extended(records), member("ignored", b"abc")), box)
    assert read_tree(str(box)) == {"dir/ünïcode.txt": b"abc"}


# ------------------------------------------- 3. extended headers are bounded

def test_header_payloads_over_the_bound_are_refused_before_they_are_read(box):
    for kind in (b"L", b"K", b"x", b"g"):
        stream = itertools.chain([header("././@LongLink", 3 << 30, kind)], forever(b"a" * (64 << 10)))
        refused(stream, fresh(box), "extended header data", member="././@LongLink")


def test_what_accumulates_before_one_member_is_bounded(box):
    # Each header is under the bound; together they are not.
    part = MAX_HEADER_PAYLOAD // 3
    data = raw_tar(
        extended(b"n" * part, b"L", "L1"),
        extended(b"k" * part, b"K", "K1"),
        extended(pax_record("comment", "c" * (part - 20)), b"x", "x1"),
        extended(pax_record("comment", "d" * (part - 20)), b"x", "x2"),
        member("f", b"x"),
    )
    refused(data, box, "extended header data", member="x2")


def test_endless_empty_extended_headers_are_bounded(box):
    stream = itertools.chain.from_iterable(itertools.repeat([extended(b"", b"g", "g")]))
    refused(stream, box, "extended headers in a row", member="g")


def test_extended_headers_count_against_the_limits(box):
    data = raw_tar(extended(pax_record("comment", "x" * 1000), b"g", "g1"), member("a"), member("b"))
    refused(data, box, r"'b' is beyond the 2 members.*HUBCACHE_MAX_FILES \(now 2\)", member="b",
            limits=Limits(max_files=2))
    data = raw_tar(member("a", b"x" * 600), extended(pax_record("comment", "x" * 600), b"x", "pax"), member("b"))
    refused(data, fresh(box), r"'pax' .*HUBCACHE_MAX_SIZE \(now 1.0 KiB\)", member="pax", limits=Limits(max_size=1024))


MEMORY_CHILD = r"""
import itertools, json, os, sys
sys.path.insert(0, {tests!r})
from archives import header
from hubcache.archive import extract, ArchiveError

def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) * 1024

before = hwm()
chunk = bytes(1 << 20)
body = itertools.chain([header("././@LongLink", {claim}, {kind!r})], itertools.repeat(chunk, {claim} >> 20))
try:
    extract(body, {dest!r}, handle="h")
    outcome = "extracted"
except ArchiveError as e:
    outcome = "ArchiveError"
print(json.dumps([outcome, hwm() - before]))
"""


@pytest.mark.parametrize("kind", [b"L", b"x"])
def test_memory_stays_bounded_when_headers_claim_gigabytes(box, kind):
    """The reported case: a small download whose GNU long-name (or pax) header
    claims gigabytes reached 3.2 GiB of RSS. Measured in a child process."""
    from helpers import HERE, child_env

    code = MEMORY_CHILD.format(tests=HERE, claim=1536 << 20, kind=kind, dest=str(box))
    out = subprocess.run([sys.executable, "-c", code], env=child_env({}), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    outcome, grown = json.loads(out.stdout)
    assert outcome == "ArchiveError"
    assert grown < 200 << 20, f"peak RSS grew by {grown >> 20} MiB"


# --------------------------------------------- 4. after the end-of-archive

def gz(data):
    return gzip.compress(data, mtime=0)


TAR = raw_tar(member("f", b"data"))

ENDLESS = {
    "plain tar, zeros": lambda: itertools.chain([TAR], forever()),
    "plain tar, junk": lambda: itertools.chain([TAR], forever(b"junk" * 1000)),
    "gzip, then zeros": lambda: itertools.chain([gz(TAR)], forever()),
    "gzip, then empty gzip members": lambda: itertools.chain([gz(TAR)], forever(gz(b"") * 100)),
    "gzip stream going on with zeros": lambda: _gzip_stream_then(TAR, forever(bytes(1 << 20))),
    "gzip stream going on with tar headers": lambda: _gzip_stream_then(TAR, forever(member("g", b"x") * 100)),
    "bz2, then zeros": lambda: itertools.chain([bz2.compress(TAR)], forever()),
    "xz, then zeros": lambda: itertools.chain([lzma.compress(TAR)], forever()),
}


def _gzip_stream_then(tar, more):
    """One gzip stream holding ``tar`` and then whatever ``more`` yields, never ending."""
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    yield c.compress(tar) + c.flush(zlib.Z_SYNC_FLUSH)
    for data in more:
        yield c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)


@pytest.mark.parametrize("name", sorted(ENDLESS))
def test_an_endless_body_after_the_end_marker_is_refused(box, name):
    # Zeros or empty members yield nothing: the inflater's own bound may stop them first.
    refused(ENDLESS[name](), box, "after tar's end-of-archive marker|in a row that holds nothing")


def test_endless_padding_before_the_end_marker_is_refused(box):
    # Zeros (or empty gzip members) between two gzip members, mid-archive: the
    # reader waits for data that never comes, the inflater must stop.
    half = gz(TAR[:BLOCK])
    refused(itertools.chain([half], forever()), box, "holds nothing")
    refused(itertools.chain([half], forever(gz(b"") * 100)), fresh(box), "holds nothing")


def test_a_gzip_header_field_without_end_is_refused(box):
    # FCOMMENT: a NUL-terminated string in the gzip header, of no stated length.
    head = b"\x1f\x8b\x08\x10" + bytes(6)
    refused(itertools.chain([head], forever(b"c" * (64 << 10))), box, "holds nothing")


def test_normal_padding_after_the_end_marker_is_accepted(box):
    padding = bytes(MAX_TRAILER - 2 * BLOCK)  # a record of 1 MiB in all
    for data in [gz(TAR + padding) + bytes(4096), TAR + padding, bz2.compress(TAR + padding)]:
        dest = fresh(box)
        run([data], dest)
        assert read_tree(str(dest)) == {"f": b"data"}


def test_the_compressed_stream_is_still_checked_to_its_end(box):
    data = bytearray(gz(TAR + bytes(8192)))
    data[-6] ^= 0xFF  # the CRC, after the tar's end
    refused([bytes(data)], box, "corrupt gzip")


# ------------------------------------------------------------- 5. depth

def test_deep_paths_are_refused(box):
    deep = "a/" * 1000 + "f"
    refused(raw_tar(extended(pax_record("path", deep)), member("x", b"x")), box, "1001 levels deep", member=deep)
    refused(raw_tar(extended(deep.encode() + b"\0", b"L", "././@LongLink"), member("x")), fresh(box), "levels deep")
    dirs = [member("d/" * i, type=b"5") for i in range(1, 300)]
    refused(raw_tar(*[extended(pax_record("path", "d/" * i), b"x") + d for i, d in enumerate(dirs, 1)]), fresh(box),
            "129 levels deep")


def test_paths_at_the_depth_bound_are_accepted(box):
    name = "d/" * 127 + "f"
    run(raw_tar(extended(pax_record("path", name)), member("x", b"deep")), box)
    assert (box / name).read_bytes() == b"deep"


def test_long_symlink_chains_and_loops_end_in_archive_error(box):
    chain = [member(f"l{i}", type=b"2", linkname=f"l{i + 1}") for i in range(1000)]
    refused(raw_tar(*chain, member("l1000", b"x")), fresh(box), "chain of over 40 links", member="l0")
    refused(raw_tar(member("a", type=b"2", linkname="b"), member("b", type=b"2", linkname="a")), fresh(box), "loop")
    refused(raw_tar(named("l", type=b"2", linkname="a/" * 300 + "x")), fresh(box), "levels deep", member="l")


def test_a_short_symlink_chain_inside_is_accepted(box):
    run(raw_tar(member("f", b"x"), member("a", type=b"2", linkname="b"), member("b", type=b"2", linkname="f")), box)
    assert (box / "a").read_bytes() == b"x"


def test_a_symlink_chain_that_leaves_and_comes_back_is_refused(box):
    # "b/c/../../dest/f" reaches the file through the parent of dest, whose
    # name changes when the entry is published.
    data = raw_tar(member("c", type=b"5"), member("f", b"x"), member("b", type=b"2", linkname="."),
                   member("a", type=b"2", linkname="b/c/../../dest/f"))
    refused(data, box, "resolves outside", member="a")


# ------------------------------------------------------------ 6. sparse

SPARSE_FORMATS = {
    "posix 1.0": ["--format=posix", "--sparse-version=1.0"],
    "posix 0.1": ["--format=posix", "--sparse-version=0.1"],
    "posix 0.0": ["--format=posix", "--sparse-version=0.0"],
    "gnu": ["--format=gnu"],
}


@pytest.fixture(scope="module")
def sparse_file(tmp_path_factory):
    if not shutil.which("tar") or "GNU tar" not in subprocess.run(["tar", "--version"], capture_output=True,
                                                                   text=True).stdout:
        pytest.skip("needs GNU tar")
    root = tmp_path_factory.mktemp("sparse")
    (root / "model").mkdir()
    with open(root / "model" / "holes.bin", "wb") as f:
        f.truncate(10 << 20)
        f.seek(5_000_000)
        f.write(b"hello")
    return root


@pytest.mark.parametrize("compress", ["", "-z"])
@pytest.mark.parametrize("name", sorted(SPARSE_FORMATS))
def test_sparse_members_from_gnu_tar_are_refused(box, sparse_file, name, compress):
    args = ["tar", "--sparse", *SPARSE_FORMATS[name], "-c", *filter(None, [compress]), "-f", "-", "model/holes.bin"]
    data = subprocess.run(args, cwd=sparse_file, capture_output=True, check=True).stdout
    error = refused(data, box, "sparse file.*without --sparse", member="model/holes.bin")
    assert "GNUSparseFile" not in str(error)
    assert not any(box.iterdir())


def test_hand_made_sparse_markers_are_refused(box):
    for records in (pax_record("GNU.sparse.map", "0,1"), pax_record("GNU.sparse.major", "1")):
        refused(raw_tar(extended(records), member("real", b"x")), fresh(box), "sparse", member="real")
    refused(raw_tar(member("old", b"x", b"S", magic=b"ustar  \0")), fresh(box), "sparse", member="old")


# ------------------------------------------- 7. names the filesystem refuses

LONG = "/".join(["p" * 250] * 20)  # 5 KB: over PATH_MAX
NAME_CLASHES = {
    "component too long": ([named("n" * 300, b"x")], "n" * 300),
    "path too long": ([named(LONG, b"x")], LONG),
    "symlink target too long": ([named("l", type=b"2", linkname="x" * 5000)], "l"),
    "file where a directory was made": ([named("d/f", b"x"), named("d", b"y")], "d"),
    "symlink where a directory was made": ([named("d/f", b"x"), named("d", type=b"2", linkname="f")], "d"),
    "directory where a symlink was made": ([named("d", type=b"2", linkname="e"), named("./d/", type=b"5")], "./d/"),
}


@pytest.mark.parametrize("name", sorted(NAME_CLASHES))
def test_names_the_filesystem_refuses_are_the_archives_fault(box, name):
    parts, culprit = NAME_CLASHES[name]
    error = refused(raw_tar(*parts), box, member=culprit)
    assert "cannot be created" in str(error) or "appears twice" in str(error)


# ------------------------------------------------- 8. how to raise a bound

def test_limit_messages_name_the_setting_and_its_value(box):
    data = raw_tar(member("a", b"x" * 1000), member("big", b"y" * (2 << 20)))
    e = refused(data, box, limits=Limits(max_size=1 << 20), member="big")
    assert "raise HUBCACHE_MAX_SIZE (now 1.0 MiB)" in str(e) and "2.0 MiB" in str(e)
    e = refused(raw_tar(*[member(f"f{i}") for i in range(4)]), fresh(box), limits=Limits(max_files=3), member="f3")
    assert "raise HUBCACHE_MAX_FILES (now 3)" in str(e)


def test_ratio_message_names_the_setting_and_its_value(box):
    info = tarfile.TarInfo("zeros")
    info.size = 300 << 20

    def stream():
        c = zlib.compressobj(1, zlib.DEFLATED, 31)
        yield c.compress(info.tobuf(format=tarfile.PAX_FORMAT))
        for _ in range(300):
            yield c.compress(bytes(1 << 20))
        yield c.compress(END) + c.flush()

    e = refused(stream(), box, limits=Limits(max_ratio=20))
    assert "raise HUBCACHE_MAX_RATIO (now 20" in str(e)


# ------------------------------------------------------- 9. header checksums

def test_a_signed_checksum_is_accepted(box):
    name = "modèle-ünïcode.txt".encode()  # bytes >= 0x80: the signed sum differs
    block = header(name, 5, checksum="signed")
    assert block != header(name, 5)
    run(raw_tar(block + b"hello".ljust(BLOCK, b"\0")), box)
    assert (box / "modèle-ünïcode.txt").read_bytes() == b"hello"


def test_a_checksum_that_is_neither_sum_is_refused(box):
    block = bytearray(header("modèle.txt".encode(), 0, checksum="signed"))
    block[148:156] = b"%06o\0 " % (int(block[148:154], 8) + 1)
    refused(raw_tar(member("ok", b"x"), bytes(block)), box, "checksum")


@pytest.mark.parametrize("field", [b"-1\0", b"+1234\0", b"\0" * 8, b"0o777\0", b"\xff" * 8])
def test_malformed_checksum_fields_are_refused(box, field):
    block = header("f", 0, checksum=None, extra={148: field.ljust(8, b" ")})
    refused(raw_tar(member("ok", b"x"), block), box, "checksum")


# --------------------------------------------------------------- 10. others

def test_a_gnu_header_does_not_use_its_atime_as_a_prefix(box):
    block = header("f", 5, magic=b"ustar  \0", extra={345: b"14000000000\0"})
    run(raw_tar(block + b"hello".ljust(BLOCK, b"\0")), box)
    assert read_tree(str(box)) == {"f": b"hello"}


def test_an_xz_stream_asking_for_a_huge_dictionary_is_refused(box):
    data = bytearray(lzma.compress(TAR, format=lzma.FORMAT_XZ, filters=[{"id": lzma.FILTER_LZMA2, "preset": 1}]))
    # The block header after the 12-byte stream header: size, flags, then the
    # LZMA2 filter (id 0x21, 1 byte of properties: the dictionary size).
    size = (data[12] + 1) * 4
    at = data.index(b"\x21\x01", 12, 12 + size)
    data[at + 2] = 40  # 4 GiB - 1
    data[12 + size - 4 : 12 + size] = struct.pack("<I", zlib.crc32(data[12 : 12 + size - 4]))
    refused([bytes(data)], box, "needs over 128 MiB")


def test_endless_empty_chunks_between_real_ones_do_not_matter(box):
    run([b"", gz(TAR)[:10], b"", b"", gz(TAR)[10:], b""], box)
    assert read_tree(str(box)) == {"f": b"data"}
