"""A copy of a download kept on disk for the shared tier's upload: written by
the download as it goes, read by the upload while it grows (when the blob's
name, its SHA-256, is known in advance) or once it is complete.

Writing the copy never fails the download: a full disk stops the copy, and the
upload is then not made.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterator

log = logging.getLogger("hubcache")

CHUNK = 1 << 20  # bytes read at a time
_POLL = 0.05  # seconds a reader waits for more bytes before looking again


class AbandonedError(Exception):
    """The download the copy was following did not finish, or the copy broke:
    raised to a reader so that a partial upload is thrown away."""


class Spool:
    """A copy of a download at ``path`` (created, never overwritten)."""

    def __init__(self, path: str, shown: str) -> None:
        self.path = path
        self._file: Any = open(path, "xb")  # noqa: SIM115 (closed by finish(), which reports a failed flush)
        self._shown = shown
        self._broken = False
        self._done = threading.Event()
        self._whole = False

    def write(self, data: bytes) -> None:
        """Append ``data``; flushed, so that a reader following the copy sees it."""
        if self._broken:
            return
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as e:
            self._give_up(e)

    def finish(self, downloaded: bool) -> bool:
        """Close the copy; whether it holds the whole download (``downloaded``: the
        download itself succeeded). Wakes a reader that follows it."""
        try:
            self._file.close()
        except OSError as e:
            self._give_up(e)
        self._whole = downloaded and not self._broken
        self._done.set()
        return self._whole

    def follow(self) -> Iterator[bytes]:
        """The copy's bytes as they are written, to its end; :class:`AbandonedError` if
        the download or the copy failed."""
        with open(self.path, "rb") as f:
            while True:
                done = self._done.is_set()  # before the read: every byte written by then is read
                chunk = f.read(CHUNK)
                if chunk:
                    yield chunk
                elif not done:
                    self._done.wait(_POLL)
                elif self._whole:
                    return
                else:
                    raise AbandonedError(f"the download of {self._shown} did not complete")

    def _give_up(self, error: OSError) -> None:
        if not self._broken:
            no_copy(self._shown, error)
        self._broken = True


def no_copy(shown: str, error: OSError) -> None:
    """Say that the download of ``shown`` goes on without a copy for the upload."""
    log.warning("Cannot keep a copy of %s for the shared tier (%s); not uploading it.", shown, error)
