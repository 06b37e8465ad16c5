"""The hubcache command, run as a real child process."""

import json
import os
import re
import subprocess
import sys

import pytest

import hubcache
from hubcache.handles import cache_key

from archives import fake_saved_model, fake_saved_model_files, read_tree
from helpers import child_env, run_cli

TFHUB = "https://tfhub.dev/google/tiny/1"
KAGGLE = "https://www.kaggle.com/models/google/other/tensorFlow2/other/3"


@pytest.fixture
def published(hub):
    hub.publish_tfhub("google/tiny/1", fake_saved_model(1))
    hub.publish_kaggle("google/other/tensorFlow2/other/3", fake_saved_model(2))


def test_prefetch_and_resolve(env, published, cache_dir):
    r = run_cli("prefetch", TFHUB, KAGGLE, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"{TFHUB} -> {os.path.join(cache_dir, cache_key(TFHUB))}",
        f"{KAGGLE} -> {os.path.join(cache_dir, cache_key(KAGGLE))}",
    ]
    assert read_tree(os.path.join(cache_dir, cache_key(KAGGLE))) == fake_saved_model_files(2)
    r = run_cli("resolve", TFHUB, env=env)
    assert (r.returncode, r.stdout) == (0, os.path.join(cache_dir, cache_key(TFHUB)) + "\n")


def test_prefetch_from_file_with_comments_into_another_cache(env, published, tmp_path):
    handles = tmp_path / "handles.txt"
    handles.write_text(f"# models for the offline box\n\n{TFHUB}   # the small one\n  {KAGGLE}\n{TFHUB}\n")
    usb = tmp_path / "usb" / "cache"
    r = run_cli("prefetch", "-f", str(handles), "--json", env=dict(env, TFHUB_CACHE_DIR=str(usb)))
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert [x["handle"] for x in results] == [TFHUB, KAGGLE]  # duplicates once
    assert all(x["ok"] and x["path"].startswith(str(usb)) for x in results)


def test_prefetch_from_stdin(env, published):
    r = run_cli("prefetch", "-f", "-", "--json", env=env, input=TFHUB + "\n")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["ok"]


def test_prefetch_goes_on_and_exits_1(env, published, cache_dir):
    bad = "https://tfhub.dev/google/missing/1"
    r = run_cli("prefetch", bad, "ftp://nope", TFHUB, env=env)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [f"{TFHUB} -> {os.path.join(cache_dir, cache_key(TFHUB))}"]
    assert f"{bad}: " in r.stderr and "not found" in r.stderr and "ftp://nope" in r.stderr
    assert "2 of 3 handles failed" in r.stderr
    r = run_cli("prefetch", "--json", bad, env=env)
    (result,) = json.loads(r.stdout)
    assert (r.returncode, result["ok"], result["error_type"]) == (1, False, "DownloadError")


def test_resolve_failure(env):
    r = run_cli("resolve", "--json", "https://tfhub.dev/google/missing/1", env=env)
    assert r.returncode == 1
    assert json.loads(r.stdout)["ok"] is False and "not found" in r.stderr


def test_usage_errors_exit_2(env, tmp_path):
    assert run_cli("prefetch", env=env).returncode == 2
    assert run_cli("frobnicate", env=env).returncode == 2
    r = run_cli("resolve", TFHUB, env=dict(env, TFHUB_MODEL_LOAD_FORMAT="zip"))
    assert r.returncode == 2 and "TFHUB_MODEL_LOAD_FORMAT" in r.stderr
    r = run_cli("prefetch", "-f", str(tmp_path / "missing.txt"), env=env)
    assert r.returncode == 2 and "missing.txt" in r.stderr
    bad = tmp_path / "bad.lock"
    bad.write_text(f"{TFHUB} size=lots\n")
    r = run_cli("prefetch", "-f", str(bad), env=env)
    assert r.returncode == 2 and r.stderr == f"hubcache: {bad}:1: size='lots' is not a number of bytes\n"


COMMANDS = ["prefetch", "resolve", "export", "import", "ls", "info", "rm", "prune", "verify", "env"]


def test_help_and_version(env):
    r = run_cli("--help", env=env)
    assert r.returncode == 0 and r.stdout.startswith("usage: hubcache")
    assert all(f"    {name} " in r.stdout for name in COMMANDS)
    for name in COMMANDS:  # each with examples that use it
        r = run_cli(name, "--help", env=env)
        assert r.returncode == 0 and r.stdout.startswith(f"usage: hubcache {name}"), name
        examples = r.stdout.split("examples:\n", 1)[1].split("\n\n")[0].splitlines()
        assert examples and all(f"hubcache {name}" in line for line in examples[:1]), (name, examples)
    r = run_cli("--version", env=env)
    assert r.stdout.strip() == f"hubcache {hubcache.__version__}"


def test_bare_command_prints_the_command_list_and_exits_2(env):
    r = run_cli(env=env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("usage: hubcache") and all(f"    {name} " in r.stderr for name in COMMANDS)


def test_global_options_before_or_after_the_command(env, published, cache_dir, tmp_path):
    other = str(tmp_path / "other")
    for args in (["--cache-dir", other, "prefetch", TFHUB], ["prefetch", "--cache-dir", other, KAGGLE]):
        r = run_cli(*args, env=env)
        assert r.returncode == 0 and r.stdout.startswith(f"{args[-1]} -> {other}"), r.stderr
    assert not os.path.exists(cache_dir)  # TFHUB_CACHE_DIR lost to --cache-dir both times
    listings = [run_cli(*args, env=env) for args in (["--json", "--cache-dir", other, "ls"],
                                                      ["ls", "--json", "--cache-dir", other],
                                                      ["--cache-dir", other, "ls", "--json"],
                                                      ["--json", "ls", "--cache-dir", other])]
    assert all(r.returncode == 0 for r in listings)
    assert all({e["handle"] for e in json.loads(r.stdout)["entries"]} == {TFHUB, KAGGLE} for r in listings)
    r = run_cli("--cache-dir", other, "ls", "--cache-dir", cache_dir, env=env)
    assert r.returncode == 2 and "--cache-dir is given twice" in r.stderr
    for args in (["-q", "ls", "-v"], ["-v", "-q", "ls"]):
        r = run_cli(*args, env=env)
        assert r.returncode == 2 and "contradict" in r.stderr


def test_verbose_in_either_position_logs_debug_lines(env, published):
    for args in (["-v", "prefetch", TFHUB], ["prefetch", "-v", KAGGLE]):
        r = run_cli(*args, env=env)
        assert r.returncode == 0 and "hubcache: " in r.stderr and " GET " in r.stderr, r.stderr
    r = run_cli("prefetch", "https://tfhub.dev/google/tiny2/1", env=env)
    assert r.returncode == 1 and " GET " not in r.stderr and "Traceback" not in r.stderr


def test_quiet_in_either_position(env, published, cache_dir):
    loud = dict(env, TFHUB_DOWNLOAD_PROGRESS="1", HUBCACHE_DISABLE_PROGRESS="0")
    for args in (["-q", "prefetch", TFHUB, KAGGLE], ["prefetch", "-q", TFHUB, KAGGLE]):
        r = run_cli(*args, env=loud)
        assert r.returncode == 0 and r.stderr == ""  # no bars, no INFO, no summary table
        assert r.stdout.splitlines() == [f"{h} -> {os.path.join(cache_dir, cache_key(h))}" for h in (TFHUB, KAGGLE)]
    bad = "https://tfhub.dev/google/missing/1"
    r = run_cli("prefetch", "-q", TFHUB, bad, env=loud)
    assert r.returncode == 1 and [line.split(":")[0] for line in r.stderr.splitlines()] == ["hubcache", "hubcache"]
    assert r.stderr.splitlines()[-1] == "hubcache: 1 of 2 handles failed"


def test_prefetch_of_a_local_path_is_a_usage_error(env, published, hub, tmp_path):
    handles = tmp_path / "handles.txt"
    handles.write_text(TFHUB + "\n")
    model = tmp_path / "model"
    model.mkdir()
    r = run_cli("prefetch", str(handles), env=env)
    assert r.returncode == 2 and f"Did you mean -f {handles}" in r.stderr and r.stdout == ""
    for local in (str(model), "./nowhere", "~", f"file://{model}"):
        r = run_cli("prefetch", TFHUB, local, env=env)
        assert r.returncode == 2 and "is a local path" in r.stderr and "Did you mean" not in r.stderr, local
    assert hub.total_requests() == 0  # refused before anything was fetched
    r = run_cli("prefetch", "-f", str(handles), env=env)
    assert r.returncode == 0 and r.stdout.startswith(f"{TFHUB} -> ")


def test_progress_bar_on_request_and_off_when_quiet(env, published):
    loud = dict(env, TFHUB_DOWNLOAD_PROGRESS="1", HUBCACHE_DISABLE_PROGRESS="0")
    r = run_cli("prefetch", TFHUB, env=loud)
    assert r.returncode == 0 and "B/s" in r.stderr  # tqdm's rate column
    r = run_cli("prefetch", "--quiet", KAGGLE, env=loud)
    assert r.returncode == 0 and "B/s" not in r.stderr and r.stderr == ""
    r = run_cli("prefetch", KAGGLE, env=dict(loud, HUBCACHE_DISABLE_PROGRESS="1", TFHUB_CACHE_DIR=env["TFHUB_CACHE_DIR"] + "2"))
    assert r.returncode == 0 and "B/s" not in r.stderr


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, hubcache; print(sorted(m for m in ('tensorflow', 'requests', 'tqdm', 'urllib3', 'filelock') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env=child_env({}), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


BARS = {"TFHUB_DOWNLOAD_PROGRESS": "1", "HUBCACHE_DISABLE_PROGRESS": "0"}  # as on a terminal


def run_raw(*args, env):
    """The command's stderr exactly as written: carriage returns and cursor moves kept."""
    r = subprocess.run([sys.executable, "-m", "hubcache", *args], env=child_env(env), capture_output=True)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def screen_lines(stderr):
    """What a terminal would show line by line, roughly: cursor moves dropped,
    split at every carriage return and newline."""
    return re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", stderr))


def publish_slow(hub, count, size=300_000, rate=600_000):
    handles, sizes = [], {}
    for i in range(count):
        archive = fake_saved_model(i, size=size)
        blob = hub.publish_tfhub(f"google/m{i}/1", archive)
        hub.storage.fault(blob, bytes_per_second=rate)
        handle = f"https://tfhub.dev/google/m{i}/1"
        handles.append(handle)
        sizes[handle] = len(archive)
    return handles, sizes


def test_log_lines_never_share_a_line_with_a_progress_bar(env, hub):
    handles, _ = publish_slow(hub, 6)
    code, _, err = run_raw("prefetch", "-j", "3", *handles, env=dict(env, **BARS))
    assert code == 0, err
    lines = screen_lines(err)
    logged = [line for line in lines if "hubcache: " in line]
    assert sum("hubcache: Downloading" in line for line in logged) == 6  # INFO lines, among bars
    assert any("%|" in line for line in lines)  # and bars were drawn
    assert [line for line in logged if not line.startswith("hubcache: ")] == []


def total_fragments(stderr, count):
    """The totals shown by each drawing of the aggregate bar: None where it had none."""
    out = []
    for line in screen_lines(stderr):
        if line.startswith(f"all {count} handles:"):
            m = re.search(r"\|\s*\S+/(\S+) \[", line)
            out.append(m.group(1) if m else None)
    return out


def test_aggregate_bar_total_from_a_lock_file(env, hub, tmp_path):
    from tqdm import tqdm

    handles, sizes = publish_slow(hub, 8)
    lock = tmp_path / "hubcache.lock"
    r = run_cli("prefetch", "-j", "8", "--lock", str(lock), *handles, env=dict(env, TFHUB_CACHE_DIR=str(tmp_path / "a")))
    assert r.returncode == 0 and f"size={sizes[handles[0]]}" in lock.read_text()
    assert run_cli("prefetch", *handles[:2], env=env).returncode == 0  # cached already: not in the total
    code, _, err = run_raw("prefetch", "-j", "3", "-f", str(lock), env=dict(env, **BARS))
    assert code == 0, err
    totals = total_fragments(err, 8)
    expected = tqdm.format_sizeof(sum(sizes[h] for h in handles[2:]), divisor=1024)
    assert len(totals) >= 2 and set(totals) == {expected}  # known from the first drawing, never changed


def test_aggregate_bar_has_no_total_until_every_download_announced_its_size(env, hub):
    from tqdm import tqdm

    handles, sizes = publish_slow(hub, 8)
    code, _, err = run_raw("prefetch", "-j", "4", *handles, env=dict(env, **BARS))
    assert code == 0, err
    totals = total_fragments(err, 8)
    first_total = next(i for i, t in enumerate(totals) if t is not None)
    assert first_total > 1 and set(totals[:first_total]) == {None}  # no ETA while four are still to start
    assert set(totals[first_total:]) == {tqdm.format_sizeof(sum(sizes.values()), divisor=1024)}  # then set once


def test_no_tqdm_import_without_bars(env, published):
    code = ("import sys\nfrom hubcache.cli import main\n"
            "status = main(sys.argv[1:])\n"
            "print('tqdm' in sys.modules, status)\n")
    for args in (["prefetch", "-v", "-j", "2", TFHUB, KAGGLE, "https://tfhub.dev/google/missing/1"], ["ls"]):
        r = subprocess.run([sys.executable, "-c", code, *args], env=child_env(env), capture_output=True, text=True)
        assert r.stdout.splitlines()[-1] in ("False 0", "False 1"), r.stdout + r.stderr
