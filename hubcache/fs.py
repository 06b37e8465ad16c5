"""Tree walks and removal without recursion.

An archive may nest directories deeper than Python's recursion limit, and
``shutil.rmtree`` and ``os.walk`` recurse on Python 3.9-3.11: one such entry
would make removal, ``ls`` and ``verify`` fail for the whole cache. Every walk
of a tree in the cache goes through these functions instead, which keep an
explicit stack and never follow symlinks.
"""

from __future__ import annotations

import os
import stat
from typing import Iterator, List, Set, Tuple


def walk(root: str) -> Iterator[Tuple[str, os.DirEntry[str]]]:
    """(path relative to ``root`` with ``/`` separators, entry) for everything
    under ``root``, parents before children, names sorted; symlinks are
    reported, not followed. Unreadable directories are skipped."""
    stack: List[str] = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            yield rel, entry
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(rel)
            except OSError:
                pass
        stack.extend(reversed(subdirs))


def read_blocks(path: str, size: int = 1 << 20) -> Iterator[bytes]:
    """The content of the file at ``path``, ``size`` bytes at a time."""
    with open(path, "rb") as f:
        while True:
            block = f.read(size)
            if not block:
                return
            yield block


def remove_tree(path: str) -> bool:
    """Remove the file, symlink or directory tree at ``path``; True when nothing
    is left there. Errors are skipped (what can go, goes), never raised."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return True
    except FileNotFoundError:
        return True
    except OSError:
        return False
    stack: List[str] = [path]
    stuck: Set[str] = set()  # directories that could not be emptied: not pushed again
    while stack:
        top = stack[-1]
        subdirs = []
        try:
            with os.scandir(top) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if entry.path not in stuck:
                                subdirs.append(entry.path)
                        else:
                            os.unlink(entry.path)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        stuck.add(top)
        except OSError:
            stuck.add(top)
        if subdirs:
            stack.extend(subdirs)
            continue
        stack.pop()
        try:
            os.rmdir(top)
        except FileNotFoundError:
            pass
        except OSError:
            stuck.add(top)
    return not os.path.lexists(path)
