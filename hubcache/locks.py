"""The per-entry lock file: ``flock(2)`` on POSIX, filelock elsewhere.

filelock costs 9 ms to import (decimal, platform and the machinery of its
many lock kinds), more than the rest of a small model's download. The cache
needs one thing from it: an exclusive lock on a file that the OS drops when
its holder dies. On POSIX that is a ``flock`` on an open descriptor, which is
also what filelock takes there, so both can hold the same lock file against
each other (tensorflow_hub does not lock hubcache's files). filelock remains
for Windows and for filesystems without ``flock`` (its soft lock).
"""

from __future__ import annotations

import errno
import os
from contextlib import suppress
from typing import Any, Optional

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # a symlink planted at the lock's path is refused (ELOOP)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a lease (F_SETLEASE) being broken must not block the open
#: What a non-blocking flock answers when another descriptor holds the lock
#: (EACCES on some filesystems).
_HELD = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES})
MODE = 0o666  # in a cache shared by several users, any of them may take the lock


class LockFile:
    """An exclusive lock on the file at ``path``, created if missing (mode
    0o666, whatever the umask) and never deleted: unlinking a lock file would
    let a waiter lock a new file at the same path while the old one is held.

    Not reentrant: two ``LockFile`` objects of one path exclude each other,
    even in one thread (as two filelock objects do)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None
        self._fallback: Any = None  # a filelock.FileLock, where flock is missing
        if fcntl is None:
            self._use_filelock()

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; False at once if someone does."""
        if self._fallback is not None:
            from filelock import Timeout

            try:
                self._fallback.acquire(timeout=0)
                return True
            except Timeout:
                return False
        fd = self._open()
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Unlinked between our open and the flock: that lock guards no name.
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)
                return False
        except OSError as e:
            os.close(fd)
            if e.errno in _HELD:
                return False
            if e.errno != errno.ENOSYS:
                raise
            self._use_filelock()  # a filesystem without flock
            return self.try_acquire()
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fallback is not None:
            self._fallback.release()
        elif self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the flock

    def _open(self) -> Optional[int]:
        """A descriptor of the lock file, or None when it changes under us (the
        next attempt tries again). Opening an existing file first, without
        O_CREAT: in a sticky directory (a team's cache, /tmp) Linux refuses
        O_CREAT on another user's file (fs.protected_regular) though its mode
        allows writing."""
        flags = os.O_RDWR | _O_NOFOLLOW | _O_NONBLOCK
        try:
            return os.open(self.path, flags)
        except FileNotFoundError:
            pass
        except BlockingIOError:
            return None
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, MODE)
        except FileExistsError:
            return None  # another process created it just now
        with suppress(OSError):
            os.fchmod(fd, MODE)  # the umask must not lock other users out
        return fd

    def _use_filelock(self) -> None:
        from filelock import FileLock

        self._fallback = FileLock(self.path, mode=MODE)
