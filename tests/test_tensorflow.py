"""End to end with a real SavedModel and real TensorFlow, and interoperability
with an unmodified tensorflow_hub sharing the same cache."""

import json
import os
import subprocess
import sys

import pytest

import hubcache
from hubcache.handles import cache_key

from archives import tar_directory
from helpers import child_env

HANDLE = "https://tfhub.dev/test/affine/1"

CALL = "print(json.dumps([float(v) for v in model(tf.constant([1.0, 2.0])).numpy()]))"


def run_python(code, env, timeout=300):
    r = subprocess.run([sys.executable, "-c", code], env=child_env(env), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_load_from_hub_then_offline_then_with_tensorflow_hub(env, hub, tf, saved_model_dir, cache_dir):
    hub.publish_tfhub("test/affine/1", tar_directory(saved_model_dir))
    model = hubcache.load(HANDLE)
    assert model(tf.constant([1.0, 2.0])).numpy().tolist() == [4.0, 7.0]  # 3x + 1

    hub.stop()  # from now on nothing answers
    again = hubcache.load(HANDLE, options=tf.saved_model.LoadOptions())
    assert again(tf.constant([0.0])).numpy().tolist() == [1.0]

    offline = dict(env, HUBCACHE_OFFLINE="1")
    code = f"import json, hubcache, tensorflow as tf; model = hubcache.load({HANDLE!r}); {CALL}"
    assert run_python(code, offline) == [4.0, 7.0]

    # Unmodified tensorflow_hub, same TFHUB_CACHE_DIR, no server: uses hubcache's entry.
    code = f"import json, tensorflow as tf, tensorflow_hub as hub; model = hub.load({HANDLE!r}); {CALL}"
    assert run_python(code, {"TFHUB_CACHE_DIR": cache_dir}) == [4.0, 7.0]


def test_hubcache_uses_a_cache_that_tensorflow_hub_filled(env, hub, tf, saved_model_dir, cache_dir):
    # tensorflow_hub downloads a plain URL (it cannot be pointed at another tfhub.dev).
    url = hub.storage.put("/models/affine.tar.gz", tar_directory(saved_model_dir))
    code = f"import json, tensorflow as tf, tensorflow_hub as hub; model = hub.load({url!r}); {CALL}"
    assert run_python(code, {"TFHUB_CACHE_DIR": cache_dir}) == [4.0, 7.0]
    assert hub.storage.count() == 1
    entry = os.path.join(cache_dir, cache_key(url))
    assert os.path.isdir(entry) and not os.path.exists(entry + ".hubcache.json")  # tensorflow_hub's own

    hub.stop()
    os.environ["HUBCACHE_OFFLINE"] = "1"
    try:
        assert hubcache.resolve(url) == entry
        assert hubcache.load(url)(tf.constant([2.0])).numpy().tolist() == [7.0]
    finally:
        del os.environ["HUBCACHE_OFFLINE"]


def test_load_local_directory_and_tags(env, tf, saved_model_dir):
    model = hubcache.load(saved_model_dir, tags=["serve"])
    assert model(tf.constant([2.0])).numpy().tolist() == [7.0]


def test_load_refuses_a_directory_that_is_not_a_savedmodel(env, tf, tmp_path):
    with pytest.raises(hubcache.ModelNotFoundError, match="not a SavedModel"):
        hubcache.load(str(tmp_path))


def test_missing_tensorflow_is_explained(env, tmp_path):
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import hubcache\n"
        "try:\n"
        f"    hubcache.load({str(tmp_path)!r})\n"
        "except hubcache.TensorFlowNotInstalled as e:\n"
        "    import json; print(json.dumps([str(e), isinstance(e, ImportError)]))\n"
    )
    message, is_import_error = run_python(code, env)
    assert "pip install 'hubcache[tf]'" in message and is_import_error


LOADER = """
import json, sys, hubcache, tensorflow as tf
handle, rounds = sys.argv[1], int(sys.argv[2])
results = []
for _ in range(rounds):
    model = hubcache.load(handle)
    results.append(model(tf.constant([1.0])).numpy().tolist())
print(json.dumps(results))
"""


def test_prune_while_another_process_loads(env, hub, tf, saved_model_dir, cache_dir):
    blob = hub.publish_tfhub("test/affine/1", tar_directory(saved_model_dir))
    hubcache.resolve(HANDLE)
    loader = subprocess.Popen(
        [sys.executable, "-c", LOADER, HANDLE, "25"], env=child_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    removed = skipped = 0
    from helpers import run_cli

    while loader.poll() is None:
        r = run_cli("rm", "-y", HANDLE, env=env)
        removed += "removed 1" in r.stdout
        skipped += "in use" in r.stderr
    out, err = loader.communicate()
    assert loader.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == [[4.0]] * 25  # every load got the whole model
    assert removed >= 1 and hub.storage.count(blob) >= 2  # entries were removed in between, and fetched again


def test_cache_filled_by_tensorflow_hub_is_listed_and_verified(env, hub, tf, saved_model_dir, cache_dir):
    from helpers import run_cli

    url = hub.storage.put("/models/affine.tar.gz", tar_directory(saved_model_dir))
    code = f"import json, tensorflow as tf, tensorflow_hub as hub; model = hub.load({url!r}); {CALL}"
    run_python(code, {"TFHUB_CACHE_DIR": cache_dir})
    r = run_cli("ls", "--json", env=env)
    (entry,) = json.loads(r.stdout)["entries"]
    assert (entry["handle"], entry["state"]) == (url, "foreign")  # the handle from tensorflow_hub's descriptor
    r = run_cli("verify", env=env)
    assert r.returncode == 0 and r.stdout.strip() == f"{url}: ok"
    r = run_cli("info", "--signatures", "--json", url, env=env)
    assert r.returncode == 0 and "serving_default" in json.loads(r.stdout)["signatures"]
