"""Faults 1 and 2: processes killed with SIGKILL mid-download, and racers.

Every process here is real; kills are kill -9, so nothing gets to clean up.
"""

import os
import signal
import time

import hubcache
from hubcache.handles import cache_key

from archives import fake_saved_model, fake_saved_model_files, read_tree
from helpers import leftovers, result_of, spawn_resolver

HANDLE = "https://tfhub.dev/google/tiny/1"
SIZE = 600_000


def wait_for(condition, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def temp_with_data(cache_dir):
    """True once a download's temporary directory holds some data."""
    for name in leftovers(cache_dir):
        for _, _, files in os.walk(os.path.join(cache_dir, name)):
            if files:
                return True
    return False


def test_kill_9_mid_download_then_a_new_process_recovers_at_once(env, hub, cache_dir):
    archive = fake_saved_model(size=SIZE)
    blob = hub.publish_tfhub("google/tiny/1", archive)
    slow = hub.storage.fault(blob, bytes_per_second=len(archive) // 4, times=1)
    victim = spawn_resolver(HANDLE, env)
    wait_for(lambda: temp_with_data(cache_dir), what="the download to start writing")

    # Mid-download nothing looks like an entry: offline lookups see no model.
    entry = os.path.join(cache_dir, cache_key(HANDLE))
    assert not os.path.exists(entry) and not os.path.exists(entry + ".hubcache.json")
    os.environ["HUBCACHE_OFFLINE"] = "1"
    try:
        try:
            hubcache.resolve(HANDLE)
            raise AssertionError("a half-written entry was returned")
        except hubcache.OfflineError:
            pass
    finally:
        del os.environ["HUBCACHE_OFFLINE"]

    victim.send_signal(signal.SIGKILL)
    victim.wait()
    orphans = leftovers(cache_dir)
    assert orphans and not os.path.exists(entry)  # the crash left its temp, and no entry

    started = time.monotonic()
    result = result_of(spawn_resolver(HANDLE, env))
    recovery = time.monotonic() - started
    assert result["ok"] and result["path"] == entry
    assert read_tree(entry) == fake_saved_model_files(size=SIZE)
    assert leftovers(cache_dir) == []  # the orphan was cleaned up
    assert hub.storage.count(blob) == 2 and slow.times == 0
    # No 10-minute stale-lock wait: recovery is a process start plus a download.
    assert recovery < 30, recovery


def test_sixteen_racers_one_download(env, hub, cache_dir, tmp_path):
    archive = fake_saved_model(size=SIZE)
    blob = hub.publish_tfhub("google/tiny/1", archive)
    hub.storage.fault(blob, bytes_per_second=len(archive) // 2)
    gate = str(tmp_path / "gate")
    racers = [spawn_resolver(HANDLE, env, gate) for _ in range(16)]
    wait_for(lambda: len([n for n in os.listdir(tmp_path) if n.startswith("gate.ready.")]) == 16, what="racers")
    open(gate, "w").close()
    results = [result_of(p) for p in racers]
    assert all(r["ok"] for r in results), results
    assert {r["path"] for r in results} == {os.path.join(cache_dir, cache_key(HANDLE))}
    assert read_tree(results[0]["path"]) == fake_saved_model_files(size=SIZE)
    assert hub.storage.count(blob) == 1 and hub.tfhub.count() == 1
    assert leftovers(cache_dir) == []


def test_waiter_takes_over_when_the_lock_holder_dies(env, hub, cache_dir):
    archive = fake_saved_model(size=SIZE)
    blob = hub.publish_tfhub("google/tiny/1", archive)
    hub.storage.fault(blob, bytes_per_second=len(archive) // 4, times=1)
    holder = spawn_resolver(HANDLE, env)
    wait_for(lambda: temp_with_data(cache_dir), what="the holder to start writing")
    waiter = spawn_resolver(HANDLE, env)
    time.sleep(0.5)  # the waiter is now blocked on the entry's lock
    assert waiter.poll() is None
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    result = result_of(waiter)
    assert result["ok"]
    assert read_tree(result["path"]) == fake_saved_model_files(size=SIZE)
    assert hub.storage.count(blob) == 2
    assert leftovers(cache_dir) == []


def test_live_downloads_are_never_swept_only_dead_ones(env, hub, cache_dir):
    """Where locks do not work (some network filesystems), a downloader must not
    delete another live process's temporary directory."""
    import socket
    import subprocess
    import sys

    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    os.makedirs(cache_dir)
    key = cache_key(HANDLE)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        host = socket.gethostname()
        names = {
            "live": f"{key}.hubcache-tmp.{host}.{alive.pid}.aaaa",
            "dead": f"{key}.hubcache-tmp.{host}.{dead.pid}.bbbb",
            "remote": f"{key}.hubcache-tmp.other-host.{dead.pid}.cccc",
            "trash": f"{key}.hubcache-trash.dddd",
        }
        for name in names.values():
            os.makedirs(os.path.join(cache_dir, name, "variables"))
        hubcache.resolve(HANDLE)
        assert sorted(leftovers(cache_dir)) == sorted([names["live"], names["remote"]])
    finally:
        alive.kill()


def test_publish_keeps_an_entry_another_process_published_meanwhile(env, hub, cache_dir, monkeypatch):
    """Simulates a lock that did not exclude: while we download, a valid entry
    appears. It must be kept (readers may hold it), ours discarded."""
    from hubcache import layout as cache_module

    hub.publish_tfhub("google/tiny/1", fake_saved_model())
    first = hubcache.resolve(HANDLE)
    inode = os.stat(first).st_ino
    os.remove(first + ".hubcache.json")
    os.remove(os.path.join(first, "saved_model.pb"))  # damaged: we will download again...
    cache_module.forget_all()
    real_check = cache_module.check_content

    def other_process_repairs_it(files, require):
        # ...and "another process" repairs and publishes the entry in the meantime.
        if not os.path.exists(os.path.join(first, "saved_model.pb")):
            with open(os.path.join(first, "saved_model.pb"), "wb") as f:
                f.write(fake_saved_model_files()["saved_model.pb"])
        return real_check(files, require)

    monkeypatch.setattr(cache_module, "check_content", other_process_repairs_it)
    assert hubcache.resolve(HANDLE) == first
    assert os.stat(first).st_ino == inode  # the same directory: not moved to trash
    assert leftovers(cache_dir) == []
