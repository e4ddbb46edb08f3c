"""Capture the output of every Keras layer, by its Keras name, when the model runs.

Keras 3 gives no name-stable way to reach the output of a layer inside a
nested model, and tf2onnx's node names get ``_N`` suffixes under Keras 3, so
the layer outputs are captured at the source instead: while a model runs
(traced in a ``tf.function`` or eagerly), the ``call`` of every layer is
wrapped so that its first call

- opens a name scope ``fmonnxL<index>``, so that every TensorFlow op (and
  later ONNX node) the layer creates carries a marker unique to the layer;
- records the output tensor under the layer's path (``backbone/conv1``) and
  its layout.

The wrappers live on the layer instances only while ``recording`` is active.
Models used as layers are descended into (their layers get paths), not
recorded themselves: a nested model's output is the output of one of its
layers. Input layers are skipped. A layer called more than once (shared)
is recorded at its first call.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator

__all__ = [
    "Leaf",
    "leaves",
    "marker",
    "MARKER_PATTERN",
    "Recording",
    "recording",
    "model_io_names",
    "Trace",
    "traced_function",
    "run_eagerly",
]


LAYOUTS = {"channels_last": "NHWC", "channels_first": "NCHW"}
_NOT_SET = object()


@dataclass(frozen=True)
class Leaf:
    """A layer that is not a model: its path, index in the flattened order, and Keras class."""

    path: str
    index: int
    layer: Any

    @property
    def class_name(self) -> str:
        return type(self.layer).__name__


MARKER_PATTERN = r"/fmonnxL\d+(?=/)"


def marker(index: int) -> str:
    """The name scope that tags the ops of the leaf with this index (matches MARKER_PATTERN)."""
    return f"fmonnxL{index}"


def leaves(model, keras: ModuleType) -> list[Leaf]:
    """The model's layers, nested models flattened into paths, in Keras layer order."""
    found: list[Leaf] = []

    def walk(container, prefix: str) -> None:
        for layer in container.layers:
            if isinstance(layer, keras.Model):
                walk(layer, prefix + layer.name + "/")
            elif type(layer).__name__ != "InputLayer":
                found.append(Leaf(prefix + layer.name, len(found), layer))

    walk(model, "")
    return found


class Recording:
    """Layer outputs captured during one run: ``outputs[path]`` and ``layouts[path]``.

    ``layouts`` holds ``"NHWC"`` or ``"NCHW"`` for 4-D outputs: the layer's own
    ``data_format`` when it has one, else the layout of its first recorded
    input, else Keras's ``image_data_format``.
    """

    def __init__(self, default_layout: str) -> None:
        self.default_layout = default_layout
        self.outputs: dict[str, Any] = {}
        self.layouts: dict[str, str] = {}
        self._layout_of_tensor: dict[int, str] = {}

    def clear(self) -> None:
        self.outputs.clear()
        self.layouts.clear()
        self._layout_of_tensor.clear()

    def record(self, tf: ModuleType, leaf: Leaf, args: tuple, kwargs: dict, output: Any) -> None:
        self.outputs[leaf.path] = output
        if not tf.is_tensor(output) or output.shape.rank != 4:
            return
        layout = LAYOUTS.get(getattr(leaf.layer, "data_format", None) or "")
        if layout is None:
            inputs = [t for t in tf.nest.flatten((args, kwargs)) if tf.is_tensor(t)]
            layout = self._layout_of_tensor.get(id(inputs[0]), self.default_layout) if inputs else self.default_layout
        self.layouts[leaf.path] = layout
        self._layout_of_tensor[id(output)] = layout

    def spatial(self, leaf_list: list[Leaf]) -> list[str]:
        """Paths, in layer order, whose recorded output is one float tensor of rank 4."""
        return [
            leaf.path for leaf in leaf_list if leaf.path in self.layouts and self.outputs[leaf.path].dtype.is_floating
        ]


def _wrap(tf: ModuleType, rec: Recording, leaf: Leaf, original: Callable) -> Callable:
    def call(*args, **kwargs):
        if leaf.path in rec.outputs:
            return original(*args, **kwargs)
        with tf.name_scope(marker(leaf.index)):
            output = original(*args, **kwargs)
        rec.record(tf, leaf, args, kwargs, output)
        return output

    return call


@contextlib.contextmanager
def recording(tf: ModuleType, keras: ModuleType, leaf_list: list[Leaf]) -> Iterator[Recording]:
    """Wrap the ``call`` of every leaf while the block runs; yield the Recording."""
    default = LAYOUTS.get(keras.backend.image_data_format(), "NHWC")
    rec = Recording(default)
    # Some layers set ``call`` on the instance themselves (tf_keras's TFOpLambda, which runs the
    # ``x + y`` of a Functional model): that one is put back, or the layer would fall back to
    # Layer.call, which returns its first input.
    wrapped: list[tuple[Any, Any]] = []
    try:
        for leaf in leaf_list:
            own = vars(leaf.layer).get("call", _NOT_SET)
            leaf.layer.call = _wrap(tf, rec, leaf, leaf.layer.call)
            wrapped.append((leaf.layer, own))
        yield rec
    finally:
        for layer, own in wrapped:
            if own is not _NOT_SET:
                layer.call = own
            elif "call" in vars(layer):
                del layer.call


def _clean_name(name: str, fallback: str) -> str:
    name = name.split(":", 1)[0]
    name = re.sub(r"[^A-Za-z0-9_.\-/]", "_", name).strip("/")
    if not name or re.fullmatch(r"keras_tensor(_\d+)?", name) or not re.match(r"[A-Za-z0-9.]", name):
        return fallback
    return name


def model_io_names(model) -> tuple[list[str], list[str]]:
    """Names for the model's inputs and outputs, from Keras.

    Inputs are named after their ``Input`` (Keras 3 Sequential inputs have no
    useful name: ``input``, ``input_1``...). Outputs are named after the layer
    that makes them (``model.output_names``; the last layer of a Sequential).
    """
    inputs = list(model.inputs)
    outputs = list(model.outputs)
    in_fallback = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    declared = list(getattr(model, "input_names", None) or [])
    in_names = [
        _clean_name(declared[i] if len(declared) == len(inputs) else str(t.name), in_fallback[i])
        for i, t in enumerate(inputs)
    ]
    out_names = list(getattr(model, "output_names", None) or [])
    if len(out_names) != len(outputs):
        out_names = [model.layers[-1].name] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    out_names = [_clean_name(str(n), f"output_{i}") for i, n in enumerate(out_names)]
    return _unique(in_names), _unique(out_names)


def _unique(names: list[str]) -> list[str]:
    seen: set[str] = set()
    result = []
    for name in names:
        candidate, n = name, 1
        while candidate in seen:
            candidate, n = f"{name}_{n}", n + 1
        seen.add(candidate)
        result.append(candidate)
    return result


@dataclass
class Trace:
    """A traced model: ``function`` returns ``(model outputs, layer outputs)``.

    ``paths`` are the layers (in layer order) whose 4-D outputs ``function``
    returns after the model's own outputs; ``output_of[path]`` is the index of
    the model output that a layer's output is, for layers making a model
    output (not returned twice).
    """

    function: Any
    signature: list
    concrete: Any
    paths: list[str]
    output_of: dict[str, int]


def traced_function(tf: ModuleType, model, rec: Recording, leaf_list: list[Leaf], input_names: list[str]) -> Trace:
    """Trace ``model`` in a ``tf.function`` whose outputs include every 4-D layer output.

    Must be called inside ``recording``. The batch axis and any other axis
    that Keras leaves open stay dynamic.
    """
    signature = [
        tf.TensorSpec(tuple(t.shape), tf.as_dtype(t.dtype), name=name) for t, name in zip(model.inputs, input_names)
    ]
    trace = Trace(None, signature, None, [], {})

    @tf.function(input_signature=signature)
    def function(*inputs):
        rec.clear()
        result = model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
        outputs = tf.nest.flatten(result)
        trace.paths.clear()
        trace.output_of.clear()
        for path in rec.spatial(leaf_list):
            index = next((i for i, o in enumerate(outputs) if rec.outputs[path] is o), None)
            if index is None:
                trace.paths.append(path)
            else:
                trace.output_of[path] = index
        return outputs, [rec.outputs[p] for p in trace.paths]

    trace.function = function
    trace.concrete = function.get_concrete_function()
    return trace


def run_eagerly(tf: ModuleType, model, rec: Recording, leaf_list: list[Leaf], inputs: list) -> tuple[list, dict]:
    """Run ``model`` on numpy ``inputs`` in Keras (eager); return outputs and 4-D layer outputs as numpy.

    Must be called inside ``recording``. Layer outputs are keyed by path and
    keep Keras's layout (see ``Recording.layouts``).
    """
    rec.clear()
    result = model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
    outputs = [tf.convert_to_tensor(o).numpy() for o in tf.nest.flatten(result)]
    layers = {path: rec.outputs[path].numpy() for path in rec.spatial(leaf_list)}
    return outputs, layers
