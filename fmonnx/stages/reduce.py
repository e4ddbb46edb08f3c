"""Per-channel reductions appended to the graph, so onnxruntime returns a few numbers per channel, not the maps.

Before::

    input -> Conv -> Relu -> ... -> output

After (``reduction_suffix(model, layers)``, one group per exposed tensor T)::

    T -(Transpose to N,C,H,W when T is N,H,W,C)-> Reshape [0, 0, -1] -> F   (N, C, H*W)
    F -> ReduceMax       -> T/max     (N, C)  the channel's spatial maximum
    F -> ArgMax          -> T/argmax  (N, C)  int64 flat index y * W + x of its first maximum
    F -> ReduceMin       -> T/min     (N, C)
    F -> ReduceMean      -> T/mean    (N, C, 1)  (kept for the centring; read as (N, C))
    F - mean -> ReduceSumSquare -> T/m2   (N, C)  sum of squared deviations (Chan's M2 of one image)
    F == 0 -> Cast -> ReduceSum -> T/zeros (N, C)
    Shape(T)              -> T/shape   (4,)    so ``argmax`` can be read as y, x

Only these (N, C) tensors become graph outputs: the maps never leave onnxruntime
(on CUDA they never leave the GPU). Like ``expose.exposed_suffix``, the result
is serialized ModelProto bytes that, appended to the model file's bytes, parse
as the model with the new nodes and outputs (protobuf appends repeated fields).
The reductions use the model's own opset: ``axes`` is an input from opset 18
(ReduceSum: 13), an attribute before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .tokens import added_nodes

__all__ = ["STATISTICS", "ReducedLayer", "reduction_suffix", "model_opset"]

log = logging.getLogger(__name__)

STATISTICS = ("max", "argmax", "min", "mean", "m2", "zeros")
_PREFIX = "fmonnx_scan"


@dataclass(frozen=True)
class ReducedLayer:
    """An exposed tensor, its channel axis, the graph outputs holding its reductions (STATISTICS order)
    and the one holding its shape (int64, 4 values: the map's H and W turn ``argmax`` into y, x)."""

    tensor: str
    channel_axis: int
    outputs: tuple[str, ...]
    shape: str


def model_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def _reduce(op: str, source: str, output: str, axes: str, opset: int, nodes: list, **attrs) -> None:
    takes_input = opset >= (13 if op == "ReduceSum" else 18)
    if takes_input:
        nodes.append(helper.make_node(op, [source, axes], [output], name=output, keepdims=0, **attrs))
    else:
        nodes.append(helper.make_node(op, [source], [output], name=output, axes=[2], keepdims=0, **attrs))


def reduction_suffix(
    model: onnx.ModelProto, layers: list[tuple[str, int, int]]
) -> tuple[bytes, list[ReducedLayer]]:
    """Bytes that, appended to the serialized ``model``, add the reductions of each
    ``(tensor, channel_axis, element type)``; float16/double tensors are cast to float32 first.

    Returns the bytes and, per layer, the names of its reduction outputs. Float tensors of rank 4 only.
    """
    opset = model_opset(model)
    extra = onnx.ModelProto()
    graph = extra.graph
    flat_shape, axes = f"{_PREFIX}/flat_shape", f"{_PREFIX}/axes"
    graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), flat_shape))
    graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axes))
    nodes: list[onnx.NodeProto] = added_nodes(model)  # the plan's token-map nodes are not in the file
    reduced = []
    for index, (tensor, channel_axis, elem_type) in enumerate(layers):
        base = f"{_PREFIX}/{index}"
        source = tensor
        if elem_type != TensorProto.FLOAT:
            cast = f"{base}/float"
            nodes.append(helper.make_node("Cast", [tensor], [cast], name=cast, to=TensorProto.FLOAT))
            source = f"{base}/float"
        if channel_axis != 1:
            perm = [0, channel_axis, *[axis for axis in (1, 2, 3) if axis != channel_axis]]
            nodes.append(helper.make_node("Transpose", [source], [f"{base}/nchw"], name=f"{base}/nchw", perm=perm))
            source = f"{base}/nchw"
        flat = f"{base}/flat"
        nodes.append(helper.make_node("Reshape", [source, flat_shape], [flat], name=flat))
        names = {stat: f"{base}/{stat}" for stat in STATISTICS}
        _reduce("ReduceMax", flat, names["max"], axes, opset, nodes)
        nodes.append(helper.make_node("ArgMax", [flat], [names["argmax"]], name=names["argmax"], axis=2, keepdims=0))
        _reduce("ReduceMin", flat, names["min"], axes, opset, nodes)
        kept_mean = names["mean"]  # (N, C, 1): one pass serves the output and the centring
        if opset >= 18:
            nodes.append(helper.make_node("ReduceMean", [flat, axes], [kept_mean], name=kept_mean, keepdims=1))
        else:
            nodes.append(helper.make_node("ReduceMean", [flat], [kept_mean], name=kept_mean, axes=[2], keepdims=1))
        centered = f"{base}/centered"
        nodes.append(helper.make_node("Sub", [flat, kept_mean], [centered], name=centered))
        _reduce("ReduceSumSquare", centered, names["m2"], axes, opset, nodes)
        zero = f"{base}/zero"
        nodes.append(helper.make_node("Equal", [flat, f"{_PREFIX}/zero_value"], [zero], name=zero))
        zero_count = f"{base}/zero_float"
        nodes.append(helper.make_node("Cast", [zero], [zero_count], name=zero_count, to=TensorProto.FLOAT))
        _reduce("ReduceSum", zero_count, names["zeros"], axes, opset, nodes)
        shape = f"{base}/shape"
        nodes.append(helper.make_node("Shape", [tensor], [shape], name=shape))
        graph.output.append(helper.make_tensor_value_info(shape, TensorProto.INT64, [4]))
        for stat in STATISTICS:
            elem = TensorProto.INT64 if stat == "argmax" else TensorProto.FLOAT
            dims = [None, None, 1] if stat == "mean" else [None, None]
            graph.output.append(helper.make_tensor_value_info(names[stat], elem, dims))
        reduced.append(ReducedLayer(tensor, channel_axis, tuple(names[stat] for stat in STATISTICS), shape))
    graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), f"{_PREFIX}/zero_value"))
    graph.node.extend(nodes)
    log.debug("%d reduction nodes for %d layers", len(nodes), len(layers))
    return extra.SerializeToString(), reduced
