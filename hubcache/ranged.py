"""One archive over several connections, handed on in order.

A single TCP connection is often held to tens of MB/s by a CDN's per-flow
shaping, a long round trip or loss. When a :class:`hubcache.download.Body` waits
on the network most of the time (:class:`hubcache.download.Watch`) and the server serves parts of
the archive safely, :class:`Parallel` takes over. The open connection goes on;
more fetch the pieces after it with ``Range`` and ``If-Range``. Pieces are handed
on strictly in order, so hashes and the extractor see one stream, as before.

- **Memory:** pieces are claimed only within WINDOW bytes of what the consumer
  took: at most WINDOW bytes wait, whatever the archive's size.
- **Connections:** as many as :mod:`hubcache.growth` says: 4 at once, then
  twice as many while the consumer waits for bytes and that raises the rate.
- **Pieces** last about PIECE_SECONDS at a connection's rate: long against a
  round trip, short against the window. A connection without work splits the
  piece that holds things up (the one the consumer waits on, or at the end),
  or takes all it lacks from a connection that stalled.
- **Failures:** a piece is retried alone, from its last complete read, with
  its connection's own retries and progress floor. An answer from another version
  of the archive (ETag, length) fails the download: nothing is stitched. A
  request refused (429, 503, ...) or answered with the whole archive is not
  retried while others work: its piece goes to them, and no more are added.
- Each connection is a :meth:`Transport.twin`, under the same credentials rule,
  asking the URL that answered (a signed storage URL), or the start of the
  redirect chain again once that one no longer works.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Deque, Iterator, List, Mapping, Optional

import requests

from .answers import (
    PROGRESS_BYTES,
    READ_ERRORS,
    Floor,
    archive_changed,
    check_part,
    if_range,
)
from .cancel import Cancellation, shutdown
from .errors import DownloadError, HubcacheError
from .growth import FIRST, TICK, Growth
from .transport import Transport, http_error, reason

log = logging.getLogger("hubcache")

WINDOW = 64 << 20  # the most bytes claimed ahead of the consumer: the buffer's bound
MIN_PIECE = 1 << 20  # smaller pieces would spend more on requests than on bytes
PIECE_SECONDS = 1.0  # a piece's length in time at its connection's rate
READ_SIZE = 1 << 20  # most bytes per network read, as download.CHUNK_SIZE
STALLED = 1.0  # seconds without bytes after which a piece the consumer waits on is taken over
_EXPIRED = frozenset({401, 403, 404, 410})  # what a signed URL answers once it expired


class _Piece:
    """Bytes [start, end) of the archive, received in order by one connection."""

    __slots__ = ("start", "end", "got", "chunks", "owned", "moved")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end  # lowered when another connection takes the rest
        self.got = 0  # bytes received, from start
        self.chunks: Deque[bytes] = collections.deque()  # received, not yet handed on
        self.owned = True  # a connection fills it (False: its connection gave up)
        self.moved = time.monotonic()  # when it was claimed, or last received bytes

    def left(self) -> int:
        return self.end - self.start - self.got


_ENDED = "the answer ended"  # cleanly, before the piece did


class _RefusedError(Exception):
    """A request for a piece failed while other connections work: they take the piece."""


class _Answer:
    """An open answer: the archive's byte it reads next, and whether it was
    asked for no end (the first connection's whole body)."""

    __slots__ = ("response", "position", "open_ended", "skip", "received")

    def __init__(self, response: requests.Response, position: int, open_ended: bool) -> None:
        self.response = response
        self.position = position  # (the byte after any to skip)
        self.open_ended = open_ended
        self.skip = 0  # bytes to drop before position (a server that ignored Range)
        self.received = 0  # off the wire, for the progress floor


class Parallel:
    """The rest of an archive, from ``position`` on, over several connections:
    :meth:`start`, iterate :meth:`chunks` once, :meth:`close`. ``response`` is
    the open answer positioned there, ``rate`` its bytes per second, ``version``
    the first answer's headers."""

    def __init__(
        self,
        transport: Transport,
        response: requests.Response,
        *,
        url: str,
        requested_url: str,
        version: Mapping[str, str],
        size: int,
        position: int,
        rate: float,
    ) -> None:
        self._transport = transport
        self._handle = transport.handle
        self._url = url
        self._requested_url = requested_url
        self._version = version  # the first answer's headers: every piece must be of its version
        self._if_range = if_range(version.get("ETag"))
        self._size = size
        lock = threading.Lock()
        self._lock = lock
        self._data = threading.Condition(lock)  # the consumer waits here for bytes
        self._room = threading.Condition(lock)  # connections wait here for work
        self._pieces: Deque[_Piece] = collections.deque()  # from the consumer's position to _next
        self._taken = position  # bytes handed on
        self._arrived = 0  # bytes received by every connection together
        self._next = position  # the first byte no piece covers
        self._rate = max(rate, float(MIN_PIECE))  # bytes per second per connection, smoothed
        self._error: Optional[BaseException] = None
        self._closed = False
        self._threads: List[threading.Thread] = []
        # The connections' own: closing stops them all, even one waiting out a Retry-After.
        self._cancellation = Cancellation(transport.settings.cancellation)
        self._response = response
        self._alive = 0  # connections running
        self._starving = False  # the consumer waits for the head piece
        # The consumer's measures, for adding connections (its thread only).
        self._growth = Growth(transport.settings.connections)
        self._position = position

    def start(self) -> None:
        """Go on over the first answer, and more connections at once (its single
        stream was network-bound)."""
        with self._lock:
            first = self._claim()
        log.info("%s: fetching the rest over parallel ranges", self._handle)
        self._start(_Answer(self._response, self._position, open_ended=True), first)
        self._grow(FIRST - 1)

    # ------------------------------------------------------------ consumer side

    def chunks(self) -> Iterator[bytes]:
        while self._taken < self._size:
            with self._lock:
                while True:
                    if self._error is not None:
                        raise self._failure()
                    while self._pieces and self._taken >= self._pieces[0].end:  # (emptied by _split)
                        self._pieces.popleft()
                    head = self._pieces[0] if self._pieces else None
                    if head is not None and head.chunks:
                        data = head.chunks.popleft()
                        break
                    self._transport.check_cancelled()
                    began = time.monotonic()
                    self._starving = True
                    self._room.notify_all()  # (a connection without work may split the head)
                    self._data.wait(TICK)
                    self._starving = False
                    self._growth.waited += time.monotonic() - began
                self._taken += len(data)
                if self._taken >= head.end:
                    self._pieces.popleft()
                    self._room.notify_all()
            yield data
            more, why = self._growth.more(self._arrived, len(self._threads))
            self._grow(more)
            if why:
                log.debug("%s: %d connections, %s", self._handle, len(self._threads), why)

    def _grow(self, more: int) -> None:
        for _ in range(min(self._growth.cap - len(self._threads), more)):
            self._start(None, None)

    def _failure(self) -> BaseException:
        """A connection's error, as the consumer raises it."""
        e = self._error
        assert e is not None
        if isinstance(e, (HubcacheError, KeyboardInterrupt)):
            return e
        return DownloadError(  # a bug rather than the network: say how to go around it
            f"the parallel download of {self._handle} failed ({type(e).__name__}: {e}). Try again, "
            "or set HUBCACHE_CONNECTIONS=1 for a single stream, and report it.",
            handle=self._handle,
        )

    def close(self) -> None:
        """Stop every connection (the download ended, failed or was cancelled):
        reads and waits, Retry-After included, end at once."""
        with self._lock:
            self._closed = True
            self._room.notify_all()
        self._cancellation.cancel()
        shutdown(self._response)
        deadline = time.monotonic() + 2  # (one still connecting gives up by itself)
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._cancellation.close()

    # ---------------------------------------------------------- connection side

    def _start(self, answer: Optional[_Answer], piece: Optional[_Piece]) -> None:
        transport = self._transport.twin(self._cancellation)
        thread = threading.Thread(target=self._run, args=(transport, answer, piece), name="hubcache-range", daemon=True)
        self._threads.append(thread)
        with self._lock:
            self._alive += 1
        thread.start()

    def _run(self, transport: Transport, answer: Optional[_Answer], piece: Optional[_Piece]) -> None:
        counted = False  # whether this connection is no longer in _alive
        try:
            while True:
                if piece is not None:
                    try:
                        answer = self._fill(transport, answer, piece)
                    except _RefusedError as e:
                        answer = None  # (closed)
                        counted = self._leave(piece, e)
                        if counted:
                            return
                        continue  # the last connection: it is retried as the first would be
                piece = self._work()
                if piece is None:
                    counted = True
                    return
                if answer is not None and piece.start + piece.got != answer.position:
                    transport.close_response(answer.response)  # the next piece is elsewhere
                    answer = None
        except BaseException as e:  # handed to the consumer
            with self._lock:
                if self._error is None and not self._closed:
                    self._error = e
                self._data.notify_all()
        finally:
            if not counted:
                with self._lock:
                    self._alive -= 1
            if answer is not None:
                transport.close_response(answer.response)
            transport.close()

    def _leave(self, piece: _Piece, e: Exception) -> bool:
        """A refused connection leaves its piece to the others, and the count
        stops there; the last connection stays, and is retried."""
        with self._lock:
            if self._alive == 1:
                return False
            piece.owned = False
            self._alive -= 1
            self._growth.growing = False
            self._room.notify_all()
        log.info("%s: a connection was refused (%s); going on with fewer", self._handle, e)
        return True

    def _work(self) -> Optional[_Piece]:
        """The next piece for a connection, waiting for room; None when none is
        left, the connection then counted as gone under the same lock (so a
        piece left by another is never left to nobody)."""
        with self._lock:
            while not self._closed and self._error is None:
                piece = self._claim()
                if piece is not None:
                    return piece
                if self._next >= self._size:
                    break  # every byte has a connection, and no piece is worth splitting
                self._room.wait(TICK)
            self._alive -= 1
            return None

    def _length(self) -> int:
        """How long a new piece should be (lock held)."""
        most = max(MIN_PIECE, WINDOW // (2 * max(FIRST, len(self._threads))))
        return max(MIN_PIECE, min(int(self._rate * PIECE_SECONDS), most))

    def _claim(self) -> Optional[_Piece]:
        """A new piece after the last, or the second half of an unfinished one (lock held)."""
        for piece in self._pieces:
            if not piece.owned:  # left by a refused connection
                piece.owned = True
                return piece
        room = self._taken + WINDOW - self._next
        rest = self._size - self._next
        if rest > 0 and room >= min(rest, MIN_PIECE):
            length = min(rest, room, self._length())
            if rest - length < MIN_PIECE and rest <= room:
                length = rest  # no crumb left at the end
            piece = _Piece(self._next, self._next + length)
            self._next = piece.end
            self._pieces.append(piece)
            return piece
        return self._split()

    def _split(self) -> Optional[_Piece]:
        """The second half of the unfinished piece that holds things up, when
        that is worth a new request: the one the consumer waits on, or, once
        every byte has a connection, the one with most left (lock held). The
        piece's connection is closed when it reaches the half (what it had in
        flight is lost), so a piece is split only with a second's worth left."""
        first = next((p for p in self._pieces if p.left()), None)
        if first is not None and self._starving and time.monotonic() - first.moved > STALLED:
            # The consumer waits on a piece whose connection stalled (a lost packet
            # retransmitted after seconds): another connection takes all it lacks.
            rest = _Piece(first.start + first.got, first.end)
            first.end = rest.start
            self._pieces.insert(self._pieces.index(first) + 1, rest)
            log.debug("%s: bytes %d-%d taken from a stalled connection", self._handle, rest.start, rest.end - 1)
            return rest
        if self._next < self._size:
            candidates = [first] if first is not None and self._starving else []
        else:
            candidates = sorted(self._pieces, key=_Piece.left, reverse=True)[:1]
        for piece in candidates:
            left = piece.left()
            if left >= max(2 * MIN_PIECE, self._rate * PIECE_SECONDS):
                half = _Piece(piece.end - left // 2, piece.end)
                piece.end = half.start
                self._pieces.insert(self._pieces.index(piece) + 1, half)
                log.debug("%s: split bytes %d-%d off a slow piece", self._handle, half.start, half.end - 1)
                return half
        return None

    def _fill(self, transport: Transport, answer: Optional[_Answer], piece: _Piece) -> Optional[_Answer]:
        """Receive ``piece`` whole, retrying alone what fails. ``answer``, if
        any, is open at the piece's first missing byte. Returns it if it may go
        on into the next piece (it was asked for no end); else closes it."""
        floor = Floor(transport.settings, answer.received if answer is not None else 0)
        mark = piece.got  # at the last failure
        began, first = time.monotonic(), piece.got
        while True:
            with self._lock:
                closed, position, end = self._closed, piece.start + piece.got, piece.end
            if closed:
                return answer
            if position >= end:
                seconds = time.monotonic() - began
                if piece.got - first >= MIN_PIECE and seconds > 0:
                    with self._lock:  # the rate pieces are sized by, smoothed
                        self._rate = 0.7 * self._rate + 0.3 * (piece.got - first) / seconds
                if answer is not None and not answer.open_ended:
                    transport.close_response(answer.response)  # read to its end, it stays in the pool
                    answer = None
                return answer
            if answer is None:
                answer = self._request(transport, position, end)
                floor.restart(0)
            problem = self._read(answer, piece)
            if problem is _ENDED:  # a shorter range than asked for: ask for the rest
                transport.close_response(answer.response)
                answer, problem = None, None
            elif problem is None:
                if piece.got - mark >= PROGRESS_BYTES:
                    transport.failures = 0  # real progress: the count starts over
                if answer.position > piece.end:  # it ran into a piece another connection took
                    transport.close_response(answer.response)
                    answer = None
                problem = floor.check(answer.received) if answer is not None else None
            if problem is not None:
                if answer is not None:
                    transport.close_response(answer.response)
                    answer = None
                if self._closed:
                    return None
                mark = piece.got
                where = piece.start + piece.got
                transport.failed(f"the part of the download from byte {where} stopped ({problem})", None, self._url)

    def _read(self, answer: _Answer, piece: _Piece) -> Optional[str]:
        """One read from ``answer`` into ``piece``, never past its end (an answer
        with no end may go on into the next piece); what went wrong, or None.
        A whole read of a tenth of a second's worth, not what has arrived (read1):
        with many connections, handing on bytes per packet costs more than the
        bytes (1 GiB over 16 connections: 4.3 s against 4.9 s). What a failed read
        had received is asked for again."""
        size = max(64 << 10, min(READ_SIZE, int(self._rate / 10)))
        try:
            data = answer.response.raw.read(min(size, answer.skip + piece.left()), decode_content=False)
        except READ_ERRORS as e:
            return reason(e, self._transport.settings)
        if not data:  # (urllib3 raises for a body cut short of its length)
            return _ENDED if answer.received else "the connection was closed early"
        answer.received += len(data)
        if answer.skip:
            dropped = min(answer.skip, len(data))
            answer.skip, data = answer.skip - dropped, data[dropped:]
        with self._lock:
            kept = data[: piece.left()]  # (less when another connection took the rest meanwhile)
            if kept:
                piece.chunks.append(kept)
                piece.got += len(kept)
                piece.moved = time.monotonic()
                self._arrived += len(kept)
                self._data.notify()
        answer.position += len(data)
        return None

    def _request(self, transport: Transport, start: int, end: int) -> _Answer:
        """An answer that holds bytes [start, end) (after bytes to skip, from a
        server that ignored Range)."""
        headers = {"Range": f"bytes={start}-{end - 1}", **self._if_range}
        with self._lock:
            url, alone = self._url, self._alive == 1
        # With other connections at work, a failed request is not retried: its piece
        # goes to them (see _leave). A server that limits connections answers 429 or
        # 503 with a Retry-After, often long; more connections would not mend it.
        try:
            response, final_url = transport.get(url, headers, retry=alone)
            if response.status_code in _EXPIRED and url != self._requested_url:
                # A signed URL may have expired: from the start of the chain, as a resume does.
                transport.close_response(response)
                response, final_url = transport.get(self._requested_url, headers, retry=alone)
                with self._lock:
                    self._url = final_url
        except DownloadError as e:
            if alone:
                raise
            raise _RefusedError(str(e)) from None
        status = response.status_code
        if status in (200, 206):
            check_part(transport, response, final_url, start, self._version, self._size)
            answer = _Answer(response, start, open_ended=status == 200)
            if status == 200:  # Range ignored: only the last connection reads up to ``start``
                if not alone:
                    transport.close_response(response)
                    raise _RefusedError("it answered a range with the whole archive")
                answer.skip = start
            return answer
        transport.close_response(response)
        if status == 416:
            raise archive_changed(self._handle, final_url)  # it no longer has those bytes
        if not alone:
            raise _RefusedError(f"HTTP {status}")
        raise http_error(status, final_url, transport)
