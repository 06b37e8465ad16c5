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
