"""Writing an archive's members into a directory, whatever the archive format:
:class:`SafeWriter` refuses absolute names, ``..``, paths over ``MAX_DEPTH``
deep, duplicates, hard links, devices, fifos, sparse files, symlinks leading
outside (checked again on disk at the end, iteratively) and writes through
symlinks. Names the filesystem refuses, or that clash, are the archive's fault
(:class:`ArchiveError`); disk faults (ENOSPC, EDQUOT, EACCES, EPERM, EROFS, EIO)
stay OSError, the cache's.
"""

from __future__ import annotations

import errno
import os
import posixpath
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Set

from .errors import ArchiveError
from .pipeline import crc32

#: The most components in a member's path (twice that in a symlink's target):
#: tree walks stay shallow, link checks cheap.
MAX_DEPTH = 128
MAX_LINK_HOPS = 40  # symlinks followed to resolve one path, as Linux's MAXSYMLINKS
_LINK_STEPS = (1 << 20, 64)  # steps to resolve every symlink: a base, plus per link
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_MAX_LINK = 4096  # the longest symlink target read from a file (PATH_MAX)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY
# Errors from creating a member that its name causes (too long, a clash with
# another member, a name the filesystem refuses): the archive's fault, not the cache's.
_NAME_ERRNOS = {
    getattr(errno, n, None)
    for n in ("ENAMETOOLONG", "EEXIST", "ENOTDIR", "EISDIR", "ELOOP", "EINVAL", "EILSEQ", "EMLINK", "ENOTEMPTY")
} - {None}


class Member(Protocol):
    """One archive member, as a format's reader describes it."""

    name: str
    kind: str  # file, dir, symlink, hardlink, device, fifo, sparse, or another word
    type: bytes  # the format's own type, for the error of an unknown kind
    mode: int
    size: int
    linkname: str


class Reader(Protocol):
    def data(self, size: int) -> Iterable[Any]:
        """The current member's content, ``size`` bytes, in bytes-like pieces (a
        zip member's size may be known only after its data: the reader checks it)."""


class Extracted:
    """What an extraction wrote: regular files (relative path -> size, and ->
    CRC-32 of the content, for later verification) and symlinks."""

    def __init__(self) -> None:
        self.files: Dict[str, int] = {}
        self.crc32: Dict[str, int] = {}
        self.links: Dict[str, str] = {}


_MALICIOUS = "the archive may be malicious, so report it to its publisher"
_REFUSED_KINDS = {
    "hardlink": "is a hard link",
    "device": "is a device file",
    "fifo": "is a fifo",
    "sparse": "is a sparse file (tar --sparse), which hubcache does not extract",
}


class SafeWriter:
    """Writes members under ``dest``, refusing any that could escape it."""

    def __init__(self, dest: str, handle: str) -> None:
        self.dest = dest
        self.handle = handle
        self.result = Extracted()
        self._dirs = {""}  # relative dirs known to be real directories we made
        self._names: Set[str] = set()  # every member name seen, to refuse duplicates

    def _refuse(self, name: str, why: str, advice: str = _MALICIOUS) -> ArchiveError:
        return ArchiveError(
            f"the archive for {self.handle} was refused: member {name!r} {why}. Nothing was installed; {advice}.",
            handle=self.handle,
            member=name,
        )

    def _os(self, name: str, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)``, blaming the archive for the errors a member's name causes."""
        try:
            return call(*args)
        except OSError as e:
            if e.errno not in _NAME_ERRNOS:
                raise  # the disk's or the cache's: full, read-only...
            raise self._refuse(
                name,
                f"cannot be created ({e.strerror}): the filesystem refuses its name, or it clashes with another member",
                "report it to its publisher",
            ) from None

    def add(self, member: Member, reader: Reader) -> None:
        kind = member.kind
        if kind in _REFUSED_KINDS:
            link = f" (to {member.linkname!r})" if kind == "hardlink" else ""
            advice = "re-create the archive without --sparse (-S)" if kind == "sparse" else _MALICIOUS
            raise self._refuse(member.name, _REFUSED_KINDS[kind] + link, advice)
        if kind not in ("file", "dir", "symlink"):
            raise self._refuse(member.name, f"has an unsupported type ({member.type!r})")
        rel = self._relative(member.name)
        if rel in self._names:
            raise self._refuse(member.name, "appears twice in the archive")
        if rel == "":
            if kind == "dir":
                return  # the archive root ("./")
            raise self._refuse(member.name, "has an empty name")
        self._names.add(rel)
        slash = rel.rfind("/")
        if slash > 0:
            self._make_dirs(rel[:slash], member.name)
        target = os.path.join(self.dest, rel)
        if kind == "file":
            self._write_file(member, reader, rel, target)
        elif kind == "symlink":
            self._make_symlink(member, rel, target)
        elif rel not in self._dirs:
            self._os(member.name, os.mkdir, target)
            self._dirs.add(rel)

    def _relative(self, name: str) -> str:
        if "\0" in name:
            raise self._refuse(name, "has a NUL byte in its name")
        if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
            raise self._refuse(name, "has an absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._refuse(name, "has '..' in its path")
        if len(parts) > MAX_DEPTH:
            raise self._refuse(name, f"is {len(parts)} levels deep, more than the {MAX_DEPTH} allowed")
        return "/".join(parts)

    def _make_dirs(self, rel_dir: str, name: str) -> None:
        if rel_dir in self._dirs:
            return
        path = ""
        for part in rel_dir.split("/"):
            path = f"{path}/{part}" if path else part
            if path in self._dirs:
                continue
            if path in self.result.links:
                raise self._refuse(name, f"would be written through the symlink {path!r}")
            if path in self.result.files:
                raise self._refuse(name, f"would be written under the file {path!r}")
            self._os(name, os.mkdir, os.path.join(self.dest, path))
            self._dirs.add(path)

    def _write_file(self, member: Member, reader: Reader, rel: str, target: str) -> None:
        mode = 0o777 if member.mode & 0o100 else 0o666  # the umask trims it
        fd = self._os(member.name, os.open, target, _CREATE, mode)
        crc = written = 0
        try:
            for piece in reader.data(member.size):
                crc = crc32(piece, crc)
                written += len(piece)
                while piece:
                    piece = piece[os.write(fd, piece) :]
        finally:
            os.close(fd)
        self.result.files[rel] = written  # counted: a zip member's size may come after its data
        self.result.crc32[rel] = crc

    def file_to_symlink(self, name: str) -> None:
        """Make the file written for the member ``name`` a symlink to the path it
        holds, through the checks of a symlink member: a zip declares a symlink
        only in its central directory, after its data (the target) was written.
        Nothing was written under that file: a member there was refused."""
        rel = self._relative(name)
        target = os.path.join(self.dest, rel)
        if self.result.files.get(rel, _MAX_LINK + 1) > _MAX_LINK:
            raise self._refuse(name, f"is a symlink whose target is over {_MAX_LINK} bytes, or not a file")
        fd = self._os(name, os.open, target, os.O_RDONLY | _O_NOFOLLOW | _O_BINARY)
        try:
            link = os.read(fd, _MAX_LINK + 1).decode("utf-8", "surrogateescape")
        finally:
            os.close(fd)
        self._check_link(name, rel, link)
        os.unlink(target)
        del self.result.files[rel], self.result.crc32[rel]
        self._os(name, os.symlink, link, target)
        self.result.links[rel] = link

    def _make_symlink(self, member: Member, rel: str, target: str) -> None:
        self._check_link(member.name, rel, member.linkname)
        self._os(member.name, os.symlink, member.linkname, target)
        self.result.links[rel] = member.linkname

    def _check_link(self, name: str, rel: str, link: str) -> None:
        if not link or link.startswith("/") or (len(link) > 1 and link[1] == ":") or "\0" in link:
            raise self._refuse(name, f"is a symlink to an absolute or invalid path ({link!r})")
        if link.count("/") >= 2 * MAX_DEPTH:
            raise self._refuse(name, f"is a symlink to a path over {2 * MAX_DEPTH} levels deep")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
        if resolved == ".." or resolved.startswith("../"):
            raise self._refuse(name, f"is a symlink pointing outside the model ({link!r})")

    def check_links(self) -> None:
        """Resolve every symlink against the final tree, as the kernel would: a
        chain of links, each harmless when made, must not lead outside ``dest``,
        not even on the way back into it (``dest`` is renamed when published).
        Iterative, and bounded in links followed and in work."""
        steps = _LINK_STEPS[0] + _LINK_STEPS[1] * len(self.result.links)
        targets: Dict[str, Optional[str]] = {}  # relative path -> its link target, None if no link
        for rel, link in self.result.links.items():
            todo = rel.split("/")[::-1]  # the components still to walk, the next one last
            reached: List[str] = []  # the directories walked through, as relative paths
            hops = 0
            while todo:
                steps -= 1
                if steps < 0:
                    raise self._refuse(rel, "is one of too many symlinks, or too tangled ones, to check")
                part = todo.pop()
                if part == "..":
                    if not reached:
                        raise self._refuse(rel, f"is a symlink that resolves outside the model ({link!r})")
                    reached.pop()
                elif part not in ("", "."):
                    path = f"{reached[-1]}/{part}" if reached else part
                    if path not in targets:  # (islink is False for what is not there, or too long to be)
                        full = os.path.join(self.dest, path)
                        targets[path] = os.readlink(full) if os.path.islink(full) else None
                    target = targets[path]
                    if target is None:
                        reached.append(path)
                        continue
                    hops += 1
                    if hops > MAX_LINK_HOPS:
                        raise self._refuse(rel, f"is a symlink loop or a chain of over {MAX_LINK_HOPS} links")
                    todo.extend(target.split("/")[::-1])  # relative: refused otherwise
