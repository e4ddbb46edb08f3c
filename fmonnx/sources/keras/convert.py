"""Convert a Keras model file to ONNX, keeping every layer's Keras name, and check it.

The stages, each in its own module::

    read_keras_file (keras_file: JSON only, no TensorFlow)
      -> refuse Lambda layers unless unsafe
      -> load_keras_model (keras_load: Keras 3 or tf_keras, chosen by the file)
      -> traced_function (keras_trace: a tf.function whose outputs are the
         model's outputs, then every 4-D layer output)
      -> freeze (a GraphDef with constants for variables and captured
         tensors, XLA-compiled nested functions made inlinable)
      -> tf2onnx.convert.from_graph_def, with handlers for ops it lacks
         (handlers: Erfc) and linear-time replacements for its quadratic steps (linear)
      -> name_outputs, name_inner_tensors, strip_markers (keras_onnx: graph
         outputs and inner Conv outputs named after Keras layers, name-scope
         markers removed)
      -> metadata_props "fmonnx.layers" and "fmonnx.source"
      -> onnx.checker, then compare (keras_check: Keras vs onnxruntime)

Because every layer output is a graph output, tf2onnx cannot fold it away
(a BatchNormalization stays, instead of being folded into the Conv before
it), and its name is the Keras path (``conv2d``, ``backbone/conv1``). The
model's own outputs come first, named after the layers that make them.

The converted model's ``metadata_props``:

- ``fmonnx.layers``: JSON list, in Keras layer order, one object per layer
  with a 4-D output: ``{"layer": "backbone/conv1", "class": "Conv2D",
  "output": "<tensor holding the layer's output>", "inner": [<other tensors of
  the layer, e.g. the pre-activation Conv>], "layout": "NHWC" | "NCHW"}``
  (``layout`` is that of ``output``; inner tensors are ONNX Conv outputs).
- ``fmonnx.source``: JSON object ``{"framework": "keras", "keras_version",
  "loader": "keras3" | "tf_keras", "file", "loader_version", "converter"}``;
  ``keras_version`` is the version that saved the file.

A check that fails raises CheckFailedError (a ConversionError) carrying the
report and the result, after the report is complete; nothing is written.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import onnx

from fmonnx.contract import LAYERS_KEY, SOURCE_KEY
from fmonnx.errors import ConversionError, MissingDependencyError, ModelError
from fmonnx.sources.check import CheckFailedError, CheckReport, compare, onnx_tensors
from fmonnx.sources.conversion import stamp
from fmonnx.sources.keras.check import random_inputs
from fmonnx.sources.keras.file import choose_loader, is_keras_file, lambda_layers, read_keras_file
from fmonnx.sources.keras.freeze import freeze
from fmonnx.sources.keras.handlers import CUSTOM_OP_HANDLERS
from fmonnx.sources.keras.linear import linear_time
from fmonnx.sources.keras.load import INSTALL_HINT, import_keras, import_tensorflow, load_keras_model
from fmonnx.sources.keras.to_onnx import name_inner_tensors, name_outputs, strip_markers
from fmonnx.sources.keras.trace import (
    MARKER_PATTERN,
    leaves,
    marker,
    model_io_names,
    recording,
    run_eagerly,
    traced_function,
)
from fmonnx.sources.write import write_model

__all__ = [
    "ConversionResult",
    "CheckReport",
    "CheckFailedError",
    "convert_keras",
    "convert_keras_model",
    "write_model",
    "is_keras_file",
    "DEFAULT_OPSET",
    "METADATA_LAYERS",
    "METADATA_SOURCE",
]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5
CHECK_SEED = 0
METADATA_LAYERS = LAYERS_KEY
METADATA_SOURCE = SOURCE_KEY


@dataclass
class ConversionResult:
    """A converted model and how it was made.

    ``layers`` is the ``fmonnx.layers`` list (also in the model's metadata);
    ``keras_version`` the version that saved the file (for an in-memory model,
    the running one); ``check`` is None when the check was skipped;
    ``seconds`` the wall time of the whole conversion: the first import of
    TensorFlow in the process, loading, tf2onnx and the check.
    """

    model: onnx.ModelProto
    loader: str
    keras_version: str
    layers: list[dict]
    check: CheckReport | None
    seconds: float

    @property
    def source(self) -> dict:
        """Where the model came from (sources.conversion.Conversion's ``source``)."""
        return {"framework": "keras", "loader": self.loader, "keras_version": self.keras_version}

    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path:
        """Write the ONNX model to ``path`` (atomically; an existing file only with ``force``)."""
        return write_model(self.model, path, force=force)


def convert_keras(
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    check: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
    unsafe: bool = False,
) -> ConversionResult:
    """Convert the Keras model file ``path`` (.keras, .h5) to ONNX.

    Lambda layers (which run Python code stored in the file) are refused
    with ModelError unless ``unsafe``; the file is inspected as JSON before
    anything is loaded. Raises ModelError for unusable files,
    MissingDependencyError without the [keras] extra, ConversionError when
    loading, tracing, tf2onnx or the check's run fails, CheckFailedError
    when the check fails. ``opset``, ``rtol`` and ``atol`` default (None) to
    DEFAULT_OPSET, DEFAULT_RTOL and DEFAULT_ATOL.
    """
    start = time.perf_counter()
    keras_file = read_keras_file(path)
    lambdas = lambda_layers(keras_file.config)
    if lambdas and not unsafe:
        raise ModelError(
            f"{keras_file.path} has Lambda layers ({', '.join(lambdas)}), whose Python code is stored in the file "
            "and would run on loading; convert it only if you trust its author, with --unsafe (unsafe=True)"
        )
    model, loader, keras = load_keras_model(keras_file, choose_loader(keras_file), unsafe=unsafe)
    logger.info(
        "loaded %s with %s %s in %.1fs", keras_file.path, loader, keras.__version__, time.perf_counter() - start
    )
    return _convert(
        model,
        keras,
        loader,
        keras_file.keras_version or keras.__version__,
        keras_file.path.name,
        opset=opset,
        check=check,
        rtol=rtol,
        atol=atol,
        start=start,
    )


def convert_keras_model(
    model,
    *,
    opset: int | None = None,
    check: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
) -> ConversionResult:
    """Convert an in-memory Keras 3 or tf_keras model (e.g. one with custom layers).

    Same result and errors as ``convert_keras``; the model is not changed.
    """
    start = time.perf_counter()
    loader = "tf_keras" if type(model).__module__.startswith("tf_keras") else "keras3"
    keras = import_keras(loader)
    return _convert(
        model, keras, loader, keras.__version__, "", opset=opset, check=check, rtol=rtol, atol=atol, start=start
    )


def _import_tf2onnx() -> ModuleType:
    import_tensorflow()
    try:
        import tf2onnx
        import tf2onnx.convert  # noqa: F401 - the submodule holding from_graph_def
    except ImportError as exc:
        raise MissingDependencyError(f"tf2onnx is not installed; {INSTALL_HINT}") from exc
    return tf2onnx


def _check_opset(tf2onnx: ModuleType, opset: int) -> None:
    supported = sorted(tf2onnx.constants.OPSET_TO_IR_VERSION)
    newest = min(supported[-1], onnx.defs.onnx_opset_version())
    if not 9 <= opset <= newest:
        raise ConversionError(
            f"opset {opset} is not supported by tf2onnx {tf2onnx.__version__}; pass an opset from 9 to {newest}"
        )


def _convert(model, keras, loader, keras_version, file_name, *, opset, check, rtol, atol, start) -> ConversionResult:
    tf = import_tensorflow()
    tf2onnx = _import_tf2onnx()
    opset = DEFAULT_OPSET if opset is None else int(opset)
    rtol = DEFAULT_RTOL if rtol is None else float(rtol)
    atol = DEFAULT_ATOL if atol is None else float(atol)
    _check_opset(tf2onnx, opset)
    label = file_name or model.name
    if not getattr(model, "inputs", None):
        raise ModelError(
            f"{label} has no defined inputs; build the model with keras.Input(shape=...) and save it again"
        )
    leaf_list = leaves(model, keras)
    input_names, output_names = model_io_names(model)
    try:
        with recording(tf, keras, leaf_list) as rec:
            trace = traced_function(tf, model, rec, leaf_list, input_names)
            layouts = dict(rec.layouts)
    except Exception as exc:  # noqa: BLE001 - tracing runs the model's own code; the user needs the reason
        raise ConversionError(
            f"TensorFlow could not trace {label}: {_first_line(exc)}; "
            "make sure the model runs on inputs of its declared shape in Keras"
        ) from exc
    spatial = [leaf for leaf in leaf_list if leaf.path in trace.output_of or leaf.path in trace.paths]
    if not spatial:
        classes = sorted({leaf.class_name for leaf in leaf_list})
        raise ModelError(
            f"{label} has no layer with a 4-D (image-like) output (it has: {', '.join(classes)}); "
            "fmonnx shows the feature maps of convolutional models"
        )
    try:
        converted = _to_onnx(tf, tf2onnx, trace, opset)
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises anything; the user needs the reason
        raise ConversionError(f"tf2onnx could not convert {label}: {_first_line(exc)}; try another --opset") from exc
    unconverted = [n for n in converted.graph.node if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    if unconverted:
        ops = sorted({n.op_type for n in unconverted})
        raise ConversionError(
            f"tf2onnx {tf2onnx.__version__} cannot convert the TensorFlow ops {', '.join(ops)} of {label} "
            f"(first in {unconverted[0].name}), whatever the --opset; rebuild the model without the layers "
            "that use them, or report it"
        )
    extra = [i.name for i in converted.graph.input][len(trace.signature) :]
    if extra:
        raise ConversionError(
            f"the ONNX model converted from {label} has inputs that Keras does not ({', '.join(extra[:3])}), "
            "which nothing would feed; please report it with the classes of the layers they come from"
        )
    onnx_model, layers, graph_outputs = _map_layers(tf, converted, trace, spatial, layouts, output_names, label)
    source = {
        "framework": "keras",
        "keras_version": keras_version,
        "loader": loader,
        "file": file_name,
        "loader_version": keras.__version__,
        "converter": f"tf2onnx {tf2onnx.__version__}",
    }
    stamp(onnx_model, layers, source, model.name, label)
    result = ConversionResult(onnx_model, loader, keras_version, layers, None, 0.0)
    if check:
        result.check = _check(
            tf, keras, model, leaf_list, trace.signature, onnx_model, layers, graph_outputs, rtol, atol, label
        )
    result.seconds = time.perf_counter() - start
    logger.info("converted %s: %d layers mapped in %.1fs", label, len(layers), result.seconds)
    if result.check is not None and not result.check.passed:
        raise CheckFailedError(
            f"{label}: the converted model differs from Keras: {result.check.summary()}; nothing was written; "
            "if that error is acceptable, rerun with a larger --rtol/--atol",
            result.check,
            result,
        )
    return result


# tf2onnx copies the graph, weights included, before each optimizer: past this size the copies are
# collected as they go (VGG16, 0.55 GB of weights, reached 24 GB without it)
_FREE_COPIES_ABOVE = 256 * 2**20


def _to_onnx(tf, tf2onnx, trace, opset: int) -> onnx.ModelProto:
    """Freeze the traced function (freeze) and convert it with tf2onnx: extra handlers, linear time."""
    frozen = freeze(tf, trace.concrete, trace.signature)
    with linear_time(tf2onnx, free_copies=frozen.graph_def.ByteSize() > _FREE_COPIES_ABOVE):
        converted, _ = tf2onnx.convert.from_graph_def(
            frozen.graph_def,
            name=trace.concrete.name,
            input_names=frozen.inputs,
            output_names=frozen.outputs,
            opset=opset,
            custom_op_handlers=CUSTOM_OP_HANDLERS,
            tensors_to_rename=frozen.renames,
        )
    return converted


def _first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (at most 300 characters), or its type when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _map_layers(tf, converted, trace, spatial, layouts, output_names, label):
    """Name the converted graph's tensors after Keras; return the model, ``fmonnx.layers`` and output names."""
    tf_names = [t.name for t in tf.nest.flatten(trace.concrete.structured_outputs)]
    try:
        onnx_model, renamed = name_outputs(converted, tf_names, output_names + trace.paths)
    except ValueError as exc:
        raise ConversionError(f"tf2onnx returned unexpected outputs for {label} ({exc}); please report it") from exc
    graph_outputs = [renamed[name] for name in tf_names[: len(output_names)]]
    tensor_of = {path: renamed[name] for path, name in zip(trace.paths, tf_names[len(output_names) :])}
    tensor_of.update({path: graph_outputs[index] for path, index in trace.output_of.items()})
    onnx_model, inner = name_inner_tensors(onnx_model, {leaf.path: marker(leaf.index) for leaf in spatial}, tensor_of)
    onnx_model = strip_markers(onnx_model, MARKER_PATTERN)
    layers = [
        {
            "layer": leaf.path,
            "class": leaf.class_name,
            "output": tensor_of[leaf.path],
            "inner": inner[leaf.path],
            "layout": layouts[leaf.path],
        }
        for leaf in spatial
    ]
    return onnx_model, layers, graph_outputs


def _check(tf, keras, model, leaf_list, signature, onnx_model, layers, output_names, rtol, atol, label) -> CheckReport:

    inputs = random_inputs([(tuple(s.shape), s.dtype.as_numpy_dtype) for s in signature], CHECK_SEED)
    try:
        with recording(tf, keras, leaf_list) as rec:
            keras_outputs, keras_layers = run_eagerly(tf, model, rec, leaf_list, inputs)
    except Exception as exc:  # noqa: BLE001 - running runs the model's own code; the user needs the reason
        raise ConversionError(
            f"Keras could not run {label} on the check's random input: {_first_line(exc)}; "
            "rerun with --no-check (check=False) to skip the check"
        ) from exc
    expected = {f"output:{n}": a for n, a in zip(output_names, keras_outputs)}
    tensors = {f"output:{n}": n for n in output_names}
    for entry in layers:
        if entry["output"] in output_names:
            continue  # a model output, compared above
        if entry["layer"] in keras_layers:
            expected[entry["layer"]] = keras_layers[entry["layer"]]
            tensors[entry["layer"]] = entry["output"]
        else:
            logger.warning("layer %s made no output when Keras ran it; it is not checked", entry["layer"])
    wanted = sorted(set(tensors.values()))
    by_tensor = onnx_tensors(onnx_model, [spec.name for spec in signature], inputs, wanted, label)
    actual = {name: by_tensor[tensor] for name, tensor in tensors.items()}
    report = compare(
        expected, actual, tensors, rtol=rtol, atol=atol, seed=CHECK_SEED, input_shapes=[a.shape for a in inputs]
    )
    logger.info("%s", report.summary())
    return report
