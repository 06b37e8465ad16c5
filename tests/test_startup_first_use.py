"""First use of a big cached entry in a process: the stamp (the entry's
directories as published) stands in for a stat of every file, and still finds
a file a /tmp cleaner deleted; a truncated file is left to ``hubcache verify``.
See :func:`hubcache.layout.lookup` for which checks run when."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

from hubcache import layout
from hubcache.cache import Cache
from hubcache.handles import cache_key

from archives import fake_saved_model_files
from helpers import child_env, run_cli

BIG = "https://tfhub.dev/google/big/1"
PER_DIR = 100


def deep(files: int) -> str:
    """A file in the last but a quarter of the entry's asset directories."""
    i = files * 3 // 4
    return f"assets/d{i // PER_DIR:03d}/f{i:05d}.txt"


def archive_of(files: int) -> bytes:
    """A SavedModel with ``files`` small assets, PER_DIR to a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for name, data in fake_saved_model_files(size=1_000).items():
            add(name, data)
        for i in range(files):
            add(f"assets/d{i // PER_DIR:03d}/f{i:05d}.txt", b"%05d\n" % i)
    return buf.getvalue()


@pytest.fixture(scope="module")
def archives():
    return {n: archive_of(n) for n in (20_000, 1_000)}


def cached(hub, archive):
    """BIG cached, with a stamp written after its directories last changed (a
    stamp written in the same clock tick is not trusted: see lookup)."""
    import hubcache

    hub.publish_tfhub("google/big/1", archive)
    path = hubcache.resolve(BIG)
    time.sleep(0.05)
    restamp(path)
    return path


@pytest.fixture
def big(env, hub, archives):
    """20,000 files in 200 directories."""
    return cached(hub, archives[20_000])


@pytest.fixture
def medium(env, hub, archives):
    """1,000 files in 10 directories: the same checks, for the tests of their details."""
    return cached(hub, archives[1_000])


def restamp(path):
    metadata = layout.read_metadata(path)
    cache = Cache(os.path.dirname(path))
    cache.stamp(os.path.basename(path), layout.make_stamp(path, metadata["files"], metadata["sha256"]))


def vouched(path):
    """Whether the entry's stamp vouches for it (no stat of each file needed)."""
    return layout._stamped(path, os.stat(path + layout.METADATA_SUFFIX), True)[0]


# A new process's first resolve, counting the files it stats (real calls,
# counted on the way): the full check stats each of the 20,000.
FIRST_USE = """
import json, os, sys
import hubcache
calls = [0]
real = os.stat
def counted(*args, **kwargs):
    calls[0] += 1
    return real(*args, **kwargs)
os.stat = counted
try:
    result = {"path": hubcache.resolve(sys.argv[1])}
except hubcache.HubcacheError as e:
    result = {"error": type(e).__name__, "message": str(e)}
result["stats"] = calls[0]
print(json.dumps(result))
"""


def first_use(env, **extra):
    r = subprocess.run(
        [sys.executable, "-c", FIRST_USE, BIG], env=child_env(dict(env, **extra)), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_file_deleted_deep_in_a_20000_file_entry_is_found_on_first_use(env, big):
    assert vouched(big)
    intact = first_use(env, HUBCACHE_OFFLINE="1")
    assert intact["path"] == big
    assert intact["stats"] < 1_000  # 201 directories and the SavedModel's files, not 20,005 files
    gone = deep(20_000)
    os.remove(os.path.join(big, *gone.split("/")))  # what a /tmp cleaner does
    assert not vouched(big)  # its directory's mtime changed
    offline = first_use(env, HUBCACHE_OFFLINE="1")
    assert offline["error"] == "OfflineError" and f"{gone} went missing" in offline["message"]


def test_a_deleted_directory_is_found_on_first_use_and_fetched_again(env, medium):
    shutil.rmtree(os.path.join(medium, "assets", "d009"))
    assert not vouched(medium)
    offline = first_use(env, HUBCACHE_OFFLINE="1")
    assert offline["error"] == "OfflineError" and "went missing" in offline["message"]
    online = first_use(env)  # fetched again, and stamped again
    assert online["path"] == medium and os.path.isdir(os.path.join(medium, "assets", "d009"))
    assert first_use(env, HUBCACHE_OFFLINE="1")["path"] == medium


def test_a_truncated_saved_model_is_found_on_first_use(env, medium):
    """The SavedModel's own files (saved_model.pb, variables/) have their sizes in the stamp."""
    with open(os.path.join(medium, "saved_model.pb"), "r+b") as f:
        f.truncate(10)
    assert not vouched(medium)
    result = first_use(env, HUBCACHE_OFFLINE="1")
    assert result["error"] == "OfflineError" and "saved_model.pb has 10 bytes instead of 2000" in result["message"]


def test_another_truncated_file_is_left_to_verify(env, medium):
    """The documented limit: the other files' sizes and contents are what
    ``hubcache verify`` checks, not the first use."""
    with open(os.path.join(medium, *deep(1_000).split("/")), "r+b") as f:
        f.truncate(1)
    assert vouched(medium)
    r = run_cli("verify", BIG, env=env)
    assert r.returncode == 1 and f"{deep(1_000)} has 1 bytes instead of 6" in r.stdout, r.stdout + r.stderr


def test_a_copied_cache_is_checked_in_full_until_verify_stamps_it(env, medium, tmp_path):
    """A copy has new inodes, so its stamps disagree: the full check runs
    (and passes), and ``hubcache verify`` records stamps that agree."""
    copy = str(tmp_path / "copy")
    shutil.copytree(os.path.dirname(medium), copy, symlinks=True)
    moved = os.path.join(copy, os.path.basename(medium))
    assert not vouched(moved)
    result = first_use(dict(env, TFHUB_CACHE_DIR=copy), HUBCACHE_OFFLINE="1")
    assert result["path"] == moved and result["stats"] > 1_000
    r = run_cli("verify", BIG, env=dict(env, TFHUB_CACHE_DIR=copy))
    assert r.returncode == 0, r.stdout + r.stderr
    assert vouched(moved)


@pytest.mark.parametrize(
    "stamp",
    [
        b"{not json",
        b'{"metadata": [1, 2, 3]}',
        b"[]",
        "a directory",
        "a huge file",
        "no directories",
        "the top directory left out",
        "a directory that is not there",
    ],
)
def test_a_damaged_stamp_sends_the_entry_to_the_full_check(env, medium, stamp):
    """A stamp is input like any other: whatever is wrong with it, the full
    check decides, and a deleted file is still found."""
    path = medium + layout.STAMP_SUFFIX
    with open(path) as f:
        good = json.load(f)
    os.remove(path)
    if stamp == "a directory":
        os.mkdir(path)
    elif stamp == "a huge file":
        with open(path, "wb") as f:
            f.truncate(layout.STAMP_LIMIT + 1)
    elif isinstance(stamp, str):
        dirs = {
            "no directories": [],
            "the top directory left out": good["dirs"][1:],
            "a directory that is not there": good["dirs"] + [["assets/nowhere", 1, 1]],
        }[stamp]
        with open(path, "w") as f:
            json.dump(dict(good, dirs=dirs), f)
    else:
        with open(path, "wb") as f:
            f.write(stamp)
    assert not vouched(medium)
    os.remove(os.path.join(medium, *deep(1_000).split("/")))
    layout.forget_all()
    status = Cache(os.path.dirname(medium)).lookup(cache_key(BIG), require_saved_model=True)
    assert not status.valid and f"{deep(1_000)} went missing" in status.problem
