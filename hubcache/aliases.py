"""One Kaggle model version, one download, whatever the spelling.

tfhub.dev URLs, Kaggle page URLs in any framework spelling, API URLs, slugs
and ``kaggle://`` can all name one Kaggle model version. Each handle that
tensorflow_hub accepts keeps an entry under its own name (so tensorflow_hub
finds it), but the files are downloaded once:

- every entry of a Kaggle model version is recorded under the version's
  canonical page URL (:func:`hubcache.handles.kaggle_page`):
  ``<sha1 of that URL>.hubcache.alias`` names the entry;
- a handle whose model version is known (any Kaggle spelling; a tfhub.dev
  handle once its redirect has named the model) is made from that entry when
  it exists, by hard links: no request (offline too), no second copy on disk.

An entry made of links is a complete, independent entry: removing one leaves
the other whole. Where hard links are impossible (another filesystem), files
are copied.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
from typing import Any, Callable, Dict, Optional

from .cache import Cache, write_atomic
from .fs import walk
from .layout import ALIAS_SUFFIX, check_files, is_key, read_record

log = logging.getLogger("hubcache")

_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


class UnlinkableError(Exception):
    """The source entry went away, or changed, while it was being linked."""


def linked_from(cache: Cache, key: str, metadata: Dict[str, Any], dest: str) -> Dict[str, Any]:
    """A producer for :meth:`Cache.fetch`: entry ``key`` rebuilt in ``dest`` by
    hard links (copies where links fail); returns its metadata. The source is
    held (as a reader holds it) so that ``rm`` leaves it alone meanwhile, and
    what was linked is checked against the metadata before it is returned."""
    with cache.reading(key):
        try:
            _link_tree(cache.entry_dir(key), dest)
        except FileNotFoundError as e:
            raise UnlinkableError(f"{e.filename} went away") from None
    problem = check_files(dest, metadata.get("files") or {}, False)  # (cache.fetch checks the content)
    if problem:
        raise UnlinkableError(problem)
    kept = ("source_url", "downloaded_from", "bytes", "sha256", "files", "crc32", "links", "kaggle_model")
    out = {k: metadata[k] for k in kept if k in metadata}
    out["linked_from"] = key
    return out


def _link_tree(source: str, dest: str) -> None:
    for rel, entry in walk(source):
        path, target = os.path.join(source, rel), os.path.join(dest, rel)
        if entry.is_symlink():
            os.symlink(os.readlink(path), target)
        elif entry.is_dir(follow_symlinks=False):
            os.mkdir(target)
        else:
            try:
                os.link(path, target)
            except OSError as e:
                if e.errno not in _NO_LINK:
                    raise
                import shutil  # here: it imports bz2 and lzma, which a download may not need

                shutil.copyfile(path, target)


def usable(cache: Cache, key: str, require_saved_model: bool) -> Optional[Dict[str, Any]]:
    """The metadata of entry ``key`` when it is valid and hubcache's own, else None."""
    status = cache.lookup(key, require_saved_model=require_saved_model)
    if not status.valid:
        return None
    return cache.read_metadata(key)


def source(
    cache: Cache, key: str, canonical: Optional[str], require_saved_model: bool, sha256: Optional[str]
) -> Optional[Callable[[str], Dict[str, Any]]]:
    """A producer that makes entry ``key`` from an entry of the same model
    version (named by its canonical page URL ``canonical``): the canonical
    entry itself, or the one its record names. None if there is none valid
    (with the pinned hash, if any)."""
    from .handles import cache_key

    if not canonical:
        return None
    candidates = [cache_key(canonical), _recorded(cache, canonical)]
    for source_key in dict.fromkeys(k for k in candidates if k and k != key):
        metadata = usable(cache, source_key, require_saved_model)
        if metadata is not None and not (sha256 and metadata.get("sha256") != sha256.lower()):
            return functools.partial(linked_from, cache, source_key, metadata)
    return None


def share(cache: Cache, key: str, handle: str, canonical: str) -> None:
    """After ``handle`` was downloaded into entry ``key``: record that its entry
    holds the model version of ``canonical``, for the other spellings (best
    effort: a failure only costs them a download)."""
    from .handles import cache_key

    recorded = _recorded(cache, canonical)
    if cache_key(canonical) == key or recorded == key:
        return
    if any(os.path.isdir(cache.entry_dir(k)) for k in (cache_key(canonical), recorded) if k):
        return  # another entry holds it already
    record = os.path.join(cache.root, cache_key(canonical) + ALIAS_SUFFIX)
    try:
        write_atomic(record, json.dumps({"handle": canonical, "entry": key}))
    except OSError as e:
        log.debug("%s: could not record which model version it is: %s", handle, e)


def _recorded(cache: Cache, canonical: str) -> Optional[str]:
    from .handles import cache_key

    entry = (read_record(os.path.join(cache.root, cache_key(canonical) + ALIAS_SUFFIX)) or {}).get("entry")
    return entry if isinstance(entry, str) and is_key(entry) else None
