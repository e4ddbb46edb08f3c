"""Receptive fields from the graph: which input pixels each position of a tensor can see.

For every tensor reached from the image input, a field is three (H, W) pairs in
model-input pixels: ``size`` (the extent one position sees), ``stride`` (how far
the field moves when the position moves by one) and ``offset`` (the first input
pixel of position (0, 0)'s field; negative where padding reaches outside).
Position (y, x) sees rows ``offset[0] + y * stride[0]`` up to that plus
``size[0]`` (exclusive), and likewise the columns.

The rule, node by node in graph order (the standard recurrence of Araujo et al.,
"Computing Receptive Fields of Convolutional Neural Networks", Distill 2019)::

    Conv / MaxPool / AveragePool / LpPool (kernel k, stride s, dilation d, pads p):
        size'   = size + (d * (k - 1)) * stride
        stride' = stride * s
        offset' = offset - p_begin * stride        (auto_pad SAME: p_begin from the input size)
    Relu, BatchNormalization, Transpose, ...: the field of the input
    Add, Mul, Concat, Max, ... : the union of the inputs' fields (same stride), else unknown
    GlobalAveragePool, Resize, Flatten, anything else: unknown (None)

Unknown means "the whole image": the scan then shows the upsampled activation over
the image instead of a crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .layout import _LAYOUT_PRESERVING_OPS
from .shapes import TensorType

__all__ = ["Field", "receptive_fields", "field_box"]


_WINDOW_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"})
_KEEP_OPS = frozenset({"BatchNormalization", "Transpose", "LRN", "QuantizeLinear", "DequantizeLinear"})
_COMBINE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Concat", "Where", "PRelu"})
# element-wise ops that keep positions (layout.py's list without the ones that move pixels)
_POINTWISE_OPS = (_LAYOUT_PRESERVING_OPS - {"Pad", "Slice", "Resize", "Upsample", "Tile", "Expand"}) | _KEEP_OPS


@dataclass(frozen=True)
class Field:
    """A receptive field in model-input pixels, as (H, W) pairs."""

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def describe(self) -> dict:
        return {"size": list(self.size), "stride": list(self.stride), "offset": list(self.offset)}


_PIXEL = Field((1, 1), (1, 1), (0, 0))


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints)
    return None


def _string(node: onnx.NodeProto, name: str, default: str) -> str:
    for attr in node.attribute:
        if attr.name == name:
            return attr.s.decode()
    return default


def _window(
    node: onnx.NodeProto, field: Field, weights: dict[str, tuple], types: dict[str, TensorType]
) -> Field | None:
    kernel = _ints(node, "kernel_shape")
    if kernel is None and node.op_type in ("Conv", "ConvInteger"):
        dims = weights.get(node.input[1]) if len(node.input) > 1 else None
        kernel = list(dims[2:]) if dims is not None else None
    if kernel is None and node.op_type == "QLinearConv":
        dims = weights.get(node.input[3]) if len(node.input) > 3 else None
        kernel = list(dims[2:]) if dims is not None else None
    if kernel is None or len(kernel) != 2:
        return None
    strides = _ints(node, "strides") or [1, 1]
    dilations = _ints(node, "dilations") or [1, 1]
    pads = _ints(node, "pads") or [0, 0, 0, 0]
    auto_pad = _string(node, "auto_pad", "NOTSET")
    begin = pads[:2]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        shape = types.get(node.input[0])
        spatial = shape.shape[2:] if shape is not None and shape.shape is not None and len(shape.shape) == 4 else None
        if spatial is None or not all(isinstance(dim, int) for dim in spatial):
            return None
        begin = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
            begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    elif auto_pad == "VALID":
        begin = [0, 0]
    return Field(
        tuple(field.size[i] + dilations[i] * (kernel[i] - 1) * field.stride[i] for i in range(2)),
        tuple(field.stride[i] * strides[i] for i in range(2)),
        tuple(field.offset[i] - begin[i] * field.stride[i] for i in range(2)),
    )


def _union(fields: list[Field]) -> Field | None:
    if len({field.stride for field in fields}) != 1:
        return None
    start = tuple(min(field.offset[i] for field in fields) for i in range(2))
    end = tuple(max(field.offset[i] + field.size[i] for field in fields) for i in range(2))
    return Field(tuple(end[i] - start[i] for i in range(2)), fields[0].stride, start)


def receptive_fields(model: onnx.ModelProto, input_name: str, types: dict[str, TensorType]) -> dict[str, Field | None]:
    """``{tensor: Field or None}`` for every tensor computed from ``input_name``; None: not known from
    the graph (a global pool, a resize, an op whose window fmonnx does not read) - treat as the whole image."""
    graph = model.graph
    weights = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    fields: dict[str, Field | None] = {input_name: _PIXEL}
    for node in graph.node:
        reached = [name for name in node.input if name in fields]
        if not reached:
            continue  # constants, shape arithmetic: not computed from the image
        known = [fields[name] for name in reached]
        op = node.op_type
        result: Field | None = None
        if any(field is None for field in known):
            result = None
        elif op in _WINDOW_OPS and node.input[0] in fields:
            result = _window(node, known[0], weights, types)
        elif op in _COMBINE_OPS:
            result = _union(known)
        elif op in _POINTWISE_OPS and len(known) == 1:
            result = known[0]
        outputs = node.output[:1] if op in ("MaxPool", "Dropout", "BatchNormalization") else node.output
        for output in outputs:
            if output:
                fields[output] = result
    return fields


def field_box(field: Field | None, y: int, x: int, input_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The input pixels position (y, x) sees, clamped to the input: (top, left, bottom, right), bottom
    and right exclusive. An unknown field is the whole input."""
    height, width = input_hw
    if field is None:
        return 0, 0, height, width
    top = field.offset[0] + y * field.stride[0]
    left = field.offset[1] + x * field.stride[1]
    return (
        max(0, min(height - 1, top)),
        max(0, min(width - 1, left)),
        max(1, min(height, top + field.size[0])),
        max(1, min(width, left + field.size[1])),
    )
