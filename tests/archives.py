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
