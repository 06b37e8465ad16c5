"""A hostile cache: removal racing warm readers, kill -9 inside the atomic
small-file write, junk files where directories belong, trees deeper than the
recursion limit, removal that must never escape an entry, unusable numeric
settings, hostile bundle manifests, and ``file://`` without a path.

Everything is real: processes, loopback HTTP servers, files on disk. No mocks.
"""

import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time

import pytest

import hubcache
from hubcache import fs, inventory
from hubcache.archive import Limits
from hubcache.bundle import import_bundle
from hubcache.cache import Cache
from hubcache.config import load_settings
from hubcache.errors import (
    ArchiveError,
    ConfigError,
    HandleError,
    HubcacheError,
    IntegrityError,
)
from hubcache.handles import cache_key

from archives import (
    Member,
    fake_saved_model,
    fake_saved_model_files,
    make_tar,
    read_tree,
)
from helpers import child_env, leftovers, run_cli

TINY = "https://tfhub.dev/google/tiny/1"
OTHER = "https://tfhub.dev/google/other/1"
HOST = socket.gethostname()
DEEP = 1200  # nested directories: past Python's default recursion limit (1000)
TMP_NAME = re.compile(r"\.hubcache-tmp\.(?P<host>.+)\.(?P<pid>\d+)\.(?P<random>[0-9a-f]+)$")


# -- helpers -------------------------------------------------------------------


def publish(hub, path="google/tiny/1", seed=1):
    return hub.publish_tfhub(path, fake_saved_model(seed, size=2_000))


def dead_pid():
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def cli(*args, env, input=None):
    """Run the CLI; a traceback or an "internal error" is never an acceptable answer."""
    r = run_cli(*args, env=env, input=input)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, (
        f"hubcache {' '.join(args)} crashed (exit {r.returncode}):\n{r.stderr[-3000:]}"
    )
    return r


def ls_json(env):
    r = cli("ls", "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["entries"]


def snapshot(root):
    """Every path under ``root`` (itself included) -> (mode, size, mtime, inode),
    without following symlinks; atimes left out (reading is allowed)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        paths = [dirpath] + [os.path.join(dirpath, n) for n in files]
        paths += [os.path.join(dirpath, n) for n in dirs if os.path.islink(os.path.join(dirpath, n))]
        for path in paths:
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def make_deep(base, depth=DEEP, leaf=b"leaf"):
    """``base/d/d/.../d/leaf`` ``depth`` directories deep, made by relative
    chdir/mkdir (the extractor refuses such archives, so they are made here)."""
    os.makedirs(base, exist_ok=True)
    here = os.getcwd()
    os.chdir(base)
    try:
        for _ in range(depth):
            os.mkdir("d")
            os.chdir("d")
        with open("leaf", "wb") as f:
            f.write(leaf)
    finally:
        os.chdir(here)


@pytest.fixture
def deep(tmp_path):
    """:func:`make_deep`; the test's whole directory is removed afterwards with
    rm -rf, whatever happened: pytest's own clean-up of old runs uses
    shutil.rmtree, which a deep tree left behind would break for every later run."""
    yield make_deep
    subprocess.run(["rm", "-rf", str(tmp_path)], check=False)


# -- 1. rm/prune racing warm readers ---------------------------------------------------

READER = r"""
import json, os, sys, time
import hubcache
handle, calls, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
first = hubcache.resolve(handle)  # warm: validated by this process before any removal
print(json.dumps({"first": first}), flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
misses = errors = 0
examples = []
started = time.monotonic()
for _ in range(calls):
    try:
        path = hubcache.resolve(handle)
    except BaseException as e:
        errors += 1
        examples.append(f"{type(e).__name__}: {e}")
        continue
    if not os.path.isdir(path):
        misses += 1
    time.sleep(0.0002)  # spread the calls over the removals: each samples another moment
print(json.dumps({"calls": calls, "misses": misses, "errors": errors, "examples": examples[:5],
                  "seconds": time.monotonic() - started}), flush=True)
"""

REMOVER = r"""
import os, sys, time
from hubcache.cache import Cache
root, key, handle, stop = sys.argv[1:5]
cache = Cache(root)
removed = attempts = 0
print("ready", flush=True)
while not os.path.exists(stop):
    attempts += 1
    if os.path.isdir(os.path.join(root, key)) and cache.remove(key, handle):
        removed += 1
    time.sleep(0.015)
print(removed, attempts, flush=True)
"""


def test_removal_racing_warm_readers_never_hands_out_a_vanished_directory(env, hub, cache_dir, tmp_path):
    # Many small files: removing the directory takes milliseconds, the window in
    # which a reader that checked only the metadata handed out a vanishing path.
    members = [Member("saved_model.pb", b"graph"), Member("assets", kind="dir")]
    members += [Member(f"assets/f{i:03d}", b"x" * 10) for i in range(20)]
    blob = hub.publish_tfhub("google/tiny/1", make_tar(members))
    key = cache_key(TINY)
    go, stop = str(tmp_path / "go"), str(tmp_path / "stop")
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, TINY, "3000", go],
        env=child_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = reader.stdout.readline()
    assert line, reader.communicate()[1][-3000:]
    first = json.loads(line)["first"]
    assert first == os.path.join(cache_dir, key)
    remover = subprocess.Popen(
        [sys.executable, "-c", REMOVER, cache_dir, key, TINY, stop],
        env=child_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert remover.stdout.readline().strip() == "ready"
    open(go, "w").close()
    cli_removals = cli_runs = 0
    try:
        while reader.poll() is None:  # `hubcache rm -y` as well, from the command line
            r = cli("rm", "-y", TINY, env=env)
            assert r.returncode in (0, 1), r.stderr  # 1: in use (downloading) or not cached just now
            cli_runs += 1
            cli_removals += r.returncode == 0
            time.sleep(0.5)
    finally:
        open(stop, "w").close()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    r_out, r_err = remover.communicate(timeout=60)
    assert remover.returncode == 0, r_err[-3000:]
    removed, attempts = map(int, r_out.split())
    rate = result["misses"] / result["calls"]
    print(
        f"\nrace: {result['calls']} resolves in {result['seconds']:.1f} s, {result['misses']} returned a "
        f"vanished directory (miss rate {rate:.3%}), {result['errors']} raised; {removed} removals by "
        f"Cache.remove ({attempts} tries), {cli_removals} by `hubcache rm -y` ({cli_runs} runs); "
        f"{hub.storage.count(blob)} downloads"
    )
    assert result["errors"] == 0, result["examples"]
    # The race really happened: entries were removed under the reader and fetched again.
    assert removed + cli_removals >= 20 and hub.storage.count(blob) >= 20
    assert rate < 0.01, f"miss rate {rate:.2%} (it was 30-40 % before lookup checked the directory)"
    assert [n for n in leftovers(cache_dir) if ".hubcache-tmp." in n] == []


# -- 2. kill -9 inside the atomic small-file write ------------------------------------

WRITER = r"""
import sys
from hubcache.cache import write_atomic
path = sys.argv[1]
text = "x" * (16 << 20)
print("writing", flush=True)
while True:
    write_atomic(path, text)
"""


def test_kill_9_inside_write_atomic_leaves_only_a_sweepable_temp_file(env, hub, cache_dir):
    blob = publish(hub)
    key = cache_key(TINY)
    os.makedirs(cache_dir)
    target = os.path.join(cache_dir, key + ".descriptor.txt")  # informational: garbage in it is harmless
    left = []
    for attempt in range(6):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, target], env=child_env(env), stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "writing"
        time.sleep(0.05 + 0.04 * attempt)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        for name in os.listdir(cache_dir):
            if name == os.path.basename(target):
                continue
            m = TMP_NAME.search(name)
            assert m and name.startswith(os.path.basename(target) + ".hubcache-tmp."), f"unexpected leftover {name!r}"
            assert m["host"] == HOST and int(m["pid"]) == writer.pid, name
            left.append(name)
        if left:
            break
    assert left, "six kills never landed inside write_atomic"
    assert len(left) == 1
    # ls lists it as a leftover of a dead process...
    entries = ls_json(env)
    incomplete = [e for e in entries if e["state"] == "incomplete"]
    assert [os.path.basename(e["path"]) for e in incomplete] == left
    assert incomplete[0]["problem"] == "left by a process that died" and incomplete[0]["key"] == key
    # ...and the next download of that handle sweeps it.
    path = hubcache.resolve(TINY)
    assert read_tree(path) == fake_saved_model_files(1, size=2_000) and hub.storage.count(blob) == 1
    assert not os.path.lexists(os.path.join(cache_dir, left[0]))
    assert leftovers(cache_dir) == []


def fake_write_leftovers(cache_dir, key, pid, host=HOST, tag="ab12cd34"):
    names = [
        f"{key}.hubcache.json.hubcache-tmp.{host}.{pid}.{tag}",
        f"{key}.descriptor.txt.hubcache-tmp.{host}.{pid}.{tag}",
        f"CACHEDIR.TAG.hubcache-tmp.{host}.{pid}.{tag}",
    ]
    for name in names:
        with open(os.path.join(cache_dir, name), "w") as f:
            f.write('{"half": ')  # cut mid-write
    return names


def test_dead_write_atomic_leftovers_are_listed_pruned_and_swept(env, hub, cache_dir):
    blob = publish(hub)
    key = cache_key(TINY)
    entry = hubcache.resolve(TINY)
    dead = fake_write_leftovers(cache_dir, key, dead_pid())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = fake_write_leftovers(cache_dir, key, sleeper.pid, tag="live0001")
        remote = fake_write_leftovers(cache_dir, key, dead_pid(), host="other-host", tag="remote01")

        entries = ls_json(env)
        states = {os.path.basename(e["path"]): (e["state"], e["problem"]) for e in entries}
        for name in dead:
            assert states[name] == ("incomplete", "left by a process that died"), name
        for name in live:
            assert states[name][0] == "incomplete" and states[name][1] != "left by a process that died"
        assert states[key] == ("ok", None)  # the entry itself is unaffected
        r = cli("ls", env=env)
        assert r.returncode == 0 and "left by a process that died" in r.stdout

        r = cli("prune", "--temp", "--json", "-y", env=env)
        assert r.returncode == 0, r.stderr
        removed = sorted(os.path.basename(x["path"]) for x in json.loads(r.stdout)["removed"])
        assert removed == sorted(dead)
        still_there = [n for n in dead if os.path.lexists(os.path.join(cache_dir, n))]
        assert still_there == [], f"prune --temp reported {still_there} removed, but they are still there"
        for name in live + remote:  # a live process's, and another host's, are never touched
            assert os.path.exists(os.path.join(cache_dir, name)), name
        assert os.path.isdir(entry)

        # The next download of the handle sweeps what dead processes left of it (by key).
        again = fake_write_leftovers(cache_dir, key, dead_pid(), tag="again001")
        assert Cache(cache_dir).remove(key, TINY)
        assert hubcache.resolve(TINY) == entry and hub.storage.count(blob) == 2
        for name in again[:2]:
            assert not os.path.lexists(os.path.join(cache_dir, name)), name
        for name in live + remote:
            assert os.path.exists(os.path.join(cache_dir, name)), name
    finally:
        sleeper.kill()
        sleeper.wait()


# -- 3. junk files where directories belong ------------------------------------------


def test_junk_file_named_like_a_dead_download_is_really_pruned(env, hub, cache_dir):
    publish(hub)
    entry = hubcache.resolve(TINY)
    junk = os.path.join(cache_dir, f"{cache_key(TINY)}.hubcache-tmp.{HOST}.{dead_pid()}.abcd")
    with open(junk, "wb") as f:
        f.write(b"\0" * 5000)
    assert cli("verify", env=env).returncode == 0
    states = {e["path"]: e["state"] for e in ls_json(env)}
    assert states[junk] == "incomplete"
    r = cli("prune", "--temp", "-y", env=env)
    assert r.returncode == 0, r.stderr
    assert "removed 1" in r.stdout
    assert not os.path.lexists(junk), f"prune said {r.stdout.splitlines()[-1]!r} but {junk} is still there"
    assert os.path.isdir(entry)


@pytest.mark.parametrize("with_metadata", [False, True], ids=["bare", "with-metadata"])
def test_junk_file_where_an_entry_directory_belongs(env, hub, cache_dir, with_metadata):
    blob = publish(hub)
    publish(hub, "google/other/1", seed=2)
    other = hubcache.resolve(OTHER)
    key = cache_key(TINY)
    path = os.path.join(cache_dir, key)
    entry = hubcache.resolve(TINY)
    with open(entry + ".hubcache.json") as f:
        meta = f.read()
    assert Cache(cache_dir).remove(key, TINY)
    with open(path, "w") as f:
        f.write("not a directory")
    if with_metadata:  # the metadata says "complete", the "directory" is a file
        with open(path + ".hubcache.json", "w") as f:
            f.write(meta)

    r = cli("ls", env=env)
    assert r.returncode == 0, r.stderr
    entries = {e["key"]: e for e in ls_json(env)}
    assert entries[key]["state"] == "damaged"
    r = cli("verify", env=env)
    assert r.returncode == 1 and "damaged" in r.stdout, (r.stdout, r.stderr)
    r = cli("info", TINY, env=env)
    assert r.returncode == 1 and "damaged" in r.stdout
    r = cli("prune", "--damaged", "--dry-run", env=env)
    assert r.returncode == 0 and "1 to remove" in r.stdout

    if with_metadata:
        r = cli("rm", "-y", TINY, env=env)
        assert r.returncode == 0 and "removed 1" in r.stdout, (r.stdout, r.stderr)
    else:
        r = cli("prune", "--damaged", "-y", env=env)
        assert r.returncode == 0 and "removed 1" in r.stdout, (r.stdout, r.stderr)
    assert not os.path.lexists(path) and not os.path.lexists(path + ".hubcache.json")
    assert leftovers(cache_dir) == [] and os.path.isdir(other)
    # And a download replaces a junk file in the entry's place.
    with open(path, "w") as f:
        f.write("junk again")
    assert hubcache.resolve(TINY) == path and os.path.isdir(path)
    assert read_tree(path) == fake_saved_model_files(1, size=2_000) and hub.storage.count(blob) == 2


def test_junk_directory_where_the_metadata_file_belongs(env, hub, cache_dir):
    """The reverse: a directory named ``<key>.hubcache.json``. Nothing may crash,
    and a new download, or removal, must get the entry back into shape."""
    blob = publish(hub)
    key = cache_key(TINY)
    entry = hubcache.resolve(TINY)
    os.remove(entry + ".hubcache.json")
    os.makedirs(entry + ".hubcache.json/sub")
    assert cli("ls", env=env).returncode == 0
    states = {e["key"]: e["state"] for e in ls_json(env) if e["state"] != "incomplete"}
    assert states == {key: "damaged"}
    assert cli("verify", env=env).returncode == 1
    problems = []
    try:
        if hubcache.resolve(TINY) != entry or not os.path.isfile(entry + ".hubcache.json"):
            problems.append("resolve did not repair the entry")
    except HubcacheError as e:
        problems.append(f"resolve (download {hub.storage.count(blob)}): {type(e).__name__}: {e}")
    r = cli("rm", "-y", TINY, env=env)
    if r.returncode != 0 or os.path.lexists(entry + ".hubcache.json"):
        problems.append(f"rm -y: exit {r.returncode}: {r.stderr.strip()}")
    assert not problems, "\n".join(problems)


# -- 4. trees deeper than the recursion limit ----------------------------------------


def test_deep_tree_in_an_entry_through_the_cli(env, hub, cache_dir, tmp_path, deep):
    publish(hub)
    entry = hubcache.resolve(TINY)
    deep(os.path.join(entry, "deep"))
    assert os.path.isfile(os.path.join(entry, "deep", *["d"] * DEEP, "leaf"))

    r = cli("ls", env=env)
    assert r.returncode == 0 and TINY in r.stdout
    (e,) = ls_json(env)
    assert e["state"] == "ok" and e["files"] == 6  # five model files and the leaf
    r = cli("info", "--json", TINY, env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["files"] == 6
    r = cli("verify", env=env)
    assert r.returncode == 0 and r.stdout.strip() == f"{TINY}: ok"
    bundle = str(tmp_path / "deep.tar")
    r = cli("export", TINY, "-o", bundle, env=env)
    assert r.returncode == 0 and os.path.isfile(bundle), r.stderr
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert f"{cache_key(TINY)}/deep/{'d/' * DEEP}leaf" in names
    r = cli("rm", "-y", TINY, env=env)
    assert r.returncode == 0 and "removed 1" in r.stdout
    assert not os.path.lexists(entry) and leftovers(cache_dir) == []
    assert os.listdir(cache_dir) == ["CACHEDIR.TAG"] or sorted(os.listdir(cache_dir)) == sorted(
        ["CACHEDIR.TAG", cache_key(TINY) + ".hubcache.lock"]
    )


def test_deep_dead_download_is_listed_pruned_and_swept(env, hub, cache_dir, deep):
    blob = publish(hub)
    key = cache_key(TINY)
    os.makedirs(cache_dir)
    orphan = os.path.join(cache_dir, f"{key}.hubcache-tmp.{HOST}.{dead_pid()}.dead")
    deep(orphan)
    entries = ls_json(env)
    assert [(e["path"], e["state"], e["files"]) for e in entries] == [(orphan, "incomplete", 1)]
    assert cli("ls", env=env).returncode == 0 and cli("verify", env=env).returncode == 0
    r = cli("prune", "--temp", "-y", env=env)
    assert r.returncode == 0 and "removed 1" in r.stdout, (r.stdout, r.stderr)
    assert not os.path.lexists(orphan)

    deep(orphan)  # again, and this time a download of the handle sweeps it
    assert hubcache.resolve(TINY) == os.path.join(cache_dir, key) and hub.storage.count(blob) == 1
    assert not os.path.lexists(orphan) and leftovers(cache_dir) == []


def test_walk_and_remove_tree_never_recurse(tmp_path, deep):
    root = str(tmp_path / "deep")
    deep(root)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        walked = [rel for rel, _ in fs.walk(root)]
        gone = fs.remove_tree(root)
    finally:
        sys.setrecursionlimit(limit)
    assert len(walked) == DEEP + 1 and walked[-1] == "d/" * DEEP + "leaf"
    assert walked == sorted(walked, key=len)  # parents before children
    assert gone is True and not os.path.lexists(root)


# -- 5. removal never escapes an entry ---------------------------------------------


BAD_KEYS = ["", ".", "..", "/", "x" * 40, "A" * 40, "../" + "a" * 37, "a" * 39, "a" * 41, "a" * 40 + "/", "a" * 40 + "/..", "a" * 40 + "\0"]


def test_removal_refuses_anything_but_an_entry_name(env, hub, cache_dir, tmp_path):
    publish(hub)
    entry = hubcache.resolve(TINY)
    key = cache_key(TINY)
    (tmp_path / "beside-the-cache.txt").write_text("the cache's parent holds other things")
    cache = Cache(cache_dir)
    before = snapshot(str(tmp_path))
    for bad in BAD_KEYS + [entry, cache_dir, os.path.join(cache_dir, ".."), "./" + key, key + ".hubcache.json", key.upper()]:
        with pytest.raises(ValueError):
            cache.remove(bad, TINY)
    for handle in ["./x", "/", ".", "..", "file:///", "~", key]:
        with pytest.raises(HandleError):
            inventory.find(cache, handle)
    assert snapshot(str(tmp_path)) == before
    for handle in ["./x", "/", ".", "file:///", key]:  # through the command line: usage errors, nothing touched
        for command in (["rm", "-y"], ["info"], ["verify"]):
            r = cli(*command, handle, env=env)
            assert r.returncode == 2, (command, handle, r.stdout, r.stderr)
    assert snapshot(str(tmp_path)) == before
    assert cache.remove(key, TINY) and not os.path.lexists(entry)  # the real name still works


# -- 6. numeric settings that cannot be used ----------------------------------------

BAD_SETTINGS = [
    ("HUBCACHE_TIMEOUT", "inf"),
    ("HUBCACHE_TIMEOUT", "nan"),
    ("HUBCACHE_TIMEOUT", "-1"),
    ("HUBCACHE_TIMEOUT", "0"),
    ("HUBCACHE_MAX_SIZE", "inf"),
    ("HUBCACHE_MAX_SIZE", "nan"),
    ("HUBCACHE_MAX_SIZE", "1e400"),
    ("HUBCACHE_MAX_SIZE", "1e308T"),  # finite, until the unit multiplies it past a float
    ("HUBCACHE_MAX_RATIO", "nan"),
    ("HUBCACHE_MAX_RATIO", "inf"),
    ("HUBCACHE_MIN_RATE", "-1"),
    ("HUBCACHE_MIN_RATE", "abc"),
    ("HUBCACHE_MIN_RATE", "1e300G"),
    ("HUBCACHE_MIN_RATE_WINDOW", "0"),
    ("HUBCACHE_MIN_RATE_WINDOW", "inf"),
]


@pytest.mark.parametrize("name, value", BAD_SETTINGS, ids=[f"{n[9:]}={v}" for n, v in BAD_SETTINGS])
def test_unusable_setting_is_a_config_error_naming_it(env, monkeypatch, name, value):
    with pytest.raises(ConfigError) as e:
        load_settings(environ={"TFHUB_CACHE_DIR": "/c", name: value})
    assert name in str(e.value) and repr(value) in str(e.value)
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as e:  # through resolve: the same error, before any request
        hubcache.resolve("https://tfhub.dev/google/never-published/1")
    assert isinstance(e.value, HubcacheError) and isinstance(e.value, ValueError) and name in str(e.value)


@pytest.mark.parametrize("name, value, expected", [
    ("HUBCACHE_MIN_RATE", "0", 0),  # 0: no progress floor
    ("HUBCACHE_MAX_FILES", "1e3", 1000),  # or a ConfigError: never a float, never a ValueError traceback
])
def test_edge_settings_are_accepted_or_refused_cleanly(env, hub, name, value, expected):
    field = name[len("HUBCACHE_"):].lower()
    try:
        got = getattr(load_settings(environ={"TFHUB_CACHE_DIR": "/c", name: value}), field)
    except ConfigError as e:
        assert name in str(e) and name == "HUBCACHE_MAX_FILES"
        return
    assert got == expected and type(got) is int
    os.environ[name] = value
    try:
        publish(hub)
        assert os.path.isdir(hubcache.resolve(TINY))
    finally:
        del os.environ[name]


@pytest.mark.parametrize("name, value", [
    ("HUBCACHE_TIMEOUT", "nan"),
    ("HUBCACHE_MIN_RATE_WINDOW", "inf"),
    ("HUBCACHE_MAX_SIZE", "1e308T"),
], ids=["TIMEOUT=nan", "MIN_RATE_WINDOW=inf", "MAX_SIZE=1e308T"])
def test_unusable_settings_through_the_cli(env, name, value):
    r = cli("resolve", "https://tfhub.dev/google/never-published/1", env=dict(env, **{name: value}))
    assert r.returncode == 2 and name in r.stderr, (name, value, r.stderr)


# -- 7. bundles with hostile manifests ----------------------------------------------

FILES = {"saved_model.pb": b"graph" * 100, "variables/variables.index": b"index", "variables/variables.data-00000-of-00001": b"data" * 50}


def good_manifest(handle=TINY, key=None):
    key = key or cache_key(handle)
    return {
        "format": 1,
        "hubcache_version": "0",
        "created": "2024-01-01T00:00:00+00:00",
        "entries": [{
            "handle": handle,
            "key": key,
            "metadata": {"handle": handle, "sha256": "0" * 64, "fetched_at": "2024-01-01T00:00:00+00:00"},
            "files": {rel: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for rel, data in FILES.items()},
            "links": {},
        }],
    }


def make_bundle(path, manifest, key=None, files=FILES):
    """A bundle tar as export_bundle writes one, with ``manifest`` (any JSON,
    or raw bytes) first and ``files`` under ``key/``."""
    key = key if key is not None else cache_key(TINY)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        info = tarfile.TarInfo("hubcache-bundle.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for rel, content in files.items():
            info = tarfile.TarInfo(f"{key}/{rel}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return str(path)


def mutate(change):
    m = good_manifest()
    change(m, m["entries"][0])
    return m


def _set(obj, name, value):
    obj[name] = value


HOSTILE_MANIFESTS = {
    "not json": b"{not json",
    "a json list": [],
    "no format": {"entries": []},
    "format 2": dict(good_manifest(), format=2),
    "entries a dict": dict(good_manifest(), entries={"a": 1}),
    "entries a string": dict(good_manifest(), entries="x"),
    "entry a string": dict(good_manifest(), entries=["x"]),
    "entry null": dict(good_manifest(), entries=[None]),
    "files a list": mutate(lambda m, e: _set(e, "files", list(e["files"]))),
    "file info a string": mutate(lambda m, e: _set(e["files"], "saved_model.pb", "500")),
    "size a string": mutate(lambda m, e: _set(e["files"]["saved_model.pb"], "size", "500")),
    "size missing": mutate(lambda m, e: e["files"]["saved_model.pb"].pop("size")),
    "sha256 an int": mutate(lambda m, e: _set(e["files"]["saved_model.pb"], "sha256", 5)),
    "key not hex": mutate(lambda m, e: _set(e, "key", "z" * 40)),
    "key ..": mutate(lambda m, e: _set(e, "key", "..")),
    "key empty": mutate(lambda m, e: _set(e, "key", "")),
    "key upper case": mutate(lambda m, e: _set(e, "key", e["key"].upper())),
    "key of another handle": mutate(lambda m, e: _set(e, "key", cache_key(OTHER))),
    "key missing": mutate(lambda m, e: e.pop("key")),
    "metadata a string": mutate(lambda m, e: _set(e, "metadata", "x")),
    "metadata a list": mutate(lambda m, e: _set(e, "metadata", [])),
    "handle an int": mutate(lambda m, e: _set(e, "handle", 42)),
    "handle null": mutate(lambda m, e: _set(e, "handle", None)),
    "handle a local path": mutate(lambda m, e: _set(e, "handle", "/")),
    "handle unparsable": mutate(lambda m, e: _set(e, "handle", "ftp://h/x.tar.gz")),
    "links a list": mutate(lambda m, e: _set(e, "links", ["a"])),
    "link target an int": mutate(lambda m, e: _set(e, "links", {"a": 1})),
    "a file missing from the manifest": mutate(lambda m, e: e["files"].pop("saved_model.pb")),
    "a wrong sha256": mutate(lambda m, e: _set(e["files"]["saved_model.pb"], "sha256", "0" * 64)),
}

# Handles that look redacted ("***") cannot be hashed back to their key, so the
# key check is skipped for them: with an arbitrary key, such an entry would
# take the place of another handle's entry (here TINY's), invisibly.
REDACTED_HIJACKS = {
    "redacted userinfo": "https://***@h/x.tar.gz",
    "stars in the path": "https://h/***/x.tar.gz",
}


def _assert_nothing_published(cache_dir):
    names = os.listdir(cache_dir) if os.path.isdir(cache_dir) else []
    assert [n for n in names if n.startswith(".hubcache-import.")] == [], names
    assert [n for n in names if n != "CACHEDIR.TAG" and not n.endswith(".hubcache.lock")] == [], names


def test_hand_built_bundle_is_accepted(env, cache_dir, tmp_path):
    """The control: the bundle builder used below makes bundles that import."""
    bundle = make_bundle(tmp_path / "good.tar", good_manifest())
    r = cli("import", bundle, env=env)
    assert r.returncode == 0 and r.stdout.strip() == f"{TINY}: imported", r.stderr
    assert read_tree(os.path.join(cache_dir, cache_key(TINY))) == FILES


@pytest.mark.parametrize("name", sorted(HOSTILE_MANIFESTS))
def test_hostile_manifest_is_refused_by_the_library(env, cache_dir, tmp_path, name):
    bundle = make_bundle(tmp_path / "hostile.tar", HOSTILE_MANIFESTS[name])
    with pytest.raises((ArchiveError, IntegrityError)):
        list(import_bundle(Cache(cache_dir), bundle, lock_timeout=5, limits=Limits()))
    _assert_nothing_published(cache_dir)


@pytest.mark.parametrize("optimize", [False, True], ids=["python", "python -O"])
def test_hostile_manifests_through_the_cli(env, cache_dir, tmp_path, optimize):
    bundles = {name: make_bundle(tmp_path / f"{i}.tar", m) for i, (name, m) in enumerate(sorted(HOSTILE_MANIFESTS.items()))}
    args = [sys.executable] + (["-O"] if optimize else []) + ["-m", "hubcache", "import", "--json", *bundles.values()]
    r = subprocess.run(args, env=child_env(env), capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == 1, r.stderr
    results = {x["bundle"]: x for x in json.loads(r.stdout)}
    for name, path in bundles.items():
        assert results[path]["ok"] is False and results[path]["error_type"] in ("ArchiveError", "IntegrityError"), (name, results[path])
        assert f"{path}: " in r.stderr, name  # one message line per bundle
    _assert_nothing_published(cache_dir)


@pytest.mark.parametrize("name", sorted(REDACTED_HIJACKS))
def test_redacted_handle_with_an_arbitrary_key_is_refused(env, cache_dir, tmp_path, monkeypatch, name):
    handle = REDACTED_HIJACKS[name]
    bundle = make_bundle(tmp_path / "hijack.tar", good_manifest(handle=handle, key=cache_key(TINY)))
    r = cli("import", bundle, env=env)
    if r.returncode == 0:  # say what it means: TINY now resolves, offline, to the bundle's files
        monkeypatch.setenv("HUBCACHE_OFFLINE", "1")
        served = read_tree(hubcache.resolve(TINY)) == FILES
        pytest.fail(
            f"imported: {r.stdout.strip()!r}; the entry of {TINY} (its key) now holds the bundle's files "
            f"under the handle {handle!r}, and hubcache.resolve({TINY!r}) returns them: {served}"
        )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    _assert_nothing_published(cache_dir)


# -- 8. file:// without a path --------------------------------------------------------


@pytest.mark.parametrize("handle", ["file://", "file://localhost"])
def test_file_url_without_a_path_is_a_handle_error(env, tmp_path, monkeypatch, handle):
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "saved_model.pb").write_bytes(b"a model in the current directory")
    monkeypatch.chdir(here)
    with pytest.raises(HandleError):
        hubcache.resolve(handle)
    r = cli("resolve", handle, env=env)
    assert r.returncode in (1, 2) and r.stdout == "" and "names no path" in r.stderr, (r.stdout, r.stderr)


def test_file_url_with_an_absolute_path_still_resolves(env, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"x")
    assert hubcache.resolve(f"file://{model}") == str(model)
    assert hubcache.resolve(f"file://localhost{model}") == str(model)
    r = cli("resolve", f"file://{model}", env=env)
    assert r.returncode == 0 and r.stdout.strip() == str(model)
