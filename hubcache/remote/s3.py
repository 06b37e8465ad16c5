"""The shared tier on an S3-compatible store (AWS S3, MinIO, Ceph RGW, R2, GCS's
S3 interoperability), with botocore (boto3's core; the extra installs boto3).

Imported only when ``HUBCACHE_REMOTE`` is set. Credentials, region and (unless
``HUBCACHE_REMOTE_ENDPOINT`` is set) the endpoint come from the AWS SDK's own
chain. Each request gets ``HUBCACHE_REMOTE_TIMEOUT`` to connect and to answer, and
no SDK retries: a store that does not answer costs about that long, once. A 5xx
(``SlowDown`` in a burst) is tried once more. Every failure is a
:class:`~hubcache.errors.RemoteError`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO, Dict, Iterable, Iterator, Optional, Tuple, Type, Union

from ..errors import RemoteError
from . import MAX_RECORD_BYTES, check_key, check_sha256, index_bytes, index_from, layout_key, parse_record
from .s3blobs import S3Blob, upload

log = logging.getLogger("hubcache")

_TRANSIENT = frozenset({500, 502, 503, 504})
_JSON = "application/json"
_probed: Dict[Tuple[str, str], bool] = {}  # (endpoint URL, bucket) -> answer, once per process
_probe_lock = threading.Lock()
PROBE_RECORD_SECONDS = 86400.0  # a recorded probe answer is trusted this long


class _StatusError(Exception):
    """An answer the caller expects and handles (404, 412, ...), not a failure."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(status, code)
        self.status = status
        self.code = code


def _boto() -> Tuple[Any, Any, Any]:
    # botocore, not boto3: the same client and credential chain, without boto3's
    # transfer manager (60 ms less of each machine's start on a miss).
    try:
        import botocore.config
        import botocore.exceptions
        import botocore.session
    except ImportError:
        raise RemoteError(
            "HUBCACHE_REMOTE is set but boto3 is not installed: pip install 'hubcache[s3]', or unset HUBCACHE_REMOTE."
        ) from None
    return botocore.session, botocore.config, botocore.exceptions


class S3Remote:
    """The shared tier in ``bucket`` under ``prefix`` (see :class:`hubcache.remote.Remote`)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: Optional[str] = None,
        timeout: float = 5.0,
        read_only: bool = False,
    ) -> None:
        import urllib3.exceptions

        sessions, config, self._errors = _boto()
        self.bucket, self.prefix, self.endpoint, self.timeout = bucket, prefix.strip("/"), endpoint, timeout
        self.read_only = read_only
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")  # and, below, where the SDK found it
        self._failures: Tuple[Type[BaseException], ...] = (
            self._errors.BotoCoreError,
            OSError,
            urllib3.exceptions.HTTPError,
        )
        options: Dict[str, Any] = {
            "connect_timeout": timeout,
            "read_timeout": timeout,
            "retries": {"total_max_attempts": 1},
        }
        if endpoint:  # MinIO, Ceph, moto: path-style addressing, as every look-alike serves it
            options["s3"] = {"addressing_style": "path"}
        try:
            # No CRC on every PUT (botocore >= 1.36 adds one by default), which some look-alikes refuse.
            settings = config.Config(
                **options, request_checksum_calculation="when_required", response_checksum_validation="when_required"
            )
        except TypeError:  # botocore < 1.36: no such options, and no such checksums
            settings = config.Config(**options)
        with self.guard("connect"):
            self._client = sessions.get_session().create_client("s3", endpoint_url=endpoint, config=settings)
        self.url += f" at {self._client.meta.endpoint_url}"

    # -- the index -----------------------------------------------------------

    def get_index(self, key: str) -> Optional[Dict[str, Any]]:
        found = self._get_record(self._key("index", check_key(key) + ".json"))
        return None if found is None else index_from(found[0], self.url, key)

    def put_index(self, key: str, record: Dict[str, Any]) -> None:
        self._writable("write an index record")
        body = index_bytes(record)
        self.call("PutObject", Key=self._key("index", check_key(key) + ".json"), Body=body, ContentType=_JSON)

    # -- blobs ---------------------------------------------------------------

    def open_blob(self, sha256: str) -> Optional[S3Blob]:
        path = self._key("blobs", "sha256", check_sha256(sha256))
        try:
            response = self.call("GetObject", expect=(404,), Key=path)
        except _StatusError:
            return None
        return S3Blob(self, path, response)

    def get_range(self, path: str, start: int, etag: str) -> Optional[Dict[str, Any]]:
        """The object at ``path`` from byte ``start`` on, or None if it is gone or changed (another ETag)."""
        try:
            return self.call("GetObject", expect=(404, 412, 416), Key=path, Range=f"bytes={start}-", IfMatch=etag)
        except _StatusError:
            return None

    def put_blob(self, sha256: str, data: Union[BinaryIO, Iterable[bytes]]) -> int:
        self._writable("upload a blob")
        expected = check_sha256(sha256)
        return upload(self, self._key("blobs", "sha256", expected), expected, data)

    # -- leases --------------------------------------------------------------

    def try_lease(self, key: str, owner: str, seconds: float) -> bool:
        self._writable("take a lease")
        if not 0 <= seconds <= 1e7:  # NaN too
            raise ValueError(f"a lease lasts 0 to 1e7 seconds, not {seconds!r}")
        path = self._key("leases", check_key(key) + ".json")
        body = json.dumps({"owner": owner, "seconds": seconds, "time": time.time()}).encode()
        for _ in range(3):
            try:
                self.call("PutObject", expect=(409, 412), Key=path, Body=body, ContentType=_JSON, IfNoneMatch="*")
                return True
            except _StatusError:
                pass  # held, or being created by another (409)
            found = self._get_record(path)
            if found is None:
                continue  # released meanwhile
            raw, response = found
            lease = parse_record(raw)
            holder = lease.get("owner") if isinstance(lease, dict) else None
            if (holder != owner and not _expired(lease, response)) or not response.get("ETag"):
                return False
            try:  # renew ours, or take an expired one over: only if it is still the one read
                self.call("PutObject", expect=(404, 409, 412), Key=path, Body=body, IfMatch=response["ETag"])
                return True
            except _StatusError as e:
                if e.status != 404:
                    return False  # another node took it over first
        return False

    def release_lease(self, key: str, owner: str) -> None:
        self._writable("release a lease")
        path = self._key("leases", check_key(key) + ".json")
        found = self._get_record(path)
        lease = parse_record(found[0]) if found else None
        if isinstance(lease, dict) and lease.get("owner") == owner:
            # Not conditional (few stores support that for DELETE): a lease taken over
            # in between is lost at worst, which costs a download, never correctness.
            self.call("DeleteObject", Key=path)

    def probe_conditional_writes(self) -> bool:
        if self.read_only:
            return False  # probing writes; a reader takes no lease
        with _probe_lock:
            store = (self._client.meta.endpoint_url, self.bucket)
            known = _probed.get(store)
            if known is None:
                known = _probed[store] = self._recorded_probe()
                if not known:
                    log.warning(
                        "The shared tier %s does not refuse a second create (If-None-Match: *): running "
                        "without leases, so machines may download the same model at the same time.",
                        self.url,
                    )
            return known

    def _recorded_probe(self) -> bool:
        """The probe's answer as another machine recorded it in the bucket (one GET,
        not three requests per process); probed and recorded when there is none or
        it is a day old, by the store's clock. A record that lies costs only
        duplicate downloads: every entry is still checked by its hash."""
        path = self._key("probe", "result.json")
        found = self._get_record(path)
        record = parse_record(found[0]) if found else None
        answer = record.get("conditional_writes") if isinstance(record, dict) else None
        if found and isinstance(answer, bool) and not _expired({"seconds": PROBE_RECORD_SECONDS}, found[1]):
            return answer
        supported = self._probe()
        body = json.dumps({"conditional_writes": supported, "time": time.time()}).encode()
        self.call("PutObject", Key=path, Body=body, ContentType=_JSON)
        return supported

    def _probe(self) -> bool:
        path = self._key("probe", f"{time.time():.0f}-{random.getrandbits(64):016x}")
        expect = (400, 409, 412, 501)  # 400/501: the header is refused; 409/412: it works
        try:
            self.call("PutObject", expect=expect, Key=path, Body=b"1", IfNoneMatch="*")
            self.call("PutObject", expect=expect, Key=path, Body=b"2", IfNoneMatch="*")
        except _StatusError as e:
            supported = e.status in (409, 412)
        else:
            supported = False  # overwritten: the store ignores If-None-Match
        finally:
            try:
                self.call("DeleteObject", Key=path)
            except RemoteError as e:
                log.debug("Could not remove the probe %s: %s", path, e)
        return supported

    # -- requests ------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return layout_key(self.prefix, *parts)

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise RemoteError(f"the shared tier {self.url} is read-only (HUBCACHE_REMOTE_MODE=ro): cannot {what}.")

    def _get_record(self, path: str) -> Optional[Tuple[bytes, Dict[str, Any]]]:
        """An index or lease object's bytes (too many: more than MAX_RECORD_BYTES, unread) and the answer."""
        try:
            response = self.call("GetObject", expect=(404,), Key=path)
        except _StatusError:
            return None
        body = response["Body"]
        try:
            with self.guard("GetObject"):
                if response.get("ContentLength") is None:  # a head cut short
                    raise self.error("GetObject", f"{path}: no Content-Length")
                if response["ContentLength"] > MAX_RECORD_BYTES:
                    return b" " * (MAX_RECORD_BYTES + 1), response
                return body.read(MAX_RECORD_BYTES + 1), response
        finally:
            body.close()

    def call(self, operation: str, expect: Tuple[int, ...] = (), **params: Any) -> Dict[str, Any]:
        """The S3 ``operation`` on this bucket; a status in ``expect`` raises :class:`_StatusError`."""
        method = getattr(self._client, "".join("_" + c.lower() if c.isupper() else c for c in operation)[1:])
        for attempt in (1, 2):
            try:
                with self.guard(operation, expect):
                    answer: Dict[str, Any] = method(Bucket=self.bucket, **params)
                    return answer
            except RemoteError as e:
                if attempt == 2 or e.status not in _TRANSIENT:
                    raise
                time.sleep(random.uniform(0.05, 0.3))
        raise AssertionError("unreachable")

    @contextmanager
    def guard(self, operation: str, expect: Tuple[int, ...] = ()) -> Iterator[None]:
        """Turn what boto3, botocore and urllib3 raise into :class:`RemoteError` (or :class:`_StatusError`)."""
        try:
            yield
        except RemoteError:
            raise
        except self._errors.ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(e.response.get("Error", {}).get("Code", ""))
            if status in expect and code != "NoSuchBucket":
                raise _StatusError(status, code) from None
            raise self.error(operation, f"HTTP {status} {code}".strip(), status) from None
        except self._failures as e:
            raise self.error(operation, str(e) or type(e).__name__) from None

    def error(self, operation: str, reason: str, status: Optional[int] = None) -> RemoteError:
        if status == 403:
            hint = (
                "Check the AWS credentials (the SDK's chain: AWS_ACCESS_KEY_ID, AWS_PROFILE, web identity, "
                "instance metadata) and the bucket's policy"
            )
        elif status is None and "timeout" in reason.lower():
            reason += f"; no answer within HUBCACHE_REMOTE_TIMEOUT={self.timeout:g} s"
            hint = "Check that the store is up and reachable"
        else:
            hint = "Check HUBCACHE_REMOTE, HUBCACHE_REMOTE_ENDPOINT (or AWS_ENDPOINT_URL) and the credentials"
        return RemoteError(
            f"the shared tier {self.url} cannot be used: {operation} failed ({reason}). "
            f"{hint}, or unset HUBCACHE_REMOTE.",
            status=status,
            operation=operation,
            reason=reason,
        )


def _expired(lease: Any, response: Dict[str, Any]) -> bool:
    """Whether a lease has run out, by the store's clock (its Last-Modified against
    its Date), so machines' clocks need not agree. An unreadable lease has run out."""
    seconds = lease.get("seconds") if isinstance(lease, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 1e7:
        return True
    try:
        now = parsedate_to_datetime(response["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        now = time.time()
    modified = response.get("LastModified")
    return modified is None or now >= modified.timestamp() + float(seconds)
