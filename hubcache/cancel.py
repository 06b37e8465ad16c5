"""Stopping downloads that run in other threads (Ctrl-C during ``prefetch(jobs=N)``).

A KeyboardInterrupt reaches only the main thread. Workers blocked in a socket
read, a backoff wait or a lock wait would go on to the end and publish. A
:class:`Cancellation` is handed to each worker's downloads: setting it shuts
down the sockets they read from (which wakes a blocked ``recv`` at once),
ends their waits, and makes their next check raise :class:`Cancelled`, so each
worker unwinds through its own clean-up. Temporary directories are tracked
too, for a worker that cannot unwind in time.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from .fs import remove_tree

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any, Optional, Set


class Cancelled(KeyboardInterrupt):
    """Raised in a worker whose downloads were cancelled."""


class Cancellation:
    """A flag that stops the downloads it was handed to, from any thread.

    Each download has its own, a child of its call's (if any): a failing
    download cancels only itself (its socket shut down before its pipeline is
    joined), while cancelling the call cancels every download in it.
    """

    def __init__(self, parent: "Optional[Cancellation]" = None) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._responses: "Set[Any]" = set()
        self._dirs: "Set[str]" = set()
        self._children: "Set[Cancellation]" = set()
        self._parent = parent
        if parent is not None:
            with parent._lock:
                parent._children.add(self)
            if parent.cancelled:
                self.cancel()

    def cancel(self) -> None:
        self._event.set()
        with self._lock:
            responses, children = list(self._responses), list(self._children)
        for response in responses:
            shutdown(response)
        for child in children:
            child.cancel()

    def close(self) -> None:
        """Detach from the parent: this download is over."""
        if self._parent is not None:
            with self._parent._lock:
                self._parent._children.discard(self)

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled")

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or raise :class:`Cancelled` as soon as cancelled."""
        if self._event.wait(seconds):
            raise Cancelled("cancelled")

    def track(self, response: "Any") -> None:
        with self._lock:
            self._responses.add(response)
        if self._event.is_set():
            shutdown(response)

    def untrack(self, response: "Any") -> None:
        with self._lock:
            self._responses.discard(response)

    def track_dir(self, path: str) -> None:
        with self._lock:
            self._dirs.add(path)

    def untrack_dir(self, path: str) -> None:
        with self._lock:
            self._dirs.discard(path)

    def remove_dirs(self) -> None:
        """Remove the temporary directories of workers that did not unwind in time."""
        with self._lock:
            dirs, self._dirs = list(self._dirs), set()
        for path in dirs:
            remove_tree(path)  # (shutil would import bz2 and lzma into every download)


def shutdown(response: "Any") -> None:
    """Shut down the socket a ``requests`` response is read from: a read
    blocked in another thread returns at once (closing alone would not wake it)."""
    raw = getattr(response, "raw", None)
    candidates = [getattr(getattr(raw, "_connection", None), "sock", None)]
    fp = getattr(getattr(raw, "_fp", None), "fp", None)  # http.client's socket file
    candidates.append(getattr(getattr(fp, "raw", None), "_sock", None))
    for sock in candidates:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            return
