"""The cache's names on disk, and the checks that say whether an entry is valid.

This is the warm path of every ``resolve``: it imports only ``os`` and ``time``
(``json`` when an entry is first checked in a process), so that
``python -c "import hubcache; hubcache.resolve(h)"`` costs little more than the
interpreter. Writing the cache is :mod:`hubcache.cache`'s job.

Names under the root, for an entry whose key is ``K`` (SHA-1 of the handle):

=============================  ================================================
``K/``                         the model, exactly as tensorflow_hub lays it out
``K.descriptor.txt``           tensorflow_hub's descriptor (informational)
``K.hubcache.json``            hubcache's metadata; marks the entry complete
``K.hubcache.used``            empty; its mtime is the entry's last use
``K.hubcache.stamp``           the entry's directories when it was published:
                               what its first check in a process compares
``K.hubcache.lock``            hubcache's per-entry lock (tensorflow_hub's is
                               ``K.lock``, which hubcache never creates)
``K.hubcache-tmp.<h>.<p>.<r>/``  a download in progress (host, pid, random)
``K.*.hubcache-tmp.<h>.<p>.<r>``  a small file being written (the metadata, ...)
``K.hubcache-trash.<r>/``      an entry being removed
=============================  ================================================
"""

from __future__ import annotations

import contextlib  # loaded at interpreter start-up already: free here
import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing (2 ms) on the warm path

if TYPE_CHECKING:  # annotations only: importing typing costs the warm path
    from typing import Any, Dict, Optional, Tuple

METADATA_SUFFIX = ".hubcache.json"
USED_SUFFIX = ".hubcache.used"
STAMP_SUFFIX = ".hubcache.stamp"
STAMP_LIMIT = 16 << 20  # bytes of a stamp: about 60 for each directory of the entry
ALIAS_SUFFIX = ".hubcache.alias"  # <sha1 of a Kaggle model version's page>: an entry holding it
LATEST_SUFFIX = ".hubcache.latest"  # <sha1 of an unversioned handle>: the version it resolved to
LOCK_SUFFIX = ".hubcache.lock"
DESCRIPTOR_SUFFIX = ".descriptor.txt"
TMP_INFIX = ".hubcache-tmp."
TRASH_INFIX = ".hubcache-trash."
IMPORT_PREFIX = ".hubcache-import."  # a bundle being imported: .hubcache-import.<host>.<pid>.<r>/
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
KEY_LENGTH = 40  # hex digits of a SHA-1: the name of an entry
_HEX_DIGITS = frozenset("0123456789abcdef")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a fifo must not block the open
USE_RESOLUTION = 3600.0  # last-use times are kept to the hour: one write an hour

#: Entries checked in full by this process: directory -> (identity of its
#: metadata file when checked, recorded sha256). Later lookups only stat the
#: metadata file.
_validated: "Dict[str, Tuple[Tuple[int, int], Optional[str]]]" = {}
#: When this process last recorded a use of each entry (monotonic seconds).
_touched: "Dict[str, float]" = {}


#: The variables that locate the cache, first set wins (tensorflow_hub's, then ours).
CACHE_DIR_VARIABLES = ("TFHUB_CACHE_DIR", "HUBCACHE_CACHE_DIR")


def configured_root(override: "Optional[str]", environ: "Any") -> str:
    """The cache root as configured (``override``, else the first of
    :data:`CACHE_DIR_VARIABLES` set in ``environ``), or "" for the default.
    The one statement of the precedence, for the settings and the warm path."""
    if override:
        return os.fspath(override)
    for name in CACHE_DIR_VARIABLES:
        value = environ.get(name)
        if value:
            return str(value)
    return ""


def warm_root(cache_dir: "Optional[str]") -> "Optional[str]":
    """What the warm path (a cache hit: no lock, no download, no import of
    :mod:`hubcache.config`) takes from the environment: the cache root as
    configured, or None when ``TFHUB_MODEL_LOAD_FORMAT`` asks for what only the
    full path answers (UNCOMPRESSED, or a typo that deserves its error). Other
    settings are read, and checked, by config at the next download."""
    load_format = os.environ.get("TFHUB_MODEL_LOAD_FORMAT")
    if load_format and load_format.strip().upper() not in ("COMPRESSED", "AUTO"):
        return None
    return configured_root(cache_dir, os.environ)


def cache_root(configured: "Optional[str]") -> str:
    """The absolute cache root: ``configured``, else platformdirs' user cache dir."""
    if not configured:
        import platformdirs  # imported here: only needed when no directory is configured

        configured = platformdirs.user_cache_dir("hubcache", appauthor=False)
    return os.path.abspath(os.path.expanduser(os.fspath(configured)))


def is_key(name: str) -> bool:
    """Whether ``name`` is an entry's name (40 lower-case hex digits): nothing
    else under the root may be treated as an entry, least of all the root itself."""
    return len(name) == KEY_LENGTH and _HEX_DIGITS.issuperset(name)


class Status:
    """What :func:`lookup` found: ``path`` if valid, else why not."""

    __slots__ = ("path", "problem")

    def __init__(self, path: "Optional[str]", problem: "Optional[str]" = None) -> None:
        self.path = path
        self.problem = problem  # None and no path: simply not cached

    @property
    def valid(self) -> bool:
        return self.path is not None


def lookup(
    root: str, key: str, *, require_saved_model: bool, sha256: "Optional[str]" = None, touch: bool = False
) -> Status:
    """Check entry ``key`` of the cache at ``root``, without locking.

    Which checks run when, for an entry hubcache made:

    - The first check in a process compares the entry with its stamp
      (``K.hubcache.stamp``, written when it was published): the metadata
      file's identity, the inode and mtime of every directory holding a file,
      and the size of the SavedModel's own files (``saved_model.pb``,
      ``variables/``). Deleting, adding or renaming a file changes its
      directory's mtime, so a file a /tmp cleaner deleted is found without a
      stat of each file (a 20,000-file entry: 200 directories). Where the stamp
      is missing (entries made before it existed, copies of a cache) or
      disagrees, or a directory changed in the clock tick the stamp was written
      (a later change could keep the same mtime), every file the metadata
      lists is statted for its size instead.
    - Later checks in the process only stat the metadata file.
    - ``hubcache verify`` reads every file (sizes and CRC-32) and records a
      new stamp when all is well: a file truncated or altered in place,
      other than the SavedModel's own, is found there, not here.

    With ``sha256``, the entry must have been fetched from an archive with
    that hash. With ``touch``, a valid entry's last use is recorded (to the
    hour, in the mtime of ``K.hubcache.used``: with relatime, reading any
    file may bump its atime; silently skipped where the cache is read-only).
    """
    directory = os.path.join(root, key)
    marker = directory + METADATA_SUFFIX
    try:
        st = os.stat(marker)
    except FileNotFoundError:
        status = _lookup_foreign(directory, require_saved_model)
        if status.path is not None and sha256:
            return Status(None, "it was not fetched by hubcache, so it has no SHA-256 to check")
    except OSError as e:
        return Status(None, f"its metadata cannot be read ({e.strerror})")
    else:
        # The directory after the metadata: removal renames it away before it
        # deletes the metadata, so a path returned here existed after its
        # metadata was seen. (No directory: also an interrupted publish.)
        if not os.path.isdir(directory):
            _validated.pop(directory, None)
            return Status(None)
        identity = (st.st_ino, st.st_mtime_ns)
        known = _validated.get(directory)
        if known is None or known[0] != identity:
            stamped, recorded = _stamped(directory, st, require_saved_model)
            if not stamped:
                metadata, problem = check_entry(directory, marker, require_saved_model)
                if problem:
                    _validated.pop(directory, None)
                    return Status(None, problem)
                recorded = metadata.get("sha256")
            known = _validated[directory] = (identity, recorded)
        if sha256 and known[1] != sha256.lower():
            return Status(None, f"it was fetched from an archive with SHA-256 {known[1]}, not {sha256}")
        status = Status(directory)
    if touch and status.path is not None:
        record_use(directory)
    return status


def remember(directory: str, metadata: "Dict[str, Any]") -> None:
    """Note a just-published entry as checked, so its first use is cheap."""
    st = os.stat(directory + METADATA_SUFFIX)
    _validated[directory] = ((st.st_ino, st.st_mtime_ns), metadata.get("sha256"))


def forget(directory: str) -> None:
    _validated.pop(directory, None)
    _touched.pop(directory, None)


def forget_all() -> None:
    """Forget which entries this process checked and when it recorded their
    use: the next lookups act as a new process's would."""
    _validated.clear()
    _touched.clear()


def record_use(directory: str) -> None:
    """Record a use of the entry at ``directory``, to the hour."""
    now = time.monotonic()
    if now - _touched.get(directory, -USE_RESOLUTION) < USE_RESOLUTION:
        return  # recorded by this process within the hour
    _touched[directory] = now
    path = directory + USED_SUFFIX
    try:
        if time.time() - os.stat(path).st_mtime < USE_RESOLUTION:
            return
        os.utime(path)
    except FileNotFoundError:
        with contextlib.suppress(OSError):  # a read-only cache: uses are not recorded
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
    except OSError:
        pass


def last_used(directory: str) -> "Optional[float]":
    """When the entry at ``directory`` was last used (resolved), or None."""
    try:
        return os.stat(directory + USED_SUFFIX).st_mtime
    except OSError:
        return None


def read_metadata(directory: str) -> "Optional[Dict[str, Any]]":
    """hubcache's metadata of the entry at ``directory``, or None."""
    import json

    try:
        with open(directory + METADATA_SUFFIX, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError):  # (deep nesting: a damaged or hostile file)
        return None
    return data if isinstance(data, dict) else None


RECORD_LIMIT = 64 << 10  # bytes of a small record file (latest, alias): real ones are ~200


def read_record(path: str) -> "Optional[Dict[str, Any]]":
    """The JSON object in the small record file ``path``, or None for anything
    else: missing, not a regular file (a symlink, a fifo, /dev/zero), over
    RECORD_LIMIT, not JSON, or nested too deep. A record may come from a shared
    or copied cache: it is input like any other."""
    return _read_json(path, RECORD_LIMIT)[0]


def _read_json(path: str, limit: int) -> "Tuple[Optional[Dict[str, Any]], int]":
    """:func:`read_record` with a bound of ``limit`` bytes; also the file's mtime (ns)."""
    import json
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK)
    except OSError:
        return None, 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None, 0
        data = os.read(fd, st.st_size + 1)
    except OSError:
        return None, 0
    finally:
        os.close(fd)
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None, 0
    return (value, st.st_mtime_ns) if isinstance(value, dict) else (None, 0)


def make_stamp(directory: str, files: "Dict[str, int]", sha256: "Optional[str]") -> "Optional[Dict[str, Any]]":
    """The stamp of the entry at ``directory`` as it is now, whose metadata
    lists ``files`` (see :func:`lookup`); None if a directory is missing."""
    dirs = {""}
    for rel in files:
        parent = rel.rpartition("/")[0]
        while parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    identities = []
    try:
        for rel in sorted(dirs):
            st = os.stat(os.path.join(directory, rel))
            identities.append([rel, st.st_ino, st.st_mtime_ns])
        marker = os.stat(directory + METADATA_SUFFIX)
    except OSError:
        return None
    return {
        "metadata": [marker.st_ino, marker.st_mtime_ns, marker.st_size],
        "dirs": identities,
        "sizes": sorted([rel, size] for rel, size in files.items() if _loaded_first(rel)),
        "files": len(files),
        "saved_model": any(name in files for name in SAVED_MODEL_FILES),
        "sha256": sha256,
    }


def _loaded_first(rel: str) -> bool:
    """Whether TensorFlow reads the file to load a SavedModel at all."""
    return rel in SAVED_MODEL_FILES or rel.startswith("variables/")


def _stamped(directory: str, marker: "os.stat_result", require_saved_model: bool) -> "Tuple[bool, Optional[str]]":
    """(True, its recorded SHA-256) if the entry's stamp vouches for it; (False,
    None) when the full check must decide. The stamp is input like any other:
    whatever is wrong with it sends the entry to the full check."""
    stamp, written = _read_json(directory + STAMP_SUFFIX, STAMP_LIMIT)
    try:
        if stamp is None or stamp["metadata"] != [marker.st_ino, marker.st_mtime_ns, marker.st_size]:
            return False, None
        if not stamp["files"] or (require_saved_model and not stamp["saved_model"]):
            return False, None  # the full check says what is wrong
        if stamp["dirs"][0][0] != "":  # the entry's own directory comes first
            return False, None
        for rel, ino, mtime in stamp["dirs"]:
            # Changed in the tick the stamp was written: a later change in the
            # same tick would leave the same mtime (timestamps are coarse).
            if mtime >= written:
                return False, None
            st = os.stat(os.path.join(directory, rel))
            if st.st_ino != ino or st.st_mtime_ns != mtime:
                return False, None
        for rel, size in stamp["sizes"]:
            if os.stat(os.path.join(directory, rel)).st_size != size:
                return False, None
    except (OSError, LookupError, TypeError, ValueError):  # something went missing, or a damaged stamp
        return False, None
    sha256 = stamp.get("sha256")
    return True, sha256 if isinstance(sha256, str) else None


def _lookup_foreign(directory: str, require_saved_model: bool) -> Status:
    """An entry without hubcache metadata: tensorflow_hub made it (or nothing did).
    tensorflow_hub's own rule applies (present and non-empty), plus a
    SavedModel check where one is required."""
    try:
        names = set(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return Status(None)
    except OSError as e:
        return Status(None, f"its directory cannot be read ({e.strerror})")
    if not names:
        return Status(None, "its directory is empty")
    if require_saved_model:
        if not names.intersection(SAVED_MODEL_FILES):
            return Status(None, "it has no saved_model.pb")
        problem = _variables_problem(os.path.join(directory, "variables"))
        if problem:
            return Status(None, problem)
    return Status(directory)


def check_entry(directory: str, marker: str, require_saved_model: bool) -> "Tuple[Dict[str, Any], Optional[str]]":
    """(metadata, why the entry at ``directory`` is not intact, or None if it is)."""
    import json

    try:
        with open(marker, encoding="utf-8") as f:
            metadata = json.load(f)
        files = dict(metadata["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}, "its metadata file is unreadable"
    return metadata, check_files(directory, files, require_saved_model)


def check_files(directory: str, files: "Dict[str, int]", require_saved_model: bool) -> "Optional[str]":
    """Why the files recorded for ``directory`` are not all there, or None."""
    missing = []
    for rel, size in files.items():
        try:
            st = os.stat(os.path.join(directory, rel))
        except OSError:
            missing.append(rel)
            continue
        if st.st_size != size:
            return f"{rel} has {st.st_size} bytes instead of {size}"
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        return f"{missing[0]}{more} went missing"
    return check_content(files, require_saved_model)


def check_content(files: "Dict[str, int]", require_saved_model: bool) -> "Optional[str]":
    """Why a set of extracted files is not a usable entry, or None."""
    if not files:
        return "holds no files"
    if require_saved_model and not any(name in files for name in SAVED_MODEL_FILES):
        return "has no saved_model.pb at its root"
    return None


def _variables_problem(variables: str) -> "Optional[str]":
    """Why a SavedModel's ``variables/`` is incomplete, or None: every shard
    that ``variables.data-i-of-n`` names, and the index, must be there."""
    try:
        names = set(os.listdir(variables))
    except FileNotFoundError:
        return None  # a SavedModel without variables
    except OSError as e:
        return f"its variables cannot be read ({e.strerror})"
    counts = set()
    for name in names:
        head, _, total = name.rpartition("-of-")
        if head.startswith("variables.data-") and head[15:].isdigit() and total.isdigit():
            counts.add(int(total))
    if not counts:
        return "variables/variables.index is there without its data" if "variables.index" in names else None
    if "variables.index" not in names:
        return "variables/variables.index went missing"
    n = max(counts)
    missing = [i for i in range(n) if f"variables.data-{i:05d}-of-{n:05d}" not in names]
    if missing:
        return f"variables/variables.data-{missing[0]:05d}-of-{n:05d} went missing"
    return None
