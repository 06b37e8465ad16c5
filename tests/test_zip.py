"""The streaming zip reader, on real zips (Python's zipfile, Info-ZIP's zip) and
hand-made hostile ones: each refusal is an ArchiveError naming the handle (and
the member to blame), within a time bound, with nothing written outside dest."""

import io
import os
import struct
import zlib

import pytest

import hubcache
from hubcache import ArchiveError
from hubcache.archive import Limits, extract
from hubcache.pipeline import RATIO_FLOOR
from hubcache.tar import MAX_TRAILER
from hubcache.zipformat import MAX_COMMENT, MAX_EXTRA

from archives import (
    ZipEntry,
    extract_within,
    fake_saved_model_files,
    info_zip,
    make_tar,
    make_zip,
    raw_zip,
    read_tree,
    write_tree,
)

HANDLE = "https://example.com/evil.zip"
NO_LIMITS = Limits()
BOUND = 20  # seconds any extraction here may take


@pytest.fixture
def work(tmp_path_factory):
    """A directory outside the box, for source trees and zip files."""
    return tmp_path_factory.mktemp("work")


def chunked(data, size):
    return [data[i : i + size] for i in range(0, len(data), size)]


def run(data, dest, limits=NO_LIMITS, size=7777):
    return extract_within(BOUND, chunked(data, size) if isinstance(data, bytes) else data, dest, handle=HANDLE, limits=limits)


def refused(data, dest, match=None, member=None, limits=NO_LIMITS, size=7777):
    with pytest.raises(ArchiveError, match=match) as e:
        run(data, dest, limits, size)
    assert HANDLE in str(e.value)
    assert "Nothing was installed" in str(e.value)
    if member is not None:
        assert e.value.member == member
        assert repr(member) in str(e.value)
    return e.value


FILES = fake_saved_model_files(size=30_000)
SMALL = {"saved_model.pb": b"pb" * 100, "variables/variables.index": b"", "assets/vocab.txt": b"a\nb\n"}


# ----------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", [1, 7, 64 << 10])
@pytest.mark.parametrize(
    "kind", ["store", "deflate", "deflate-stream", "zip64", "zip64-stream", "store-zip64"]
)
def test_zipfile_archives_round_trip(box, kind, size):
    method = "store" if kind.startswith("store") else "deflate"
    files = SMALL if size == 1 else FILES
    data = make_zip(files, method, stream="stream" in kind, zip64="zip64" in kind, dirs=["variables", "assets"])
    result = run(data, box, size=size)
    assert read_tree(str(box)) == files
    assert result.files == {k: len(v) for k, v in files.items()}
    assert result.crc32 == {k: zlib.crc32(v) for k, v in files.items()}
    assert (box / "variables").is_dir() and (box / "assets").is_dir()


@pytest.mark.parametrize("size", [1, 7, 64 << 10])
@pytest.mark.parametrize("how", ["file", "pipe", "store", "max", "stdin"])
def test_info_zip_archives_round_trip(box, work, how, size):
    files = SMALL if size == 1 else FILES
    tree, tmp_path = work / "tree", work
    write_tree(str(tree), files)
    if how == "file":  # written to a seekable file: sizes in the headers
        info_zip(str(tree), "-r", str(tmp_path / "m.zip"), ".")
        data = (tmp_path / "m.zip").read_bytes()
        os.unlink(tmp_path / "m.zip")
    elif how == "pipe":  # to a pipe: data descriptors
        data = info_zip(str(tree), "-r", "-", ".")
    elif how == "store":  # stored, to a file (-0 cannot write to a pipe)
        info_zip(str(tree), "-0", "-r", str(tmp_path / "m.zip"), ".")
        data = (tmp_path / "m.zip").read_bytes()
        os.unlink(tmp_path / "m.zip")
    elif how == "max":
        data = info_zip(str(tree), "-9", "-r", "-", ".")
    else:  # from stdin to stdout: zip64 local headers and descriptors
        files = {"-": files["saved_model.pb"]}
        data = info_zip(str(tree), "-", "-", stdin=files["-"])
    dest = box / "out"
    dest.mkdir()
    run(data, dest, size=size)
    assert read_tree(str(dest)) == files
    # (the box fixture checks nothing was written beside dest; the tree is outside the box)


def test_info_zip_symlinks_become_symlinks(box, work):
    tree = work / "tree"
    write_tree(str(tree), {"variables/v.data": b"abc"})
    os.symlink("variables/v.data", tree / "alias")
    os.symlink("../variables", tree / "variables" / "self")
    info_zip(str(tree), "-r", "-y", str(work / "m.zip"), ".")  # (zip -y cannot write links to a pipe)
    result = run((work / "m.zip").read_bytes(), box)
    assert os.readlink(box / "alias") == "variables/v.data" and (box / "alias").read_bytes() == b"abc"
    assert result.links == {"alias": "variables/v.data", "variables/self": "../variables"}
    assert result.files == {"variables/v.data": 3}


def test_zipfile_symlink_entries_and_executable_bits(box):
    data = make_zip({"bin/run.sh": b"#!/bin/sh\n"}, symlinks={"run": "bin/run.sh"})
    result = run(data, box)
    assert os.readlink(box / "run") == "bin/run.sh"
    assert result.links == {"run": "bin/run.sh"} and "run" not in result.files
    assert not os.stat(box / "bin" / "run.sh").st_mode & 0o111  # Unix modes are not applied


def test_empty_zip(box):
    assert run(make_zip({}), box).files == {}
    assert os.listdir(box) == []


def test_names_utf8_cp437_and_unicode_path_field(box):
    utf8 = ZipEntry("modèle/ü.txt", b"u", flags=0x800)
    cp437 = ZipEntry("caf\x82.txt".encode("latin-1"), b"c")  # 0x82 is é in cp437
    raw = b"x\xff.txt"
    field = b"\x01" + struct.pack("<I", zlib.crc32(raw)) + "Unicode-ß.txt".encode()
    unicode_path = ZipEntry(raw, b"p", local={"extra": struct.pack("<HH", 0x7075, len(field)) + field},
                            central={"extra": struct.pack("<HH", 0x7075, len(field)) + field})
    run(raw_zip([utf8, cp437, unicode_path]), box)
    assert read_tree(str(box)) == {"modèle/ü.txt": b"u", "café.txt": b"c", "Unicode-ß.txt": b"p"}


@pytest.mark.parametrize("descriptor", ["sig", "nosig", "sig64"])
def test_data_descriptors_with_and_without_signature(box, descriptor):
    local = {"extra": struct.pack("<HHQQ", 1, 16, 0, 0), "csize": 0xFFFFFFFF, "usize": 0xFFFFFFFF} \
        if descriptor == "sig64" else None
    data = raw_zip([ZipEntry("a", b"alpha" * 100, 8, descriptor=descriptor, local=local),
                    ZipEntry("b", b"beta", 8, descriptor=descriptor, local=local)])
    run(data, box, size=3)
    assert read_tree(str(box)) == {"a": b"alpha" * 100, "b": b"beta"}


def test_zip64_end_records(box):
    run(raw_zip([ZipEntry("a", b"x"), ZipEntry("b", b"y", 8)], zip64_end=True), box)
    assert read_tree(str(box)) == {"a": b"x", "b": b"y"}


def test_zero_padding_after_the_end_record_is_accepted_up_to_a_bound(box):
    run(make_zip(SMALL) + bytes(1000), box)
    dest = box / "2"
    dest.mkdir()
    refused(make_zip(SMALL) + bytes(MAX_TRAILER + 1), dest, match="goes on after its end record")


def test_endless_zero_body_after_the_end_record_stops(box):
    import itertools

    body = itertools.chain([make_zip(SMALL)], itertools.repeat(bytes(64 << 10)))
    refused(body, box, match="goes on after its end record")


def test_resolve_an_https_zip_url(env, hub):
    files = fake_saved_model_files()
    url = hub.storage.put("/models/tiny.zip", make_zip(files, dirs=["variables", "assets"]))
    path = hubcache.resolve(url)
    assert read_tree(path) == files
    assert hubcache.resolve(url) == path  # cached


def test_resolve_refuses_a_hostile_zip_and_publishes_nothing(env, hub, cache_dir):
    url = hub.storage.put("/models/evil.zip", make_zip({"ok.txt": b"fine", "../../escape": b"x"}))
    with pytest.raises(ArchiveError, match="'..' in its path") as e:
        hubcache.resolve(url)
    assert "../../escape" in str(e.value)
    assert not os.path.exists(os.path.join(os.path.dirname(cache_dir), "escape"))


# ---------------------------------------------------------------- hostile names

HOSTILE_NAMES = {
    "../evil": "'..' in its path",
    "a/../../evil": "'..' in its path",
    "/tmp/evil": "absolute path",
    "C:/evil": "absolute path",
    "C:evil": "absolute path",
    "a\\..\\..\\evil": "backslash",
    "\\evil": "backslash",
    "a\0b": "NUL",
    "d/" * 200 + "deep": "levels deep",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_NAMES))
def test_hostile_names_are_refused(box, name):
    data = raw_zip([ZipEntry("ok.txt", b"ok"), ZipEntry(name, b"x", 8)])
    refused(data, box, HOSTILE_NAMES[name], member=name)


def test_duplicates_are_refused(box):
    refused(make_zip([("f", b"one"), ("./f", b"two")]), box, "appears twice", member="./f")


def test_a_file_under_a_file_is_refused(box):
    refused(raw_zip([ZipEntry("f", b"x"), ZipEntry("f/g", b"y")]), box, "under the file", member="f/g")


# ------------------------------------------------------- data that is not what it says


@pytest.mark.parametrize("method", [0, 8])
def test_crc_mismatch(box, method):
    refused(raw_zip([ZipEntry("f", b"data" * 10, method, local={"crc": 1234}, central={"crc": 1234})]), box,
            "CRC-32", member="f")


@pytest.mark.parametrize("method", [0, 8])
@pytest.mark.parametrize("field,delta", [("usize", 1), ("usize", -1), ("csize", 1), ("csize", -1)])
def test_size_mismatch(box, method, field, delta):
    entry = ZipEntry("f", b"data" * 10, method)
    size = len(entry.data) if method == 0 else len(zlib.compress(entry.data)) - 6
    value = (len(entry.data) if field == "usize" else size) + delta
    entry.local = entry.central = {field: value}
    data = raw_zip([entry, ZipEntry("g", b"next")])
    refused(data, box)


@pytest.mark.parametrize("method", [0, 8])
def test_descriptor_disagreeing_with_the_data(box, method):
    import hubcache.zipformat as z

    good = raw_zip([ZipEntry("f", b"data" * 10, 8, descriptor="sig"), ZipEntry("g", b"x")])
    at = good.index(z.DESCRIPTOR_SIG)
    for field in range(3):  # CRC, compressed size, size
        bad = bytearray(good)
        bad[at + 4 + 4 * field] ^= 1
        dest = box / str(field)
        dest.mkdir()
        refused(bytes(bad), dest, "data descriptor", member="f")


CENTRAL_LIES = {
    "name": {"name": b"g"},
    "crc": {"crc": 1},
    "size": {"usize": 3},
    "compressed size": {"csize": 3},
    "offset": {"offset": 1},
    "method": {"method": 8},
    "utf8 flag": {"flags": 0x800},
    "directory attribute": {"external": 0o40755 << 16},
}


@pytest.mark.parametrize("lie", sorted(CENTRAL_LIES))
def test_central_directory_disagreeing_with_the_stream(box, lie):
    data = raw_zip([ZipEntry("a", b"first"), ZipEntry("f", b"data", central=CENTRAL_LIES[lie])])
    refused(data, box, "differently in two places|not a valid zip", member="f")


def test_member_missing_from_the_central_directory(box):
    data = raw_zip([ZipEntry("a", b"x"), ZipEntry("hidden", b"y", in_central=False)])
    refused(data, box, "does not list it", member="hidden")


def test_extra_member_in_the_central_directory(box):
    other = raw_zip([ZipEntry("a", b"x"), ZipEntry("ghost", b"boo")])
    ghost = other[other.rindex(b"PK\x01\x02") : other.index(b"PK\x05\x06")]
    refused(raw_zip([ZipEntry("a", b"x")], extra_central=[ghost]), box, "holds no such member", member="ghost")


@pytest.mark.parametrize("field,value", [("n", 3), ("n_disk", 1), ("size", 5), ("offset", 0)])
def test_end_record_disagreeing_with_the_directory(box, field, value):
    refused(raw_zip([ZipEntry("a", b"x"), ZipEntry("b", b"y")], end={field: value}), box, "end record")


def test_split_archives_are_refused(box):
    refused(raw_zip([ZipEntry("a", b"x")], end={"disk": 1}), box, "split across several files")


def test_end_record_hidden_in_the_comment(box):
    inner = raw_zip([ZipEntry("other", b"x")])
    refused(raw_zip([ZipEntry("a", b"x")], comment=inner[-22:]), box, "an end record in the archive's comment")


def test_prepended_data_is_refused(box):
    data = make_zip(SMALL)
    e = refused(b"MZ\x90\0 self-extractor stub" + data, box, "data before its first zip member")
    assert e.member is None
    dest = box / "2"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="not an archive"):  # junk longer than the peek: just not an archive
        run(b"\0" * 600 + data, dest)


def test_trailing_junk_is_refused(box):
    refused(make_zip(SMALL) + b"junk", box, "goes on after its end record")
    dest = box / "2"
    dest.mkdir()
    refused(make_zip(SMALL) + make_zip({"other": b"x"}), dest, "goes on after its end record")


def test_junk_between_members_is_refused(box):
    data = raw_zip([ZipEntry("a", b"x")])
    at = data.index(b"PK\x01\x02")
    refused(data[:at] + b"junk" + data[at:], box, "not a valid zip")


@pytest.mark.parametrize("kind", ["store", "deflate-stream", "zip64-stream", "info-zip"])
def test_truncated_at_every_region(box, work, kind):
    if kind == "info-zip":
        tree = work / "tree"
        write_tree(str(tree), SMALL)
        data = info_zip(str(tree), "-r", "-", ".")
    else:
        data = make_zip(SMALL, "store" if kind == "store" else "deflate", stream="stream" in kind,
                        zip64="zip64" in kind)
    cuts = sorted(set(range(1, len(data), max(1, len(data) // 150))) | set(range(len(data) - 30, len(data))))
    for cut in cuts:
        dest = box / f"cut{cut}"
        dest.mkdir()
        with pytest.raises(ArchiveError) as e:
            run(data[:cut], dest, size=97)
        assert HANDLE in str(e.value), cut


# ------------------------------------------------------------- what is not extracted


@pytest.mark.parametrize("method,name", [("bzip2", "bzip2"), ("lzma", "lzma")])
def test_unsupported_methods(box, method, name):
    e = refused(make_zip({"w.bin": b"w" * 100}, method), box, f"compressed with {name}", member="w.bin")
    assert "deflate" in str(e)


@pytest.mark.parametrize("how", ["zipcrypto", "aes", "strong"])
def test_encrypted_members(box, how):
    entry = {"zipcrypto": ZipEntry("secret", b"x" * 12, flags=1),
             "aes": ZipEntry("secret", b"x", local={"method": 99, "extra": struct.pack("<HHH2sBH", 0x9901, 7, 2, b"AE", 3, 8)}),
             "strong": ZipEntry("secret", b"x", flags=0x41)}[how]
    refused(raw_zip([entry]), box, "is encrypted", member="secret")


def test_stored_member_with_a_data_descriptor(box):
    e = refused(make_zip({"f": b"x" * 100}, "store", stream=True), box, "stream cannot tell where it ends", member="f")
    assert "deflate" in str(e)
    dest = box / "2"
    dest.mkdir()  # Info-ZIP's way: the size in the local header too
    refused(raw_zip([ZipEntry("f", b"x" * 100, descriptor="sig", local={"usize": 100})]), dest, "stream cannot tell",
            member="f")


def test_empty_stored_members_with_data_descriptors(box):
    # zipfile and Info-ZIP write empty files and directories so to a pipe: read as empty, checked by the descriptor.
    run(make_zip({"empty": b""}, "store", stream=True, dirs=["d"]), box)
    assert read_tree(str(box)) == {"empty": b""} and (box / "d").is_dir()


def test_directory_with_data(box):
    refused(raw_zip([ZipEntry("d/", b"data")]), box, "directory with data", member="d/")


# ------------------------------------------------------------------- symlinks


@pytest.mark.parametrize("target,match", [("/etc/passwd", "absolute"), ("../..", "outside"),
                                          ("a/../../x", "outside"), ("x" * 5000, "over")])
def test_hostile_symlink_entries(box, target, match):
    refused(make_zip({"a/f": b"x"}, symlinks={"link": target}), box, match, member="link")


def test_symlink_chain_resolving_outside(box):
    data = make_zip({"c/f": b"x"}, symlinks={"a": "b/c/../..", "b": "."})
    refused(data, box, "resolves outside")


def test_writing_through_a_symlink_entry_is_impossible(box):
    # Streamed, "up" is a file when "up/evil" comes: refused as a file's child.
    link = ZipEntry("up", b"..", central={"external": 0o120777 << 16})
    refused(raw_zip([link, ZipEntry("up/evil", b"x")]), box, "under the file", member="up/evil")


# --------------------------------------------------------------------- limits


def _bomb_zip(size, descriptor=False):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    body = b"".join(c.compress(zeros) for _ in range(size >> 20)) + c.flush()
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(zeros, crc)
    flags = 8 if descriptor else 0
    head = struct.pack("<HHHHHIIIHH", 20, flags, 8, 0, 0, 0 if descriptor else crc, 0 if descriptor else len(body),
                       0 if descriptor else size, 5, 0)
    local = b"PK\x03\x04" + head + b"zeros" + body
    if descriptor:
        local += b"PK\x07\x08" + struct.pack("<III", crc, len(body), size)
    central = b"PK\x01\x02" + struct.pack("<BBHHHHHIIIHHHHHII", 20, 3, 20, flags, 8, 0, 0, crc, len(body), size, 5, 0,
                                          0, 0, 0, 0o100644 << 16, 0) + b"zeros"
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + end


@pytest.mark.parametrize("descriptor", [False, True])
def test_zip_bomb_against_max_ratio(box, descriptor):
    data = _bomb_zip(RATIO_FLOOR + (8 << 20), descriptor)  # ~1000:1
    refused(data, box, "expands more than 100 times", member="zeros", limits=Limits(max_ratio=100), size=1 << 16)
    assert os.path.getsize(box / "zeros") <= RATIO_FLOOR + (4 << 20)


@pytest.mark.parametrize("descriptor", [False, True])
def test_zip_bomb_against_max_size(box, descriptor):
    data = _bomb_zip(64 << 20, descriptor)
    refused(data, box, "past the 1.0 MiB allowed", member="zeros", limits=Limits(max_size=1 << 20))
    if descriptor:  # charged as it comes out: at most a little past the bound is written
        assert not (box / "zeros").exists() or os.path.getsize(box / "zeros") <= 4 << 20
    else:  # charged from the header: nothing written
        assert not (box / "zeros").exists()


def test_too_many_members(box):
    data = make_zip({f"f{i}": b"" for i in range(20)})
    refused(data, box, "beyond the 10 members allowed", member="f10", limits=Limits(max_files=10))


def test_deflate_stream_that_never_outputs_is_bounded(box):
    # Empty stored deflate blocks, forever: no output, no end.
    body = (b"\x00\x00\x00\xff\xff" * 13108) * 200
    head = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 8, 8, 0, 0, 0, 0, 0, 1, 0) + b"f"
    import itertools

    refused(itertools.chain([head], itertools.repeat(body[:65535])), box, "holds nothing", member="f")


@pytest.mark.parametrize("where", ["local extra", "central extra", "central comment"])
def test_huge_extra_and_comment_length_claims(box, where):
    data = bytearray(raw_zip([ZipEntry("f", b"x")]))
    if where == "local extra":
        data[28:30] = struct.pack("<H", 0xFFFF)
    else:
        at = data.index(b"PK\x01\x02") + (30 if where == "central extra" else 32)
        data[at : at + 2] = struct.pack("<H", 0xFFFF)
    refused(bytes(data), box, f"over {MAX_EXTRA}" if MAX_EXTRA == MAX_COMMENT else "over")


def test_a_huge_archive_comment_claim_is_a_truncation(box):
    data = bytearray(raw_zip([ZipEntry("f", b"x")]))
    data[-2:] = b"\xff\xff"
    refused(bytes(data), box, "truncated")


def test_zip_inside_gzip_is_not_extracted(box):
    import gzip

    with pytest.raises(ArchiveError, match="not a valid tar|truncated") as e:  # read as a tar.gz, and refused
        run(gzip.compress(make_zip(SMALL)), box)
    assert HANDLE in str(e.value)


def test_tar_still_extracts_after_the_writer_change(box):
    result = extract(chunked(make_tar(FILES.items()), 1000), str(box), handle="h")
    assert result.files == {k: len(v) for k, v in FILES.items()}


def test_not_an_archive_message_names_zip(box):
    with pytest.raises(ArchiveError, match="not tar, zip, gzip, bz2 or xz"):
        extract([b"\x00\x01 definitely not"], str(box), handle="h")


def test_memory_stays_bounded_on_a_large_deflated_member(box):
    import resource

    data = _bomb_zip(200 << 20, descriptor=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(io.BytesIO(data).read(), box, size=1 << 16)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert os.path.getsize(box / "zeros") == 200 << 20
    assert grown_kib < 64 * 1024, f"peak RSS grew by {grown_kib} KiB"


# ------------------------------------------------------------- fields, one by one


def zip64_field(*values):
    return struct.pack("<HH", 1, 8 * len(values)) + b"".join(struct.pack("<Q", v) for v in values)


def test_local_zip64_field_forms(box):
    both = ZipEntry("both", b"12345", local={"usize": 0xFFFFFFFF, "csize": 0xFFFFFFFF, "extra": zip64_field(5, 5)})
    one = ZipEntry("one", b"123", local={"usize": 0xFFFFFFFF, "extra": zip64_field(3)})
    padded = ZipEntry("padded", b"x", local={"extra": struct.pack("<HH", 0xCAFE, 2) + b"ab" + b"\0\0\0"})  # zipalign
    run(raw_zip([both, one, padded]), box)
    assert read_tree(str(box)) == {"both": b"12345", "one": b"123", "padded": b"x"}


@pytest.mark.parametrize("extra,match", [
    (zip64_field(5, 6), "zip64 size disagrees"),
    (zip64_field(5, 5)[:-4], "runs past"),
    (struct.pack("<HH", 1, 4) + b"\0" * 4, "zip64 field of the wrong length"),
    (zip64_field(5, 5) * 2, "appears twice"),
    (b"\x01\x02\x03", "junk after the extra fields"),
])
def test_bad_local_extra_fields(box, extra, match):
    entry = ZipEntry("f", b"12345", local={"usize": 0xFFFFFFFF, "csize": 5, "extra": extra})
    refused(raw_zip([entry]), box, match, member="f")


def test_unicode_path_field_with_a_stale_crc_is_ignored(box):
    field = b"\x01" + struct.pack("<I", 12345) + "other.txt".encode()
    extra = struct.pack("<HH", 0x7075, len(field)) + field
    run(raw_zip([ZipEntry("plain.txt", b"p", local={"extra": extra}, central={"extra": extra})]), box)
    assert read_tree(str(box)) == {"plain.txt": b"p"}


def test_unicode_path_field_only_in_the_central_directory_is_a_mismatch(box):
    field = b"\x01" + struct.pack("<I", zlib.crc32(b"plain.txt")) + "other.txt".encode()
    entry = ZipEntry("plain.txt", b"p", central={"extra": struct.pack("<HH", 0x7075, len(field)) + field})
    refused(raw_zip([entry]), box, "names it 'other.txt'", member="plain.txt")


def test_name_flagged_utf8_that_is_not(box):
    refused(raw_zip([ZipEntry(b"bad\xff", b"x", flags=0x800)]), box, "not UTF-8")


def test_central_sizes_of_0xffffffff_without_zip64(box):
    refused(raw_zip([ZipEntry("f", b"x", central={"usize": 0xFFFFFFFF})]), box, "without the zip64 field", member="f")


@pytest.mark.parametrize("at,value,match", [
    (4 + 8 + 2 + 2 + 4 + 4 + 8, 5, "end record does not match"),  # entries in all
    (-20 + 8, 3, "locator that points elsewhere"),  # the locator's offset of the record
    (4, 10, "zip64 end record of 10 bytes"),  # the record's size
])
def test_zip64_end_records_that_lie(box, at, value, match):
    data = bytearray(raw_zip([ZipEntry("a", b"x")], zip64_end=True))
    record = data.index(b"PK\x06\x06")
    where = record + at if at > 0 else data.index(b"PK\x06\x07") + 4 + 4
    width = 8
    data[where : where + width] = struct.pack("<Q", value)
    refused(bytes(data), box, match)
