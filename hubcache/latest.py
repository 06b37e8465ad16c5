"""Which version a Kaggle handle without one means: "latest".

Kaggle is asked (its REST ``.../get`` of the model instance answers the
current ``versionNumber``), and the answer is remembered in a small record
beside the cache entries, ``<sha1 of the handle>.hubcache.latest``, so that:

- for ``HUBCACHE_LATEST_INTERVAL`` seconds after an answer, the handle
  resolves without a request;
- offline (or when Kaggle cannot be reached), the handle resolves to the
  version it last resolved to, and a log line names it. kagglehub cannot do
  this: it asks the network even when the model is cached.

The record is found in the cache root, then in the read-only layers.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

from .cache import utc_iso, write_atomic
from .config import Settings
from .errors import DownloadError, OfflineError
from .handles import Handle, cache_key
from .layout import LATEST_SUFFIX
from .layout import read_record as layout_record
from .resolvers import LatestPlan

if TYPE_CHECKING:
    from .transport import Transport

log = logging.getLogger("hubcache")

MAX_ANSWER = 1 << 20  # bytes of JSON read from Kaggle's answer, at most


def record_path(root: str, handle: Handle) -> str:
    return os.path.join(root, cache_key(handle.raw) + LATEST_SUFFIX)


def read_record(roots: Iterable[str], handle: Handle) -> Optional[Dict[str, Any]]:
    """The record of ``handle`` in the first of the caches ``roots`` that has a
    usable one, or None."""
    for root in roots:
        record = layout_record(record_path(root, handle))
        if record is not None and usable(record):
            return record
    return None


def recorded(roots: Iterable[str], handle: Handle) -> Optional[Handle]:
    """The versioned handle ``handle`` last resolved to, as recorded in the
    first of the caches ``roots`` that has a usable record, or None."""
    record = read_record(roots, handle)
    return handle.at_version(record["version"]) if record is not None else None


def usable(record: Dict[str, Any]) -> bool:
    """Whether a "latest" record has what resolving needs."""
    return _version(record.get("version")) is not None and isinstance(record.get("checked"), float)


def resolve_latest(handle: Handle, how: LatestPlan, settings: Settings) -> Tuple[Handle, Optional[Dict[str, Any]]]:
    """The versioned handle that ``handle`` means now, and the record it came
    from when Kaggle was not asked (None when it was)."""
    shown = handle.shown
    record = read_record((settings.cache_dir, *settings.readonly_dirs), handle)
    if record is not None:
        age = time.time() - record["checked"]
        if settings.offline or 0 <= age < settings.latest_interval:
            if settings.offline:
                log.info("%s: offline, so the version it last resolved to: %d", shown, record["version"])
            return handle.at_version(record["version"]), record
    if settings.offline:
        raise OfflineError(
            f"{shown} names no version, and offline (HUBCACHE_OFFLINE=1) hubcache cannot ask Kaggle for "
            "the latest: resolve it once online (hubcache prefetch), or write its version in the handle.",
            handle=shown,
        )
    try:
        version = ask_kaggle(how, shown, settings)
    except DownloadError as e:
        if record is None:
            raise
        log.warning(
            "%s: could not ask Kaggle for the latest version (%s); using version %d, from %s",
            shown,
            e,
            record["version"],
            record.get("checked_at", "before"),
        )
        return handle.at_version(record["version"]), record
    entry = handle.at_version(version).cache_key
    record = {"handle": shown, "version": version, "entry": entry, "checked_at": utc_iso(), "checked": time.time()}
    try:
        os.makedirs(settings.cache_dir, exist_ok=True)
        write_atomic(record_path(settings.cache_dir, handle), json.dumps(record, indent=2))
    except OSError as e:  # a read-only cache still resolves; it only asks again next time
        log.warning("%s: could not record its latest version in %s (%s)", shown, settings.cache_dir, e)
    log.info("%s: the latest version is %d", shown, version)
    return handle.at_version(version), None


def ask_kaggle(how: LatestPlan, shown: str, settings: Settings) -> int:
    """The current version number, as Kaggle's REST API answers it, or, when
    that route fails as the download routes may, its RPC API."""
    from .download import FALLBACK_STATUSES
    from .transport import Transport  # noqa: F811 - at run time, imported when first asked

    routes: List[Tuple[str, Optional[str]]] = [(how.url, None)] + ([how.rpc] if how.rpc else [])
    transport = Transport(shown, settings, how.credentials_for, (settings.kaggle_api_endpoint,))
    try:
        for url, post in routes[:-1]:
            try:
                return _ask(transport, url, post, shown)
            except DownloadError as e:
                if e.status not in FALLBACK_STATUSES:
                    raise
                log.info("%s: HTTP %s from %s; asking Kaggle's RPC API", shown, e.status, e.url)
                transport.failures = 0
        url, post = routes[-1]
        return _ask(transport, url, post, shown)
    finally:
        transport.close()


def _ask(transport: Transport, url: str, post: Optional[str], shown: str) -> int:
    from .answers import get_json
    from .transport import redact

    answer, final_url = get_json(transport, url, limit=MAX_ANSWER, doing="asking for its latest version", post=post)
    version = _version(answer.get("versionNumber")) if isinstance(answer, dict) else None
    if version is None:
        raise DownloadError(
            f"asked {redact(final_url)} for the latest version of {shown}, and the answer has no version "
            "number: write the version in the handle, or try again later.",
            handle=shown,
            url=redact(final_url),
        )
    return version


def _version(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 31 else None
