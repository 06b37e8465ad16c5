"""Faults 6, 11 and 12: a full disk, a read-only cache, a cache shared by users.

Real filesystems: a 2 MiB tmpfs, a read-only bind mount, and a child process
running as another user. These need root (CI runs as root); elsewhere they are
skipped, and on CI a missing capability is a failure.
"""

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile

import pytest

import hubcache
from hubcache.handles import cache_key

from archives import fake_saved_model, fake_saved_model_files, read_tree
from helpers import REPO, child_env, leftovers, result_of, spawn_resolver

SMALL = "https://tfhub.dev/google/small/1"
BIG = "https://tfhub.dev/google/big/1"


def unavailable(reason):
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to run this test: {reason}")
    pytest.skip(reason)


def run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


@contextlib.contextmanager
def mounted(*args, target):
    if os.geteuid() != 0:
        unavailable("mounting needs root")
    r = run("mount", *args, target)
    if r.returncode != 0:
        unavailable(f"mount {' '.join(args)} failed: {r.stderr.strip()}")
    try:
        yield target
    finally:
        run("umount", "-l", target)


def test_disk_full_is_a_clear_error_and_loses_nothing(env, hub, tmp_path, monkeypatch):
    cache = tmp_path / "tmpfs"
    cache.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=2m", "tmpfs", target=str(cache)):
        monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
        hub.publish_tfhub("google/small/1", fake_saved_model(1, size=100_000))
        hub.publish_tfhub("google/big/1", fake_saved_model(2, size=3_000_000))  # random: incompressible
        small = hubcache.resolve(SMALL)
        before = read_tree(small)
        free_before = shutil.disk_usage(cache).free

        with pytest.raises(hubcache.CacheError) as e:
            hubcache.resolve(BIG)
        message = str(e.value)
        assert BIG in message and "disk is full" in message and "TFHUB_CACHE_DIR" in message
        assert isinstance(e.value, OSError)

        assert leftovers(str(cache)) == []
        assert not os.path.exists(os.path.join(cache, cache_key(BIG)))
        assert shutil.disk_usage(cache).free >= free_before - 64 * 1024  # the partial download is gone
        import hubcache.layout as cache_module

        cache_module.forget_all()
        assert hubcache.resolve(SMALL) == small and read_tree(small) == before


def test_read_only_cache(env, hub, cache_dir, monkeypatch):
    hub.publish_tfhub("google/small/1", fake_saved_model(1))
    hub.publish_tfhub("google/big/1", fake_saved_model(2))
    small = hubcache.resolve(SMALL)
    with mounted("--bind", cache_dir, target=cache_dir):
        r = run("mount", "-o", "remount,bind,ro", cache_dir)
        if r.returncode:
            unavailable(f"read-only remount failed: {r.stderr.strip()}")
        names = sorted(os.listdir(cache_dir))
        # A fresh process (nothing validated yet) resolves the cached handle, online or not.
        for extra in ({}, {"HUBCACHE_OFFLINE": "1"}):
            result = result_of(spawn_resolver(SMALL, dict(env, **extra)))
            assert result == {"ok": True, "path": small, "seconds": result["seconds"]}
        # An uncached handle: a clear error, online or offline.
        result = result_of(spawn_resolver(BIG, env))
        assert result["error"] == "CacheError" and "not writable" in result["message"] and BIG in result["message"]
        result = result_of(spawn_resolver(BIG, dict(env, HUBCACHE_OFFLINE="1")))
        assert result["error"] == "OfflineError" and "hubcache prefetch" in result["message"]
        assert sorted(os.listdir(cache_dir)) == names
    assert hub.storage.count() == 1  # only the first, writable prefetch downloaded


def system_python():
    """An interpreter another user may run, of this Python's version, with this
    environment's packages importable: /root (pyenv) is not readable by others."""
    for candidate in (f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}", sys.executable):
        if os.path.exists(candidate):
            return candidate
    return None


def as_nobody(code, env, cwd):
    python = system_python()
    site = sysconfig.get_paths()["purelib"]
    extra = dict(env, PYTHONPATH=os.pathsep.join([REPO, site]), HOME=cwd, KAGGLE_CONFIG_DIR=cwd)

    def drop():
        os.setgid(65534)
        os.setuid(65534)
        os.umask(0o022)

    return subprocess.run(
        [python, "-c", code], env=dict(child_env(extra), PYTHONPATH=extra["PYTHONPATH"]),
        preexec_fn=drop, capture_output=True, text=True, cwd=cwd, timeout=120,
    )


def test_cache_shared_by_two_users(env, hub, monkeypatch):
    if os.geteuid() != 0:
        unavailable("switching users needs root")
    shared = tempfile.mkdtemp(prefix="hubcache-shared-")  # not under pytest's 0700 tmp
    try:
        os.chmod(shared, 0o755)
        cache = os.path.join(shared, "cache")
        os.mkdir(cache)
        os.chmod(cache, 0o1777)  # what an admin does for a team cache
        monkeypatch.setenv("TFHUB_CACHE_DIR", cache)
        env = dict(env, TFHUB_CACHE_DIR=cache)
        probe = as_nobody("import hubcache, requests, filelock", env, shared)
        if probe.returncode:
            unavailable(f"no interpreter usable by another user: {probe.stderr.strip()[-300:]}")

        hub.publish_tfhub("google/small/1", fake_saved_model(1))
        hub.publish_tfhub("google/big/1", fake_saved_model(2))
        hub.publish_tfhub("google/late/1", fake_saved_model(3))
        old = os.umask(0o022)
        try:
            small = hubcache.resolve(SMALL)  # root fetches one
            hub.storage.fault(hub.publish_tfhub("google/late/1", fake_saved_model(3)), status=404, times=1)
            with pytest.raises(hubcache.DownloadError):
                hubcache.resolve("https://tfhub.dev/google/late/1")  # leaves root's lock file behind
        finally:
            os.umask(old)

        code = (
            "import json, hubcache\n"
            f"print(json.dumps([hubcache.resolve(h) for h in {[SMALL, BIG, 'https://tfhub.dev/google/late/1']!r}]))"
        )
        r = as_nobody(code, env, shared)
        assert r.returncode == 0, r.stderr[-2000:]
        paths = json.loads(r.stdout)
        assert paths[0] == small
        big = paths[1]
        assert os.stat(big).st_uid == 65534  # made by the other user...
        assert read_tree(big) == fake_saved_model_files(2)  # ...and readable by root
        for path in (big, os.path.join(big, "variables")):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
        assert stat.S_IMODE(os.stat(os.path.join(big, "saved_model.pb")).st_mode) == 0o644
        import hubcache.layout as cache_module

        cache_module.forget_all()
        assert hubcache.resolve(BIG) == big
    finally:
        shutil.rmtree(shared, ignore_errors=True)
