"""Shared fixtures: a loopback hub, a clean environment, a real SavedModel."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from typing import Dict, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import s3  # noqa: E402
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
def box(tmp_path):
    """An archive's destination inside a parent directory we can inspect for escapes."""
    dest = tmp_path / "box" / "dest"
    dest.mkdir(parents=True)
    yield dest
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["dest"], "written beside dest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box"], "written outside the box"


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


# -- the shared tier: a real S3 server (moto's server mode) on 127.0.0.1 ---------


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """moto's S3 server, with dummy AWS credentials and nothing read from ~/.aws."""
    from moto.server import ThreadedMotoServer

    home = tmp_path_factory.mktemp("aws")
    (home / "config").write_text("")
    (home / "credentials").write_text("")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("AWS_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
                mp.delenv(name)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(home / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("NO_PROXY", "*")
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        # moto checks a PUT's If-None-Match / If-Match, then stores, with no lock between:
        # two racing creates could both pass. AWS S3 and MinIO decide atomically; so does this.
        import threading

        from moto.s3.responses import S3Response

        put, lock = S3Response.put_object, threading.Lock()

        def atomic_put(self):
            with lock:
                return put(self)

        mp.setattr(S3Response, "put_object", atomic_put)
        service = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        service.start()
        host, port = service.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            service.stop()


@pytest.fixture
def bucket(server):
    """A fresh bucket; returns its name."""
    name = f"hubcache-{uuid.uuid4().hex[:12]}"
    s3(server).create_bucket(Bucket=name)
    return name
