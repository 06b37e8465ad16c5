"""The bridge to TensorFlow, imported only when a model is loaded."""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Union

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
        raise ModelNotFoundError(
            f"{handle} resolved to {path}, which {_what_it_holds(path)}, not a SavedModel, so "
            f"hubcache.load cannot open it.{_how_to_open(path)} hubcache.resolve({handle!r}) gives the "
            "path without loading it.",
            handle=handle,
        )
    return tf.saved_model.load(path, tags=tags, options=options)


#: What other frameworks' files are, and how to open them.
_OPENERS = (
    (".tflite", "a TFLite model: tf.lite.Interpreter(model_path={file!r})"),
    ("model.json", "a TF.js model: load it with TensorFlow.js (tf.loadGraphModel or tf.loadLayersModel)"),
    (".keras", "a Keras model: keras.models.load_model({file!r})"),
    # Before the weights files such a directory also holds: the configuration says what it is.
    (
        "config.json",
        "a preset with its configuration: keras_hub.models.Backbone.from_preset({dir!r}) for keras-hub, "
        "or from_pretrained({dir!r}) for transformers",
    ),
    (".h5", "a Keras HDF5 file: keras.models.load_model({file!r})"),
    (".pt", "PyTorch weights: torch.load({file!r})"),
    (".pth", "PyTorch weights: torch.load({file!r})"),
    (".safetensors", "safetensors weights: safetensors.torch.load_file({file!r})"),
)


def _files(path: str, most: int = 2000) -> List[str]:
    """Up to ``most`` file paths under ``path``, relative to it (a bounded walk)."""
    found: List[str] = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        found += sorted(os.path.relpath(os.path.join(root, f), path) for f in files)
        if len(found) >= most:
            break
    return found[:most]


def _what_it_holds(path: str) -> str:
    if os.path.isfile(path):
        return "is a file"
    files = _files(path)
    if not files:
        return "is an empty directory"
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    return f"holds {shown}"


def _how_to_open(path: str) -> str:
    files = [os.path.basename(path)] if os.path.isfile(path) else _files(path)
    for suffix, advice in _OPENERS:
        for name in files:
            if name.lower().endswith(suffix):
                full = path if os.path.isfile(path) else os.path.join(path, name)
                return f" It holds {advice.format(file=full, dir=os.path.dirname(full))}."
    return ""


def signatures(path: str, *, handle: str) -> Dict[str, str]:
    """The SavedModel's signatures: name -> "inputs -> outputs"."""
    model = load_saved_model(path, handle=handle)
    return {
        name: f"{fn.structured_input_signature} -> {fn.structured_outputs}" for name, fn in model.signatures.items()
    }
