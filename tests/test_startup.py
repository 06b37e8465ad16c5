"""Cold start: what a fresh process fetching a small model imports, and the
per-entry lock that replaced filelock on POSIX.

Speed itself is measured in benchmarks/speed.py; these tests check the
imports that cost it, in real child processes (sys.modules after the fetch).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from hubcache.locks import LockFile

from archives import fake_saved_model
from helpers import child_env

TINY = "https://tfhub.dev/google/tiny/1"

# Each is imported only for what a small tar.gz download does not do: a lock
# library (filelock imports decimal, platform; its asyncio flavour asyncio), a
# progress bar nobody sees, the zip reader.
NOT_FOR_A_SMALL_DOWNLOAD = (
    "filelock", "tqdm", "hubcache.zip", "asyncio", "decimal", "platform", "dataclasses", "inspect"
)  # fmt: skip

CHILD = """
import json, sys, hubcache
path = hubcache.resolve(sys.argv[1])
print(json.dumps([path, sorted(m for m in sys.argv[2:] if m in sys.modules)]))
"""


def _fetch_in_a_child(handle, env, watched):
    r = subprocess.run(
        [sys.executable, "-c", CHILD, handle, *watched], env=child_env(env), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_small_download_imports_no_lock_library_bar_or_zip_reader(env, hub, cache_dir):
    hub.publish_tfhub("google/tiny/1", fake_saved_model(size=2_000))  # a 4 KiB tar.gz
    path, imported = _fetch_in_a_child(TINY, env, NOT_FOR_A_SMALL_DOWNLOAD)
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert imported == []
    assert os.path.isfile(path + ".hubcache.lock")  # the lock was taken, by flock


def test_a_progress_bar_that_is_shown_still_imports_tqdm(env, hub, cache_dir):
    hub.publish_tfhub("google/tiny/1", fake_saved_model(size=2_000))
    env = dict(env, HUBCACHE_DISABLE_PROGRESS="0", TFHUB_DOWNLOAD_PROGRESS="1")
    assert _fetch_in_a_child(TINY, env, ["tqdm"])[1] == ["tqdm"]


def test_a_local_tar_gz_imports_no_other_decompressor(env, tmp_path, cache_dir):
    """requests imports bz2 and lzma itself (urllib3 -> importlib.metadata ->
    zipfile -> shutil), so the decompressors are watched without it: a local
    archive is extracted without requests."""
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(fake_saved_model(size=2_000))
    watched = ("bz2", "lzma", "shutil", "hubcache.zip", "requests", *NOT_FOR_A_SMALL_DOWNLOAD)
    path, imported = _fetch_in_a_child(str(archive), env, watched)
    assert os.path.isfile(os.path.join(path, "saved_model.pb")) and imported == []


def test_isal_inflates_archives_over_a_mebibyte(tmp_path):
    """A small archive is inflated by zlib (importing isal costs it more than it
    saves); a larger one by isal, when hubcache[fast] is installed."""
    pytest.importorskip("isal")
    code = (
        "import sys, hubcache.archive as a, hubcache.pipeline as p\n"
        "a.SMALL_WAIT = 5.0  # (for a loaded machine: it returns when the source ends)\n"
        "a.extract([open(sys.argv[1], 'rb').read()], sys.argv[2], handle='h')\n"
        "print(p.ACCELERATED, 'isal' in sys.modules)\n"
    )
    seen = []
    for size in (2_000, 3 << 20):  # random data: the tar.gz is about as large
        archive, out = tmp_path / f"{size}.tar.gz", tmp_path / f"out-{size}"
        archive.write_bytes(fake_saved_model(size=size))
        out.mkdir()
        r = subprocess.run(
            [sys.executable, "-c", code, str(archive), str(out)], env=child_env({}), capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr[-3000:]
        seen.append(r.stdout.split())
    assert seen == [["False", "False"], ["True", "True"]]


@pytest.mark.parametrize("compression", ["bz2", "xz"])
def test_bz2_and_xz_archives_still_download(env, hub, compression):
    """Their decompressors are imported when such an archive comes."""
    import hubcache

    hub.publish_tfhub("google/tiny/1", fake_saved_model(size=2_000, compression=compression))
    assert os.path.isfile(os.path.join(hubcache.resolve(TINY), "saved_model.pb"))


def test_a_lock_excludes_a_second_holder_until_released(tmp_path):
    path = str(tmp_path / "k.hubcache.lock")
    first, second = LockFile(path), LockFile(path)
    assert first.try_acquire()
    assert not second.try_acquire()  # another descriptor, even in this thread
    first.release()
    assert second.try_acquire()
    second.release()
    assert os.path.isfile(path)  # kept: unlinking would let a waiter lock another file


def test_a_lock_and_filelock_exclude_each_other(tmp_path):
    """Both are a flock on the lock file: a process running an older hubcache
    (filelock) and this one never download the same entry at once."""
    from filelock import FileLock, Timeout

    path = str(tmp_path / "k.hubcache.lock")
    held = FileLock(path)
    held.acquire()
    try:
        assert not LockFile(path).try_acquire()
    finally:
        held.release()
    ours = LockFile(path)
    assert ours.try_acquire()
    try:
        with pytest.raises(Timeout):
            FileLock(path).acquire(timeout=0.05)
    finally:
        ours.release()


def test_a_lock_file_is_shared_whatever_the_umask(tmp_path):
    """0o666: in a cache shared by several users, any of them may take the lock."""
    path = str(tmp_path / "k.hubcache.lock")
    old = os.umask(0o077)
    try:
        lock = LockFile(path)
        assert lock.try_acquire()
        lock.release()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666


def test_a_symlink_at_the_lock_path_is_refused(tmp_path):
    """A hostile cache may plant a symlink where the lock goes: it is not followed."""
    target = tmp_path / "elsewhere"
    path = tmp_path / "k.hubcache.lock"
    os.symlink(target, path)
    with pytest.raises(OSError):
        LockFile(str(path)).try_acquire()
    assert not target.exists()
