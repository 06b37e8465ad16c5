"""hubcache quickstart: the whole offline workflow on this machine, no internet.

1. builds a tiny SavedModel with TensorFlow (f(x) = 2x + 1),
2. publishes it on a local mirror: a plain static file server on 127.0.0.1
   laid out like tfhub.dev (``<publisher>/<model>/<version>`` is the tar.gz),
3. points hubcache at the mirror (HUBCACHE_TFHUB_ENDPOINT) and prefetches the
   handle ``https://tfhub.dev/examples/affine/1`` into a cache,
4. stops the mirror, turns on HUBCACHE_OFFLINE=1 and loads the model from the
   cache with ``hubcache.load``, then calls it.

Run:  python examples/quickstart.py [--cache-dir DIR]
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

HANDLE = "https://tfhub.dev/examples/affine/1"


def build_saved_model(path: str) -> None:
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return x * self.scale + 1.0

    tf.saved_model.save(Affine(), path)


def publish(model_dir: str, mirror_dir: str) -> None:
    """Write the model as <mirror>/examples/affine/1, a tar.gz with the files at
    its root, exactly as tfhub.dev serves ``?tf-hub-format=compressed``."""
    target = os.path.join(mirror_dir, "examples", "affine", "1")
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
    import hubcache  # after the environment is set: hubcache reads it at each call

    work = tempfile.mkdtemp(prefix="hubcache-quickstart-")
    cache_dir = args.cache_dir or os.path.join(work, "cache")
    try:
        print("1. building a tiny SavedModel with TensorFlow ...")
        build_saved_model(os.path.join(work, "model"))
        publish(os.path.join(work, "model"), os.path.join(work, "mirror"))

        handler = functools.partial(QuietHandler, directory=os.path.join(work, "mirror"))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        mirror = f"http://127.0.0.1:{server.server_address[1]}"
        os.environ["HUBCACHE_TFHUB_ENDPOINT"] = mirror
        os.environ.setdefault("NO_PROXY", "127.0.0.1")
        print(f"2. serving it from a local mirror at {mirror}")

        paths = hubcache.prefetch([HANDLE], cache_dir=cache_dir)
        print(f"3. prefetched {HANDLE}\n   -> {paths[HANDLE]}")

        server.shutdown()
        server.server_close()
        os.environ["HUBCACHE_OFFLINE"] = "1"
        import tensorflow as tf

        model = hubcache.load(HANDLE, cache_dir=cache_dir)
        result = model(tf.constant([1.0, 2.0, 3.0])).numpy().tolist()
        print(f"4. mirror stopped, HUBCACHE_OFFLINE=1: loaded from the cache; f([1, 2, 3]) = {result}")
        if result != [3.0, 5.0, 7.0]:
            print("unexpected result: expected [3.0, 5.0, 7.0]", file=sys.stderr)
            return 1
        print("ok")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
