"""Tensor types and shapes of a model, from ``onnx.shape_inference``.

Shape inference runs on a *skeleton* of the model: large weights become
typed graph inputs, so no weight bytes are copied and models over 2 GB work
too. Small integer initializers stay, since shape inference reads their
values (Reshape targets, Slice bounds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx
from onnx import helper, shape_inference

__all__ = ["TensorType", "infer_types", "FLOAT_TYPES"]

log = logging.getLogger(__name__)

FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)
_KEEP_ELEMENTS = 64  # initializers at most this big keep their values in the skeleton

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class TensorType:
    """Element type (``onnx.TensorProto`` enum) and shape; ``shape`` is None when the rank is unknown."""

    elem_type: int
    shape: tuple[Dim, ...] | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.elem_type in FLOAT_TYPES


def _skeleton(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> onnx.ModelProto:
    graph = model.graph
    skeleton_graph = onnx.GraphProto(name=graph.name)
    skeleton_graph.node.extend(graph.node)
    skeleton_graph.input.extend(graph.input)
    for value in skeleton_graph.input:
        if input_shapes and value.name in input_shapes:
            value.type.tensor_type.ClearField("shape")
            value.type.tensor_type.shape.SetInParent()
            for size in input_shapes[value.name]:
                value.type.tensor_type.shape.dim.add().dim_value = int(size)
    skeleton_graph.output.extend(graph.output)
    skeleton_graph.value_info.extend(graph.value_info)
    declared = {value.name for value in graph.input}
    for tensor in graph.initializer:
        count = 1
        for dim in tensor.dims:
            count *= dim
        if count <= _KEEP_ELEMENTS and tensor.data_location != onnx.TensorProto.EXTERNAL:
            skeleton_graph.initializer.append(tensor)
        elif tensor.name not in declared:
            skeleton_graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    skeleton = onnx.ModelProto(
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        graph=skeleton_graph,
    )
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    return skeleton


def _dims(value: onnx.ValueInfoProto) -> tuple[Dim, ...] | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def infer_types(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> dict[str, TensorType]:
    """Map every tensor name the graph declares or infers to its TensorType.

    ``input_shapes`` fixes the shapes of graph inputs (a dynamic H x W at the
    size actually fed). Inference failures are logged, not raised: what could
    be inferred is kept, and the run itself reports the real shapes.
    """
    skeleton = _skeleton(model, input_shapes)
    try:
        inferred = shape_inference.infer_shapes(skeleton, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and plain RuntimeErrors
        log.warning("shape inference failed (%s); shapes come from the run instead", exc)
        inferred = skeleton
    types: dict[str, TensorType] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type"):
            types[value.name] = TensorType(value.type.tensor_type.elem_type, _dims(value))
    for tensor in model.graph.initializer:
        types[tensor.name] = TensorType(tensor.data_type, tuple(int(d) for d in tensor.dims))
    return types
