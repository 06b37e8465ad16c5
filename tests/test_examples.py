"""The README's first command: the quickstart must keep working."""

import os
import subprocess
import sys

from conftest import REPO, child_env


def test_quickstart_runs_offline(tf, tmp_path):
    cache = tmp_path / "cache"
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "quickstart.py"), "--cache-dir", str(cache)],
        env=child_env({}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "f([1, 2, 3]) = [3.0, 5.0, 7.0]" in r.stdout and r.stdout.rstrip().endswith("ok")
    assert any(name.endswith(".hubcache.json") for name in os.listdir(cache))
