"""Shared fixtures: a loopback hub, a clean environment, a real SavedModel."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, Iterator

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from hubserver import FakeHub  # noqa: E402

# Variables that would change hubcache's behaviour if the developer's shell set them.
_OWN_VARS = [
    "TFHUB_CACHE_DIR",
    "TFHUB_MODEL_LOAD_FORMAT",
    "TFHUB_DOWNLOAD_PROGRESS",
    "KAGGLE_API_TOKEN",
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "KAGGLE_CONFIG_DIR",
]


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    yield fake
    fake.stop()


@pytest.fixture
def cache_dir(tmp_path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture
def env(monkeypatch, hub, cache_dir, tmp_path) -> Dict[str, str]:
    """A clean environment pointing hubcache at the fake hub and a fresh cache.
    Returns the variables set, for child processes."""
    for name in list(os.environ):
        if name.startswith("HUBCACHE_") or name in _OWN_VARS:
            monkeypatch.delenv(name, raising=False)
    kaggle_dir = tmp_path / "kaggle-config"
    kaggle_dir.mkdir()
    values = dict(hub.env())
    values.update(
        TFHUB_CACHE_DIR=cache_dir,
        HUBCACHE_DISABLE_PROGRESS="1",
        HUBCACHE_TIMEOUT="10",
        HUBCACHE_BACKOFF="0.01",  # retries wait milliseconds, not seconds
        KAGGLE_CONFIG_DIR=str(kaggle_dir),  # never the developer's ~/.kaggle
        NO_PROXY="*",  # loopback never goes through a proxy
    )
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


def child_env(extra: Dict[str, str]) -> Dict[str, str]:
    """os.environ plus ``extra``, with this checkout importable."""
    out = dict(os.environ)
    out.update(extra)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, HERE, out.get("PYTHONPATH", "")]))
    return out


def run_cli(*args: str, env: Dict[str, str], input: str = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m hubcache ARGS`` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "hubcache", *args],
        env=child_env(env),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tensorflow():
    """TensorFlow, or a skip; on CI (CI=true) a missing TensorFlow is a failure."""
    try:
        import tensorflow as tf
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("TensorFlow must be installed on CI: pip install -e '.[tf,test]'")
        pytest.skip("TensorFlow is not installed (pip install -e '.[tf,test]')")
    return tf


@pytest.fixture(scope="session")
def tf():
    return _tensorflow()


@pytest.fixture(scope="session")
def saved_model_dir(tmp_path_factory, tf) -> str:
    """A real SavedModel: f(x) = 3x + 1, with a variable and a traced __call__."""
    path = str(tmp_path_factory.mktemp("savedmodel") / "affine")

    class Affine(tf.Module):
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(3.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return x * self.scale + 1.0

    tf.saved_model.save(Affine(), path)
    return path


RESOLVER = """
import json, os, sys, time
handle = sys.argv[1]
gate = sys.argv[2] if len(sys.argv) > 2 else None
if gate:
    open(gate + ".ready." + str(os.getpid()), "w").close()
    while not os.path.exists(gate):
        time.sleep(0.002)
import hubcache
started = time.monotonic()
try:
    path = hubcache.resolve(handle)
    print(json.dumps({"ok": True, "path": path, "seconds": time.monotonic() - started}))
except hubcache.HubcacheError as e:
    print(json.dumps({"ok": False, "error": type(e).__name__, "message": str(e)}))
"""


def spawn_resolver(handle: str, env: Dict[str, str], gate: str = None, **popen) -> subprocess.Popen:
    """A child process that resolves ``handle`` (after ``gate`` appears, if given)
    and prints a JSON line: {"ok", "path", "seconds"} or {"ok", "error", "message"}."""
    args = [sys.executable, "-c", RESOLVER, handle] + ([gate] if gate else [])
    return subprocess.Popen(
        args, env=child_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def result_of(proc: subprocess.Popen, timeout: float = 120) -> Dict:
    import json

    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def leftovers(cache_dir: str):
    """Temporary or trash directories left in a cache."""
    if not os.path.isdir(cache_dir):
        return []
    return [n for n in os.listdir(cache_dir) if ".hubcache-tmp." in n or ".hubcache-trash." in n]
