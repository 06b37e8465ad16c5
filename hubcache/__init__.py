"""hubcache: get pre-trained TensorFlow models onto a machine and keep them there.

>>> import hubcache
>>> model = hubcache.load("https://tfhub.dev/google/nnlm-en-dim128/2")  # doctest: +SKIP

Handles are local paths, tfhub.dev and Kaggle model URLs, the China mirror,
``gs://`` archives and plain http(s) archive URLs. Models are cached in
``TFHUB_CACHE_DIR`` in tensorflow_hub's layout, so both tools share a cache.
Importing this package is cheap: TensorFlow, requests and tqdm are imported
only when they are needed. ``import hubcache as hub`` runs the TF Hub guides'
code: ``hub.load``, ``hub.resolve`` and ``hub.KerasLayer`` (imported, with
TensorFlow and Keras, when first used).
"""

from ._version import __version__
from .api import load, prefetch, resolve
from .errors import (
    ArchiveError,
    CacheError,
    CacheLockTimeout,
    ConfigError,
    DownloadError,
    HandleError,
    HubcacheError,
    IntegrityError,
    ModelNotFoundError,
    NotSupportedError,
    OfflineError,
    PrefetchError,
    RemoteError,
    TensorFlowNotInstalled,
)

__all__ = [
    "__version__",
    "load",
    "resolve",
    "prefetch",
    "KerasLayer",
    "HubcacheError",
    "ConfigError",
    "HandleError",
    "ModelNotFoundError",
    "DownloadError",
    "ArchiveError",
    "IntegrityError",
    "CacheError",
    "CacheLockTimeout",
    "OfflineError",
    "NotSupportedError",
    "RemoteError",
    "TensorFlowNotInstalled",
    "PrefetchError",
]

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing (2 ms) on the warm path

if TYPE_CHECKING:
    from .keras_layer import KerasLayer

_TF1 = (
    "is the API for TensorFlow 1 and the TF1 Hub format, which TensorFlow 2 and "
    "tensorflow_hub 0.16 dropped. hubcache loads TF2 SavedModels: use hubcache.load(handle) or "
    "hubcache.KerasLayer(handle); hubcache.resolve(handle) gives any model's directory."
)
_EXPORT = (
    "exported TF1 Hub modules from an Estimator (removed in TensorFlow 2.16). Save a TF2 "
    "SavedModel with tf.saved_model.save(obj, path); hubcache.load(path) and "
    "hubcache.KerasLayer(path) use it."
)
_COLUMN = (
    "is a feature column for Estimators (removed in TensorFlow 2.16). Put "
    "hubcache.KerasLayer(handle) in a Keras model instead; for text, "
    "hubcache.KerasLayer(handle, input_shape=[], dtype=tf.string)."
)
_IMAGE_INFO = (
    "reads TF1 Hub format image metadata. For a TF2 model, its documentation gives the input "
    "size, and `hubcache info --signatures HANDLE` shows its input shapes."
)
_CREATE = (
    "creates TF1 Hub format modules. Create a TF2 SavedModel with tf.saved_model.save(obj, path) "
    "(see the TF Hub guide 'Exporting models'); hubcache.load(path) uses it."
)
# tensorflow_hub's public names that hubcache leaves out, and what to use instead.
_NOT_PROVIDED = {
    "Module": _TF1,
    "eval_function_for_module": _TF1,
    "load_module_spec": _TF1,
    "ModuleSpec": _TF1,
    "create_module_spec": _CREATE,
    "create_module_spec_from_saved_model": _CREATE,
    "add_signature": _CREATE,
    "attach_message": _CREATE,
    "LatestModuleExporter": _EXPORT,
    "register_module_for_export": _EXPORT,
    "text_embedding_column": _COLUMN,
    "text_embedding_column_v2": _COLUMN,
    "sparse_text_embedding_column": _COLUMN,
    "image_embedding_column": _COLUMN,
    "get_expected_image_size": _IMAGE_INFO,
    "get_num_image_channels": _IMAGE_INFO,
    "attach_image_module_info": _IMAGE_INFO,
    "ImageModuleInfo": _IMAGE_INFO,
}


def __dir__() -> "list[str]":
    return sorted(set(globals()) | {"KerasLayer"})


def __getattr__(name: str) -> object:
    """``KerasLayer``, imported on first use (it imports TensorFlow and
    Keras); a clear error for tensorflow_hub's names that hubcache leaves out."""
    if name == "KerasLayer":
        from .keras_layer import KerasLayer

        globals()["KerasLayer"] = KerasLayer  # later lookups skip this function
        return KerasLayer
    reason = _NOT_PROVIDED.get(name)
    if reason is not None:
        error = NotSupportedError(f"hubcache.{name} is not provided: tensorflow_hub's {name} {reason}")
        error.name, error.obj = name, None  # as AttributeError sets them
        raise error
    raise AttributeError(f"module 'hubcache' has no attribute {name!r}")
