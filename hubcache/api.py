"""The public functions: :func:`resolve`, :func:`load` and :func:`prefetch`.

Each call reads its settings from the environment when it is made (see
:mod:`hubcache.config`), so changing ``TFHUB_CACHE_DIR`` between calls works.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple, Union

from . import handles
from .cache import Cache
from .config import Settings, load_settings
from .errors import HubcacheError, ModelNotFoundError, OfflineError, PrefetchError
from .resolvers import ArchivePlan, LocalPlan, LocationPlan, plan


def resolve(handle: str, *, cache_dir: Optional[str] = None) -> str:
    """Return the local directory of ``handle``'s model, downloading it first if
    it is not cached.

    Local paths are returned where they are, never copied. With
    ``TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED`` the model's ``gs://`` location is
    returned instead, as tensorflow_hub does.

    >>> path = hubcache.resolve("https://tfhub.dev/google/nnlm-en-dim128/2")  # doctest: +SKIP
    >>> os.listdir(path)                                                    # doctest: +SKIP
    ['saved_model.pb', 'variables', 'assets']

    ``cache_dir`` overrides ``TFHUB_CACHE_DIR``/``HUBCACHE_CACHE_DIR``.
    Raises a :class:`~hubcache.HubcacheError` subclass on failure.
    """
    return resolve_with(handle, load_settings(cache_dir=cache_dir))


def load(
    handle: str,
    tags: Optional[Union[str, Iterable[str]]] = None,
    options: Optional[Any] = None,
    *,
    cache_dir: Optional[str] = None,
) -> Any:
    """Resolve ``handle`` and return ``tf.saved_model.load(path, tags, options)``.

    >>> model = hubcache.load("https://tfhub.dev/google/nnlm-en-dim128/2")  # doctest: +SKIP
    >>> model(["a sentence"]).shape                                       # doctest: +SKIP
    TensorShape([1, 128])

    Needs TensorFlow (``pip install 'hubcache[tf]'``); it is imported on the first call.
    """
    from .loader import load_saved_model

    path = resolve(handle, cache_dir=cache_dir)
    return load_saved_model(path, handle=handle, tags=tags, options=options)


def prefetch(
    handles_: Iterable[str],
    *,
    cache_dir: Optional[str] = None,
    progress: Optional[bool] = None,
) -> Dict[str, str]:
    """Download every handle into the cache; return {handle: directory}.

    Every handle is tried even if some fail; then, if any failed, a
    :class:`~hubcache.PrefetchError` lists them (the others stay cached).

    >>> hubcache.prefetch(["https://tfhub.dev/google/nnlm-en-dim128/2"])  # doctest: +SKIP
    {'https://tfhub.dev/google/nnlm-en-dim128/2': '/home/me/.cache/hubcache/...'}

    ``progress`` forces the progress bars on or off (default: on a terminal).
    """
    settings = load_settings(cache_dir=cache_dir, progress=progress)
    paths: Dict[str, str] = {}
    errors: Dict[str, HubcacheError] = {}
    for handle, result in iter_prefetch(handles_, settings):
        if isinstance(result, HubcacheError):
            errors[handle] = result
        else:
            paths[handle] = result
    if errors:
        raise PrefetchError(paths, errors)
    return paths


def iter_prefetch(
    handles_: Iterable[str], settings: Settings
) -> Iterator[Tuple[str, Union[str, HubcacheError]]]:
    """Resolve each handle in turn, yielding (handle, directory or error)."""
    for handle in handles_:
        try:
            yield handle, resolve_with(handle, settings)
        except HubcacheError as e:
            yield handle, e


def resolve_with(raw: str, settings: Settings) -> str:
    """:func:`resolve` with explicit settings."""
    handle = handles.parse(raw)
    how = plan(handle, settings)
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
    if settings.offline:
        status = cache.lookup(key, require_saved_model=how.require_saved_model)
        if status.path is not None:
            return status.path
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
        require_saved_model=how.require_saved_model,
        lock_timeout=settings.lock_timeout,
    )


def _download(how: ArchivePlan, handle: str, settings: Settings, dest: str) -> Dict[str, Any]:
    """Stream the archive into ``dest``; return what the cache records about it."""
    from .archive import extract
    from .download import open_archive, redact

    with open_archive(how, handle=handle, settings=settings) as body:
        extracted = extract(body.chunks(), dest, handle=handle)
        return {
            "source_url": redact(body.requested_url),
            "downloaded_from": redact(body.url),
            "bytes": body.bytes_read,
            "sha256": body.sha256,
            "files": extracted.files,
            "links": extracted.links,
        }
