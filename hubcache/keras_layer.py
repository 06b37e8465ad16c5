"""``hubcache.KerasLayer``: a SavedModel as a Keras layer, under Keras 3 and tf-keras.

It does what ``tensorflow_hub.KerasLayer`` does, with the same arguments,
and also works with Keras 3 (TensorFlow 2.16+), where tensorflow_hub's layer
cannot be added to a model. The handle is resolved with :func:`hubcache.load`,
so the cache, offline mode and the settings apply.

What a saved model (``model.save("m.keras")``) holds for this layer:

- its config: the handle (a string) and the arguments, so loading it resolves
  the handle through the cache again (offline too) and loads the SavedModel;
- its weights: the current values of the SavedModel's variables. A fine-tuned
  model therefore reloads fine-tuned, and an untouched one reloads with the
  values it had (the file then holds a copy of the variables).

The SavedModel's graph is never in the file: the handle must still resolve
where the file is loaded. A layer made from a loaded object (no handle) has no
config; saving it raises :class:`~hubcache.NotSupportedError`.

Loading a file runs the SavedModel its handle names, as TensorFlow code the
file's author chose. Like Keras' own ``TFSMLayer``, the layer therefore
refuses to be deserialized in Keras' safe mode: pass
``keras.models.load_model(path, safe_mode=False)`` for files you trust.
``keras.models.load_model`` finds the class once ``hubcache.KerasLayer`` has
been used in the process (or given in ``custom_objects``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from . import _keras_compat as _compat
from .errors import ConfigError, HandleError, NotSupportedError
from .redaction import redact

tf, keras, _KERAS2 = _compat.import_keras()
_Layer: Any = keras.layers.Layer

__all__ = ["KerasLayer"]


@dataclasses.dataclass(frozen=True)
class _Options:
    """The constructor's arguments that say what to call and how. A plain
    object, so neither Keras nor TensorFlow tracks (and wraps) its dicts."""

    handle: Optional[str]
    arguments: Mapping[str, Any]
    tags: Optional[Sequence[str]]
    signature: Optional[str]
    signature_outputs_as_dict: Optional[bool]
    output_key: Optional[str]
    output_shape: Any  # a nest of tf.TensorShape, or None


@keras.utils.register_keras_serializable(package="hubcache")  # so load_model finds the class
class KerasLayer(_Layer):  # type: ignore[misc]  # Keras is untyped
    """Wraps a SavedModel (by handle, or as loaded) as a Keras layer.

    ``hubcache.KerasLayer(handle, trainable=False, arguments=None, *, tags=None,
    signature=None, signature_outputs_as_dict=None, output_key=None,
    output_shape=None, load_options=None, **kwargs)``, with tensorflow_hub's meaning:

    - ``handle``: a hubcache handle, resolved with :func:`hubcache.load`, or an
      object :func:`hubcache.load` returned (a model built from an object
      cannot be saved by config: it has no handle);
    - ``trainable``: expose the SavedModel's ``trainable_variables`` as trainable
      weights, count its ``regularization_losses`` in ``losses``, and call it
      with ``training=`` when its ``__call__`` accepts that;
    - ``arguments``: extra keyword arguments for each call;
    - ``tags``, ``load_options``: passed to :func:`hubcache.load`;
    - ``signature``: call this signature instead of ``__call__``; then exactly
      one of ``output_key`` (return that output) and
      ``signature_outputs_as_dict=True`` (return them all) is required;
    - ``output_shape``: the output's shape without the batch dimension, when
      TensorFlow cannot infer it;
    - ``**kwargs``: Keras layer arguments (``name``, ``dtype``, ``input_shape``).

    Without ``dtype=`` the layer computes in the SavedModel's own float dtype,
    even under a ``mixed_float16`` policy: a SavedModel's dtypes are fixed.
    ``dtype=tf.string`` declares string inputs, as in tensorflow_hub's guides.
    """

    def __init__(
        self,
        handle: Any,
        trainable: bool = False,
        arguments: Optional[Mapping[str, Any]] = None,
        *,
        tags: Optional[Any] = None,
        signature: Optional[str] = None,
        signature_outputs_as_dict: Optional[bool] = None,
        output_key: Optional[str] = None,
        output_shape: Optional[Any] = None,
        load_options: Optional[Any] = None,
        **kwargs: Any,
    ) -> None:
        obj, handle_text = _load(handle, tags, load_options)
        if signature and (output_key is None) == (not signature_outputs_as_dict):
            raise ConfigError(
                "with signature=, give either output_key= or signature_outputs_as_dict=True (one of them)."
            )
        if signature_outputs_as_dict and not signature:
            raise ConfigError(
                "signature_outputs_as_dict=True needs signature=: only a signature returns a dict of outputs."
            )
        trainable_vars = _unique(getattr(obj, "trainable_variables", ()))
        trained = {id(v) for v in trainable_vars}
        other_vars = [v for v in _unique(getattr(obj, "variables", ())) if id(v) not in trained]
        losses = list(getattr(obj, "regularization_losses", ()))
        if not all(callable(loss) for loss in losses):
            raise ConfigError(
                "the SavedModel's regularization_losses must be callables that take no arguments and "
                "return a scalar (the reusable SavedModel convention); this model's are not."
            )
        kwargs = _layer_kwargs(kwargs, trainable_vars + other_vars)
        super().__init__(trainable=trainable, **kwargs)

        self._options = _Options(
            handle=handle_text,
            arguments=dict(arguments or {}),
            tags=[tags] if isinstance(tags, str) else (list(tags) if tags is not None else None),
            signature=signature,
            signature_outputs_as_dict=signature_outputs_as_dict,
            output_key=output_key,
            output_shape=_to_shapes(output_shape) if output_shape is not None else None,
        )
        self._func = obj
        self._callable = _callable_of(obj, signature, handle_text)
        self._accepts_training = _accepts_training(self._callable)
        self._warned_no_weights = False
        pairs = [(v, True) for v in trainable_vars] + [(v, False) for v in other_vars]
        weights = _compat.track_weights(self, keras, _KERAS2, pairs)
        _compat.add_losses(self, _KERAS2, weights, losses)
        # A SavedModel's graph may hold ops XLA cannot compile (strings, tables):
        # keep Keras 3's jit_compile="auto" from trying.
        self.supports_jit = False
        self.built = True  # the weights exist already; there is nothing to build

    @property
    def resolved_object(self) -> Any:
        """The object the handle resolved to (what :func:`hubcache.load` returned)."""
        return self._func

    if not _KERAS2:  # tf-keras converts Python lists itself

        def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            # Keras 3 takes only tensors positionally: the guides'
            # layer([10., 20.]) and embed(["a sentence"]) need this.
            if isinstance(inputs, (list, tuple)) and inputs and all(_is_scalar(x) for x in tf.nest.flatten(inputs)):
                inputs = tf.convert_to_tensor(inputs)
            return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs: Any, training: Optional[Any] = None) -> Any:
        self._check_trainability()
        options = self._options
        kwargs: Dict[str, Any] = dict(options.arguments)
        args: Tuple[Any, ...] = ()
        if options.signature and isinstance(inputs, dict):
            kwargs.update(inputs)  # a signature takes its inputs by name
        else:
            args = (inputs,)
        if not self._accepts_training:
            result = self._callable(*args, **kwargs)
        else:
            # Like BatchNormalization: training mode only when the layer is
            # trainable *and* the model is training.
            if not self.trainable:
                training = False
            elif training is None:
                training = _compat.learning_phase(keras, _KERAS2)
            if tf.is_tensor(training):
                result = tf.cond(
                    tf.cast(training, tf.bool),
                    lambda: self._callable(*args, training=True, **kwargs),
                    lambda: self._callable(*args, training=False, **kwargs),
                )
            else:
                result = self._callable(*args, training=bool(training), **kwargs)
        if options.output_key is not None:
            if not isinstance(result, dict):
                kind = type(result).__name__
                raise ConfigError(
                    f"output_key={options.output_key!r} needs a dict of outputs; the model returned a {kind}."
                )
            if options.output_key not in result:
                raise ConfigError(
                    f"output_key={options.output_key!r} is not an output of the model; its outputs: {sorted(result)}."
                )
            result = result[options.output_key]
        if options.output_shape is not None:
            batch = tf.nest.flatten(inputs)[0].shape[:1]
            tf.nest.map_structure(
                lambda t, s: t.set_shape(tf.TensorShape(batch).concatenate(s)), result, options.output_shape
            )
        return result

    def _check_trainability(self) -> None:
        """``trainable`` is a public attribute that may change: checked at each call."""
        if not self.trainable:
            return
        if self._options.signature:
            raise ConfigError(
                "hubcache.KerasLayer cannot train through a SavedModel signature (signatures have no "
                "training mode, update ops nor regularization losses): set trainable=False, or call the "
                "model's __call__ (no signature=)."
            )
        if not self.trainable_weights and not self._warned_no_weights:
            self._warned_no_weights = True
            logging.getLogger("hubcache").warning(
                "hubcache.KerasLayer(%s) is trainable but the SavedModel has no trainable_variables.",
                redact(self._options.handle) if self._options.handle else "<loaded object>",
            )

    if _KERAS2:  # Keras 3 infers output specs by tracing call(), which also gets the dtype right

        def compute_output_shape(self, input_shape: Any) -> Any:
            if self._options.output_shape is None:
                return super().compute_output_shape(input_shape)
            batch = tf.nest.flatten(input_shape)[0]
            return tf.nest.map_structure(lambda s: tf.TensorShape([batch]).concatenate(s), self._options.output_shape)

    def get_config(self) -> Dict[str, Any]:
        options = self._options
        if options.handle is None:
            raise NotSupportedError(
                "this hubcache.KerasLayer was made from a loaded object, not a handle, so its config cannot "
                "name the model to load again. To save the Keras model, make the layer from the handle "
                "(hubcache.KerasLayer(handle, ...)); or save the weights (model.save_weights) and rebuild "
                "the model in code; or export the fine-tuned object with "
                "tf.saved_model.save(layer.resolved_object, path)."
            )
        if redact(options.handle) != options.handle:
            raise NotSupportedError(
                f"the handle {redact(options.handle)} holds credentials (user information or a signed query), "
                "and a saved Keras file must not: anyone given the file would have them. Publish the model "
                "at a handle without credentials, or make the layer from the cached directory "
                "(hubcache.KerasLayer(hubcache.resolve(handle))) to save a model used on this machine."
            )
        config: Dict[str, Any] = super().get_config()
        config["handle"] = options.handle
        for key, value in options.arguments.items():
            try:
                json.dumps(value)
            except TypeError:
                raise ConfigError(
                    f"arguments[{key!r}] is not JSON-serializable, so the layer's config cannot be saved."
                ) from None
        extra = {
            "arguments": dict(options.arguments) or None,
            "tags": options.tags,
            "signature": options.signature,
            "signature_outputs_as_dict": options.signature_outputs_as_dict,
            "output_key": options.output_key,
            "output_shape": _from_shapes(options.output_shape),
        }
        # load_options are left out, as tensorflow_hub does: they describe the
        # machine that loads (e.g. an I/O device), not the model.
        config.update({k: v for k, v in extra.items() if v is not None})
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> KerasLayer:
        if _compat.in_safe_mode(keras):
            raise ConfigError(
                f"this Keras file holds a hubcache.KerasLayer of {redact(str(config.get('handle')))}; loading it "
                "runs that SavedModel's TensorFlow graph, which Keras' safe mode refuses (as it does for TFSMLayer). "
                "If you trust the file, load it with keras.models.load_model(path, safe_mode=False)."
            )
        return cls(**config)


def _load(handle: Any, tags: Any, load_options: Any) -> Tuple[Any, Optional[str]]:
    """(the loaded object, the handle string or None for an object)."""
    if isinstance(handle, (str, os.PathLike)):
        from .api import load

        text = os.fspath(handle)
        if not isinstance(text, str):
            raise HandleError(f"a handle is a string, not bytes: {text!r}.")
        return load(text, tags=tags, options=load_options), text
    if not callable(handle) and not hasattr(handle, "signatures"):
        raise HandleError(
            f"hubcache.KerasLayer takes a handle (a string) or an object hubcache.load() returned, "
            f"not a {type(handle).__name__}."
        )
    if tags is not None or load_options is not None:
        raise ConfigError("tags= and load_options= apply to loading a handle; this object is loaded already.")
    return handle, None


def _callable_of(obj: Any, signature: Optional[str], handle: Optional[str]) -> Any:
    """What a call runs: the object itself, or its signature ``signature``."""
    where = redact(handle) if handle else "the loaded object"
    if signature is None:
        if callable(obj):
            return obj
        names = sorted(getattr(obj, "signatures", None) or {})
        raise ConfigError(
            f"{where} is not callable (no __call__): pick one of its signatures with signature= "
            f"(and output_key= or signature_outputs_as_dict=True); it has {names}."
        )
    signatures = getattr(obj, "signatures", None) or {}
    if signature not in signatures:
        raise ConfigError(f"{where} has no signature {signature!r}; it has {sorted(signatures)}.")
    return signatures[signature]


def _accepts_training(fn: Any) -> bool:
    """Whether the callable takes a ``training`` argument (a reusable
    SavedModel's ``__call__`` may, a signature never does)."""
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)  # noqa: B004
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no introspectable signature: call it without
        return False
    found = parameters.get("training")
    return found is not None and found.kind in (found.POSITIONAL_OR_KEYWORD, found.KEYWORD_ONLY)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str, bytes))


def _unique(variables: Any) -> list[Any]:
    """The variables once each, in order (a SavedModel may list one twice)."""
    seen: set[int] = set()
    out = []
    for v in variables or ():
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def _layer_kwargs(kwargs: Dict[str, Any], variables: Sequence[Any]) -> Dict[str, Any]:
    """The Keras layer arguments, with the dtype defaulting to the SavedModel's own."""
    kwargs = dict(kwargs)
    if kwargs.get("dtype") is None:
        # A SavedModel computes in the dtypes it was saved with; a global
        # mixed_float16 policy would cast its float32 inputs to float16.
        floats = [v.dtype for v in variables if v.dtype.is_floating]
        kwargs["dtype"] = floats[0].name if floats else "float32"
    elif not _KERAS2 and "input_shape" in kwargs and not tf.as_dtype(_dtype_name(kwargs["dtype"])).is_floating:
        # Keras 3's Sequential makes a float32 Input from input_shape=, which
        # string inputs cannot pass; without it, the model is built from the
        # first batch with this layer's dtype (e.g. tf.string) instead.
        kwargs.pop("input_shape")
    return kwargs


def _dtype_name(dtype: Any) -> str:
    """A dtype given as tf.string, "string" or a Keras policy (its config dict or object)."""
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name", "float32")
    name = getattr(dtype, "name", dtype)
    return "float32" if "float" in str(name) else str(name)


def _to_shapes(nest: Any) -> Any:
    """output_shape as a nest whose leaves are tf.TensorShape, so nest
    functions do not walk into the shapes' own tuples."""
    if isinstance(nest, dict):
        return {k: _to_shapes(v) for k, v in nest.items()}
    try:
        return tf.TensorShape(nest)
    except (TypeError, ValueError):
        pass
    if isinstance(nest, (list, tuple)):
        return type(nest)(_to_shapes(v) for v in nest)
    raise ConfigError(f"output_shape must be a shape (a tuple of ints or None) or a nest of them, not {nest!r}.")


def _from_shapes(nest: Any) -> Any:
    return None if nest is None else tf.nest.map_structure(lambda s: s.as_list(), nest)
