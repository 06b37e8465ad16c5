"""hubcache.KerasLayer: fine-tune a model from the cache, save it, reload it; offline.

1. builds a tiny text-embedding SavedModel with TensorFlow (sentences -> 8
   numbers, from a trainable table of word vectors), in the reusable SavedModel
   form that tfhub.dev models have (``variables``, ``trainable_variables``,
   ``regularization_losses``),
2. serves it on a local mirror laid out like tfhub.dev and prefetches the
   handle ``https://tfhub.dev/examples/tiny-embed/1`` into a cache,
3. stops the mirror and turns on HUBCACHE_OFFLINE=1; from here on nothing is downloaded,
4. the TF Hub guide's classifier: ``hub.KerasLayer(handle, trainable=True)``
   in a Keras model, fitted on a few sentences; the embedding is fine-tuned,
5. saves the model as ``classifier.keras``, reloads it with
   ``keras.models.load_model`` (the handle comes from the cache again) and
   checks that it predicts exactly what the fine-tuned model predicts.

Runs under Keras 3 and, with TF_USE_LEGACY_KERAS=1, under tf-keras.
Run:  python examples/keras_finetune.py [--cache-dir DIR]
(default: a temporary cache, removed at the end). Exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tarfile
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

HANDLE = "https://tfhub.dev/examples/tiny-embed/1"
SENTENCES = ["a great film", "what a great story", "boring and long", "a long boring film", "great fun", "so boring"]
LABELS = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


def build_saved_model(path: str) -> None:
    import tensorflow as tf

    class TinyEmbedding(tf.train.Checkpoint):
        def __init__(self) -> None:
            super().__init__()
            self.table = tf.Variable(tf.random.stateless_normal([64, 8], seed=[1, 2]))
            # What hub.KerasLayer reads: the variables, which of them to
            # fine-tune, and the losses that regularize them.
            self.variables = [self.table]
            self.trainable_variables = [self.table]
            self.regularization_losses = [tf.function(input_signature=[])(lambda: 1e-4 * tf.reduce_sum(self.table**2))]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, sentences):
            ids = tf.strings.to_hash_bucket_fast(tf.strings.split(sentences), 64)
            return tf.reduce_mean(tf.ragged.map_flat_values(tf.gather, self.table, ids), axis=1)

    tf.saved_model.save(TinyEmbedding(), path)


def publish(model_dir: str, mirror_dir: str) -> None:
    """<mirror>/examples/tiny-embed/1: a tar.gz with the files at its root, as tfhub.dev serves it."""
    target = os.path.join(mirror_dir, "examples", "tiny-embed", "1")
    os.makedirs(os.path.dirname(target))
    with tarfile.open(target, "w:gz") as tar:
        for name in sorted(os.listdir(model_dir)):
            tar.add(os.path.join(model_dir, name), arcname=name)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", help="cache to fill (default: a temporary one)")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import hubcache as hub  # the guides' `import tensorflow_hub as hub`, changed

    work = tempfile.mkdtemp(prefix="hubcache-keras-")
    cache_dir = args.cache_dir or os.path.join(work, "cache")
    os.environ["TFHUB_CACHE_DIR"] = cache_dir  # KerasLayer takes no cache_dir: the setting applies
    try:
        print("1. building a tiny text-embedding SavedModel ...")
        build_saved_model(os.path.join(work, "model"))
        publish(os.path.join(work, "model"), os.path.join(work, "mirror"))
        handler = functools.partial(QuietHandler, directory=os.path.join(work, "mirror"))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        os.environ["HUBCACHE_TFHUB_ENDPOINT"] = f"http://127.0.0.1:{server.server_address[1]}"
        os.environ.setdefault("NO_PROXY", "127.0.0.1")
        hub.prefetch([HANDLE])
        print(f"2. prefetched {HANDLE} from a local mirror")
        server.shutdown()
        server.server_close()
        os.environ["HUBCACHE_OFFLINE"] = "1"
        print("3. mirror stopped, HUBCACHE_OFFLINE=1")

        import numpy as np
        import tensorflow as tf

        # The TF Hub guide's classifier, unchanged but for the import.
        hub_layer = hub.KerasLayer(HANDLE, input_shape=[], dtype=tf.string, trainable=True)
        model = tf.keras.Sequential(
            [hub_layer, tf.keras.layers.Dense(16, activation="relu"), tf.keras.layers.Dense(1, activation="sigmoid")]
        )
        model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
        before = hub_layer.resolved_object.table.numpy().copy()
        data = tf.data.Dataset.from_tensor_slices((SENTENCES, LABELS)).batch(3)
        history = model.fit(data, epochs=3, verbose=0)
        moved = float(np.abs(hub_layer.resolved_object.table.numpy() - before).max())
        print(f"4. fitted 3 epochs under {tf.keras.__name__.split('.')[0]}: loss {history.history['loss'][-1]:.4f}; "
              f"the embedding moved by up to {moved:.4f}")  # fmt: skip

        path = os.path.join(work, "classifier.keras")
        model.save(path)
        # The file names the handle and holds the fine-tuned values; loading runs
        # the cached SavedModel, which Keras' safe mode refuses: trust it explicitly.
        reloaded = tf.keras.models.load_model(path, custom_objects={"KerasLayer": hub.KerasLayer}, safe_mode=False)
        sentences = tf.constant(SENTENCES)
        same = np.array_equal(reloaded.predict(sentences, verbose=0), model.predict(sentences, verbose=0))
        print(f"5. saved {os.path.basename(path)} ({os.path.getsize(path)} bytes) and reloaded it offline: "
              f"same predictions: {same}")  # fmt: skip
        if moved == 0.0 or not same:
            print("unexpected: the embedding did not move, or the reloaded model predicts otherwise", file=sys.stderr)
            return 1
        print("ok")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
