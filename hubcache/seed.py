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

if TYPE_CHECKING:
    from .config import Settings


def target_settings(target: str, settings: "Settings") -> "Settings":
    """``settings`` for filling ``target``: its tier, read-write, and no local cache yet."""
    from .cache import owner_suffix
    from .config import load_settings
    from .layout import TMP_INFIX

    if settings.offline:
        raise ConfigError(f"prefetch --to {target}: HUBCACHE_OFFLINE=1 forbids downloading; unset it to seed a tier.")
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
    yields (handle, its index record, or the error) as each finishes."""
    from .api import entry_metadata, iter_prefetch
    from .fs import remove_tree
    from .handles import parse
    from .tier import opened

    os.makedirs(settings.cache_dir)
    try:
        hashes: Dict[str, str] = {h: sha for h, sha in pins.items() if sha}
        for handle, outcome in iter_prefetch(pins, settings, hashes, jobs):
            if isinstance(outcome, HubcacheError):
                yield handle, outcome
                continue
            metadata = entry_metadata(handle, settings) or {}
            remote = opened(settings)
            try:
                record = remote.get_index(os.path.basename(outcome)) if remote is not None else None
            except RemoteError as e:
                yield handle, e
                continue
            finally:
                remove_tree(outcome)  # bounded disk: the tier has it now, or never will from here
            if record is None or record["sha256"] != metadata.get("sha256"):
                yield (
                    handle,
                    RemoteError(
                        f"{parse(handle).shown} was fetched but is not stored in {settings.remote}: "
                        "the upload failed (see the warning above). Check the store and its "
                        "credentials, then run the same command again.",
                        handle=parse(handle).shown,
                        operation="PutObject",
                        reason="not stored",
                    ),
                )
                continue
            yield handle, record
    finally:
        remove_tree(settings.cache_dir)
