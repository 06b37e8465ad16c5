"""hubcache.KerasLayer with real SavedModels served by the loopback hub.

The file runs under the default Keras (Keras 3 on TensorFlow 2.16+); one test
runs the whole file again in a child pytest under tf-keras
(TF_USE_LEGACY_KERAS=1) and checks that it passed there too.
"""

import inspect
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from keras_models import DIM, NAMES, save_models

import hubcache

from archives import tar_directory
from helpers import REPO, child_env

CHILD_MARKER = "HUBCACHE_TEST_KERAS_CHILD"  # set in the tf-keras child run: it must not recurse
UNDER_TF_KERAS = os.environ.get("TF_USE_LEGACY_KERAS") in ("1", "true", "True")

SENTENCES = ["a great film", "what a great story", "boring and long", "a long boring film", "great fun", "so boring"]
LABELS = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


@pytest.fixture(scope="module")
def archives(tmp_path_factory, tf):
    """The test SavedModels, built once: {name: tar.gz bytes}."""
    root = str(tmp_path_factory.mktemp("keras-savedmodels"))
    save_models(tf, root)
    return {name: tar_directory(os.path.join(root, name)) for name in NAMES}


@pytest.fixture
def handles(env, hub, archives):
    """{name: tfhub.dev handle} of each test model, on this test's hub."""
    out = {}
    for name, data in archives.items():
        hub.publish_tfhub(f"test/{name}/1", data)
        out[name] = f"https://tfhub.dev/test/{name}/1"
    return out


@pytest.fixture
def keras(tf):
    return tf.keras  # Keras 3, or tf-keras under TF_USE_LEGACY_KERAS=1: what the guides' code gets


def dataset(tf):
    return tf.data.Dataset.from_tensor_slices((SENTENCES, LABELS)).batch(3)


def classifier(keras, tf, handle, trainable=True):
    """The guide's text classifier."""
    embed = hubcache.KerasLayer(handle, input_shape=[], dtype=tf.string, trainable=trainable)
    model = keras.Sequential(
        [embed, keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model, embed


def test_runs_under_the_keras_asked_for(tf):
    name = tf.keras.layers.Layer.__module__
    if UNDER_TF_KERAS:
        assert name.startswith("tf_keras.") and tf.keras.__name__.startswith("tf_keras")
    else:
        import keras

        assert keras.__version__.startswith("3.") and name.startswith("keras.")
    assert issubclass(hubcache.KerasLayer, tf.keras.layers.Layer)


def test_text_classifier_from_the_guide_fits(tf, keras, handles):
    model, embed = classifier(keras, tf, handles["embed"])
    assert embed(["a great film", "so boring"]).shape == (2, DIM)  # a batch of strings, as in the guide
    table = embed.resolved_object.table.numpy().copy()
    history = model.fit(dataset(tf), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.predict(tf.constant(SENTENCES), verbose=0).shape == (len(SENTENCES), 1)
    assert not np.array_equal(embed.resolved_object.table.numpy(), table)  # fine-tuned


def test_low_level_example_from_the_guide(handles):
    layer = hubcache.KerasLayer(handles["guide"], trainable=True)
    assert layer([10.0, 20.0]).numpy().tolist() == [20.0, 40.0]
    assert [w.numpy().tolist() for w in layer.trainable_weights] == [2.0]
    assert float(sum(layer.losses)) == pytest.approx(0.004)

    frozen = hubcache.KerasLayer(handles["guide"])
    assert frozen([10.0, 20.0]).numpy().tolist() == [20.0, 40.0]
    assert frozen.trainable_weights == [] and len(frozen.non_trainable_weights) == 1
    assert float(sum(frozen.losses)) == 0.0  # losses count only while trainable


def fit_guide_model(tf, keras, layer, epochs=2):
    model = keras.Sequential([keras.Input(shape=(1,)), layer, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = tf.constant([[1.0], [2.0], [3.0]])
    model.fit(x, 5.0 * x, epochs=epochs, verbose=0)
    return model


def test_fine_tuning_moves_the_variable_and_frozen_leaves_it(tf, keras, handles):
    tuned = hubcache.KerasLayer(handles["guide"], trainable=True)
    fit_guide_model(tf, keras, tuned)
    assert tuned.resolved_object.v.numpy() != 2.0

    frozen = hubcache.KerasLayer(handles["guide"], trainable=False)
    before = frozen.resolved_object.v.numpy().tobytes()
    fit_guide_model(tf, keras, frozen)
    assert frozen.resolved_object.v.numpy().tobytes() == before  # bit-identical

    # Two uses of one layer share its weights.
    shared = hubcache.KerasLayer(handles["guide"], trainable=True)
    a, b = keras.Input(shape=(1,)), keras.Input(shape=(1,))
    both = keras.Model([a, b], keras.layers.Add()([shared(a), shared(b)]))
    assert len(both.trainable_weights) == 1
    assert both([tf.constant([[1.0]]), tf.constant([[2.0]])]).numpy().tolist() == [[6.0]]


def test_training_argument_follows_trainable_and_the_model(tf, handles):
    x = tf.constant([1.0])
    tuned = hubcache.KerasLayer(handles["training"], trainable=True)
    assert tuned(x, training=True).numpy().tolist() == [101.0]
    assert tuned(x, training=False).numpy().tolist() == [1.0]
    assert tuned(x).numpy().tolist() == [1.0]  # inference unless told
    frozen = hubcache.KerasLayer(handles["training"])
    assert frozen(x, training=True).numpy().tolist() == [1.0]  # like BatchNormalization: frozen means inference

    shifted = hubcache.KerasLayer(handles["training"], trainable=True, arguments={"shift": 5.0})
    assert shifted(x, training=True).numpy().tolist() == [106.0]  # arguments go to every call
    assert hubcache.KerasLayer.from_config(shifted.get_config())(x).numpy().tolist() == [6.0]


def test_signature_with_output_key_or_all_outputs(tf, handles):
    x = tf.constant([1.0, 2.0])
    triple = hubcache.KerasLayer(handles["signatures"], signature="multiples", output_key="triple")
    assert triple(x).numpy().tolist() == [3.0, 6.0]
    assert triple({"x": x}).numpy().tolist() == [3.0, 6.0]  # a dict passes the inputs by name
    both = hubcache.KerasLayer(handles["signatures"], signature="multiples", signature_outputs_as_dict=True)
    out = both(x)
    assert sorted(out) == ["double", "triple"] and out["double"].numpy().tolist() == [2.0, 4.0]

    with pytest.raises(hubcache.ConfigError, match="output_key= or signature_outputs_as_dict=True"):
        hubcache.KerasLayer(handles["signatures"], signature="multiples")
    with pytest.raises(hubcache.ConfigError, match="no signature 'nope'.*multiples"):
        hubcache.KerasLayer(handles["signatures"], signature="nope", output_key="triple")
    with pytest.raises(hubcache.ConfigError, match="not callable.*multiples"):
        hubcache.KerasLayer(handles["signatures"])
    trained = hubcache.KerasLayer(handles["signatures"], signature="multiples", output_key="double", trainable=True)
    with pytest.raises(hubcache.ConfigError, match="cannot train through a SavedModel signature"):
        trained(x)


RELOAD = """
import json, sys
import numpy as np, tensorflow as tf
import hubcache
path, out = sys.argv[1], sys.argv[2]
hubcache.KerasLayer  # registers the class with Keras (the example passes custom_objects instead)
model = tf.keras.models.load_model(path, safe_mode=False)
embed = model.layers[0]
np.save(out + ".pred.npy", model.predict(tf.constant(json.loads(sys.argv[3])), verbose=0))
np.save(out + ".table.npy", embed.resolved_object.table.numpy())
print(json.dumps({"class": type(embed).__module__, "keras": tf.keras.__name__}))
"""


def test_saved_keras_file_reloads_offline_in_a_fresh_process(tf, keras, handles, hub, env, tmp_path):
    model, embed = classifier(keras, tf, handles["embed"])
    original = embed.resolved_object.table.numpy().copy()
    model.fit(dataset(tf), epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    expected = model.predict(tf.constant(SENTENCES), verbose=0)

    hub.stop()  # nothing answers now: the handle must come from the cache
    out = str(tmp_path / "reloaded")
    r = subprocess.run(
        [sys.executable, "-c", RELOAD, path, out, json.dumps(SENTENCES)],
        env=child_env(dict(env, HUBCACHE_OFFLINE="1")),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info == {"class": "hubcache.keras_layer", "keras": tf.keras.__name__}
    assert np.array_equal(np.load(out + ".pred.npy"), expected)  # identical outputs
    table = np.load(out + ".table.npy")
    assert np.array_equal(table, embed.resolved_object.table.numpy()) and not np.array_equal(table, original)

    # Keras' safe mode (load_model's default) refuses: loading runs the SavedModel's graph.
    with pytest.raises(hubcache.ConfigError, match="safe_mode=False"):
        keras.models.load_model(path)


def test_layer_from_a_loaded_object_has_no_config(tf, keras, handles, tmp_path):
    layer = hubcache.KerasLayer(hubcache.load(handles["guide"]))
    assert layer([1.0]).numpy().tolist() == [2.0]
    with pytest.raises(hubcache.NotSupportedError, match="made from a loaded object") as caught:
        layer.get_config()
    assert isinstance(caught.value, NotImplementedError)
    model = keras.Sequential([keras.Input(shape=(1,)), layer])
    with pytest.raises(hubcache.NotSupportedError, match="hubcache.KerasLayer\\(handle"):
        model.save(str(tmp_path / "m.keras"))
    with pytest.raises(hubcache.ConfigError, match="loaded already"):
        hubcache.KerasLayer(hubcache.load(handles["guide"]), tags=["serve"])
    with pytest.raises(hubcache.HandleError, match="not a int"):
        hubcache.KerasLayer(3)


def test_handle_with_credentials_is_not_written_into_a_saved_file(tf, keras, hub, env, archives, tmp_path):
    handle = hub.storage.put("/models/guide.tar.gz", archives["guide"]) + "?X-Amz-Signature=s3cret&v=2"
    layer = hubcache.KerasLayer(handle)
    assert layer([1.0]).numpy().tolist() == [2.0]
    with pytest.raises(hubcache.NotSupportedError, match="holds credentials") as caught:
        keras.Sequential([keras.Input(shape=(1,)), layer]).save(str(tmp_path / "m.keras"))
    assert "s3cret" not in str(caught.value) and "X-Amz-Signature=***" in str(caught.value)
    assert not any("s3cret" in open(p, "rb").read().decode("latin-1") for p in tmp_path.glob("*.keras"))


def test_reexport_of_a_fine_tuned_model_from_the_guide(tf, keras, handles, tmp_path):
    obj = hubcache.load(handles["guide"])
    layer = hubcache.KerasLayer(obj, trainable=True)
    fit_guide_model(tf, keras, layer)
    tuned = obj.v.numpy()
    assert tuned != 2.0
    tf.saved_model.save(obj, str(tmp_path / "tuned"))

    again = hubcache.KerasLayer(hubcache.load(str(tmp_path / "tuned")), trainable=True)
    assert again([1.0]).numpy().tolist() == [pytest.approx(float(tuned))]
    assert [w.numpy() for w in again.trainable_weights] == [tuned]
    assert float(sum(again.losses)) == pytest.approx(0.001 * float(tuned) ** 2)


def test_mixed_float16_policy_computes_in_the_savedmodels_dtype(tf, keras, handles):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = hubcache.KerasLayer(handles["guide"], trainable=True)
        assert layer.compute_dtype == "float32"
        assert layer(tf.constant([1.5], tf.float16)).dtype == tf.float32  # cast to the model's dtype
        model = fit_guide_model(tf, keras, layer, epochs=20)  # the loss scale skips the first steps
        assert model.layers[-1].compute_dtype == "float16"  # the rest of the model is mixed
        assert layer.resolved_object.v.dtype == tf.float32 and layer.resolved_object.v.numpy() != 2.0
        # The user may say otherwise.
        assert hubcache.KerasLayer(handles["guide"], dtype="float64").compute_dtype == "float64"
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_config_round_trip(tf, handles):
    layer = hubcache.KerasLayer(
        handles["signatures"], signature="multiples", output_key="triple", output_shape=[], name="sig"
    )
    config = layer.get_config()
    assert config["handle"] == handles["signatures"] and config["output_shape"] == []
    assert json.loads(json.dumps(config)) == config
    again = hubcache.KerasLayer.from_config(config)
    assert again.name == "sig" and again(tf.constant([1.0])).numpy().tolist() == [3.0]


@pytest.mark.skipif(not UNDER_TF_KERAS, reason="tf-keras's own formats")
def test_tf_keras_h5_and_savedmodel_formats_of_the_guides(tf, keras, handles, tmp_path):
    layer = hubcache.KerasLayer(handles["guide"], trainable=True)
    model = fit_guide_model(tf, keras, layer)
    x = tf.constant([[1.0], [2.0]])
    for path in (str(tmp_path / "m.h5"), str(tmp_path / "savedmodel")):
        model.save(path)
        again = keras.models.load_model(path, custom_objects={"KerasLayer": hubcache.KerasLayer})
        assert np.array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0)), path


def test_under_tf_keras_too(tf):
    """Every test of this file, again under tf-keras in a child pytest."""
    if os.environ.get(CHILD_MARKER):
        pytest.skip("this is the tf-keras run")
    try:
        import tf_keras  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("tf-keras must be installed on CI: pip install -e '.[tf,test]'")
        pytest.skip("tf-keras is not installed (pip install -e '.[tf,test]')")
    env = child_env({"TF_USE_LEGACY_KERAS": "1", CHILD_MARKER: "1"})
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    summary = r.stdout.strip().splitlines()[-1]
    tests = [obj for name, obj in globals().items() if name.startswith("test_") and callable(obj)]
    once = [t for t in tests if any(m.kwargs.get("reason") == PARENT_ONLY for m in getattr(t, "pytestmark", []))]
    expected = len(tests) - len(once) - 1  # all but the flavour-independent ones and this one
    assert re.search(rf"\b{expected} passed, {len(once) + 1} skipped\b", summary), summary


# Below: checks that do not depend on the Keras flavour; run once, in the parent.
PARENT_ONLY = "flavour-independent: run in the parent"
parent_only = pytest.mark.skipif(bool(os.environ.get(CHILD_MARKER)), reason=PARENT_ONLY)


@parent_only
def test_without_tensorflow_keraslayer_says_what_to_install(env):
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import hubcache\n"
        "try:\n"
        "    hubcache.KerasLayer\n"
        "except hubcache.TensorFlowNotInstalled as e:\n"
        "    print(isinstance(e, ImportError), e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=child_env(env), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("True hubcache.KerasLayer needs TensorFlow") and "pip install 'hubcache[tf]'" in r.stdout


@parent_only
def test_other_keras_backend_is_a_clear_error(env):
    code = (
        "import hubcache, sys\n"
        "try:\n"
        "    hubcache.KerasLayer\n"
        "except hubcache.ConfigError as e:\n"
        "    print(isinstance(e, ValueError), e)\n"
    )
    variables = {k: v for k, v in child_env(env).items() if k != "TF_USE_LEGACY_KERAS"}
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(variables, KERAS_BACKEND="jax"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("True KERAS_BACKEND is 'jax'") and "TensorFlow backend" in r.stdout


TF_HUB_NAMES_LEFT_OUT = [
    "Module", "ModuleSpec", "load_module_spec", "create_module_spec", "create_module_spec_from_saved_model",
    "add_signature", "attach_message", "register_module_for_export", "LatestModuleExporter",
    "eval_function_for_module", "text_embedding_column", "text_embedding_column_v2",
    "sparse_text_embedding_column", "image_embedding_column", "get_expected_image_size",
    "get_num_image_channels", "attach_image_module_info", "ImageModuleInfo",
]  # fmt: skip


@parent_only
def test_tensorflow_hub_names_left_out_raise_a_clear_error(env):
    code = (
        "import json, sys\n"
        "import hubcache as hub\n"
        "out = {}\n"
        f"for name in {TF_HUB_NAMES_LEFT_OUT!r}:\n"
        "    try:\n"
        "        getattr(hub, name)\n"
        "    except hub.NotSupportedError as e:\n"
        "        out[name] = [str(e), isinstance(e, AttributeError), hasattr(hub, name)]\n"
        "print(json.dumps([out, sorted(m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules)]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=child_env(env), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    errors, imported = json.loads(r.stdout)
    assert imported == []  # `import hubcache` and these errors stay cheap
    assert sorted(errors) == sorted(TF_HUB_NAMES_LEFT_OUT)
    for name, (message, is_attribute_error, has) in errors.items():
        assert message.startswith(f"hubcache.{name} is not provided: tensorflow_hub's {name} ")
        assert any(
            alternative in message for alternative in ("hubcache.KerasLayer(", "hubcache.load(", "hubcache info")
        )
        assert is_attribute_error and not has
    # Every name of tensorflow_hub's public surface is provided or explained.
    import tensorflow_hub

    for name in tensorflow_hub.__all__:
        assert name in TF_HUB_NAMES_LEFT_OUT or callable(getattr(hubcache, name)), name


@parent_only
def test_readme_documents_the_keraslayer_signature():
    from test_docs import README, documented_signatures

    with open(README, encoding="utf-8") as f:
        documented = documented_signatures(f.read())
    parts, star = [], False
    for p in inspect.signature(hubcache.KerasLayer.__init__).parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        else:
            parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    assert documented.get("KerasLayer") == "(" + ", ".join(parts) + ")"
