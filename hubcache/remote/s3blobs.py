"""Blobs on S3: read in bounded chunks and resumed with ``Range`` where a
connection breaks; written in one PUT or, past one part, a multipart upload
holding at most two parts in memory. Used by :class:`hubcache.remote.s3.S3Remote`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import suppress
from typing import TYPE_CHECKING, Any, BinaryIO, Dict, Iterable, Iterator, List, Union

from ..errors import IntegrityError, RemoteError
from . import MAX_BLOB_BYTES

if TYPE_CHECKING:
    from .s3 import S3Remote

log = logging.getLogger("hubcache")

#: Bytes of one part of a multipart upload, doubled every 1000 parts (S3 allows
#: 10,000; each but the last must have 5 MiB or more).
PART_SIZE = 8 << 20
CHUNK = 1 << 20  # bytes asked of the socket, or of a file, at a time
RESUMES = 5  # broken reads of a blob in a row (no byte in between) before giving up


class S3Blob:
    """A blob read in chunks of at most :data:`CHUNK` bytes; a broken connection is
    resumed with ``Range`` and ``If-Match`` (so the bytes are still the same object's)."""

    def __init__(self, remote: "S3Remote", path: str, response: Dict[str, Any]) -> None:
        self._remote, self._path, self._response = remote, path, response
        self.size = int(response.get("ContentLength") or 0)
        self.etag = str(response.get("ETag", ""))
        self.received = 0
        self._problem = ""
        if response.get("ContentLength") is None or self.size > MAX_BLOB_BYTES:  # None: a head cut short
            self.close()
            raise remote.error("GetObject", f"{path} announces {response.get('ContentLength')} bytes")

    def __iter__(self) -> Iterator[bytes]:
        failures = 0
        while True:
            problem = self._problem  # set when the last resume failed
            if not problem:
                try:
                    with self._remote.guard("GetObject"):
                        chunk = self._response["Body"].read(CHUNK)
                except RemoteError as e:  # a cut connection, a read timeout
                    problem = e.reason
                else:
                    if chunk:
                        self.received += len(chunk)
                        if self.received > self.size:
                            raise self._remote.error("GetObject", f"{self._path} sent more than {self.size} bytes")
                        failures = 0
                        yield chunk
                        continue
                    if self.received == self.size:
                        return
                    problem = f"the body ended at byte {self.received} of {self.size}"
            failures += 1
            if failures > RESUMES:
                raise self._remote.error("GetObject", f"{problem}; gave up after {RESUMES} resumes")
            log.info("Reading %s from the shared tier: %s; resuming", self._path, problem)
            self.close()
            time.sleep(min(0.05 * 2**failures, 1.0))
            self._resume()

    def _resume(self) -> None:
        """Ask for the rest; a failure to get it is left for the loop to count."""
        self._response, self._problem = {}, ""
        try:
            response = self._remote.get_range(self._path, self.received, self.etag)
        except RemoteError as e:
            self._problem = e.reason
            return
        if response is None:  # not worth another try
            raise self._remote.error("GetObject", f"{self._path} changed or vanished while read", 412)
        self._response = response
        expected = f"bytes {self.received}-{self.size - 1}/{self.size}"
        if response.get("ContentRange") != expected:
            self.close()
            self._problem = f"asked for {expected}, got {response.get('ContentRange')}"

    def close(self) -> None:
        with suppress(Exception):  # closing a broken connection may fail too
            if self._response:
                self._response["Body"].close()

    def __enter__(self) -> "S3Blob":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def upload(remote: "S3Remote", path: str, sha256: str, data: Union[BinaryIO, Iterable[bytes]]) -> int:
    """Store ``data`` at ``path`` if it hashes to ``sha256``; its size."""
    digest = hashlib.sha256()
    parts = _parts(_chunks(data), digest)
    first = next(parts, b"")
    second = next(parts, None)
    if second is None:  # one part: one PUT
        _check_hash(digest, sha256, len(first))
        remote.call("PutObject", Key=path, Body=first)
        return len(first)
    upload_id = remote.call("CreateMultipartUpload", Key=path)["UploadId"]
    done: List[Dict[str, Any]] = []
    size = 0
    try:
        for number, part in enumerate(_chain(first, second, parts), 1):
            answer = remote.call("UploadPart", Key=path, UploadId=upload_id, PartNumber=number, Body=part)
            done.append({"ETag": answer["ETag"], "PartNumber": number})
            size += len(part)
        _check_hash(digest, sha256, size)  # before the object exists
        remote.call("CompleteMultipartUpload", Key=path, UploadId=upload_id, MultipartUpload={"Parts": done})
    except BaseException:
        try:
            remote.call("AbortMultipartUpload", Key=path, UploadId=upload_id)
        except RemoteError as e:  # the parts stay until the bucket's lifecycle rules remove them
            log.debug("Could not abort the upload of %s: %s", path, e)
        raise
    return size


def _chunks(data: Union[BinaryIO, Iterable[bytes]]) -> Iterator[bytes]:
    read = getattr(data, "read", None)
    if read is not None:
        return iter(lambda: bytes(read(CHUNK)), b"")
    return iter(data)  # not a file: an iterable of chunks


def _parts(chunks: Iterator[bytes], digest: Any) -> Iterator[bytes]:
    """``chunks`` regrouped into parts (see :data:`PART_SIZE`), each hashed into ``digest``."""
    buffer = bytearray()
    count = 0
    for chunk in chunks:
        digest.update(chunk)
        buffer += chunk
        while len(buffer) >= PART_SIZE << min(count // 1000, 9):
            size = PART_SIZE << min(count // 1000, 9)
            yield bytes(buffer[:size])
            del buffer[:size]
            count += 1
    if buffer or not count:
        yield bytes(buffer)


def _chain(first: bytes, second: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield second
    yield from rest


def _check_hash(digest: Any, expected: str, size: int) -> None:
    if digest.hexdigest() != expected:
        raise IntegrityError(
            f"the {size} bytes given for blob {expected} have SHA-256 {digest.hexdigest()}: nothing was uploaded."
        )
