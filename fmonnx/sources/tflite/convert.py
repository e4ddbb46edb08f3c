"""Convert a TFLite model file to ONNX, every feature map named after its TFLite tensor, and check it.

The steps::

    is_tflite_file (the TFL3 header, no TensorFlow)
      -> verify_tflite (the whole FlatBuffer walked in Python: TFLite crashes on a truncated file)
      -> tf.lite.Interpreter
      -> feature_maps: the main subgraph's tensors computed from its inputs that are 4-D float
         (weights, even dequantized ones, are not computed from the input, so they are left out)
      -> tf2onnx.convert.from_tflite with the model's outputs, then those tensors, as graph outputs
      -> metadata_props "fmonnx.layers" and "fmonnx.source"
      -> onnx.checker, then the check: the TFLite interpreter (experimental_preserve_all_tensors)
         against onnxruntime, tensor by tensor, on a seeded random input

Fused activations: a TFLite op may carry its activation (CONV_2D with RELU); its output tensor
holds the activated values. tf2onnx splits it into the op, which keeps the tensor's name, and a new
activation node (``Relu__5:0``). Asked for the tensor as a graph output, tf2onnx gives the graph
output the activation's value, which is the TFLite tensor; the check proves it tensor by tensor,
so a pre-activation value under the TFLite name fails the conversion.

The graph outputs keep the TFLite shapes, so every layer is NHWC (TFLite's layout); a layer's
``layout`` is written only after its ONNX shape is found equal to the TFLite one.

Quantization: a dynamic-range quantized model (int8 weights, float activations) converts like a
float one, but TFLite's hybrid kernels round each op's float input to int8 on the fly while the ONNX
model computes in float with the same dequantized weights; unless ``rtol`` is given, its check
therefore uses the relative tolerance QUANTIZED_RTOL (eight int8 steps of a tensor's range; the test
model's worst tensor is off by about three), and ``details["check_rtol"]`` says so.
A full-integer quantized model (int8 or uint8 feature maps) is refused with ModelError: its feature
maps are integers in a per-tensor scale, which fmonnx does not render.

The converted model's ``metadata_props``:

- ``fmonnx.layers``: JSON list in TFLite execution order, one object per feature map:
  ``{"layer": "<TFLite tensor name>", "class": "CONV_2D" (the op that makes it),
  "output": "<the same name: the ONNX graph output>", "layout": "NHWC"}``.
- ``fmonnx.source``: ``{"framework": "tflite", "file", "tensorflow_version", "converter"}``.

A check that fails raises CheckFailedError (a ConversionError) carrying the report and the
result; nothing is written.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from fmonnx.errors import ConversionError, ModelError
from fmonnx.sources.check import (
    CHECK_SEED,
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    CheckFailedError,
    CheckReport,
    compare,
    onnx_tensors,
)
from fmonnx.sources.conversion import ConvertedModel, stamp
from fmonnx.sources.keras.check import random_inputs
from fmonnx.sources.keras.convert import DEFAULT_OPSET, _check_opset, _first_line, _import_tf2onnx
from fmonnx.sources.keras.load import import_tensorflow, native_lines_to_log
from fmonnx.sources.tflite.file import is_tflite_file
from fmonnx.sources.tflite.verify import verify_tflite

__all__ = ["convert_tflite", "feature_maps", "FeatureMap", "QUANTIZED_RTOL"]

logger = logging.getLogger(__name__)

QUANTIZED_RTOL = 8 / 127


@dataclass(frozen=True)
class FeatureMap:
    """A 4-D float tensor of the TFLite model: its interpreter index, name, NHWC shape and the op making it."""

    index: int
    name: str
    shape: tuple[int, ...]
    op: str


def convert_tflite(
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    check: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
    unsafe: bool = False,
) -> ConvertedModel:
    """Convert the TFLite model file ``path`` to ONNX (see the module docstring).

    ``unsafe`` is accepted for the sources' common signature: a TFLite file runs no stored code.
    Raises ModelError for a file that is not TFLite, is corrupt, has no 4-D float tensor or is
    full-integer quantized; MissingDependencyError without the [keras] extra; ConversionError when
    tf2onnx or the check's run fails; CheckFailedError when the check fails. ``opset``, ``rtol``
    and ``atol`` default (None) to DEFAULT_OPSET, DEFAULT_RTOL and DEFAULT_ATOL.
    """
    del unsafe
    start = time.perf_counter()
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path} is a folder; pass a TFLite model file (.tflite)")
    if not path.exists():
        raise ModelError(f"{path} does not exist; check the path")
    if not is_tflite_file(path):
        raise ModelError(
            f"{path} is not a TFLite model (its header lacks the TFL3 identifier); "
            "pass a file written by tf.lite.TFLiteConverter"
        )
    tf = import_tensorflow()
    tf2onnx = _import_tf2onnx()
    opset = DEFAULT_OPSET if opset is None else int(opset)
    default_rtol = rtol is None
    rtol = DEFAULT_RTOL if rtol is None else float(rtol)
    atol = DEFAULT_ATOL if atol is None else float(atol)
    _check_opset(tf2onnx, opset)
    label = path.name
    data = verify_tflite(path)
    interpreter = _interpreter(tf, path)
    maps, hybrid = feature_maps(path, data, interpreter)
    output_names = [d["name"] for d in interpreter.get_output_details()]
    wanted = output_names + [m.name for m in maps if m.name not in output_names]
    try:
        with warnings.catch_warnings(), native_lines_to_log():
            warnings.simplefilter("ignore")  # tf2onnx opens its own interpreter: the same deprecation notice
            onnx_model, _ = tf2onnx.convert.from_tflite(str(path), opset=opset, output_names=wanted)
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises anything; the user needs the reason
        raise ConversionError(f"tf2onnx could not convert {label}: {_first_line(exc)}; try another --opset") from exc
    unconverted = [n for n in onnx_model.graph.node if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    if unconverted:
        ops = sorted({n.op_type for n in unconverted})
        raise ConversionError(
            f"tf2onnx {tf2onnx.__version__} cannot convert the TFLite ops {', '.join(ops)} of {label} "
            f"(first in {unconverted[0].name}), whatever the --opset; convert the model it was made from instead"
        )
    layers = _layers(onnx_model, maps, label)
    source = {
        "framework": "tflite",
        "file": label,
        "tensorflow_version": tf.__version__,
        "converter": f"tf2onnx {tf2onnx.__version__}",
    }
    stamp(onnx_model, layers, source, path.stem, label)
    details = {"opset": opset, "hybrid_ops": hybrid}
    if hybrid and default_rtol:
        rtol = details["check_rtol"] = QUANTIZED_RTOL
    result = ConvertedModel(onnx_model, layers, source, None, 0.0, details)
    if check:
        result.check = _check(interpreter, onnx_model, layers, output_names, rtol, atol, label)
    result.seconds = time.perf_counter() - start
    logger.info("converted %s: %d feature maps in %.1fs", label, len(layers), result.seconds)
    if result.check is not None and not result.check.passed:
        raise CheckFailedError(
            f"{label}: the converted model differs from TFLite: {result.check.summary()}; nothing was written; "
            "if that error is acceptable, rerun with a larger --rtol/--atol",
            result.check,
            result,
        )
    return result


def _interpreter(tf, path: Path):
    """The TFLite interpreter keeping every tensor (on a file verify_tflite passed)."""
    try:
        with warnings.catch_warnings(), native_lines_to_log():
            # the deprecation notice and the "debugging only" note on preserve_all_tensors are not the user's
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(
            f"{path} cannot be read by TFLite, truncated or corrupt ({_first_line(exc)}); "
            "convert the model to .tflite again"
        ) from exc
    return interpreter


def feature_maps(path: Path, data: bytearray, interpreter) -> tuple[list[FeatureMap], int]:
    """The main subgraph's 4-D float tensors computed from its inputs, in execution order, and the
    number of hybrid ops (int8 weights applied to float activations: dynamic-range quantization).

    Read from the FlatBuffer with tf2onnx's generated TFLite schema (public modules, no private
    interpreter API); shapes and types from the interpreter. Raises ModelError when there is none,
    or when the feature maps are integers (a full-integer quantized model).
    """
    from tf2onnx.tflite.Model import Model
    from tf2onnx.tflite_utils import lookup_enum

    model = Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    reached = set(int(i) for i in graph.InputsAsNumpy())
    maps, integer, hybrid = [], [], 0
    for position in range(graph.OperatorsLength()):
        op = graph.Operators(position)
        if not reached.intersection(int(i) for i in op.InputsAsNumpy() if i >= 0):
            continue  # a constant computed from weights (a DEQUANTIZE of float16 weights)
        constants = [details.get(int(i)) for i in op.InputsAsNumpy() if i >= 0 and int(i) not in reached]
        hybrid += any(d is not None and d["dtype"] == np.int8 for d in constants)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = lookup_enum(max(code.DeprecatedBuiltinCode(), code.BuiltinCode()), "BuiltinOperator")
        for index in (int(i) for i in op.OutputsAsNumpy()):
            reached.add(index)
            detail = details.get(index)
            if detail is None or len(detail["shape"]) != 4:
                continue
            if np.issubdtype(detail["dtype"], np.floating):
                maps.append(FeatureMap(index, detail["name"], tuple(int(s) for s in detail["shape"]), name))
            elif detail["quantization"][0]:
                integer.append(detail["name"])
    if integer:
        raise ModelError(
            f"{path} is a full-integer quantized TFLite model ({len(integer)} feature maps are int8/uint8, "
            f"first {integer[0]}); fmonnx converts float and dynamic-range quantized TFLite models: "
            "convert the float model, or quantize with optimizations=[tf.lite.Optimize.DEFAULT] only"
        )
    if not maps:
        raise ModelError(
            f"{path} has no 4-D (image-like) float tensor computed from its input; "
            "fmonnx shows the feature maps of convolutional models"
        )
    names = [m.name for m in maps]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ModelError(f"{path} names two tensors {repeated[0]!r}, so its feature maps cannot be told apart; "
                         "convert the model to .tflite again")
    return maps, hybrid


def _layers(onnx_model: onnx.ModelProto, maps: list[FeatureMap], label: str) -> list[dict]:
    """``fmonnx.layers`` for the feature maps, each found as a graph output of the TFLite shape (NHWC)."""
    shapes = {
        o.name: tuple(d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim)
        for o in onnx_model.graph.output
    }
    layers = []
    for fmap in maps:
        shape = shapes.get(fmap.name)
        if shape is None or any(s is not None and s != want for s, want in zip(shape, fmap.shape)) or len(shape) != 4:
            raise ConversionError(
                f"tf2onnx did not return the TFLite tensor {fmap.name} of {label} as an output of shape "
                f"{list(fmap.shape)} (got {shape}); please report it"
            )
        layers.append({"layer": fmap.name, "class": fmap.op, "output": fmap.name, "layout": "NHWC"})
    return layers


def _check(interpreter, onnx_model, layers, output_names, rtol, atol, label) -> CheckReport:

    specs = interpreter.get_input_details()
    inputs = random_inputs([(tuple(s["shape"]), s["dtype"]) for s in specs], CHECK_SEED)
    try:
        for spec, array in zip(specs, inputs):
            interpreter.set_tensor(spec["index"], array)
        interpreter.invoke()
        index = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
        expected = {f"output:{n}": interpreter.get_tensor(index[n]) for n in output_names}
        expected.update({e["layer"]: interpreter.get_tensor(index[e["layer"]]) for e in layers})
    except (ValueError, RuntimeError) as exc:
        raise ConversionError(
            f"TFLite could not run {label} on the check's random input: {_first_line(exc)}; "
            "rerun with --no-check (check=False) to skip the check"
        ) from exc
    tensors = {f"output:{n}": n for n in output_names}
    tensors.update({e["layer"]: e["output"] for e in layers})
    wanted = sorted(set(tensors.values()))
    by_tensor = onnx_tensors(onnx_model, [s["name"] for s in specs], inputs, wanted, label)
    actual = {name: by_tensor[tensor] for name, tensor in tensors.items()}
    report = compare(
        expected, actual, tensors, rtol=rtol, atol=atol, seed=CHECK_SEED, input_shapes=[a.shape for a in inputs]
    )
    logger.info("%s", report.summary())
    return report
