"""The README's examples must keep working: the quickstart, and the KerasLayer fine-tuning."""

import os
import subprocess
import sys

import pytest

from helpers import REPO, child_env


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


@pytest.mark.parametrize("legacy_keras", ["0", "1"], ids=["keras3", "tf-keras"])
def test_keras_finetune_runs_offline(tf, tmp_path, legacy_keras):
    if legacy_keras == "1":
        pytest.importorskip("tf_keras")
    cache = tmp_path / "cache"
    env = {k: v for k, v in child_env({"TF_USE_LEGACY_KERAS": legacy_keras}).items() if not k.startswith("HUBCACHE_")}
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "keras_finetune.py"), "--cache-dir", str(cache)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    flavour = "tf_keras" if legacy_keras == "1" else "keras"
    assert f"under {flavour}:" in r.stdout and "same predictions: True" in r.stdout and r.stdout.rstrip().endswith("ok")
    assert any(name.endswith(".hubcache.json") for name in os.listdir(cache))
