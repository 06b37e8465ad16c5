"""``hubcache prefetch --to TARGET``: fill a shared tier (``s3://bucket/prefix``,
or a directory in the same layout, to carry into an air gap) from a connected
machine.

Seeding runs the fetch path's own miss (:mod:`hubcache.tier`) with a temporary
cache, so that every handle is a miss: a handle the tier already holds has its
blob streamed and verified; any other is downloaded upstream, extracted and
checked like any fetch, then uploaded and indexed. Each temporary entry is
deleted once the tier is seen to hold it, so the disk holds at most ``--jobs``
models at a time. Unlike a fetch, a tier that cannot be written is an error.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, Iterator, Mapping, Optional, Tuple, Union

from .errors import ConfigError, HubcacheError, RemoteError
from .redaction import redact

if TYPE_CHECKING:
    from .config import Settings


def target_settings(target: str, settings: "Settings") -> "Settings":
    """``settings`` for filling ``target``: its tier, read-write, and no local cache yet."""
    from .cache import owner_suffix
    from .config import load_settings
    from .layout import TMP_INFIX

    if settings.offline:
        raise ConfigError(f"prefetch --to {target}: HUBCACHE_OFFLINE=1 forbids downloading; unset it to seed a tier.")
    if settings.load_format == "UNCOMPRESSED":
        raise ConfigError(
            f"prefetch --to {target}: TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED reads models in place from "
            "gs://, and a shared tier holds archives: unset it to seed a tier."
        )
    if "://" not in target:
        remote = os.path.abspath(target)
    else:
        try:  # the same parser as HUBCACHE_REMOTE's
            remote = load_settings(environ={"HUBCACHE_REMOTE": target}).remote or ""
        except ConfigError:
            remote = ""
        if not remote:
            raise ConfigError(f"prefetch --to {target!r} is not a shared tier: give s3://bucket/prefix or a directory.")
    # Named like a download's temporary directory: what a killed seeding leaves is
    # removed by `hubcache prune --temp`.
    scratch = os.path.join(settings.cache_dir, f"seed{TMP_INFIX}{owner_suffix()}")
    return settings.replace(remote=remote, remote_mode="rw", cache_dir=scratch, readonly_dirs=())


def seed(
    pins: Mapping[str, Optional[str]], settings: "Settings", jobs: int
) -> Iterator[Tuple[str, Union[Dict[str, Any], HubcacheError]]]:
    """Put each handle in the tier ``settings`` name (see :func:`target_settings`);
    yields (handle, its index record, or the error) as each finishes. Once the tier
    fails, the handles not yet fetched are not: their downloads would be wasted."""
    from .api import iter_prefetch
    from .fs import remove_tree

    os.makedirs(settings.cache_dir)
    done = set()
    try:
        archives = {}
        for handle, sha in pins.items():
            refused = _not_an_archive(handle)
            if refused is not None:
                done.add(handle)
                yield handle, refused
            else:
                archives[handle] = sha
        hashes = {h: sha for h, sha in archives.items() if sha}
        failed: Optional[RemoteError] = None
        prefetching = iter_prefetch(archives, settings, hashes, jobs)
        try:
            for handle, outcome in prefetching:
                done.add(handle)
                if isinstance(outcome, HubcacheError):
                    yield handle, outcome
                    continue
                try:
                    yield handle, _stored(handle, outcome, settings)
                except RemoteError as e:
                    failed = e
                    yield handle, e
                    break
                finally:
                    remove_tree(outcome)  # bounded disk: the tier has it now, or never will from here
        finally:
            prefetching.close()  # stops the other downloads
        for handle in pins:
            if handle not in done and failed is not None:
                shown = redact(handle)
                yield (
                    handle,
                    RemoteError(
                        f"{shown} was not fetched: the shared tier {settings.remote} failed on another "
                        "handle (see above). Run the same command again once it works.",
                        handle=shown,
                        reason="not attempted",
                    ),
                )
    finally:
        remove_tree(settings.cache_dir)


def _stored(handle: str, path: str, settings: "Settings") -> Dict[str, Any]:
    """The tier's index record of ``handle``, fetched into ``path``: as the fetch
    wrote it, or, for an entry made from another spelling's, written now (its
    archive is in the tier already). RemoteError if the tier does not hold it."""
    from .api import entry_metadata
    from .tier import has_blob, index_record, opened

    shown = redact(handle)
    metadata = entry_metadata(handle, settings) or {}
    sha256, size = metadata.get("sha256"), metadata.get("bytes")
    remote = opened(settings)
    if remote is not None:
        key = os.path.basename(path)
        record = remote.get_index(key)
        if record is not None and record["sha256"] == sha256:
            return record
        if isinstance(sha256, str) and isinstance(size, int) and has_blob(remote, sha256, size):
            record = index_record(sha256, size, shown, str(metadata.get("downloaded_from", "")), remote)
            remote.put_index(key, record)
            return record
    raise RemoteError(
        f"{shown} was fetched but is not stored in {settings.remote}: the shared tier could not be "
        "written (see the warning above). Check the store and its credentials, then run the same "
        "command again.",
        handle=shown,
        reason="not stored",
    )


def _not_an_archive(handle: str) -> Optional[HubcacheError]:
    """Why ``handle`` cannot go in a tier before anything is fetched, or None (a
    malformed handle is left for the fetch to report)."""
    from .handles import GCS_DIR, parse

    try:
        kind = parse(handle).kind
    except HubcacheError:
        return None
    if kind != GCS_DIR:
        return None
    return ConfigError(
        f"{redact(handle)} is a gs:// directory, not an archive: a shared tier holds downloaded "
        "archives only. Prefetch it into a cache (without --to), or use its archive's URL.",
        handle=redact(handle),
    )
