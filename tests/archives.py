"""Archives built by the tests: fake SavedModels, real directories, hostile tars."""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Union


@dataclass
class Member:
    """One tar member; ``kind`` is file, dir, symlink, hardlink, chr, blk or fifo."""

    name: str
    data: bytes = b""
    kind: str = "file"
    target: str = ""  # for links
    mode: int = 0o644


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def make_tar(members: Iterable[Union[Member, tuple]], compression: str = "gz") -> bytes:
    """A tar archive of ``members`` (Member or (name, data) pairs); compression
    is "" (plain), "gz", "bz2" or "xz". The same input gives the same bytes."""
    buf = io.BytesIO()
    mode = f"w:{compression}" if compression in ("bz2", "xz") else "w"
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            if isinstance(m, tuple):
                m = Member(*m)
            info = tarfile.TarInfo(m.name)
            info.type = _TYPES[m.kind]
            info.mode = 0o755 if m.kind == "dir" else m.mode
            info.linkname = m.target
            info.mtime = 1_700_000_000
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    if compression == "gz":
        return gzip.compress(buf.getvalue(), mtime=0)  # tarfile's gzip stamps the time
    return buf.getvalue()


def fake_saved_model_files(seed: int = 0, size: int = 200_000) -> Dict[str, bytes]:
    """The files of a SavedModel directory with random content (not loadable by
    TensorFlow: for tests of fetching and caching only)."""
    rng = random.Random(seed)
    return {
        "saved_model.pb": rng.randbytes(2_000),
        "fingerprint.pb": rng.randbytes(50),
        "variables/variables.index": rng.randbytes(300),
        "variables/variables.data-00000-of-00001": rng.randbytes(size),
        "assets/vocab.txt": b"\n".join(b"token%d" % i for i in range(50)),
    }


def fake_saved_model(seed: int = 0, size: int = 200_000, compression: str = "gz") -> bytes:
    files = fake_saved_model_files(seed, size)
    dirs = [Member("variables", kind="dir"), Member("assets", kind="dir")]
    return make_tar(dirs + [Member(n, d) for n, d in files.items()], compression)


def tar_directory(path: str, compression: str = "gz", prefix: Optional[str] = None) -> bytes:
    """A tar(.gz) of the directory ``path``'s contents, files at the archive root
    as tfhub.dev serves them (``./saved_model.pb``, ...)."""
    buf = io.BytesIO()
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name in sorted(os.listdir(path)):
            arcname = f"{prefix}/{name}" if prefix else f"./{name}"
            tar.add(os.path.join(path, name), arcname=arcname)
    return buf.getvalue()


def read_tree(path: str) -> Dict[str, bytes]:
    """{relative path: content} of every regular file under ``path``."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            full = os.path.join(dirpath, f)
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as fh:
                    out[os.path.relpath(full, path).replace(os.sep, "/")] = fh.read()
    return out


# ----------------------------------------------------- hand-made tar headers
# For hostile archives that tarfile refuses to write: every field is given as
# the raw bytes the header holds (see the offsets in hubcache/tar.py).

BLOCK = 512
END = bytes(2 * BLOCK)  # tar's end-of-archive marker


def octal(n: int, width: int) -> bytes:
    """A numeric field as tar writes it: zero-padded octal digits and a NUL."""
    return b"%0*o\0" % (width - 1, n)


def header(
    name: Union[str, bytes] = "f",
    size: Union[int, bytes] = 0,
    type: bytes = b"0",
    *,
    mode: Union[int, bytes] = 0o644,
    linkname: Union[str, bytes] = b"",
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
    extra: Optional[Dict[int, bytes]] = None,
    checksum: Optional[str] = "unsigned",
) -> bytes:
    """One 512-byte tar header. ``size``/``mode`` as ints are written in octal,
    as bytes verbatim (for negative, base-256 or junk numbers); ``extra`` puts
    raw bytes at offsets; ``checksum`` is "unsigned", "signed" (as old Sun and
    BSD tars summed it) or None (left as is, e.g. written through ``extra``)."""
    raw = bytearray(BLOCK)

    def put(offset: int, value: bytes, width: int) -> None:
        raw[offset : offset + width] = value[:width].ljust(width, b"\0")

    put(0, name.encode() if isinstance(name, str) else name, 100)
    put(100, octal(mode, 8) if isinstance(mode, int) else mode, 8)
    put(108, octal(0, 8), 8)
    put(116, octal(0, 8), 8)
    put(124, octal(size, 12) if isinstance(size, int) else size, 12)
    put(136, octal(1_700_000_000, 12), 12)
    raw[156:157] = type
    put(157, linkname.encode() if isinstance(linkname, str) else linkname, 100)
    raw[257 : 257 + len(magic)] = magic
    put(345, prefix, 155)
    for offset, value in (extra or {}).items():
        raw[offset : offset + len(value)] = value
    if checksum:
        raw[148:156] = b" " * 8
        total = sum(b - 256 if checksum == "signed" and b > 127 else b for b in raw)
        raw[148:156] = b"%06o\0 " % (total & 0o777777)
    return bytes(raw)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: Union[str, bytes], data: bytes = b"", type: bytes = b"0", **fields) -> bytes:
    """A header and its data, padded to whole blocks."""
    return header(name, len(data), type, **fields) + padded(data)


def pax_record(key: str, value: Union[str, bytes]) -> bytes:
    """One well-formed pax record: "<length> <key>=<value>\\n"."""
    body = b" " + key.encode() + b"=" + (value.encode() if isinstance(value, str) else value) + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def extended(payload: bytes, type: bytes = b"x", name: str = "PaxHeaders/f") -> bytes:
    """An extended header (pax "x"/"g"/"X" or GNU "L"/"K") holding ``payload``."""
    return member(name, payload, type)


def raw_tar(*parts: bytes) -> bytes:
    """The parts one after the other, then the end-of-archive marker."""
    return b"".join(parts) + END


def named(name: str, data: bytes = b"", type: bytes = b"0", linkname: str = "") -> bytes:
    """A member of any name and link target: a pax header carries those too long for the header."""
    records = b""
    if len(name.encode()) > 100:
        records += pax_record("path", name)
    if len(linkname.encode()) > 100:
        records += pax_record("linkpath", linkname)
    head = extended(records) if records else b""
    return head + member(name.encode()[:100], data, type, linkname=linkname.encode()[:100])


def extract_within(seconds: float, chunks, dest, **kwargs):
    """hubcache's extract() in a thread, failing if it is still running after
    ``seconds`` (a hang must not hang the suite); returns its result or raises
    what it raised."""
    import threading

    from hubcache.archive import extract

    out = {}

    def target() -> None:
        try:
            out["result"] = extract([chunks] if isinstance(chunks, bytes) else chunks, str(dest), **kwargs)
        except BaseException as e:  # re-raised in the caller's thread
            out["error"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"extract() still running after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["result"]


# --------------------------------------------------------------------- zips
# Real ones from Python's zipfile and Info-ZIP's zip, and hand-made hostile ones
# (see the record layouts in hubcache/zip.py).


class Unseekable(io.RawIOBase):
    """A write-only stream: zipfile then writes data descriptors, as to a pipe."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.data += b
        return len(b)


def make_zip(files, method: str = "deflate", *, stream: bool = False, zip64: bool = False,
             symlinks: Optional[Dict[str, str]] = None, dirs: Iterable[str] = ()) -> bytes:
    """A zip by Python's zipfile of ``files`` ({name: data} or pairs); ``stream``
    writes it to an unseekable stream (data descriptors), ``zip64`` forces zip64
    headers, ``symlinks`` ({name: target}) are Unix symlink entries."""
    import zipfile

    compression = {"store": zipfile.ZIP_STORED, "deflate": zipfile.ZIP_DEFLATED, "bzip2": zipfile.ZIP_BZIP2,
                   "lzma": zipfile.ZIP_LZMA}[method]
    out = Unseekable() if stream else io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        for d in dirs:
            info = zipfile.ZipInfo(d.rstrip("/") + "/", (2023, 1, 1, 0, 0, 0))
            info.external_attr = (0o40755 << 16) | 0x10
            z.writestr(info, b"")
        for name, data in (files.items() if isinstance(files, dict) else files):
            info = zipfile.ZipInfo(name, (2023, 1, 1, 0, 0, 0))
            info.compress_type = compression
            info.external_attr = 0o100644 << 16
            with z.open(info, "w", force_zip64=zip64) as f:
                f.write(data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name, (2023, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = 0o120777 << 16
            z.writestr(info, target)
    return bytes(out.data) if stream else out.getvalue()


def info_zip(tree: str, *args: str, stdin: Optional[bytes] = None) -> bytes:
    """What Info-ZIP's ``zip ARGS`` writes to stdout, run in ``tree``: the
    zip command must be installed (apt-get install zip); a test needing it fails without it."""
    import shutil
    import subprocess

    if shutil.which("zip") is None:
        raise AssertionError("Info-ZIP's zip command is not installed: apt-get install -y zip unzip")
    done = subprocess.run(["zip", "-q", *args], cwd=tree, input=stdin, capture_output=True, check=True)
    return done.stdout


def write_tree(path: str, files: Dict[str, bytes]) -> None:
    for name, data in files.items():
        full = os.path.join(path, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)


@dataclass
class ZipEntry:
    """One member of a hand-made zip. ``local``/``central`` override fields of
    its local header / central directory entry (name, flags, method, crc,
    csize, usize, offset, extra, external, host, comment) with raw values."""

    name: Union[str, bytes]
    data: bytes = b""
    method: int = 0  # 0 stored, 8 deflate (the data is compressed here)
    flags: int = 0
    descriptor: Optional[str] = None  # None, "sig" (with its signature), "nosig", "sig64"
    local: Optional[Dict] = None
    central: Optional[Dict] = None
    in_central: bool = True


def raw_zip(entries: Iterable[ZipEntry], *, prefix: bytes = b"", comment: bytes = b"", suffix: bytes = b"",
            extra_central: Iterable[bytes] = (), end: Optional[Dict] = None, zip64_end: bool = False) -> bytes:
    """A zip of ``entries``, every field right unless overridden: ``end``
    overrides end record fields (disk, cd_disk, n_disk, n, size, offset,
    comment_len); ``extra_central`` adds raw central entries; ``zip64_end``
    writes zip64 end records."""
    import struct
    import zlib

    out, centrals = bytearray(prefix), []
    for e in entries:
        name = e.name.encode() if isinstance(e.name, str) else e.name
        body = e.data
        if e.method == 8:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            body = c.compress(body) + c.flush()
        crc = zlib.crc32(e.data)
        flags = e.flags | (8 if e.descriptor else 0)
        f = dict(name=name, flags=flags, method=e.method, crc=crc, csize=len(body), usize=len(e.data), extra=b"",
                 offset=len(out), external=0o100644 << 16, host=3, comment=b"")
        lf = dict(f, **(e.local or {}))
        if e.descriptor and not e.local:
            lf.update(crc=0, csize=0, usize=0)
        out += b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, lf["flags"], lf["method"], 0, 0, lf["crc"], lf["csize"],
                                           lf["usize"], len(lf["name"]), len(lf["extra"])) + lf["name"] + lf["extra"]
        out += body
        if e.descriptor:
            sig = b"" if e.descriptor == "nosig" else b"PK\x07\x08"
            fmt = "<IQQ" if e.descriptor == "sig64" else "<III"
            out += sig + struct.pack(fmt, crc, len(body), len(e.data))
        cf = dict(f, **(e.central or {}))
        if e.in_central:
            centrals.append(b"PK\x01\x02" + struct.pack(
                "<BBHHHHHIIIHHHHHII", 20, cf["host"], 20, cf["flags"], cf["method"], 0, 0, cf["crc"], cf["csize"],
                cf["usize"], len(cf["name"]), len(cf["extra"]), len(cf["comment"]), 0, 0, cf["external"], cf["offset"],
            ) + cf["name"] + cf["extra"] + cf["comment"])
    centrals += list(extra_central)
    start, cd = len(out), b"".join(centrals)
    out += cd
    n = len(centrals)
    ef = dict(disk=0, cd_disk=0, n_disk=n, n=n, size=len(cd), offset=start, comment_len=len(comment))
    if zip64_end:
        at = len(out)
        out += b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, n, n, len(cd), start)
        out += b"PK\x06\x07" + struct.pack("<IQI", 0, at, 1)
        ef.update(n_disk=0xFFFF, n=0xFFFF, size=0xFFFFFFFF, offset=0xFFFFFFFF)
    ef.update(end or {})
    out += b"PK\x05\x06" + struct.pack("<HHHHIIH", ef["disk"], ef["cd_disk"], ef["n_disk"], ef["n"], ef["size"],
                                       ef["offset"], ef["comment_len"]) + comment
    return bytes(out) + suffix


# ------------------------------------------------------------ fuzzing helpers


def chunked(data, rng):
    """``data`` cut in pieces of a random size, now and then of one byte (slow)."""
    size = rng.choice([7, 100, 512, 4096, 65536, len(data) or 1]) if rng.random() > 0.03 else 1  # 1: slow
    return [data[i : i + size] for i in range(0, len(data), size)]


def fuzz_case(chunks, dest, bound, limits):
    """None, or what went wrong extracting ``chunks``: a hang (past ``bound``
    seconds), or an error other than an ArchiveError that names the handle."""
    from hubcache import ArchiveError

    try:
        extract_within(bound, chunks, dest, handle="fuzz", limits=limits)
    except ArchiveError as e:
        if "fuzz" not in str(e):
            return AssertionError(f"an ArchiveError that does not name the handle: {e}")
    except BaseException as e:  # noqa: BLE001 - a hang (AssertionError) or anything else: what we look for
        return e
    return None


def escapes(outer, box, dest):
    """Whatever exists under ``outer`` besides ``dest`` (whose contents may be anything)."""
    found = []
    for dirpath, dirs, files in os.walk(outer):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            if path not in (box, dest, os.path.dirname(box)) and not path.startswith(dest + os.sep):
                found.append(path)
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) != dest]
    return found


def fuzz_one(case, chunks, outer, box, bound, limits):
    """Extract one fuzz case into a fresh directory in ``box``; what went wrong
    (a hang, an error other than ArchiveError, a write outside it), as lines."""
    import shutil

    dest = os.path.join(box, f"dest{case}")
    os.mkdir(dest)
    failures = []
    error = fuzz_case(chunks, dest, bound, limits)
    if error is not None:
        failures.append(f"case {case}: {type(error).__name__}: {error}"[:300])
    found = escapes(outer, box, dest)
    if found:
        failures.append(f"case {case}: wrote outside its destination: {found[:3]}")
        for path in found:
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) and not os.path.islink(path) \
                else os.unlink(path)
    shutil.rmtree(dest)
    return failures
