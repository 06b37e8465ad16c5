"""How a planned remote handle becomes a cache entry: found in the user's
cache or a read-only layer, made from another spelling's entry of the same
Kaggle model version (:mod:`hubcache.aliases`), or downloaded and extracted
under the entry's lock. Offline, only the first two.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional, Union

from . import handles as _handles
from .errors import HubcacheError

log = logging.getLogger("hubcache")

if TYPE_CHECKING:
    from .cache import Cache
    from .config import Settings
    from .resolvers import ArchivePlan, DirectoryPlan, LocationPlan
    from .tier import SharedFetch


def remote_entry(
    how: "Union[ArchivePlan, DirectoryPlan]",
    handle: "_handles.Handle",
    shown: str,
    settings: "Settings",
    sha256: "Optional[str]",
) -> str:
    """The cache entry of a downloaded archive (or gs:// directory): the user's
    cache, the read-only layers, or (online) a download."""
    import functools

    from . import aliases
    from .cache import Cache
    from .resolvers import ArchivePlan

    cache = Cache(settings.cache_dir)
    key = handle.cache_key
    require = how.require_saved_model
    status = cache.lookup(key, require_saved_model=require, sha256=sha256, touch=True)
    if status.path is not None:
        return status.path
    for layer in settings.readonly_dirs:  # a team's shared cache, behind the user's own
        found = Cache(layer).lookup(key, require_saved_model=require, sha256=sha256)
        if found.path is not None:
            return found.path
    model = how.model_page if isinstance(how, ArchivePlan) else None  # known for Kaggle spellings
    linked = aliases.source(cache, key, model, require, sha256)
    if settings.offline and linked is None:
        other_archive = bool(sha256) and cache.lookup(key, require_saved_model=require).valid
        raise _offline_error(cache.entry_dir(key), shown, settings, status.problem, other_archive)
    shared = None
    if isinstance(how, ArchivePlan):
        upstream = functools.partial(_download, how, shown, settings)
        produce = functools.partial(upstream, tee=None)
        # Not when another spelling's entry can be linked: that costs no download at all.
        shared = _shared_fetch(cache, key, shown, settings, sha256, require) if linked is None else None
        if shared is not None:
            produce = functools.partial(shared.produce, upstream)
    else:
        produce = functools.partial(_fetch_directory, how, shown, settings)
    if linked is not None:  # the same model version under another name: its files, no download
        produce = functools.partial(_linked_or, linked, None if settings.offline else produce, shown)
    made: Dict[str, Any] = {}  # what this call produced, if it did (not when another process had)

    def producing(dest: str) -> Dict[str, Any]:
        made.update(produce(dest))
        return made

    path = None
    try:
        path = cache.fetch(
            key,
            shown,
            producing,
            require_saved_model=require,
            lock_timeout=settings.lock_timeout,
            sha256=sha256,
            cancellation=settings.cancellation,
        )
    finally:
        if shared is not None:
            shared.finish(published=path is not None)
    model = model or made.get("kaggle_model")  # a tfhub.dev chain named it
    if made and isinstance(model, str):
        aliases.share(cache, key, shown, model)
    return path


def _shared_fetch(
    cache: "Cache", key: str, shown: str, settings: "Settings", sha256: "Optional[str]", require_saved_model: bool
) -> "Optional[SharedFetch]":
    """This miss's use of the shared tier (HUBCACHE_REMOTE), if one is configured and usable."""
    if settings.remote is None or settings.offline:
        return None  # no import, no socket
    from .cache import owner_suffix
    from .layout import TMP_INFIX
    from .tier import SharedFetch, opened

    remote = opened(settings)
    if remote is None:
        return None
    spool = cache.entry_dir(key) + TMP_INFIX + owner_suffix()  # a leftover of a killed process is removed
    return SharedFetch(remote, key, shown, settings, sha256, require_saved_model, spool)


def _linked_or(
    linked: "Callable[[str], Dict[str, Any]]",
    fallback: "Optional[Callable[[str], Dict[str, Any]]]",
    shown: str,
    dest: str,
) -> "Dict[str, Any]":
    """``linked``'s entry; if its source went away meanwhile (``rm``), a download."""
    from . import aliases
    from .errors import OfflineError
    from .fs import remove_tree

    try:
        return linked(dest)
    except aliases.UnlinkableError as e:
        if fallback is None:
            raise OfflineError(
                f"{shown} could not be made from the cached copy of the same model ({e}), and "
                "HUBCACHE_OFFLINE=1 forbids downloading it: prefetch it on a connected machine.",
                handle=shown,
            ) from None
        log.info("%s: the cached copy of the same model changed (%s); downloading it", shown, e)
    for name in os.listdir(dest):
        remove_tree(os.path.join(dest, name))
    return fallback(dest)


def _offline_error(
    directory: str, shown: str, settings: "Settings", problem: "Optional[str]", other_archive: bool
) -> HubcacheError:
    """Why ``shown`` cannot be had offline: an entry fetched from another archive
    than the pin names, a damaged entry, or none."""
    from .errors import IntegrityError, OfflineError

    if other_archive:
        return IntegrityError(
            f"the cached copy of {shown} does not match the expected SHA-256: {problem}. "
            "Offline, it cannot be fetched again: prefetch the pinned version on a connected "
            "machine, or check the pin.",
            handle=shown,
        )
    state = (
        f"its cached copy in {directory} is damaged ({problem})"
        if problem
        else f"it is not in the cache at {settings.cache_dir}"
    )
    return OfflineError(
        f"{shown} is not available offline: {state}, and HUBCACHE_OFFLINE=1 forbids "
        f"downloading it. On a connected machine, run `hubcache prefetch {shown}` with the "
        "same TFHUB_CACHE_DIR and copy the cache here, or unset HUBCACHE_OFFLINE.",
        handle=shown,
    )


def _fetch_directory(how: "DirectoryPlan", handle: str, settings: "Settings", dest: str) -> "Dict[str, Any]":
    from .gcs import fetch_directory

    return fetch_directory(how, dest, handle=handle, settings=settings)


def _download(
    how: "ArchivePlan", handle: str, settings: "Settings", dest: str, tee: "Optional[Callable[[bytes], None]]"
) -> "Dict[str, Any]":
    """Stream the archive into ``dest`` (and each chunk to ``tee``, for the shared
    tier); return what the cache records about it."""
    import logging

    from .archive import extract
    from .cancel import Cancellation
    from .download import open_archive
    from .resolvers import kaggle_fallback
    from .transport import redact

    # This download's own cancellation (a child of the call's): when extraction
    # fails, or Ctrl-C arrives, its socket is shut down before the pipeline is
    # joined, so a read blocked in the fetch thread ends at once and is not retried.
    cancellation = Cancellation(settings.cancellation)
    settings = settings.replace(cancellation=cancellation)
    try:
        with open_archive(how, handle=handle, settings=settings) as body:
            started = time.monotonic()
            chunks = body.chunks() if tee is None else _teed(body.chunks(), tee)
            extracted = extract(chunks, dest, handle=handle, limits=settings.limits(), abort=cancellation.cancel)
            seconds = max(time.monotonic() - started, 1e-6)
            mib = body.bytes_read / (1 << 20)
            logging.getLogger("hubcache").info(
                "Downloaded %s: %.1f MiB in %.1f s, %.1f MiB per second", handle, mib, seconds, mib / seconds
            )
            found = next(filter(None, (kaggle_fallback(url, settings) for url in body.chain)), None)
            model = body.model_page or (found[1] if found else None)  # the Kaggle model version it is
            return {
                **({"kaggle_model": model} if model else {}),
                "source_url": redact(body.requested_url),
                "downloaded_from": redact(body.url),
                "bytes": body.bytes_read,
                "sha256": body.sha256,
                "files": extracted.files,
                "crc32": extracted.crc32,
                "links": extracted.links,
            }
    finally:
        cancellation.close()


def _teed(chunks: "Iterator[bytes]", tee: "Callable[[bytes], None]") -> "Iterator[bytes]":
    for chunk in chunks:
        tee(chunk)
        yield chunk


def fetch_location(plan: "LocationPlan", *, handle: str, settings: "Settings") -> str:
    """The ``gs://`` location a server gives for an uncompressed model."""
    from .answers import read_small
    from .errors import DownloadError
    from .transport import Transport, redact

    transport = Transport(handle, settings, None)
    try:
        response, url = transport.get(plan.url)
        with response:
            body = read_small(transport, response, 4096, url) if response.status_code == 303 else b""
    finally:
        transport.close()
    location = body.decode("utf-8", "replace").strip()
    if response.status_code != 303 or not location.startswith("gs://"):
        got = f"HTTP {response.status_code}" + (f" with {location[:80]!r}" if location else "")
        raise DownloadError(
            f"asked {redact(url)} where {handle} lives (TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED) and "
            f"expected '303 See Other' with a gs:// path, but got {got}. Unset "
            "TFHUB_MODEL_LOAD_FORMAT to download the compressed model instead.",
            handle=handle,
            url=redact(url),
            status=response.status_code,
        )
    return location
