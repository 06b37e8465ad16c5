"""Which Keras :class:`hubcache.KerasLayer` builds on, and the few places
where the two Keras flavours differ.

``tf.keras`` is Keras 3 on TensorFlow 2.16+, or tf-keras (Keras 2) when
``TF_USE_LEGACY_KERAS=1`` (or Keras 2 itself before TensorFlow 2.16). The layer
subclasses whichever ``tf.keras`` is, so it fits the models the user builds
with ``tf.keras`` (as tensorflow_hub's guides do) and, under Keras 3, with
``import keras``.

Every use of a Keras private API is in this module, and only here:

- ``<keras package>.src.saving.serialization_lib.in_safe_mode`` (is
  ``load_model(..., safe_mode=True)`` in force?), in :func:`in_safe_mode`;
- Keras 2: the ``getter=`` argument of ``Layer.add_weight`` (adds an existing
  variable as a weight; tensorflow_hub's own KerasLayer relies on it too), in
  :func:`track_weights`.

Behaviour relied on without a private name: Keras 3 wraps a ``tf.Variable``
given as a ``keras.Variable``'s initializer instead of copying it (Keras'
``TFSMLayer`` relies on it too).

Tested with Keras 3.15 and tf-keras 2.21 on TensorFlow 2.21.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, List, Sequence, Tuple

from .errors import ConfigError, NotSupportedError, TensorFlowNotInstalled

_ADVICE = (
    "hubcache.KerasLayer runs TensorFlow SavedModels, so it needs Keras on its TensorFlow backend: "
    "set KERAS_BACKEND=tensorflow (or unset it), or use hubcache.load() for the model itself."
)


def import_keras() -> Tuple[Any, Any, bool]:
    """(tensorflow, the Keras module ``tf.keras`` is, whether it is Keras 2).

    Raises :class:`~hubcache.TensorFlowNotInstalled` without TensorFlow and
    :class:`~hubcache.ConfigError` when Keras runs on another backend (JAX,
    PyTorch, NumPy), whose tensors a SavedModel cannot take.
    """
    # TensorFlow's own rule for routing tf.keras to tf-keras.
    legacy = os.environ.get("TF_USE_LEGACY_KERAS") in ("true", "True", "1")
    wanted = os.environ.get("KERAS_BACKEND", "").strip()
    if not legacy and wanted and wanted.lower() != "tensorflow":
        # Checked before importing Keras: importing it for another backend may fail on its own.
        raise ConfigError(f"KERAS_BACKEND is {wanted!r}. {_ADVICE}")
    try:
        import tensorflow as tf
    except ImportError:
        raise TensorFlowNotInstalled(
            "hubcache.KerasLayer needs TensorFlow, which is not installed: pip install 'hubcache[tf]' (or tensorflow)."
        ) from None
    try:
        keras = tf.keras
        keras.layers  # noqa: B018 - tf.keras loads lazily: load it here, where failures are explained
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"Keras could not be imported through tf.keras ({e}). hubcache.KerasLayer needs Keras 3 on its "
            "TensorFlow backend (pip install keras; KERAS_BACKEND unset or tensorflow, also in "
            "~/.keras/keras.json), or tf-keras with TF_USE_LEGACY_KERAS=1."
        ) from e
    # Keras 2 is tf-keras, or tf.keras itself before TensorFlow 2.16 (untested here).
    version = str(getattr(keras, "__version__", "") or "")
    keras2 = keras.__name__.startswith("tf_keras") or not version.startswith("3.")
    if not keras2:
        keras3 = importlib.import_module("keras")  # imported by name: Keras ships no type hints

        backend = keras3.backend.backend()
        if backend != "tensorflow":
            raise ConfigError(
                f"Keras is configured for its {backend!r} backend (keras.json or KERAS_BACKEND). {_ADVICE}"
            )
        keras = keras3  # the same classes as tf.keras, and the whole API (tf.keras lacks keras.saving)
    return tf, keras, keras2


def in_safe_mode(keras: Any) -> bool:
    """Whether ``load_model(..., safe_mode=True)`` (the default) is deserializing now."""
    package = keras.__name__.split(".")[0]  # keras or tf_keras
    try:
        serialization_lib = importlib.import_module(f"{package}.src.saving.serialization_lib")
    except ImportError:  # a Keras 2 older than its safe mode (2.13)
        return False
    return bool(serialization_lib.in_safe_mode())


def weight_name(variable: Any) -> str:
    """A Keras weight name for a SavedModel variable: Keras 3 refuses ``/`` in
    names, and optimizers build slot names from them, where ``:`` is refused."""
    name = str(getattr(variable, "name", "") or "variable").split(":")[0]
    return name.replace("/", "_") or "variable"


def track_weights(layer: Any, keras: Any, keras2: bool, variables: Sequence[Tuple[Any, bool]]) -> List[Any]:
    """Make the SavedModel's own ``tf.Variable`` objects the layer's weights
    (trainable or not, as given); return the weights as Keras lists them.

    The layer's weights *are* the SavedModel's variables, not copies: the
    restored functions read those variables, so an optimizer step on a weight
    changes what the model computes, and every use of the layer shares them.
    """
    if keras2:
        for variable, trainable in variables:
            layer.add_weight(
                name=weight_name(variable),
                shape=variable.shape,
                dtype=variable.dtype,
                trainable=trainable,
                experimental_autocast=False,
                getter=lambda *_, _v=variable, **__: _v,  # hands back the existing variable
            )
        return list(layer.weights)
    # Keras 3 wraps a tf.Variable given as the initializer instead of copying it
    # (TFSMLayer relies on this). Layers track Variables set as attributes.
    wrapped = [
        keras.Variable(
            initializer=variable,
            dtype=variable.dtype.name,
            trainable=trainable,
            autocast=False,  # the SavedModel reads the variable in its own dtype
            name=weight_name(variable),
        )
        for variable, trainable in variables
    ]
    if any(weight.value is not variable for weight, (variable, _) in zip(wrapped, variables)):
        raise NotSupportedError(
            f"this Keras ({keras.__version__}) copies a tf.Variable given as a weight's initializer, so "
            "fine-tuning would not reach the SavedModel: hubcache.KerasLayer is tested with Keras 3.15 "
            "(or use tf-keras: TF_USE_LEGACY_KERAS=1)."
        )
    layer._hubcache_weights = wrapped
    # A model lists its sublayers' weights by their own flags, which Keras 3
    # keeps in step with each layer's `trainable` (as its setter does later).
    if not layer.trainable:
        for weight in wrapped:
            weight.trainable = False
    return wrapped


def add_losses(layer: Any, keras2: bool, weights: Sequence[Any], losses: Sequence[Callable[[], Any]]) -> None:
    """Count the SavedModel's ``regularization_losses`` (callables taking no
    arguments) in ``layer.losses`` and the model's loss, while the layer is trainable."""
    if not losses:
        return
    if keras2:
        for loss in losses:
            layer.add_loss(_while_trainable(layer, loss))
        return
    # Keras 3 collects add_loss() values during a call only; a weight's
    # regularizer is read whenever losses are, and only while the weight is
    # trainable. So the SavedModel's losses ride on its first trainable weight.
    # (With no trainable weight there is nothing they could regularize.)
    anchor = next((w for w in weights if w.trainable), None)
    if anchor is not None:
        anchor.regularizer = _SavedModelLosses(losses)


def _while_trainable(layer: Any, loss: Callable[[], Any]) -> Callable[[], Any]:
    # A closure, not a lambda with a default argument: tf-keras traces these
    # with tf.function when it saves a SavedModel, and arguments would be traced too.
    def value() -> Any:
        return loss() if layer.trainable else 0.0

    return value


class _SavedModelLosses:
    """A weight regularizer that ignores the weight and sums the SavedModel's losses."""

    def __init__(self, losses: Sequence[Callable[[], Any]]) -> None:
        self._losses = list(losses)

    def __call__(self, _weight: Any) -> Any:
        total = self._losses[0]()
        for loss in self._losses[1:]:
            total = total + loss()
        return total


def learning_phase(keras: Any, keras2: bool) -> Any:
    """What ``training=None`` means: tf-keras' global learning phase; Keras 3
    passes ``training`` down explicitly, so there it means inference."""
    return keras.backend.learning_phase() if keras2 else False
