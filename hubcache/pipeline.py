"""The stages of a streaming extraction: threads linked by short queues, and
decompression (gzip, bz2, xz), format-blind.

:class:`Pipe` runs a stage in a daemon thread so that network, inflate and disk
overlap on two cores (hashlib, zlib/isal and ``os.write`` release the GIL).
:class:`Inflater` decompresses one or more concatenated streams, bounded in
what it may take without output (``MAX_SILENT_INPUT``), in its expansion ratio
and, for xz, in decoder memory (``XZ_MEMLIMIT``). Queues are short: memory does
not grow with the archive.
"""

from __future__ import annotations

import queue
import threading
import zlib
from typing import Any, Callable, Iterator, List, Optional, Tuple, Type

from .errors import ArchiveError

#: zlib's interface (decompressobj, crc32): python-isal's once :func:`accelerate`
#: ran and it is installed (pip install 'hubcache[fast]'), faster.
zlib_impl: Any = zlib
ACCELERATED = False
#: An archive that has ended within this many bytes, SMALL_WAIT seconds after
#: its first block came, is inflated by zlib: importing isal (three extension
#: modules, 1 ms) costs a small archive more than it saves.
SMALL_ARCHIVE, SMALL_WAIT = 1 << 20, 0.005
OUT_SIZE = 512 << 10  # most bytes one inflate step hands on (larger: page faults and a join copy)
QUEUE_DEPTH = 4  # chunks waiting between two stages
RATIO_FLOOR = 256 << 20  # the ratio bound applies once this many bytes came out
#: The most compressed bytes in a row that may yield nothing: a bz2 block takes
#: ~900 KB before its first byte; more is padding, empty streams or a hostile
#: header field (a gzip comment has no length), not data.
MAX_SILENT_INPUT = 8 << 20
#: The xz decoder's memory: ``xz -9`` needs 65 MiB, but a stream may ask for a
#: dictionary of up to 4 GiB, which fills as it decompresses.
XZ_MEMLIMIT = 128 << 20
DECODE_ERRORS: Tuple[Type[BaseException], ...] = (zlib.error, OSError, EOFError, ValueError)


def accelerate() -> None:
    """Use python-isal from now on in this process, if it is installed: for an
    archive not known to be small (see SMALL_ARCHIVE). (Read ``zlib_impl`` and
    ``DECODE_ERRORS`` from this module when they are used, not at import.)"""
    global zlib_impl, ACCELERATED, DECODE_ERRORS
    if ACCELERATED:
        return
    try:
        from isal import isal_zlib
    except ImportError:
        return
    error: Type[BaseException] = isal_zlib.error  # type: ignore[assignment]  # (its stub: an instance)
    DECODE_ERRORS = (*DECODE_ERRORS, error)
    zlib_impl, ACCELERATED = isal_zlib, True


def crc32(data: Any, value: int) -> int:
    """CRC-32, by isal for large pieces. Small ones go to zlib, which keeps the
    GIL for them: isal always releases it, and with the inflate thread busy each
    release costs a thread switch (20,000 small files: 4.3 s against 0.6 s)."""
    if ACCELERATED and len(data) >= 1 << 16:
        value = zlib_impl.crc32(data, value)
        return value
    return zlib.crc32(data, value)


# ----------------------------------------------------------------- threading


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class Pipe:
    """Runs ``source`` in a daemon thread; iterating the pipe yields its items
    through a short queue, and re-raises its exception where it is consumed."""

    def __init__(self, source: Iterator[Any], name: str) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)
        self._stop = threading.Event()
        self._pulled = 0  # bytes taken from the source
        self._limit: float = float("inf")  # and what to raise past it
        self._over: BaseException = ArchiveError("")
        self._ended = threading.Event()  # the source is exhausted
        self._thread = threading.Thread(target=self._run, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _run(self, source: Iterator[Any]) -> None:
        try:
            for item in source:
                self._pulled += len(item)
                if self._pulled > self._limit:
                    raise self._over
                if not self._put(item):
                    return
            self._ended.set()
            self._put(_END)
        except BaseException as e:  # handed to the consumer, re-raised there
            self._put(_Raised(e))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # e.g. the download's progress bar

    def ended_within(self, n: int, wait: float) -> bool:
        """Whether the source ended after at most ``n`` bytes, waiting at most
        ``wait`` seconds for its end: a hint, which never holds the consumer up
        longer (a server that stalls must fail as it would otherwise)."""
        return self._pulled <= n and self._ended.wait(wait) and self._pulled <= n

    def stop_after(self, n: int, error: BaseException) -> None:
        """Raise ``error`` after ``n`` more bytes from the source: counted here, it
        stops even while the next stage yields nothing (zeros after a gzip)."""
        self._over = error
        self._limit = self._pulled + n

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop the producer (if it still runs) and wait a moment for it."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=2)


def peek(it: Iterator[bytes], n: int) -> Tuple[bytes, Iterator[bytes]]:
    """The first ``n`` bytes of ``it`` (fewer at its end), and an iterator over all."""
    head: List[bytes] = []
    got = 0
    for chunk in it:
        head.append(chunk)
        got += len(chunk)
        if got >= n:
            break
    joined = b"".join(head)

    def again() -> Iterator[bytes]:
        if joined:
            yield joined
        yield from it

    return joined[:n], again()


class Cursor:
    """A reading position in a stream of byte chunks, for the archive readers:
    ``view`` is what is left of the current chunk (a reader may put unused
    bytes back there), ``chunks`` the rest of the stream."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.view = memoryview(b"")

    def more(self) -> bool:
        """Move to the next non-empty chunk; False at the stream's end."""
        for chunk in self.chunks:
            if chunk:
                self.view = memoryview(chunk)
                return True
        return False

    def piece(self, n: int) -> memoryview:
        """The next at most ``n`` bytes, as a view; empty at the stream's end."""
        if not self.view and not self.more():
            return memoryview(b"")
        piece = self.view[:n]
        self.view = self.view[len(piece) :]
        return piece

    def take(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer at the stream's end."""
        if len(self.view) >= n:  # the common case: a header inside one chunk
            out = self.view[:n].tobytes()
            self.view = self.view[n:]
            return out
        parts: List[bytes] = []
        got = 0
        while got < n:
            piece = self.piece(n - got)
            if not piece:
                break
            parts.append(piece.tobytes())
            got += len(piece)
        return b"".join(parts)


# --------------------------------------------------------------- compression


class Compression:
    __slots__ = ("name", "magic", "new")

    def __init__(self, name: str, magic: bytes, new: Callable[[], Any]) -> None:
        self.name, self.magic = name, magic
        self.new = new  # a decoder: decompress(data, max_length), eof, unused_data, needs_input


class _ZlibGzip:
    """zlib's (or isal's) gzip decoder behind the interface of bz2/lzma decompressors."""

    def __init__(self) -> None:
        self._d = zlib_impl.decompressobj(16 + zlib.MAX_WBITS)

    def __getattr__(self, name: str) -> Any:  # eof, unused_data
        return getattr(self._d, name)

    @property
    def needs_input(self) -> bool:
        return not self._d.unconsumed_tail

    def decompress(self, data: bytes, max_length: int) -> bytes:
        tail = self._d.unconsumed_tail
        out: bytes = self._d.decompress(tail + data if tail else data, max_length)
        return out


# bz2 and lzma are imported with the first archive that needs them: most are
# gzip, and a small model's download should not pay for them.


def _bz2() -> Any:
    import bz2

    return bz2.BZ2Decompressor()


class _Xz:
    """lzma's decoder, its errors raised as ValueError (one of DECODE_ERRORS)."""

    def __init__(self) -> None:
        import lzma

        self._error = lzma.LZMAError
        self._d = lzma.LZMADecompressor(memlimit=XZ_MEMLIMIT)

    def __getattr__(self, name: str) -> Any:  # eof, unused_data, needs_input
        return getattr(self._d, name)

    def decompress(self, data: bytes, max_length: int) -> bytes:
        try:
            out: bytes = self._d.decompress(data, max_length)
        except self._error as e:
            raise ValueError(str(e)) from None
        return out


COMPRESSIONS = (
    Compression("gzip", b"\x1f\x8b", _ZlibGzip),
    Compression("bz2", b"BZh", _bz2),
    Compression("xz", b"\xfd7zXZ\x00", _Xz),
)


def compression_of(head: bytes) -> Optional[Compression]:
    """The compression of data starting with ``head``; None if none of ours."""
    for fmt in COMPRESSIONS:
        if head.startswith(fmt.magic):
            return fmt
    return None


def is_compressed(head: bytes) -> bool:
    """Whether ``head`` starts like gzip, bz2 or xz data."""
    return compression_of(head) is not None


class Inflater:
    """The decompressed bytes of a body in ``fmt``: one stream or several
    concatenated (gzip, bz2 and xz allow that), then nothing but zero padding.

    :meth:`feed` takes the body piece by piece and yields at most OUT_SIZE bytes
    at a time; :meth:`finish` checks the end. Between streams, bytes too few to
    tell whether they start another one wait in ``carry``."""

    def __init__(self, fmt: Compression, handle: str, max_ratio: float) -> None:
        self.fmt, self.handle, self.max_ratio = fmt, handle, max_ratio
        self.decoder = fmt.new()
        self.fed = False  # the current decoder has been given data
        self.ended = False  # the current decoder's stream is over and its leftovers taken
        self.bytes_in = self.bytes_out = 0
        self.silent = 0  # compressed bytes since the last output
        self.carry = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.bytes_in += len(data)
        self.silent += len(data)
        while True:
            if self.decoder.eof and not self.ended:
                data, self.ended = self.decoder.unused_data + data, True
            if self.ended:
                data, self.carry = (self.carry + data).lstrip(b"\0"), b""
                if len(data) < len(self.fmt.magic):
                    self.carry = data
                    break
                if not data.startswith(self.fmt.magic):
                    raise self._trailing_data()
                self.decoder, self.fed, self.ended = self.fmt.new(), False, False
            if not data and self.decoder.needs_input:
                break
            out = self._decompress(data)
            data, self.fed = b"", True
            if out:
                self._count(len(out))
                yield out
        if self.silent > MAX_SILENT_INPUT:
            raise ArchiveError(
                f"the archive for {self.handle} has over {MAX_SILENT_INPUT >> 20} MiB of {self.fmt.name} "
                "data in a row that holds nothing (padding, empty streams, header fields): it is "
                "damaged or malicious. Nothing was installed; report it to the publisher.",
                handle=self.handle,
            )

    def finish(self) -> None:
        leftover = self.carry + (self.decoder.unused_data if self.decoder.eof and not self.ended else b"")
        if leftover.strip(b"\0"):
            raise self._trailing_data()
        if self.fed and not self.decoder.eof:
            raise ArchiveError(
                f"the archive for {self.handle} ends in the middle of its compressed data: the "
                "download was cut short; try again.",
                handle=self.handle,
            )

    def _decompress(self, data: bytes) -> bytes:
        try:
            out: bytes = self.decoder.decompress(data, OUT_SIZE)
            return out
        except DECODE_ERRORS as e:
            hint = f"it needs over {XZ_MEMLIMIT >> 20} MiB to inflate, or " if "memory" in str(e).lower() else ""
            raise ArchiveError(
                f"the archive for {self.handle} has corrupt {self.fmt.name} data ({e}): {hint}the "
                "download is damaged; try again.",
                handle=self.handle,
            ) from None

    def _count(self, n: int) -> None:
        self.bytes_out += n
        self.silent = 0
        ratio = self.max_ratio
        if ratio and self.bytes_out > RATIO_FLOOR and self.bytes_out > ratio * self.bytes_in:
            raise ArchiveError(
                f"the archive for {self.handle} was refused: it expands more than {ratio:g} times "
                "(a decompression bomb?). Nothing was installed. If the model really is that "
                f"compressible, raise HUBCACHE_MAX_RATIO (now {ratio:g}; 0 turns the bound off).",
                handle=self.handle,
            )

    def _trailing_data(self) -> ArchiveError:
        return ArchiveError(
            f"the archive for {self.handle} has unexpected data after its compressed stream: it is "
            "damaged or not a single archive. Try again; if it persists, report it to the publisher.",
            handle=self.handle,
        )


def inflate(chunks: Iterator[bytes], fmt: Compression, handle: str, max_ratio: float) -> Iterator[bytes]:
    """:class:`Inflater` over a whole body."""
    inflater = Inflater(fmt, handle, max_ratio)
    for data in chunks:
        yield from inflater.feed(data)
    inflater.finish()
