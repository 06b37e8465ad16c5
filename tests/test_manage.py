"""Cache management through the real command line: ls, info, rm, prune,
verify, export/import, env, prefetch --jobs/--bundle, read-only layers."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

import hubcache
import hubcache.layout as layout
from hubcache.handles import cache_key

from archives import fake_saved_model, fake_saved_model_files, read_tree
from helpers import leftovers, run_cli

TINY = "https://tfhub.dev/google/tiny/1"
BIG = "https://tfhub.dev/google/big/1"
OTHER = "https://www.kaggle.com/models/google/other/tensorFlow2/other/3"
DAY = 86400


@pytest.fixture
def filled(env, hub, cache_dir):
    """A cache holding three entries fetched through the hub."""
    hub.publish_tfhub("google/tiny/1", fake_saved_model(1))
    hub.publish_tfhub("google/big/1", fake_saved_model(2, size=2_000_000))
    hub.publish_kaggle("google/other/tensorFlow2/other/3", fake_saved_model(3))
    r = run_cli("prefetch", TINY, BIG, OTHER, env=env)
    assert r.returncode == 0, r.stderr
    return {h: os.path.join(cache_dir, cache_key(h)) for h in (TINY, BIG, OTHER)}


def ls_json(env, *extra):
    r = run_cli("ls", "--json", *extra, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["entries"]


def age(path, days):
    """Make an entry look last used ``days`` ago."""
    then = time.time() - days * DAY
    os.utime(path + ".hubcache.used", (then, then))


def test_ls_table_and_json(env, filled, cache_dir):
    r = run_cli("ls", "--sort", "size", env=env)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["HANDLE", "SIZE", "FILES", "FETCHED", "LAST", "USED", "STATE"]
    assert lines[1].startswith(BIG) and lines[1].rstrip().endswith("ok")  # the largest first
    assert lines[-1].startswith("3 entries (3 ok),") and lines[-1].endswith("on disk")
    entries = ls_json(env)
    assert {e["handle"] for e in entries} == {TINY, BIG, OTHER}
    big = next(e for e in entries if e["handle"] == BIG)
    assert big["state"] == "ok" and big["files"] == 5 and big["size"] >= 2_000_000
    assert big["sha256"] and big["fetched_at"] and big["last_used"] and big["path"] == filled[BIG]


def test_ls_shows_every_state(env, filled, cache_dir):
    os.remove(os.path.join(filled[BIG], "saved_model.pb"))  # damaged
    os.remove(filled[OTHER] + ".hubcache.json")  # looks made by tensorflow_hub
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    os.makedirs(os.path.join(cache_dir, f"{cache_key(TINY)}.hubcache-tmp.{socket.gethostname()}.{dead.pid}.ab12/variables"))
    states = {(e["handle"], e["state"]) for e in ls_json(env)}
    assert states == {(TINY, "ok"), (BIG, "damaged"), (OTHER, "foreign"), (TINY, "incomplete")}
    r = run_cli("ls", env=env)
    assert "damaged (saved_model.pb went missing)" in r.stdout and "incomplete (left by a process that died)" in r.stdout


def test_ls_filter_state_limit(env, filled, cache_dir):
    os.remove(os.path.join(filled[BIG], "saved_model.pb"))
    assert [e["handle"] for e in ls_json(env, "--filter", "TFHUB.dev/Google")] == [BIG, TINY]  # any case
    assert [e["handle"] for e in ls_json(env, "--filter", cache_key(OTHER)[:10])] == [OTHER]  # or the key
    assert [e["handle"] for e in ls_json(env, "--state", "damaged")] == [BIG]
    assert [e["handle"] for e in ls_json(env, "--state", "ok", "--state", "damaged", "--sort", "size", "--limit", "1")] == [BIG]
    assert ls_json(env, "--filter", "nothing-like-it") == []
    r = run_cli("ls", "--filter", "tfhub", "--limit", "1", env=env)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("1 of 3 entries (1 damaged), ")
    r = run_cli("ls", "--filter", "nothing-like-it", env=env)
    assert r.stdout == "no entry of the 3 in the cache matches\n"
    assert run_cli("ls", "--limit", "-1", env=env).returncode == 2


def test_ls_quiet_prints_handles_for_scripts(env, filled, cache_dir):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.makedirs(os.path.join(cache_dir, f"{cache_key(TINY)}.hubcache-tmp.{socket.gethostname()}.{dead.pid}.ab12"))
    for args in (["ls", "-q"], ["-q", "ls"], ["ls", "--quiet", "--sort", "handle"]):
        r = run_cli(*args, env=env)
        assert (r.returncode, r.stdout, r.stderr) == (0, f"{BIG}\n{TINY}\n{OTHER}\n", ""), args  # TINY once
    r = run_cli("ls", "-q", "--filter", "tfhub.dev", env=env)
    r = run_cli("rm", "-y", "-q", *r.stdout.split(), env=env)  # hubcache ls -q --filter ... | xargs hubcache rm -y
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert [e["handle"] for e in ls_json(env, "--state", "ok")] == [OTHER]
    assert run_cli("ls", "-q", env=dict(env, TFHUB_CACHE_DIR=cache_dir + "-empty")).stdout == ""


def test_quiet_removal_shows_the_plan_only_when_it_is_the_answer(env, filled):
    r = run_cli("rm", "-q", "--dry-run", TINY, env=env)
    assert r.returncode == 0 and r.stdout.startswith("HANDLE") and "1 to remove" in r.stdout
    r = run_cli("prune", "-q", "--max-size", "1", "-y", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert ls_json(env) == []


def test_info(env, filled):
    r = run_cli("info", "--json", TINY, env=env)
    info = json.loads(r.stdout)
    assert r.returncode == 0 and info["path"] == filled[TINY] and info["state"] == "ok"
    assert info["source_url"].endswith("/google/tiny/1?tf-hub-format=compressed")
    r = run_cli("info", TINY, env=env)
    assert f"directory: {filled[TINY]}" in r.stdout and "sha256:" in r.stdout
    r = run_cli("info", "https://tfhub.dev/google/absent/1", env=env)
    assert r.returncode == 1 and "not in the cache" in r.stderr


def test_rm(env, filled, cache_dir):
    r = run_cli("rm", TINY, "--dry-run", env=env)
    assert r.returncode == 0 and os.path.isdir(filled[TINY])
    r = run_cli("rm", TINY, env=env)  # not a terminal: needs -y
    assert r.returncode == 2 and "-y" in r.stderr and os.path.isdir(filled[TINY])
    r = run_cli("rm", "-y", TINY, OTHER, env=env)
    assert r.returncode == 0 and "removed 2" in r.stdout
    assert not os.path.exists(filled[TINY]) and not os.path.exists(filled[TINY] + ".hubcache.json")
    assert os.path.isdir(filled[BIG]) and leftovers(cache_dir) == []
    r = run_cli("rm", "-y", TINY, env=env)
    assert r.returncode == 1 and "not in the cache" in r.stderr


def test_rm_leaves_an_entry_in_use(env, filled):
    lock = filled[TINY] + ".hubcache.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl, os, time; fd = os.open({lock!r}, os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_SH); print('reading', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "reading"
        r = run_cli("rm", "-y", TINY, env=env)
        assert r.returncode == 1 and "in use" in r.stderr and os.path.isdir(filled[TINY])
    finally:
        holder.kill()
    assert run_cli("rm", "-y", TINY, env=env).returncode == 0


def test_prune_older_than(env, filled):
    age(filled[TINY], 40)
    age(filled[BIG], 10)
    r = run_cli("prune", "--older-than", "30d", "--json", "-y", env=env)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and [x["handle"] for x in out["removed"]] == [TINY]
    assert "not used for 40 days" in out["removed"][0]["reason"]
    assert not os.path.exists(filled[TINY]) and os.path.isdir(filled[BIG])


def test_prune_max_size_removes_least_recently_used(env, filled):
    age(filled[BIG], 5)
    age(filled[OTHER], 3)
    age(filled[TINY], 1)
    r = run_cli("prune", "--max-size", "600K", "--json", "-y", env=env)
    removed = [x["handle"] for x in json.loads(r.stdout)["removed"]]
    assert removed == [BIG]  # the oldest; the other two fit in 600 KiB
    assert sorted(e["handle"] for e in ls_json(env)) == sorted([TINY, OTHER])


def test_prune_damaged_and_temp(env, filled, cache_dir):
    import socket

    os.remove(os.path.join(filled[BIG], "variables", "variables.index"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = os.path.join(cache_dir, f"{cache_key(TINY)}.hubcache-tmp.{socket.gethostname()}.{dead.pid}.ab12")
    live = os.path.join(cache_dir, f"{cache_key(TINY)}.hubcache-tmp.{socket.gethostname()}.{os.getpid()}.cd34")
    os.makedirs(orphan)
    os.makedirs(live)
    r = run_cli("prune", "--damaged", "--temp", "--dry-run", env=env)
    assert r.returncode == 0 and "2 to remove" in r.stdout and os.path.exists(orphan)
    r = run_cli("prune", "--damaged", "--temp", "-y", env=env)
    assert r.returncode == 0 and "removed 2" in r.stdout
    assert not os.path.exists(orphan) and os.path.exists(live)  # a live download is never touched
    assert not os.path.exists(filled[BIG]) and os.path.isdir(filled[TINY])


def test_prune_needs_a_criterion(env, filled):
    assert run_cli("prune", "-y", env=env).returncode == 2
    assert run_cli("prune", "--older-than", "soon", "-y", env=env).returncode == 2


def test_verify_detects_silent_corruption_and_repairs(env, hub, filled):
    path = os.path.join(filled[BIG], "variables", "variables.data-00000-of-00001")
    with open(path, "r+b") as f:  # same size, one byte different: only a checksum sees it
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    r = run_cli("verify", env=env)
    assert r.returncode == 1 and f"{BIG}: damaged (variables/variables.data-00000-of-00001 does not have its recorded content" in r.stdout
    r = run_cli("verify", TINY, env=env)
    assert r.returncode == 0 and r.stdout.strip() == f"{TINY}: ok"
    before = hub.storage.count()
    r = run_cli("verify", "--repair", "--json", env=env)
    results = {x["handle"]: x["result"] for x in json.loads(r.stdout)}
    assert r.returncode == 0 and results == {TINY: "ok", BIG: "repaired", OTHER: "ok"}
    assert hub.storage.count() == before + 1
    assert read_tree(filled[BIG]) == fake_saved_model_files(2, size=2_000_000)


def test_bundle_round_trip_between_two_caches_offline(env, hub, filled, tmp_path):
    bundle = tmp_path / "models.tar"
    r = run_cli("export", TINY, OTHER, "-o", str(bundle), env=env)
    assert r.returncode == 0 and "2 entries" in r.stdout
    hub.stop()
    offline = dict(env, TFHUB_CACHE_DIR=str(tmp_path / "airgapped"), HUBCACHE_OFFLINE="1")
    r = run_cli("import", str(bundle), env=offline)
    assert r.returncode == 0 and r.stdout.splitlines() == [f"{TINY}: imported", f"{OTHER}: imported"]
    for handle in (TINY, OTHER):
        r = run_cli("resolve", handle, env=offline)
        assert r.returncode == 0 and read_tree(r.stdout.strip()) == read_tree(filled[handle])
    assert run_cli("verify", env=offline).returncode == 0
    meta = json.load(open(os.path.join(tmp_path / "airgapped", cache_key(TINY)) + ".hubcache.json"))
    original = json.load(open(filled[TINY] + ".hubcache.json"))
    assert meta["sha256"] == original["sha256"] and meta["fetched_at"] == original["fetched_at"] and meta["imported_at"]
    r = run_cli("import", str(bundle), env=offline)  # twice: nothing changes
    assert r.returncode == 0 and r.stdout.splitlines() == [f"{TINY}: already present", f"{OTHER}: already present"]


def test_truncated_or_altered_bundle_imports_nothing(env, filled, tmp_path):
    bundle = tmp_path / "models.tar"
    assert run_cli("export", TINY, BIG, "-o", str(bundle), env=env).returncode == 0
    data = bundle.read_bytes()
    target = dict(env, TFHUB_CACHE_DIR=str(tmp_path / "other"))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) * 2 // 3])
    r = run_cli("import", str(cut), env=target)
    assert r.returncode == 1 and "truncated" in r.stderr
    altered = bytearray(data)
    at = data.index(fake_saved_model_files(2, size=2_000_000)["variables/variables.data-00000-of-00001"][:64])
    altered[at + 10] ^= 1
    bad = tmp_path / "altered.tar"
    bad.write_bytes(bytes(altered))
    r = run_cli("import", str(bad), env=target)
    assert r.returncode == 1 and "does not match its SHA-256" in r.stderr
    other = tmp_path / "other"
    assert [n for n in os.listdir(other) if n != "CACHEDIR.TAG" and not n.endswith(".lock")] == []


def test_export_refuses_uncached_handles(env, filled, tmp_path):
    r = run_cli("export", TINY, "https://tfhub.dev/google/absent/1", "-o", str(tmp_path / "b.tar"), env=env)
    assert r.returncode == 1 and not (tmp_path / "b.tar").exists()


def test_prefetch_jobs_in_parallel_with_bundle_and_summary(env, hub, tmp_path):
    handles = []
    for i in range(8):
        blob = hub.publish_tfhub(f"google/m{i}/1", fake_saved_model(i, size=300_000))
        hub.storage.fault(blob, bytes_per_second=600_000)  # ~0.5 s each
        handles.append(f"https://tfhub.dev/google/m{i}/1")
    bundle = tmp_path / "all.tar"
    bars = dict(env, TFHUB_DOWNLOAD_PROGRESS="1", HUBCACHE_DISABLE_PROGRESS="0")  # as on a terminal
    r = run_cli("prefetch", "--jobs", "4", "--bundle", str(bundle), *handles, env=bars)
    assert r.returncode == 0, r.stderr
    assert "all 8 handles" in r.stderr and "https://tfhub.dev/google/m7/1:" in r.stderr  # total and per-file bars
    assert sorted(line.split(" -> ")[0] for line in r.stdout.splitlines()) == sorted(handles)
    assert hub.storage.max_in_flight == 4  # four downloads at once, never more
    assert "HANDLE" in r.stderr and "DONE AFTER" in r.stderr  # the summary table
    assert f"wrote {bundle}: 8 entries" in r.stderr


def env_rows(r):
    return {x["variable"]: x for x in json.loads(r.stdout)["settings"]}


def test_env_reports_variables_values_and_sources(env, tmp_path):
    secrets = dict(env, HUBCACHE_MAX_RETRIES="2", KAGGLE_API_TOKEN="s3cr3t", HUBCACHE_MAX_SIZE="100G",
                   HUBCACHE_MIN_RATE="1K", HUBCACHE_CACHE_DIR=str(tmp_path / "second"),
                   HUBCACHE_GCS_ENDPOINT="https://me:hunter2@mirror.example")
    r = run_cli("env", "--json", "--cache-dir", str(tmp_path / "c"), env=secrets)
    assert r.returncode == 0, r.stderr
    rows = env_rows(r)
    assert (rows["--cache-dir"]["value"], rows["--cache-dir"]["source"]) == (str(tmp_path / "c"), "command line")
    assert rows["TFHUB_CACHE_DIR"]["source"] == "environment, overridden by --cache-dir"
    assert rows["HUBCACHE_CACHE_DIR"]["source"] == "environment, overridden by --cache-dir"
    assert (rows["HUBCACHE_MAX_RETRIES"]["value"], rows["HUBCACHE_MAX_RETRIES"]["source"]) == (2, "environment")
    assert (rows["HUBCACHE_LOCK_TIMEOUT"]["text"], rows["HUBCACHE_LOCK_TIMEOUT"]["source"]) == ("3600 s", "default")
    assert rows["HUBCACHE_MAX_SIZE"]["text"] == "100.0 GiB" and rows["HUBCACHE_MIN_RATE"]["text"] == "1.0 KiB/s"
    assert rows["HUBCACHE_GCS_ENDPOINT"]["text"] == "https://***@mirror.example"
    assert json.loads(r.stdout)["kaggle_credentials"] == {"source": "KAGGLE_API_TOKEN", "error": None}
    assert "s3cr3t" not in r.stdout and "hunter2" not in r.stdout
    assert json.loads(r.stdout)["versions"]["hubcache"] == hubcache.__version__
    r = run_cli("env", env=dict(secrets, TFHUB_CACHE_DIR=""))  # an empty variable counts as set, and loses
    lines = {line.split()[0]: line.split(None, 2)[1:] for line in r.stdout.splitlines() if line.startswith(("TFHUB_", "HUBCACHE_"))}
    assert lines["HUBCACHE_CACHE_DIR"] == ["environment", str(tmp_path / "second")]
    assert lines["TFHUB_CACHE_DIR"][0] == "environment," and "overridden by HUBCACHE_CACHE_DIR" in lines["TFHUB_CACHE_DIR"][1]
    assert "Kaggle credentials: from KAGGLE_API_TOKEN (not shown)" in r.stdout and "s3cr3t" not in r.stdout


def test_env_shows_everything_when_settings_are_invalid(env, tmp_path):
    (tmp_path / "kaggle-config" / "kaggle.json").write_text("{not json")
    bad = dict(env, HUBCACHE_TIMEOUT="inf", HUBCACHE_MAX_SIZE="lots", HUBCACHE_OFFLINE="maybe")
    r = run_cli("env", env=bad)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr == "hubcache: 4 invalid settings (shown above): fix or unset them\n"
    shown = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith(("TFHUB_", "HUBCACHE_"))}
    from hubcache.config import SETTING_VARIABLES

    assert set(shown) == {v for _, variables in SETTING_VARIABLES for v in variables}  # every one, still
    assert "INVALID: HUBCACHE_TIMEOUT='inf' must be a positive, finite number" in shown["HUBCACHE_TIMEOUT"]
    assert "INVALID: HUBCACHE_MAX_SIZE='lots'" in shown["HUBCACHE_MAX_SIZE"]
    assert "INVALID: HUBCACHE_OFFLINE='maybe'" in shown["HUBCACHE_OFFLINE"]
    assert shown["HUBCACHE_MAX_RETRIES"].split()[1:] == ["default", "5"]  # the valid ones as usual
    assert "Kaggle credentials: INVALID: Kaggle credentials file" in r.stdout
    rows = env_rows(run_cli("env", "--json", env=bad))
    assert rows["HUBCACHE_TIMEOUT"]["value"] is None and "positive" in rows["HUBCACHE_TIMEOUT"]["error"]
    r = run_cli("ls", env=bad)  # every other command refuses
    assert r.returncode == 2 and r.stderr.startswith("hubcache: HUBCACHE_")


def test_read_only_layer_behind_the_users_cache(env, hub, tmp_path, monkeypatch):
    team = tmp_path / "team"
    hub.publish_tfhub("google/tiny/1", fake_saved_model(1))
    hub.publish_tfhub("google/big/1", fake_saved_model(2))
    assert run_cli("prefetch", TINY, env=dict(env, TFHUB_CACHE_DIR=str(team))).returncode == 0
    snapshot = {p: os.stat(os.path.join(team, p)).st_mtime_ns for p in os.listdir(team)}
    layered = dict(env, HUBCACHE_READONLY_DIRS=str(team))
    with read_only(str(team)):
        check_layer(env, hub, team, layered)
    assert {p: os.stat(os.path.join(team, p)).st_mtime_ns for p in os.listdir(team)} == snapshot
    assert os.path.isdir(os.path.join(team, cache_key(TINY)))


@__import__("contextlib").contextmanager
def read_only(path):
    """``path`` mounted read-only over itself where possible (root), else as is:
    the snapshot comparison still proves nothing was written."""
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", path, path]).returncode:
        yield
        return
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True)
        yield
    finally:
        subprocess.run(["umount", "-l", path])


def check_layer(env, hub, team, layered):
    downloads = hub.storage.count()
    r = run_cli("resolve", TINY, env=layered)
    assert r.returncode == 0 and r.stdout.strip() == os.path.join(team, cache_key(TINY))
    assert hub.storage.count() == downloads  # found in the layer: no download
    r = run_cli("resolve", BIG, env=layered)  # not in the layer: fetched into the user's cache
    assert r.stdout.strip() == os.path.join(env["TFHUB_CACHE_DIR"], cache_key(BIG))
    entries = ls_json(layered)
    assert {(e["handle"], e["readonly"]) for e in entries} == {(TINY, True), (BIG, False)}
    assert run_cli("prune", "--max-size", "1", "-y", env=layered).returncode == 0  # prunes the user's only
    assert run_cli("verify", env=layered).returncode == 0


def test_last_use_is_recorded_without_rewriting_the_entry(env, hub, cache_dir):
    hub.publish_tfhub("google/tiny/1", fake_saved_model(1))
    path = hubcache.resolve(TINY)
    used = path + ".hubcache.used"
    marker = os.stat(path + ".hubcache.json")
    age(path, 1)
    layout.forget_all()  # as in a new process: a process records a use once an hour
    hubcache.resolve(TINY)
    assert time.time() - os.stat(used).st_mtime < 60  # brought up to now
    assert os.stat(path + ".hubcache.json") == marker  # the entry itself untouched
    age(path, 0.01)  # used 15 minutes ago: kept to the hour, no write
    stamp = os.stat(used).st_mtime_ns
    layout.forget_all()
    hubcache.resolve(TINY)
    assert os.stat(used).st_mtime_ns == stamp


def test_lock_file_made_by_a_reader_is_shareable(env, hub):
    """hubcache.load's reading lock creates the lock file when there is none: it
    must be 0666 like the download lock, or another user could not lock the entry."""
    hub.publish_tfhub("google/tiny/1", fake_saved_model(1))
    path = hubcache.resolve(TINY)
    lock = path + ".hubcache.lock"
    os.remove(lock)
    old = os.umask(0o022)
    try:
        from hubcache.cache import Cache

        with Cache(os.path.dirname(path)).reading(os.path.basename(path)):
            pass
    finally:
        os.umask(old)
    assert os.stat(lock).st_mode & 0o777 == 0o666


def help_of(env, command):
    r = run_cli(command, "--help", env=env)
    assert r.returncode == 0
    return r.stdout


def keys(data):
    """Every key in a JSON document, nested ones too."""
    if isinstance(data, dict):
        return set(data) | {k for v in data.values() for k in keys(v)}
    if isinstance(data, list):
        return {k for v in data for k in keys(v)}
    return set()


def assert_documented(env, command, *outputs):
    text = help_of(env, command)
    found = set().union(*(keys(json.loads(out)) for out in outputs))
    missing = [k for k in sorted(found) if not re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", text)]
    assert not missing, f"{command} --help does not document {missing}"
    return found


def test_every_json_field_is_documented_in_the_commands_help(env, hub, filled, tmp_path):
    missing = "https://tfhub.dev/google/missing/1"
    def out(*args):
        return run_cli(*args, env=env).stdout

    fields = assert_documented(env, "prefetch", out("prefetch", "--json", TINY, missing))
    assert fields == {"handle", "ok", "path", "seconds", "error", "error_type"}
    assert_documented(env, "resolve", out("resolve", "--json", TINY), out("resolve", "--json", missing))
    bundle = str(tmp_path / "b.tar")
    assert_documented(env, "export", out("export", "--json", TINY, "-o", bundle))
    (tmp_path / "junk.tar").write_bytes(b"junk")
    assert_documented(env, "import", out("import", "--json", bundle, str(tmp_path / "junk.tar")))
    fields = assert_documented(env, "ls", out("ls", "--json"))
    assert fields == {"cache_dir", "entries"} | set(ENTRY_FIELDS)
    assert_documented(env, "info", out("info", "--json", TINY))
    assert "signatures" in help_of(env, "info")
    assert_documented(env, "rm", out("rm", "--json", "--dry-run", TINY), out("rm", "--json", "-y", TINY))
    assert_documented(env, "prune", out("prune", "--json", "--dry-run", "--max-size", "1"),
                      out("prune", "--json", "-y", "--max-size", "1"))
    assert_documented(env, "verify", out("verify", "--json"))
    fields = assert_documented(env, "env", out("env", "--json"))
    assert {"versions", "settings", "kaggle_credentials", "variable", "setting", "source", "value", "text", "error"} <= fields


ENTRY_FIELDS = ("handle", "key", "path", "state", "problem", "size", "files", "fetched_at", "last_used",
                "source_url", "sha256", "readonly", "latest_of")
