"""The hubcache command, run as a real child process."""

import json
import os

import pytest

import hubcache
from archives import fake_saved_model, fake_saved_model_files, read_tree
from conftest import child_env, run_cli
from hubcache.handles import cache_key

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


def test_help_and_version(env):
    for args in (["--help"], ["prefetch", "--help"], ["resolve", "--help"]):
        r = run_cli(*args, env=env)
        assert r.returncode == 0 and "usage: hubcache" in r.stdout
    r = run_cli("--version", env=env)
    assert r.stdout.strip() == f"hubcache {hubcache.__version__}"


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
