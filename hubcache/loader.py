"""The bridge to TensorFlow, imported only when a model is loaded."""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Optional, Union

from .errors import ModelNotFoundError, TensorFlowNotInstalled
from .layout import SAVED_MODEL_FILES


def load_saved_model(
    path: str,
    *,
    handle: str,
    tags: Optional[Union[str, Iterable[str]]] = None,
    options: Optional[Any] = None,
) -> Any:
    """``tf.saved_model.load(path, tags, options)``, with clear errors for a
    missing TensorFlow or a directory that is not a SavedModel."""
    try:
        import tensorflow as tf
    except ImportError:
        raise TensorFlowNotInstalled(
            f"loading {handle} needs TensorFlow, which is not installed: pip install "
            f"'hubcache[tf]' (or tensorflow). hubcache.resolve({handle!r}) gives the model's "
            "directory without it.",
            handle=handle,
        ) from None
    if "://" not in path and not any(os.path.isfile(os.path.join(path, name)) for name in SAVED_MODEL_FILES):
        what = "a file" if os.path.isfile(path) else "a directory without saved_model.pb"
        raise ModelNotFoundError(
            f"{handle} resolved to {path}, which is {what}, not a SavedModel. Point the handle "
            "at a SavedModel directory (or an archive of one); use hubcache.resolve() for "
            "archives that hold other files.",
            handle=handle,
        )
    return tf.saved_model.load(path, tags=tags, options=options)


def signatures(path: str, *, handle: str) -> Dict[str, str]:
    """The SavedModel's signatures: name -> "inputs -> outputs"."""
    model = load_saved_model(path, handle=handle)
    return {
        name: f"{fn.structured_input_signature} -> {fn.structured_outputs}" for name, fn in model.signatures.items()
    }
