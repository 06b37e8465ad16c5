"""A cache as a whole: what it holds, what to prune, whether entries are intact.

Read-only by itself: removal goes through :meth:`hubcache.cache.Cache.remove`,
which is atomic per entry and leaves entries in use alone.
"""

from __future__ import annotations

import datetime
import os
import re
import stat
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from . import handles
from .cache import Cache, stale_leftover, utc_iso
from .config import Settings
from .errors import HandleError
from .fs import read_blocks, remove_tree, walk
from .handles import saved_model_required
from .layout import (
    DESCRIPTOR_SUFFIX,
    IMPORT_PREFIX,
    KEY_LENGTH,
    LATEST_SUFFIX,
    METADATA_SUFFIX,
    TMP_INFIX,
    TRASH_INFIX,
    check_files,
    make_stamp,
    read_record,
)
from .redaction import redact

OK, FOREIGN, DAMAGED, INCOMPLETE = "ok", "foreign", "damaged", "incomplete"

_KEY = re.compile(rf"^[0-9a-f]{{{KEY_LENGTH}}}")
_TFHUB_TMP = re.compile(r"^[0-9a-f]{40}\.[0-9a-f]{32}\.tmp$")  # tensorflow_hub's


@dataclass
class Entry:
    """One thing in a cache: an entry, or a download's leftover directory.

    ``state``: ``ok`` (hubcache's, intact), ``foreign`` (tensorflow_hub's,
    looks intact), ``damaged``, or ``incomplete`` (a download's temporary
    directory). Times are POSIX timestamps; ``size`` is bytes on disk.
    """

    key: str
    path: str
    handle: Optional[str]
    state: str
    problem: Optional[str]
    size: int
    files: int
    fetched_at: Optional[float]
    last_used: Optional[float]
    source_url: Optional[str]
    sha256: Optional[str]
    readonly: bool
    #: Kaggle handles without a version that last resolved to this entry.
    latest_of: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        for name in ("fetched_at", "last_used"):
            value = out[name]
            out[name] = utc_iso(value) if value is not None else None
        return out

    @property
    def usable(self) -> bool:
        return self.state in (OK, FOREIGN)

    @property
    def last_activity(self) -> Optional[float]:
        """When it was last used, else when it was fetched (None: unknown)."""
        return self.last_used or self.fetched_at


def scan(cache: Cache, readonly: bool = False) -> List[Entry]:
    """Every entry and leftover in ``cache``, sorted by handle."""
    try:
        names = os.listdir(cache.root)
    except FileNotFoundError:
        return []
    found: List[Entry] = []
    keys = {n[:KEY_LENGTH] for n in names if _KEY.match(n)}
    latest = _latest_records(cache, [n for n in names if n.endswith(LATEST_SUFFIX)])
    for key in sorted(keys):
        if key in names or key + METADATA_SUFFIX in names:
            found.append(describe(cache, key, readonly))
            found[-1].latest_of = sorted(latest.get(key, ()))
    for name in names:
        # Temporary files of an atomic write count too (CACHEDIR.TAG's has no key).
        if (
            name.startswith(IMPORT_PREFIX)
            or TMP_INFIX in name
            or (_KEY.match(name) and (TRASH_INFIX in name or _TFHUB_TMP.match(name)))
        ):
            found.append(_leftover(cache, name, readonly))
    return sorted(found, key=lambda e: (e.handle or "", e.state))


def _latest_records(cache: Cache, names: List[str]) -> Dict[str, List[str]]:
    """entry key -> the unversioned Kaggle handles whose "latest" record names it."""
    from .latest import usable

    out: Dict[str, List[str]] = {}
    for name in names:
        record = read_record(os.path.join(cache.root, name))
        if record is not None and usable(record) and isinstance(record.get("handle"), str):
            out.setdefault(str(record.get("entry")), []).append(record["handle"])
    return out


def describe(cache: Cache, key: str, readonly: bool = False) -> Entry:
    """The entry ``key`` of ``cache``, checked as :meth:`Cache.lookup` checks it."""
    metadata = cache.read_metadata(key)
    handle = (metadata or {}).get("handle") or _descriptor_handle(cache, key)
    status = cache.lookup(key, require_saved_model=saved_model_required(handle))
    if status.valid:
        state, problem = (OK if metadata else FOREIGN), None
    else:
        state, problem = DAMAGED, status.problem or "its directory is missing"
    size, files = _disk_usage(cache.entry_dir(key))
    return Entry(
        key=key,
        path=cache.entry_dir(key),
        handle=handle,
        state=state,
        problem=problem,
        size=size,
        files=files,
        fetched_at=_parse_time((metadata or {}).get("fetched_at")) or _mtime(cache.entry_dir(key)),
        last_used=cache.last_used(key),
        source_url=(metadata or {}).get("source_url"),
        sha256=(metadata or {}).get("sha256"),
        readonly=readonly,
    )


def _leftover(cache: Cache, name: str, readonly: bool) -> Entry:
    key = name[:KEY_LENGTH] if _KEY.match(name) else ""
    path = os.path.join(cache.root, name)
    dead = stale_leftover(name)
    if name.startswith(IMPORT_PREFIX):
        problem = "left by an import that died" if dead else "an import in progress"
    elif TMP_INFIX in name:
        problem = "left by a process that died" if dead else "a download in progress"
    elif TRASH_INFIX in name:
        problem = "left by an interrupted removal"
    else:
        problem = "tensorflow_hub's download directory"
    size, files = _disk_usage(path)
    metadata = cache.read_metadata(key) if key else None
    return Entry(
        key=key,
        path=path,
        handle=(metadata or {}).get("handle") or (_descriptor_handle(cache, key) if key else None),
        state=INCOMPLETE,
        problem=problem,
        size=size,
        files=files,
        fetched_at=_mtime(path),
        last_used=None,
        source_url=None,
        sha256=None,
        readonly=readonly,
    )


def removable_leftover(cache: Cache, entry: Entry) -> bool:
    """Whether a leftover directory can go: its process is gone (tensorflow_hub's:
    no ``<key>.lock`` of tensorflow_hub is present)."""
    name = os.path.basename(entry.path)
    if _TFHUB_TMP.match(name):
        return not os.path.exists(os.path.join(cache.root, entry.key + ".lock"))
    return stale_leftover(name)


def remove_leftover(cache: Cache, entry: Entry) -> bool:
    """Remove a leftover (a directory, or a file of an interrupted atomic write)
    if its process is gone; True when nothing is left at its path."""
    return removable_leftover(cache, entry) and remove_tree(entry.path)


def verify(cache: Cache, entry: Entry) -> Optional[str]:
    """Check ``entry`` in full: every recorded file's size and CRC-32 (entries
    made by tensorflow_hub: their structure). Returns the problem, or None.

    An intact entry of a writable cache gets a new stamp, so that its first
    check in a process is cheap again (a copied cache's stamps disagree)."""
    if entry.state != OK:
        return entry.problem
    metadata = cache.read_metadata(entry.key) or {}
    files = metadata.get("files")
    if not isinstance(files, dict):
        return "its metadata file is unreadable"
    # Made before the files are read: what changes meanwhile shows at the next first check.
    made = make_stamp(entry.path, files, metadata.get("sha256"))
    problem = check_files(entry.path, files, False)  # (lookup checked the content)
    if problem:
        return problem
    sums = metadata.get("crc32") or {}
    for rel, expected in sorted(sums.items()):
        path = os.path.join(entry.path, *rel.split("/"))
        crc = 0
        try:
            for block in read_blocks(path):
                crc = zlib.crc32(block, crc)
        except OSError as e:
            return f"{rel} cannot be read ({e.strerror})"
        if crc != expected:
            return f"{rel} does not have its recorded content (CRC-32 differs)"
    if not entry.readonly:  # (a read-only layer is never written)
        cache.stamp(entry.key, made)
    return None


@dataclass
class Removal:
    entry: Entry
    reason: str


def plan_prune(
    entries: List[Entry],
    cache: Cache,
    *,
    older_than: Optional[float] = None,
    max_size: Optional[int] = None,
    damaged: bool = False,
    temp: bool = False,
    now: Optional[float] = None,
) -> List[Removal]:
    """What ``hubcache prune`` would remove from the writable ``entries``, and why."""
    now = datetime.datetime.now().timestamp() if now is None else now
    plan: Dict[str, Removal] = {}
    writable = [e for e in entries if not e.readonly]
    for e in writable:
        if damaged and e.state == DAMAGED:
            plan[e.path] = Removal(e, f"damaged: {e.problem}")
        elif temp and e.state == INCOMPLETE and removable_leftover(cache, e):
            plan[e.path] = Removal(e, f"leftover: {e.problem}")
        elif older_than is not None and e.usable and (e.last_activity or now) < now - older_than:
            plan[e.path] = Removal(e, f"not used for {_age(now - (e.last_activity or now))}")
    if max_size is not None:
        kept = [e for e in writable if e.path not in plan]
        total = sum(e.size for e in kept)
        for e in sorted((e for e in kept if e.usable), key=lambda e: e.last_activity or 0):
            if total <= max_size:
                break
            plan[e.path] = Removal(e, f"least recently used, over {format_size(max_size)}")
            total -= e.size
    return list(plan.values())


def find(cache: Cache, handle: str, readonly: bool = False) -> Optional[Entry]:
    """The entry of ``handle`` in ``cache``, or None."""
    parsed = handles.parse(handle)
    if not parsed.is_remote:
        # A local path has no cache entry: its key would be "" and name the root.
        raise HandleError(
            f"{redact(handle)} is a local path, not a cached handle: local models are used "
            "where they are, so there is no cache entry to act on. Give the URL or id it was "
            "fetched under (`hubcache ls` lists them).",
            handle=redact(handle),
        )
    latest_of = []
    if parsed.is_latest:  # the entry of the version it last resolved to
        from .latest import recorded

        version = recorded((cache.root,), parsed)
        if version is None:
            return None
        parsed, latest_of = version, [redact(handle)]
    key = parsed.cache_key
    directory = cache.entry_dir(key)
    if not (os.path.lexists(directory) or os.path.exists(directory + METADATA_SUFFIX)):
        return None
    entry = describe(cache, key, readonly)
    entry.latest_of = latest_of
    return entry


def layers(settings: "Settings") -> List["tuple[Cache, bool]"]:
    """The caches to look in, in order, each with whether it is read-only."""
    return [(Cache(settings.cache_dir), False)] + [(Cache(d), True) for d in settings.readonly_dirs]


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in "30d", "12h", "90m", "2w" or "45s". The unit is required:
    a bare "30" is more likely meant as days than as seconds."""
    m = _DURATION.match(text.lower())
    if not m:
        raise ValueError(f"{text!r} is not a duration with a unit, such as 30d, 12h, 90m or 45s")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def _age(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:.0f} days" if days >= 1 else f"{seconds / 3600:.0f} hours"


def _descriptor_handle(cache: Cache, key: str) -> Optional[str]:
    """The handle in tensorflow_hub's descriptor ("Module: <handle>")."""
    try:
        with open(os.path.join(cache.root, key + DESCRIPTOR_SUFFIX), encoding="utf-8") as f:
            first = f.readline().strip()
    except OSError:
        return None
    return first[len("Module: ") :] if first.startswith("Module: ") else None


def _disk_usage(path: str) -> "tuple[int, int]":
    """(bytes on disk, files) of a directory tree, or of a single file."""
    try:
        top = os.lstat(path)
    except OSError:
        return 0, 0
    if not stat.S_ISDIR(top.st_mode):
        return _blocks(top), 1
    size = files = 0
    for _, entry in walk(path):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        # A file hard-linked into n entries (another spelling of the same model)
        # counts 1/n in each, so that sizes add up to the disk used.
        shared = st.st_nlink if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 else 1
        size += _blocks(st) // shared
        files += not stat.S_ISDIR(st.st_mode)
    return size, files


def _blocks(st: os.stat_result) -> int:
    return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size


def _mtime(path: str) -> Optional[float]:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _parse_time(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
