"""Faults 8 and 9: damaged entries, and integrity pins (sha256=, lock files)."""

import hashlib
import json
import os
import shutil

import pytest

import hubcache
from hubcache.handles import cache_key

from archives import fake_saved_model, fake_saved_model_files, read_tree
from helpers import leftovers, result_of, run_cli, spawn_resolver

HANDLE = "https://tfhub.dev/google/tiny/1"


@pytest.fixture
def archive(hub):
    data = fake_saved_model()
    hub.publish_tfhub("google/tiny/1", data)
    return data


def fresh_process_resolves(env, expect_downloads, hub, **extra):
    """Resolve HANDLE in a new process (nothing validated yet); check downloads."""
    before = hub.storage.count()
    result = result_of(spawn_resolver(HANDLE, dict(env, **extra)))
    assert hub.storage.count() - before == expect_downloads
    return result


# --- 8. damaged entries --------------------------------------------------------

@pytest.mark.parametrize(
    "damage",
    ["delete a variables shard", "truncate saved_model.pb", "delete everything but dirs", "corrupt metadata"],
)
def test_damaged_entry_is_repaired_online_and_refused_offline(env, hub, cache_dir, archive, damage):
    path = hubcache.resolve(HANDLE)
    if damage == "delete a variables shard":
        os.remove(os.path.join(path, "variables", "variables.data-00000-of-00001"))
    elif damage == "truncate saved_model.pb":
        open(os.path.join(path, "saved_model.pb"), "r+b").truncate(10)
    elif damage == "delete everything but dirs":
        for dirpath, _, files in os.walk(path):
            for f in files:
                os.remove(os.path.join(dirpath, f))
    else:
        open(path + ".hubcache.json", "w").write("{not json")
    offline = fresh_process_resolves(env, 0, hub, HUBCACHE_OFFLINE="1")
    assert offline["error"] == "OfflineError" and "damaged" in offline["message"]
    online = fresh_process_resolves(env, 1, hub)
    assert online["ok"] and online["path"] == path
    assert read_tree(path) == fake_saved_model_files()
    assert leftovers(cache_dir) == []


def test_missing_marker_with_intact_files_is_used_as_is(env, hub, cache_dir, archive):
    path = hubcache.resolve(HANDLE)
    os.remove(path + ".hubcache.json")
    assert fresh_process_resolves(env, 0, hub)["path"] == path


def test_tensorflow_hub_entry_missing_a_shard_is_repaired(env, hub, cache_dir, archive):
    path = hubcache.resolve(HANDLE)
    os.remove(path + ".hubcache.json")  # now it looks like tensorflow_hub made it
    os.remove(os.path.join(path, "variables", "variables.data-00000-of-00001"))
    offline = fresh_process_resolves(env, 0, hub, HUBCACHE_OFFLINE="1")
    assert offline["error"] == "OfflineError" and "variables.index is there without its data" in offline["message"]
    assert fresh_process_resolves(env, 1, hub)["ok"]
    assert read_tree(path) == fake_saved_model_files()
    assert os.path.exists(path + ".hubcache.json")


# --- 9. integrity pins ---------------------------------------------------------

def test_pin_accepts_the_right_archive(env, cache_dir, archive):
    digest = hashlib.sha256(archive).hexdigest()
    path = hubcache.resolve(HANDLE, sha256=digest.upper())
    assert read_tree(path) == fake_saved_model_files()
    assert hubcache.resolve(HANDLE, sha256=digest) == path


def test_pin_mismatch_publishes_nothing(env, cache_dir, archive):
    with pytest.raises(hubcache.IntegrityError, match="has SHA-256 .* not the expected 0{64}") as e:
        hubcache.resolve(HANDLE, sha256="0" * 64)
    assert HANDLE in str(e.value) and isinstance(e.value, ValueError)
    assert not os.path.exists(os.path.join(cache_dir, cache_key(HANDLE)))
    assert leftovers(cache_dir) == []


def test_pin_against_a_cached_entry_of_another_archive(env, hub, cache_dir, archive, monkeypatch):
    path = hubcache.resolve(HANDLE)
    before = read_tree(path)
    with pytest.raises(hubcache.IntegrityError):
        hubcache.resolve(HANDLE, sha256="1" * 64)  # downloads again to check, still no match
    assert hub.storage.count() == 2
    assert read_tree(path) == before and hubcache.resolve(HANDLE) == path  # the old entry is intact
    monkeypatch.setenv("HUBCACHE_OFFLINE", "1")
    with pytest.raises(hubcache.IntegrityError, match="Offline"):
        hubcache.resolve(HANDLE, sha256="1" * 64)
    assert hubcache.resolve(HANDLE, sha256=hashlib.sha256(archive).hexdigest()) == path


def test_pin_on_a_tensorflow_hub_entry_fetches_and_verifies(env, hub, cache_dir, archive):
    path = hubcache.resolve(HANDLE)
    os.remove(path + ".hubcache.json")
    assert hubcache.resolve(HANDLE, sha256=hashlib.sha256(archive).hexdigest()) == path
    assert hub.storage.count() == 2 and json.load(open(path + ".hubcache.json"))["sha256"]


def test_bad_pins_are_usage_errors(env, tmp_path, archive):
    with pytest.raises(hubcache.ConfigError, match="64 hex digits"):
        hubcache.resolve(HANDLE, sha256="abc")
    with pytest.raises(hubcache.ConfigError, match="local path"):
        hubcache.resolve(str(tmp_path), sha256="0" * 64)


def test_lock_file_round_trip_to_an_offline_machine(env, hub, tmp_path, archive):
    hub.publish_kaggle("google/other/tensorFlow2/other/1", fake_saved_model(5))
    kaggle = "https://www.kaggle.com/models/google/other/tensorFlow2/other/1"
    handles = tmp_path / "handles.txt"
    handles.write_text(f"{HANDLE}\n{kaggle}  # second\n")
    lock = tmp_path / "hubcache.lock"
    r = run_cli("prefetch", "-f", str(handles), "--lock", str(lock), env=env)
    assert r.returncode == 0, r.stderr
    lines = [line for line in lock.read_text().splitlines() if not line.startswith("#")]
    assert lines == [
        f"{HANDLE} sha256={hashlib.sha256(archive).hexdigest()} size={len(archive)}",
        f"{kaggle} sha256={hashlib.sha256(fake_saved_model(5)).hexdigest()} size={len(fake_saved_model(5))}",
    ]

    # The offline machine: a copy of the cache, no network, the lock file.
    carried = tmp_path / "carried"
    shutil.copytree(env["TFHUB_CACHE_DIR"], carried)
    offline = dict(env, TFHUB_CACHE_DIR=str(carried), HUBCACHE_OFFLINE="1")
    hub.stop()
    r = run_cli("prefetch", "-f", str(lock), "--require-hashes", "--json", env=offline)
    assert r.returncode == 0 and all(x["ok"] for x in json.loads(r.stdout))

    tampered = tmp_path / "tampered.lock"
    tampered.write_text(lock.read_text().replace(lines[0].split("sha256=")[1][:8], "deadbeef", 1))
    r = run_cli("prefetch", "-f", str(tampered), "--require-hashes", "--json", env=offline)
    results = json.loads(r.stdout)
    assert r.returncode == 1 and results[0]["error_type"] == "IntegrityError" and results[1]["ok"]


def test_require_hashes_refuses_unpinned_handles(env, archive):
    r = run_cli("prefetch", "--require-hashes", HANDLE, env=env)
    assert r.returncode == 2 and HANDLE in r.stderr


def test_sha256_option(env, archive):
    digest = hashlib.sha256(archive).hexdigest()
    assert run_cli("prefetch", "--sha256", digest, HANDLE, env=env).returncode == 0
    r = run_cli("prefetch", "--sha256", "f" * 64, HANDLE, "--json", env=env)
    assert r.returncode == 1 and json.loads(r.stdout)[0]["error_type"] == "IntegrityError"
    assert run_cli("prefetch", "--sha256", digest, HANDLE, "https://tfhub.dev/a/b/1", env=env).returncode == 2


def test_lock_not_written_when_a_handle_fails(env, tmp_path, archive):
    lock = tmp_path / "out.lock"
    r = run_cli("prefetch", HANDLE, "https://tfhub.dev/google/missing/1", "--lock", str(lock), env=env)
    assert r.returncode == 1 and not lock.exists() and "not written" in r.stderr
