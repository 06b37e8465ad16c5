"""The public functions: :func:`resolve`, :func:`load` and :func:`prefetch`.

Each call reads its settings from the environment when it is made (see
:mod:`hubcache.config`), so changing ``TFHUB_CACHE_DIR`` between calls works.

A cached handle takes a fast path that reads only the variables locating the
cache and stats the entry's metadata; everything else (settings, locks,
HTTP, extraction) is imported and done only when something must be fetched.
"""

from __future__ import annotations

import os
TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing (2 ms) on the warm path

from . import handles, layout
from .errors import HubcacheError

if TYPE_CHECKING:
    from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Tuple, Union

    from .config import Settings
    from .resolvers import ArchivePlan

_HEX = frozenset("0123456789abcdefABCDEF")
_parsed: "Dict[str, handles.Handle]" = {}  # handles seen by this process
_roots: "Dict[str, str]" = {}  # cache roots as configured -> absolute


def resolve(handle: str, *, cache_dir: Optional[str] = None, sha256: Optional[str] = None) -> str:
    """Return the local directory of ``handle``'s model, downloading it first if
    it is not cached.

    Local paths are returned where they are, never copied. With
    ``TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED`` the model's ``gs://`` location is
    returned instead, as tensorflow_hub does.

    >>> path = hubcache.resolve("https://tfhub.dev/google/nnlm-en-dim128/2")  # doctest: +SKIP
    >>> os.listdir(path)                                                    # doctest: +SKIP
    ['saved_model.pb', 'variables', 'assets']

    ``cache_dir`` overrides ``TFHUB_CACHE_DIR``/``HUBCACHE_CACHE_DIR``.
    ``sha256`` pins the archive: an entry fetched from another archive is not
    used, and a download with another hash raises
    :class:`~hubcache.IntegrityError` without caching anything.
    Raises a :class:`~hubcache.HubcacheError` subclass on failure.
    """
    if sha256 is None:
        path = _cached(handle, cache_dir)
        if path is not None:
            return path
    from .config import load_settings

    return resolve_with(handle, load_settings(cache_dir=cache_dir), sha256)


def _cached(raw: str, cache_dir: "Optional[str]") -> "Optional[str]":
    """The valid entry of ``raw`` in the main cache, or None to take the full
    path (which also raises the errors a bad handle or setting deserves)."""
    handle = _parsed.get(raw)
    if handle is None:
        try:
            handle = handles.parse(raw)
        except HubcacheError:
            return None
        if len(_parsed) > 4096:
            _parsed.clear()
        _parsed[raw] = handle
    if not handle.is_remote:
        return None
    env = os.environ
    load_format = env.get("TFHUB_MODEL_LOAD_FORMAT")
    if load_format and load_format.strip().upper() not in ("COMPRESSED", "AUTO"):
        return None  # UNCOMPRESSED, or a typo that deserves its error
    configured = cache_dir or env.get("TFHUB_CACHE_DIR") or env.get("HUBCACHE_CACHE_DIR") or ""
    root = _roots.get(configured)
    if root is None:
        root = layout.cache_root(configured or None)
        if os.path.isabs(os.path.expanduser(configured or "/")):  # not relative to the cwd
            _roots[configured] = root
    status = layout.lookup(
        root, handle.cache_key, require_saved_model=handles.requires_saved_model(handle), touch=True
    )
    return status.path


def load(
    handle: str,
    tags: Optional[Union[str, Iterable[str]]] = None,
    options: Optional[Any] = None,
    *,
    cache_dir: Optional[str] = None,
    sha256: Optional[str] = None,
) -> Any:
    """Resolve ``handle`` and return ``tf.saved_model.load(path, tags, options)``.

    >>> model = hubcache.load("https://tfhub.dev/google/nnlm-en-dim128/2")  # doctest: +SKIP
    >>> model(["a sentence"]).shape                                       # doctest: +SKIP
    TensorShape([1, 128])

    Needs TensorFlow (``pip install 'hubcache[tf]'``); it is imported on the
    first call. ``cache_dir`` and ``sha256`` are as for :func:`resolve`.
    While TensorFlow reads the files, ``hubcache rm``/``prune`` leave the entry alone.
    """
    from .cache import Cache
    from .config import load_settings
    from .loader import load_saved_model

    settings = load_settings(cache_dir=cache_dir)
    for _ in range(5):  # an entry removed between resolving and locking is fetched again
        path = resolve_with(handle, settings, sha256)
        key = os.path.basename(path)
        if os.path.dirname(path) != settings.cache_dir or len(key) != 40:
            break  # a local path, a read-only layer, or a gs:// location: nothing prunes it here
        with Cache(settings.cache_dir).reading(key):
            if os.path.isdir(path):
                return load_saved_model(path, handle=handle, tags=tags, options=options)
    return load_saved_model(path, handle=handle, tags=tags, options=options)


def prefetch(
    handles_: Iterable[str],
    *,
    cache_dir: Optional[str] = None,
    progress: Optional[bool] = None,
    sha256: Optional[Mapping[str, str]] = None,
    jobs: int = 1,
) -> Dict[str, str]:
    """Download every handle into the cache; return {handle: directory}.

    Every handle is tried even if some fail; then, if any failed, a
    :class:`~hubcache.PrefetchError` lists them (the others stay cached).

    >>> hubcache.prefetch(["https://tfhub.dev/google/nnlm-en-dim128/2"])  # doctest: +SKIP
    {'https://tfhub.dev/google/nnlm-en-dim128/2': '/home/me/.cache/hubcache/...'}

    ``progress`` forces the progress bars on or off (default: on a terminal).
    ``sha256`` maps handles to the hashes their archives must have (see
    :func:`resolve`). ``jobs`` downloads that many handles at once.
    """
    from .config import load_settings
    from .errors import PrefetchError

    settings = load_settings(cache_dir=cache_dir, progress=progress)
    paths: Dict[str, str] = {}
    errors: Dict[str, HubcacheError] = {}
    for handle, result in iter_prefetch(handles_, settings, sha256 or {}, jobs):
        if isinstance(result, HubcacheError):
            errors[handle] = result
        else:
            paths[handle] = result
    if errors:
        raise PrefetchError(paths, errors)
    return paths


def iter_prefetch(
    handles_: Iterable[str], settings: Settings, sha256: Mapping[str, str], jobs: int = 1
) -> Iterator[Tuple[str, Union[str, HubcacheError]]]:
    """Resolve each handle, ``jobs`` at a time; yields (handle, directory or
    error) as each finishes."""

    def one(handle: str) -> Tuple[str, Union[str, HubcacheError]]:
        try:
            return handle, resolve_with(handle, settings, sha256.get(handle))
        except HubcacheError as e:
            return handle, e

    unique = list(dict.fromkeys(handles_))
    if jobs <= 1 or len(unique) <= 1:
        yield from map(one, unique)
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="hubcache") as pool:
        for future in as_completed([pool.submit(one, h) for h in unique]):
            yield future.result()


def resolve_with(raw: str, settings: "Settings", sha256: "Optional[str]" = None) -> str:
    """:func:`resolve` with explicit settings."""
    import functools

    from .cache import Cache
    from .errors import ConfigError, IntegrityError, ModelNotFoundError, OfflineError
    from .resolvers import ArchivePlan, LocalPlan, LocationPlan, plan

    if sha256 is not None and not (len(sha256) == 64 and set(sha256) <= _HEX):
        raise ConfigError(f"the SHA-256 given for {raw} is not 64 hex digits: {sha256!r}.", handle=raw)
    handle = handles.parse(raw)
    how = plan(handle, settings)
    if sha256 is not None and not isinstance(how, ArchivePlan):
        raise ConfigError(
            f"a SHA-256 pins a downloaded archive, and {raw} is not downloaded "
            f"({'a local path' if isinstance(how, LocalPlan) else 'UNCOMPRESSED mode'}).",
            handle=raw,
        )
    if isinstance(how, LocalPlan):
        if not os.path.exists(how.path):
            raise ModelNotFoundError(
                f"handle {raw!r} is a local path, and {how.path} does not exist: check the "
                f"path.{handles.suggest_remote(raw)}",
                handle=raw,
            )
        return how.path
    if isinstance(how, LocationPlan):
        if settings.offline:
            raise OfflineError(
                f"{raw} cannot be resolved offline with TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED, "
                "which asks the server for the model's location: unset one of "
                "HUBCACHE_OFFLINE and TFHUB_MODEL_LOAD_FORMAT.",
                handle=raw,
            )
        from .download import fetch_location

        return fetch_location(how, handle=raw, settings=settings)

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
    if settings.offline:
        if sha256 and cache.lookup(key, require_saved_model=require).valid:
            raise IntegrityError(
                f"the cached copy of {raw} does not match the expected SHA-256: {status.problem}. "
                "Offline, it cannot be fetched again: prefetch the pinned version on a connected "
                "machine, or check the pin.",
                handle=raw,
            )
        state = (
            f"its cached copy in {cache.entry_dir(key)} is damaged ({status.problem})"
            if status.problem
            else f"it is not in the cache at {settings.cache_dir}"
        )
        raise OfflineError(
            f"{raw} is not available offline: {state}, and HUBCACHE_OFFLINE=1 forbids "
            f"downloading it. On a connected machine, run `hubcache prefetch {raw}` with the "
            "same TFHUB_CACHE_DIR and copy the cache here, or unset HUBCACHE_OFFLINE.",
            handle=raw,
        )
    return cache.fetch(
        key,
        raw,
        functools.partial(_download, how, raw, settings),
        require_saved_model=require,
        lock_timeout=settings.lock_timeout,
        sha256=sha256,
    )


def entry_metadata(raw: str, settings: Settings) -> Optional[Dict[str, Any]]:
    """hubcache's metadata of ``raw``'s cache entry, or None (not a cached
    download, or cached by tensorflow_hub)."""
    handle = handles.parse(raw)
    if not handle.is_remote:
        return None
    return layout.read_metadata(os.path.join(settings.cache_dir, handle.cache_key))


def _download(how: ArchivePlan, handle: str, settings: Settings, dest: str) -> Dict[str, Any]:
    """Stream the archive into ``dest``; return what the cache records about it."""
    from .archive import Limits, extract
    from .download import open_archive, redact

    limits = Limits(settings.max_size, settings.max_files, settings.max_ratio)
    with open_archive(how, handle=handle, settings=settings) as body:
        extracted = extract(body.chunks(), dest, handle=handle, limits=limits)
        return {
            "source_url": redact(body.requested_url),
            "downloaded_from": redact(body.url),
            "bytes": body.bytes_read,
            "sha256": body.sha256,
            "files": extracted.files,
            "crc32": extracted.crc32,
            "links": extracted.links,
        }
