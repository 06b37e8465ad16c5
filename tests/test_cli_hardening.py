"""The command line under abuse: every handle form against every command that
inspects or removes entries, bad settings, bad output paths, closed pipes,
Ctrl-C, and bugs. Each runs the real command in a child process and checks
the exit code, a one-line ``hubcache:`` message, no traceback, and that the
cache (root and every entry) is exactly as it was."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hubcache.handles import cache_key

from archives import fake_saved_model
from helpers import child_env, leftovers, run_cli

TINY = "https://tfhub.dev/google/tiny/1"
OTHER = "https://www.kaggle.com/models/google/other/tensorFlow2/other/3"


@pytest.fixture
def filled(env, hub, cache_dir):
    hub.publish_tfhub("google/tiny/1", fake_saved_model(1))
    hub.publish_kaggle("google/other/tensorFlow2/other/3", fake_saved_model(3))
    r = run_cli("prefetch", TINY, OTHER, env=env)
    assert r.returncode == 0, r.stderr
    return {h: os.path.join(cache_dir, cache_key(h)) for h in (TINY, OTHER)}


def snapshot(root):
    """Every path under ``root`` with its type, size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size if name in filenames else 0, st.st_mtime_ns)
    return out


def assert_clean_failure(r, code, what):
    assert r.returncode == code, f"{what}: exit {r.returncode}, wanted {code}\n{r.stderr}"
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, f"{what}:\n{r.stderr}"
    assert "internal error" not in r.stderr, f"{what}:\n{r.stderr}"
    lines = r.stderr.splitlines()
    # Messages are "hubcache: ..." lines; a long one may go on in indented lines.
    assert lines and lines[0].startswith("hubcache: "), f"{what}:\n{r.stderr}"
    assert all(line.startswith(("hubcache: ", " ")) for line in lines), f"{what}:\n{r.stderr}"


def handle_forms(tmp_path, cache_dir, filled):
    """(handle, expected exit code): 2 where the handle cannot name a cache
    entry (malformed, or a local path), 1 where it could but is not cached."""
    model = tmp_path / "local-model"
    model.mkdir(exist_ok=True)
    (model / "saved_model.pb").write_bytes(b"x")
    return [
        (str(model), 2),
        ("./x", 2),
        (".", 2),
        ("/", 2),
        ("~", 2),
        (cache_dir, 2),  # the cache root itself
        (filled[TINY], 2),  # an entry's directory, by path
        (f"file://{model}", 2),
        ("file://", 2),
        ("my model", 2),  # spaces: a local path
        ("", 2),
        (" " + TINY, 2),
        (TINY + " ", 2),  # a cached handle with a stray space must not find it
        ("https://", 2),
        ("https://h:99999/x.tar.gz", 2),
        ("ftp://example.com/m.tar.gz", 2),
        ("https://tfhub.dev/google", 2),
        ("https://tfhub.dev/google/absent/1", 1),
        ("https://www.kaggle.com/models/google/absent/tensorFlow2/x/1", 1),
        ("gs://bucket/path/model.tar.gz", 1),
        ("https://example.com/model.tar.gz", 1),
        ("http://[::1", 2),  # an unclosed IPv6 literal: no host
    ]


COMMANDS = {
    "rm": lambda h, out: ["rm", h],
    "rm --dry-run": lambda h, out: ["rm", "--dry-run", h],
    "rm -y": lambda h, out: ["rm", "-y", h],
    "rm -y --json": lambda h, out: ["rm", "-y", "--json", h],
    "info": lambda h, out: ["info", h],
    "verify": lambda h, out: ["verify", h],
    "verify --repair": lambda h, out: ["verify", "--repair", h],
    "export": lambda h, out: ["export", h, "-o", out],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_handle_form_against_commands_on_entries(env, filled, cache_dir, tmp_path, command):
    home = tmp_path / "home"
    home.mkdir()
    child = dict(env, HOME=str(home))  # "~" never names the tester's home
    bundle = str(tmp_path / "out.tar")
    before = snapshot(cache_dir)
    for handle, code in handle_forms(tmp_path, cache_dir, filled):
        r = run_cli(*COMMANDS[command](handle, bundle), env=child)
        what = f"hubcache {command} {handle!r}"
        assert_clean_failure(r, code, what)
        assert snapshot(cache_dir) == before, f"{what} changed the cache"
        assert not os.path.exists(bundle), f"{what} wrote a bundle"
    assert os.path.isdir(filled[TINY]) and os.path.isdir(filled[OTHER])


MALFORMED = ["https://", "", " " + TINY, "gs://bucket", "https://h:99999/x.tar.gz", "ftp://example.com/m.tar.gz",
             "https://tfhub.dev/google", "http://[::1"]


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_prefetch_and_resolve_report_malformed_handles_as_failed_handles(env, hub, cache_dir, jobs):
    """prefetch and resolve report each handle's outcome: a malformed one is a
    failed handle (exit 1) with its message, never a traceback or an internal error."""
    hub.publish_tfhub("google/tiny/1", fake_saved_model(1))
    for handle in MALFORMED:
        r = run_cli("prefetch", "-j", jobs, handle, env=env)
        assert_clean_failure(r, 1, f"prefetch -j {jobs} {handle!r}")
        if jobs == "1":
            r = run_cli("resolve", handle, env=env)
            assert_clean_failure(r, 1, f"resolve {handle!r}")
    r = run_cli("prefetch", "-j", jobs, "--json", *MALFORMED, TINY, env=env)
    results = json.loads(r.stdout)
    assert r.returncode == 1 and [x["ok"] for x in results] == [False] * len(MALFORMED) + [True]
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr and "unexpected" not in r.stderr
    assert os.listdir(cache_dir) != [] and leftovers(cache_dir) == []


@pytest.mark.parametrize("handle", ["./x", "/", "https://", ""])
def test_one_bad_handle_fails_rm_before_anything_is_removed(env, filled, cache_dir, handle):
    before = snapshot(cache_dir)
    r = run_cli("rm", "-y", TINY, handle, OTHER, env=env)
    assert_clean_failure(r, 2, f"rm -y TINY {handle!r} OTHER")
    assert snapshot(cache_dir) == before


@pytest.mark.parametrize("handle", ["/", "./x", "https://", TINY])
def test_prune_takes_no_handle(env, filled, cache_dir, handle):
    before = snapshot(cache_dir)
    for args in (["prune", "-y", handle], ["prune", "--older-than", handle, "-y"],
                 ["prune", "--max-size", handle, "-y"], ["prune", "--older-than", "30", "-y"]):
        r = run_cli(*args, env=env)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
        assert r.stderr.strip().splitlines()[-1].startswith("hubcache: ")
        assert snapshot(cache_dir) == before


def test_prune_age_without_unit_says_so(env, filled):
    r = run_cli("prune", "--older-than", "30", "-y", env=env)
    assert_clean_failure(r, 2, "prune --older-than 30")
    assert r.stderr == "hubcache: prune: --older-than: '30' is not a duration with a unit, such as 30d, 12h, 90m or 45s\n"


BAD_SETTINGS = {
    "HUBCACHE_TIMEOUT": ["inf", "nan", "-1", "soon"],
    "HUBCACHE_MAX_SIZE": ["abc", "inf", "-5G"],
    "HUBCACHE_MAX_RETRIES": ["1.5", "many"],
    "HUBCACHE_OFFLINE": ["maybe"],
    "TFHUB_MODEL_LOAD_FORMAT": ["zip"],
    "HUBCACHE_TFHUB_ENDPOINT": ["ftp://mirror", "https://mirror/?x=1"],
    "HUBCACHE_MIN_RATE": ["fast"],
    "HUBCACHE_MIN_RATE_WINDOW": ["0"],
}


@pytest.mark.parametrize("variable", sorted(BAD_SETTINGS))
def test_bad_settings_exit_2_with_the_variable_named(env, variable):
    for value in BAD_SETTINGS[variable]:
        for args in (["ls"], ["prefetch", TINY], ["rm", "-y", TINY]):
            r = run_cli(*args, env=dict(env, **{variable: value}))
            assert_clean_failure(r, 2, f"{variable}={value} hubcache {' '.join(args)}")
            assert variable in r.stderr and len(r.stderr.splitlines()) == 1


def test_tracebacks_only_with_verbose(env, hub):
    r = run_cli("resolve", "https://tfhub.dev/google/missing/1", env=env)
    assert_clean_failure(r, 1, "resolve missing")
    for flags in (["-v", "resolve"], ["resolve", "-v"]):
        r = run_cli(*flags, "https://tfhub.dev/google/missing/1", env=env)
        assert r.returncode == 1 and "Traceback" in r.stderr and "DownloadError" in r.stderr
    r = run_cli("-v", "ls", env=dict(env, HUBCACHE_TIMEOUT="inf"))
    assert r.returncode == 2 and "Traceback" in r.stderr and r.stderr.splitlines()[-1].startswith("hubcache: HUBCACHE_TIMEOUT")


def test_export_output_must_be_a_file_in_an_existing_directory(env, filled, tmp_path):
    outside = sorted(os.listdir(tmp_path))
    for target, why in ((str(tmp_path), "is a directory"), (str(tmp_path / "no" / "such" / "b.tar"), "does not exist")):
        r = run_cli("export", TINY, "-o", target, env=env)
        assert_clean_failure(r, 2, f"export -o {target}")
        assert why in r.stderr
    r = run_cli("prefetch", TINY, "--bundle", str(tmp_path), env=env)
    assert_clean_failure(r, 2, "prefetch --bundle DIR")
    r = run_cli("prefetch", TINY, "--lock", str(tmp_path / "nowhere" / "hubcache.lock"), env=env)
    assert_clean_failure(r, 2, "prefetch --lock in a missing directory")
    assert sorted(os.listdir(tmp_path)) == outside  # no temporary file left beside them


def test_cache_root_that_is_a_file(env, tmp_path):
    root = tmp_path / "not-a-dir"
    root.write_text("")
    for args in (["ls"], ["verify"], ["prune", "--temp", "-y"]):
        r = run_cli(*args, env=dict(env, TFHUB_CACHE_DIR=str(root)))
        assert_clean_failure(r, 1, " ".join(args))
        assert str(root) in r.stderr


def test_import_of_junk_fails_cleanly(env, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    for target in (str(junk), str(tmp_path), str(tmp_path / "missing.tar")):
        r = run_cli("import", target, env=env)
        assert_clean_failure(r, 1, f"import {target}")


def closed_stdout(*args, env):
    """Run the command with a stdout pipe whose reader is already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "hubcache", *args], env=child_env(env), stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    return proc


def test_closed_stdout_stops_quietly_with_141(env, filled):
    for args in (["ls", "--json"], ["ls"], ["ls", "-q"], ["verify"], ["env"], ["info", TINY]):
        r = closed_stdout(*args, env=env)
        assert (r.returncode, r.stderr) == (141, ""), (args, r.stderr)
    r = closed_stdout("--help", env=env)  # argparse swallows its own write error
    assert r.returncode in (0, 141) and r.stderr == ""


def test_head_of_a_long_listing(env, filled):
    pipeline = f"{sys.executable} -m hubcache ls --json | head -1"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], env=child_env(env), capture_output=True, text=True)
    assert r.stdout == "{\n" and "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
    assert r.returncode in (0, 141)  # 141 when head exited before the last write


def test_unexpected_error_is_one_line_unless_verbose(env, filled):
    boom = ("import sys, hubcache.cli.managing as m\n"
            "def scan(*a, **k): raise RuntimeError('boom\\nsecond line')\n"
            "m.scan = scan\n"
            "from hubcache.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", boom, "ls"], env=child_env(env), capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr == "hubcache: internal error (RuntimeError: boom); run with -v for the traceback and report it\n"
    r = subprocess.run([sys.executable, "-c", boom, "ls", "-v"], env=child_env(env), capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" in r.stderr and "RuntimeError: boom" in r.stderr


def start_throttled_prefetch(env, hub, count, jobs, extra=()):
    handles = []
    for i in range(count):
        blob = hub.publish_tfhub(f"google/slow{i}/1", fake_saved_model(i, size=2_000_000))
        hub.storage.fault(blob, bytes_per_second=200_000)  # about 10 s each
        handles.append(f"https://tfhub.dev/google/slow{i}/1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubcache", "prefetch", "-j", str(jobs), *extra, *handles],
        env=child_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while hub.storage.count() < min(count, jobs):  # downloads under way
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)
    return proc


@pytest.mark.parametrize("jobs", [1, 3])
def test_ctrl_c_exits_130_without_traceback(env, hub, cache_dir, jobs):
    proc = start_throttled_prefetch(env, hub, 3, jobs)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.splitlines()[-1] == "hubcache: interrupted"
    assert "HANDLE" not in err and out == ""  # no summary table, nothing half-reported
    # These two depend on the engine's cancellation (api.iter_prefetch, cache.fetch):
    assert took < 3, f"took {took:.1f} s to stop"
    assert leftovers(cache_dir) == []


def read_until(fd, marker, timeout):
    """Bytes from ``fd`` until ``marker`` is among them, EOF, or ``timeout``."""
    import select

    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # the other side closed (Linux reports EIO)
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_ctrl_c_at_the_confirmation_prompt(env, filled, cache_dir):
    """On a terminal rm asks; Ctrl-C there removes nothing and exits 130."""
    pty = pytest.importorskip("pty")
    before = snapshot(cache_dir)
    main, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "hubcache", "rm", TINY], env=child_env(env),
                            stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    try:
        seen = read_until(main, b"[y/N]", 30)
        assert b"[y/N]" in seen, seen
        # CPython's readline misses a SIGINT that lands between drawing the
        # prompt and waiting for input; a person is never that quick.
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        rest = read_until(main, b"interrupted", 30)
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
        os.close(main)
    assert b"Traceback" not in seen + rest and b"hubcache: interrupted" in rest
    assert snapshot(cache_dir) == before
