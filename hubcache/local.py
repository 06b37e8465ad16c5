"""Local archives: a ``.tar``, ``.tar.gz``, ``.tgz`` or ``.zip`` file on this
machine (a path or a ``file://`` URL) is extracted once into the cache, through
the same safe extractor, limits and atomic publication as a download.

The entry is named after the file's ``file://`` URL and its identity (size,
modification time, inode): a changed file is a new entry, extracted again,
and the entry of its previous content is then removed (unless a process is
using it), so edits never accumulate copies. The format is judged by the
file's first bytes, not its name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Dict

from .cache import Cache, utc_iso, write_atomic
from .config import Settings
from .handles import cache_key
from .layout import LATEST_SUFFIX, read_record

log = logging.getLogger("hubcache")


def is_archive(path: str) -> bool:
    """Whether ``path`` is a regular file that starts like an archive."""
    from .pipeline import compression_of
    from .tar import BLOCK, is_header
    from .zipformat import is_zip

    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(BLOCK)
    except OSError:
        return False
    return compression_of(head) is not None or is_header(head) or is_zip(head)


def extracted(path: str, shown: str, settings: Settings) -> str:
    """The cache entry holding the archive at ``path``, extracted if need be."""
    path = os.path.abspath(path)
    st = os.stat(path)
    source = "file://" + path
    key = cache_key(f"{source}#{st.st_size}.{st.st_mtime_ns}.{st.st_ino}")
    cache = Cache(settings.cache_dir)
    status = cache.lookup(key, require_saved_model=False, touch=True)
    if status.path is not None:
        return status.path

    def produce(dest: str) -> Dict[str, Any]:
        from .archive import extract

        digest = hashlib.sha256()
        size = 0

        def chunks() -> Any:
            nonlocal size
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
                    size += len(block)
                    yield block

        result = extract(chunks(), dest, handle=shown, limits=settings.limits())
        log.info("Extracted %s into the cache", shown)
        return {
            "source_url": source,
            "bytes": size,
            "sha256": digest.hexdigest(),
            "files": result.files,
            "crc32": result.crc32,
            "links": result.links,
        }

    entry = cache.fetch(
        key,
        shown,
        produce,
        require_saved_model=False,
        lock_timeout=settings.lock_timeout,
        cancellation=settings.cancellation,
    )
    _forget_previous(cache, source, key, shown)
    return entry


def _forget_previous(cache: Cache, source: str, key: str, shown: str) -> None:
    """Record ``key`` as the file's current entry; remove the one before it."""
    record = os.path.join(cache.root, cache_key(source) + LATEST_SUFFIX)
    previous = (read_record(record) or {}).get("entry")
    if previous == key:
        return
    try:
        write_atomic(record, json.dumps({"handle": source, "entry": key, "checked_at": utc_iso()}))
    except OSError as e:
        log.warning("%s: could not record its cache entry (%s)", shown, e)
    if isinstance(previous, str) and previous != key:
        try:
            removed = cache.remove(previous, shown)
        except ValueError:  # not an entry name: a damaged record
            return
        except OSError as e:  # the new entry is ready: the old one only costs disk
            log.warning("%s changed, and the entry of its previous content could not be removed: %s", shown, e)
            return
        if removed:
            log.info("%s changed: removed the entry of its previous content", shown)
