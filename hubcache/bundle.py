"""Bundles: cache entries in one tar file, to carry to an offline machine.

A bundle is a plain tar: ``hubcache-bundle.json`` first (each entry's handle,
key, hubcache metadata, and every file's size and SHA-256), then the entries'
files under ``<key>/``. :func:`import_bundle` extracts it with the safe
extractor into a staging directory inside the cache, checks every file
against the manifest, and publishes each entry atomically through
:meth:`hubcache.cache.Cache.fetch`, so importing twice changes nothing and a
truncated or altered bundle publishes nothing broken.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tarfile
import zlib
from typing import Any, Dict, Iterator, List, Tuple

from . import handles, layout
from ._version import __version__
from .archive import Limits, extract
from .cache import Cache, atomic_path, owner_suffix, utc_iso
from .errors import ArchiveError, HandleError, HubcacheError, IntegrityError
from .fs import read_blocks, remove_tree, walk
from .handles import saved_model_required
from .inventory import Entry
from .layout import IMPORT_PREFIX

MANIFEST = "hubcache-bundle.json"
BUNDLE_FORMAT = 1


def export_bundle(entries: List[Tuple[Entry, Cache]], out: str) -> Dict[str, Any]:
    """Write the usable ``entries`` (each with its cache) to the bundle ``out``,
    atomically. Returns the manifest."""
    manifest: Dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "hubcache_version": __version__,
        "created": utc_iso(),
        "entries": [],
    }
    members: List[Tuple[str, str]] = []  # (archive name, path on disk)
    for entry, cache in entries:
        if not entry.handle or _key_of(entry.handle) != entry.key:
            raise HandleError(
                f"{entry.handle or entry.key} cannot be put in a bundle: its handle carried a secret "
                "(a password or a signed query), which hubcache does not store, so the bundle could "
                "not name its entry. Export the other handles, and fetch this one where it is needed.",
                handle=entry.handle,
            )
        files, links = {}, {}
        for rel, path in _walk(entry.path):
            if os.path.islink(path):
                links[rel] = os.readlink(path)
            else:
                files[rel] = {"size": os.path.getsize(path), "sha256": _digests(path)[0]}
            members.append((f"{entry.key}/{rel}", path))
        manifest["entries"].append(
            {
                "handle": entry.handle,
                "key": entry.key,
                "metadata": cache.read_metadata(entry.key),
                "files": files,
                "links": links,
            }
        )
    with atomic_path(out) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name, path in members:
            tar.add(path, arcname=name, recursive=False)
    return manifest


def import_bundle(cache: Cache, bundle: str, *, lock_timeout: float, limits: Limits) -> Iterator[Tuple[str, str]]:
    """Import ``bundle`` into ``cache``; yields (handle, "imported" or
    "already present") per entry. Raises :class:`ArchiveError` or
    :class:`IntegrityError` before publishing anything from a damaged bundle."""
    cache.ensure_root()
    staging = os.path.join(cache.root, IMPORT_PREFIX + owner_suffix())
    os.mkdir(staging)
    try:
        with open(bundle, "rb") as f:
            extract(iter(lambda: f.read(1 << 20), b""), staging, handle=bundle, limits=limits)
        manifest = _read_manifest(staging, bundle)
        checked = [(item, _check_item(staging, item, bundle)) for item in manifest["entries"]]
        for item, metadata in checked:  # every entry checked before any is published
            handle, key = item["handle"], item["key"]
            before = cache.lookup(
                key, require_saved_model=saved_model_required(handle), sha256=metadata.get("sha256")
            ).valid
            cache.fetch(
                key,
                handle,
                functools.partial(_move_in, os.path.join(staging, key), metadata=metadata),
                require_saved_model=saved_model_required(handle),
                lock_timeout=lock_timeout,
                sha256=metadata.get("sha256"),
            )
            yield handle, "already present" if before else "imported"
    finally:
        remove_tree(staging)


def _read_manifest(staging: str, bundle: str) -> Dict[str, Any]:
    try:
        with open(os.path.join(staging, MANIFEST), encoding="utf-8") as f:
            manifest: Dict[str, Any] = json.load(f)
        valid = manifest["format"] == BUNDLE_FORMAT and isinstance(manifest["entries"], list)
        valid = valid and all(_valid_item(item) for item in manifest["entries"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, HubcacheError):
        valid = False
    if not valid:
        raise ArchiveError(
            f"{bundle} is not a hubcache bundle (no valid {MANIFEST}): make one with "
            "`hubcache export HANDLE... -o FILE`.",
            handle=bundle,
        )
    return manifest


def _key_of(handle: str) -> str:
    """The entry name of ``handle`` ("" if it has none, or does not parse)."""
    try:
        return handles.parse(handle).cache_key
    except HandleError:
        return ""


def _valid_item(item: Dict[str, Any]) -> bool:
    """Whether a manifest entry has the shape :func:`export_bundle` writes (it is
    untrusted input: checked here rather than failing later with a TypeError)."""
    handle, key, files = item["handle"], item["key"], item["files"]
    links, metadata = item.get("links", {}), item.get("metadata")
    if not (isinstance(handle, str) and isinstance(key, str) and layout.is_key(key)):
        return False
    if _key_of(handle) != key:  # an entry is named after its handle, always
        return False
    return (
        isinstance(files, dict)
        and all(
            isinstance(rel, str)
            and isinstance(f, dict)
            and isinstance(f.get("size"), int)
            and isinstance(f.get("sha256"), str)
            for rel, f in files.items()
        )
        and isinstance(links, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in links.items())
        and (metadata is None or isinstance(metadata, dict))
    )


def _check_item(staging: str, item: Dict[str, Any], bundle: str) -> Dict[str, Any]:
    """Check an entry's staged files against the manifest; returns the metadata
    to record for it."""
    root = os.path.join(staging, item["key"])
    staged = {rel for rel, _ in _walk(root)}
    expected = set(item["files"]) | set(item.get("links", {}))
    if staged != expected:
        odd = sorted(staged ^ expected)[0]
        raise IntegrityError(
            f"{bundle}: the entry of {item['handle']} does not hold the files its manifest lists "
            f"({odd!r}): the bundle is damaged; export it again.",
            handle=item["handle"],
        )
    sizes, sums = {}, {}
    for rel, want in item["files"].items():
        path = os.path.join(root, *rel.split("/"))
        digest, crc = _digests(path)
        if os.path.getsize(path) != want["size"] or digest != want["sha256"]:
            raise IntegrityError(
                f"{bundle}: {rel} of {item['handle']} does not match its SHA-256 in the manifest: "
                "the bundle is damaged or was altered; export it again.",
                handle=item["handle"],
            )
        sizes[rel], sums[rel] = want["size"], crc
    metadata = dict(item.get("metadata") or {})
    metadata.update(files=sizes, crc32=sums, links=item.get("links", {}))
    metadata.setdefault("source_url", None)
    return metadata


def _move_in(source: str, tmp: str, metadata: Dict[str, Any]) -> Dict[str, Any]:
    for name in os.listdir(source):
        os.rename(os.path.join(source, name), os.path.join(tmp, name))
    out = dict(metadata)
    out["imported_at"] = utc_iso()
    return out


def _walk(root: str) -> Iterator[Tuple[str, str]]:
    """(relative path, path) of every file and symlink under ``root``."""
    for rel, entry in walk(root):
        if not entry.is_dir(follow_symlinks=False):
            yield rel, entry.path


def _digests(path: str) -> Tuple[str, int]:
    """(SHA-256 hex, CRC-32) of the file at ``path``."""
    digest, crc = hashlib.sha256(), 0
    for block in read_blocks(path):
        digest.update(block)
        crc = zlib.crc32(block, crc)
    return digest.hexdigest(), crc
