"""The public functions: :func:`resolve`, :func:`load` and :func:`prefetch`.

Each call reads its settings from the environment when it is made (see
:mod:`hubcache.config`), so changing ``TFHUB_CACHE_DIR`` between calls works.

A cached handle takes a fast path that reads only the variables locating the
cache and stats the entry's metadata; everything else (settings, locks,
HTTP, extraction) is imported and done only when something must be fetched.
"""

from __future__ import annotations

import os
import time

from . import handles as _handles
from . import layout
from .errors import HubcacheError
from .redaction import redact as _redact

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing (2 ms) on the warm path

if TYPE_CHECKING:
    from typing import Any, Dict, Generator, Iterable, Mapping, Optional, Tuple, Union

    from .config import Settings
    from .resolvers import LocationPlan

_HEX = frozenset("0123456789abcdefABCDEF")
_parsed: "Dict[str, _handles.Handle]" = {}  # handles seen by this process
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
            handle = _handles.parse(raw)
        except HubcacheError:
            return None
        if len(_parsed) > 4096:
            _parsed.clear()
        _parsed[raw] = handle
    if not handle.cache_key:  # a local path, or a Kaggle handle asking for the latest
        return None
    configured = layout.warm_root(cache_dir)
    if configured is None:
        return None
    root = _roots.get(configured)
    if root is None:
        root = layout.cache_root(configured or None)
        if os.path.isabs(os.path.expanduser(configured or "/")):  # not relative to the cwd
            _roots[configured] = root
    status = layout.lookup(
        root, handle.cache_key, require_saved_model=_handles.requires_saved_model(handle), touch=True
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
    if not settings.offline and _gcs_directory(handle) and _cached(handle, cache_dir) is None:
        # As tensorflow_hub does: TensorFlow reads the directory (its GCS filesystem, its
        # credentials). `hubcache prefetch` copies it into the cache for offline use.
        return load_saved_model(handle, handle=handle, tags=tags, options=options)
    for _ in range(5):  # an entry removed between resolving and locking is fetched again
        path = resolve_with(handle, settings, sha256)
        key = os.path.basename(path)
        if os.path.dirname(path) != settings.cache_dir or not layout.is_key(key):
            break  # a local path, a read-only layer, or a gs:// location: nothing prunes it here
        with Cache(settings.cache_dir).reading(key):
            if os.path.isdir(path):
                return load_saved_model(path, handle=handle, tags=tags, options=options)
    return load_saved_model(path, handle=handle, tags=tags, options=options)


def _gcs_directory(raw: str) -> bool:
    try:
        return _handles.parse(raw).kind == _handles.GCS_DIR
    except HubcacheError:
        return False  # resolve_with raises its error


def prefetch(
    handles: Iterable[str],
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
    :func:`resolve`). ``jobs`` downloads that many handles at once; Ctrl-C
    stops all of them, and what they had written is removed.

    Local paths are not prefetched: each is reported as a
    :class:`~hubcache.HandleError` in the :class:`~hubcache.PrefetchError`.
    """
    from .config import load_settings
    from .errors import PrefetchError

    if isinstance(handles, (str, bytes)):
        raise TypeError(
            f"prefetch() takes a list of handles, not a single string: write "
            f"prefetch([{_redact(str(handles))!r}]) (or use resolve() for one handle)."
        )
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise TypeError(f"prefetch(jobs=...) takes a whole number of at least 1, not {jobs!r}.")
    settings = load_settings(cache_dir=cache_dir, progress=progress)
    paths: Dict[str, str] = {}
    errors: Dict[str, HubcacheError] = {}
    for handle, result in iter_prefetch(handles, settings, sha256 or {}, jobs):
        if isinstance(result, HubcacheError):
            errors[handle] = result
        else:
            paths[handle] = result
    if errors:
        raise PrefetchError(paths, errors)
    return paths


def iter_prefetch(
    handles: Iterable[str], settings: Settings, sha256: Mapping[str, str], jobs: int = 1
) -> Generator[Tuple[str, Union[str, HubcacheError]], None, None]:
    """Resolve each handle, ``jobs`` at a time; yields (handle, directory or
    error) as each finishes. A local path is an error: nothing to prefetch.

    With ``jobs`` > 1 the downloads run in worker threads. A KeyboardInterrupt
    (or closing this generator) cancels them all: their sockets are shut down,
    they unwind within moments, and their temporary directories are removed.
    """
    unique = list(dict.fromkeys(handles))
    if jobs <= 1 or len(unique) <= 1:
        for handle in unique:
            yield handle, _prefetch_one(handle, settings, sha256.get(handle))
        return
    import queue
    import threading

    from .cancel import Cancellation, Cancelled

    cancellation = Cancellation()
    settings = settings.replace(cancellation=cancellation)
    todo: "queue.Queue[str]" = queue.Queue()
    for handle in unique:
        todo.put(handle)
    done: "queue.Queue[Tuple[str, Union[str, HubcacheError]]]" = queue.Queue()

    def work() -> None:
        while not cancellation.cancelled:
            try:
                handle = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((handle, _prefetch_one(handle, settings, sha256.get(handle))))
            except Cancelled:
                return
            except BaseException as e:  # a bug: reported for this handle, not lost in a thread
                done.put((handle, HubcacheError(f"{_redact(handle)}: unexpected {type(e).__name__}: {e}")))

    # Daemon threads: a worker stuck connecting to a silent server must not
    # keep the interpreter from exiting after Ctrl-C.
    workers = [threading.Thread(target=work, name=f"hubcache-{i}", daemon=True) for i in range(min(jobs, len(unique)))]
    for worker in workers:
        worker.start()
    try:
        for _ in unique:
            yield done.get()
    finally:
        if any(worker.is_alive() for worker in workers):
            cancellation.cancel()
            deadline = time.monotonic() + 1.0
            for worker in workers:
                worker.join(max(0.0, deadline - time.monotonic()))
            cancellation.remove_dirs()


def _prefetch_one(raw: str, settings: "Settings", sha256: "Optional[str]") -> "Union[str, HubcacheError]":
    from .errors import HandleError

    try:
        handle = _handles.parse(raw)
        if not handle.is_remote and not _is_local_archive(handle.location):
            return HandleError(
                f"{raw} is a local path: there is nothing to download (local models are used "
                "where they are; local archives are extracted into the cache). Give a model URL or "
                "id; to read handles from a file, pass it as a file of handles (hubcache prefetch -f FILE).",
                handle=raw,
            )
        return resolve_with(raw, settings, sha256)
    except HubcacheError as e:
        return e


def resolve_with(raw: str, settings: "Settings", sha256: "Optional[str]" = None) -> str:
    """:func:`resolve` with explicit settings."""
    from .entries import remote_entry
    from .errors import ConfigError
    from .resolvers import ArchivePlan, DirectoryPlan, LatestPlan, LocalPlan, plan

    shown = _redact(raw)  # what messages, logs and the metadata may show
    if sha256 is not None and not (len(sha256) == 64 and set(sha256) <= _HEX):
        raise ConfigError(f"the SHA-256 given for {shown} is not 64 hex digits: {sha256!r}.", handle=shown)
    handle = _handles.parse(raw)
    how = plan(handle, settings)
    if isinstance(how, LatestPlan):  # ask which version, then fetch that one's entry
        from .latest import resolve_latest

        handle = resolve_latest(handle, how, settings)[0]
        shown = handle.shown
        how = plan(handle, settings)
    if isinstance(how, ArchivePlan):
        return remote_entry(how, handle, shown, settings, sha256)
    if sha256 is not None:
        what = {LocalPlan: "a local path", DirectoryPlan: "a directory"}.get(type(how), "UNCOMPRESSED mode")
        raise ConfigError(
            f"a SHA-256 pins a downloaded archive, and {shown} is not one ({what}).",
            handle=shown,
        )
    if isinstance(how, DirectoryPlan):
        return remote_entry(how, handle, shown, settings, None)
    if isinstance(how, LocalPlan):
        return _local(how.path, raw, shown, settings)
    from typing import cast

    return _location(cast("LocationPlan", how), shown, settings)  # (a version is never planned as latest)


def _is_local_archive(path: str) -> bool:
    from .local import is_archive

    return is_archive(path)


def _local(path: str, raw: str, shown: str, settings: "Settings") -> str:
    """A local directory, used where it is, or a local archive's cache entry."""
    from .errors import ModelNotFoundError

    if not os.path.exists(path):
        raise ModelNotFoundError(
            f"handle {raw!r} is a local path, and {path} does not exist: check the path.{_handles.suggest_remote(raw)}",
            handle=raw,
        )
    if _is_local_archive(path):
        from .local import extracted

        return extracted(path, shown, settings)
    return path


def _location(how: "LocationPlan", shown: str, settings: "Settings") -> str:
    """TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED: the gs:// location the server names."""
    from .errors import OfflineError

    if settings.offline:
        raise OfflineError(
            f"{shown} cannot be resolved offline with TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED, "
            "which asks the server for the model's location: unset one of "
            "HUBCACHE_OFFLINE and TFHUB_MODEL_LOAD_FORMAT.",
            handle=shown,
        )
    from .entries import fetch_location

    return fetch_location(how, handle=shown, settings=settings)


def entry_metadata(raw: str, settings: Settings) -> Optional[Dict[str, Any]]:
    """hubcache's metadata of ``raw``'s cache entry, or None (not a cached
    download, or cached by tensorflow_hub)."""
    handle = _handles.parse(raw)
    if handle.is_latest:
        from .latest import recorded

        handle = recorded((settings.cache_dir, *settings.readonly_dirs), handle) or handle
    if not handle.cache_key:
        return None
    return layout.read_metadata(os.path.join(settings.cache_dir, handle.cache_key))
