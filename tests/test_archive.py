"""The safe streaming extractor, on real tar archives, benign and hostile."""

import gzip
import os

import pytest

from hubcache import ArchiveError
from hubcache.archive import extract

from archives import Member, fake_saved_model_files, make_tar, read_tree


def chunked(data, size=7777):
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.fixture
def box(tmp_path):
    """A destination inside a parent directory we can inspect for escapes."""
    dest = tmp_path / "box" / "dest"
    dest.mkdir(parents=True)
    return dest


def outside(box):
    """Everything under the box except the destination itself."""
    return sorted(p.name for p in box.parent.iterdir() if p != box)


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_formats_are_detected_from_the_bytes(box, compression):
    files = fake_saved_model_files()
    result = extract(chunked(make_tar(files.items(), compression)), str(box), handle="h")
    assert read_tree(str(box)) == files
    assert result.files == {k: len(v) for k, v in files.items()}


def test_concatenated_gzip_members_and_zero_padding(box):
    files = fake_saved_model_files()
    tar = make_tar(files.items(), "")
    data = gzip.compress(tar[:10000]) + gzip.compress(tar[10000:]) + b"\0" * 4096
    extract(chunked(data, 1000), str(box), handle="h")
    assert read_tree(str(box)) == files


def test_executable_bit_kept_special_bits_dropped(box):
    data = make_tar([Member("run.sh", b"#!/bin/sh\n", mode=0o4755), Member("data", b"x", mode=0o600)])
    extract([data], str(box), handle="h")
    assert os.stat(box / "run.sh").st_mode & 0o7000 == 0
    assert os.access(box / "run.sh", os.X_OK)
    assert not os.stat(box / "data").st_mode & 0o111


def test_inside_symlinks_are_kept(box):
    data = make_tar([("variables/v.data", b"abc"), Member("alias", kind="symlink", target="variables/v.data")])
    result = extract([data], str(box), handle="h")
    assert os.readlink(box / "alias") == "variables/v.data"
    assert (box / "alias").read_bytes() == b"abc"
    assert result.links == {"alias": "variables/v.data"}


HOSTILE = {
    "absolute path": [Member("/tmp/evil", b"x")],
    "dot-dot": [Member("../evil", b"x")],
    "dot-dot deep": [Member("a/../../evil", b"x")],
    "symlink absolute": [Member("link", kind="symlink", target="/etc")],
    "symlink out": [Member("link", kind="symlink", target="../")],
    "symlink then file through it": [
        Member("sub", kind="dir"),
        Member("sub/up", kind="symlink", target=".."),
        Member("sub/up/evil", b"x"),
    ],
    "symlink chain resolving outside": [
        Member("a", kind="symlink", target="b/c/../.."),
        Member("b", kind="symlink", target="."),
        Member("c", kind="dir"),
    ],
    "hard link": [Member("f", b"x"), Member("h", kind="hardlink", target="f")],
    "hard link out": [Member("h", kind="hardlink", target="/etc/passwd")],
    "char device": [Member("dev", kind="chr")],
    "block device": [Member("dev", kind="blk")],
    "fifo": [Member("pipe", kind="fifo")],
    "duplicate name": [Member("f", b"one"), Member("./f", b"two")],
    "file under a file": [Member("f", b"x"), Member("f/g", b"y")],
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_nothing_escapes(box, name):
    with pytest.raises(ArchiveError) as e:
        extract([make_tar(HOSTILE[name])], str(box), handle="https://example.com/evil.tar.gz")
    assert "https://example.com/evil.tar.gz" in str(e.value)
    assert e.value.member  # names the member
    assert outside(box) == []  # nothing was written beside the destination
    assert not os.path.exists("/tmp/evil") or os.path.getmtime("/tmp/evil") < os.path.getmtime(str(box))


def test_not_an_archive(box):
    with pytest.raises(ArchiveError, match="not an archive: it starts with an HTML"):
        extract([b"<!DOCTYPE html><html>Model page</html>"], str(box), handle="h")
    with pytest.raises(ArchiveError, match="empty body"):
        extract([], str(box), handle="h")


def test_truncated_gzip(box):
    data = make_tar(fake_saved_model_files().items())
    with pytest.raises(ArchiveError, match="cut short|not a valid tar"):
        extract(chunked(data[: len(data) // 2]), str(box), handle="h")


@pytest.mark.parametrize("cut", [5000, 512 * 8, 700])  # mid-member, at a boundary, in a header
def test_truncated_plain_tar(box, cut):
    data = make_tar(fake_saved_model_files().items(), "")
    with pytest.raises(ArchiveError, match="not a valid tar|cut short"):
        extract(chunked(data[:cut]), str(box), handle="h")


def test_corrupt_gzip_crc(box):
    data = bytearray(make_tar(fake_saved_model_files().items()))
    data[-6] ^= 0xFF  # inside the CRC-32 trailer
    with pytest.raises(ArchiveError, match="corrupt gzip"):
        extract([bytes(data)], str(box), handle="h")


def test_garbage_after_the_compressed_stream(box):
    data = make_tar([("f", b"x")]) + b"trailing junk"
    with pytest.raises(ArchiveError, match="unexpected data after"):
        extract([data], str(box), handle="h")


def test_memory_stays_bounded_on_a_highly_compressible_stream(box):
    # 200 MiB of zeros compresses to ~200 KiB; each read must inflate at most
    # READ_SIZE bytes, so this finishes without holding the file in memory.
    import resource
    import zlib

    size = 200 << 20
    header = make_tar([Member("zeros", b"")], "")[:512]
    import tarfile

    info = tarfile.TarInfo("zeros")
    info.size = size
    header = info.tobuf(format=tarfile.PAX_FORMAT)

    def stream():
        c = zlib.compressobj(6, zlib.DEFLATED, 31)
        yield c.compress(header)
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            yield c.compress(zeros)
        yield c.compress(bytes(1024)) + c.flush()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extract(stream(), str(box), handle="h")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert os.path.getsize(box / "zeros") == size
    assert grown_kib < 64 * 1024, f"peak RSS grew by {grown_kib} KiB"


def test_zlib_fallback_without_isal(tmp_path):
    """The accelerated inflate is optional: without isal, zlib does the same job."""
    import subprocess
    import sys

    from helpers import child_env

    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(make_tar(fake_saved_model_files().items()))
    code = (
        "import sys; sys.modules['isal'] = None\n"
        "import hubcache.archive as a, hubcache.pipeline as p, json\n"
        f"r = a.extract([open({str(archive)!r}, 'rb').read()], {str(tmp_path / 'out')!r}, handle='h')\n"
        "print(json.dumps([p.ACCELERATED, r.files]))\n"
    )
    (tmp_path / "out").mkdir()
    out = subprocess.run([sys.executable, "-c", code], env=child_env({}), capture_output=True, text=True, check=True)
    accelerated, files = __import__("json").loads(out.stdout)
    assert accelerated is False
    assert files == {k: len(v) for k, v in fake_saved_model_files().items()}
    assert read_tree(str(tmp_path / "out")) == fake_saved_model_files()


def test_gnu_long_names_and_pax_paths(box):
    import io
    import tarfile

    long_name = "variables/" + "x" * 150 + "/data.bin"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(long_name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("l" * 120)
        link.type, link.linkname = tarfile.SYMTYPE, long_name
        tar.addfile(link)
    extract([buf.getvalue()], str(box), handle="h")
    assert (box / long_name).read_bytes() == b"abc" and os.readlink(box / ("l" * 120)) == long_name
    pax = make_tar([Member("p" * 200 + "/ü.txt", b"pax")], "")  # PAX_FORMAT: a long, non-ASCII path
    dest = box / "pax"
    dest.mkdir()
    extract([pax], str(dest), handle="h")
    assert (dest / ("p" * 200) / "ü.txt").read_bytes() == b"pax"


def test_corrupt_header_checksum(box):
    data = bytearray(make_tar(fake_saved_model_files().items(), ""))
    data[2560 + 10] ^= 0xFF  # the second header (after 512 + 4 x 512 bytes of the first member)
    with pytest.raises(ArchiveError, match="checksum|not a valid tar"):
        extract([bytes(data)], str(box), handle="h")
