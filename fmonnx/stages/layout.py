"""Which axis of each tensor holds the channels, derived from the graph.

ONNX defines Conv, MaxPool, BatchNormalization and friends on N,C,H,W, even
when the model's input is N,H,W,C (converters insert Transposes). Layouts are
propagated forward from the graph input and from those ops: a Transpose
moves the channel axis by its ``perm``; element-wise ops, normalizations
(LayerNormalization over the last axis of a B,H,W,C stage) and reductions that
keep their dims keep their input's layout; a MatMul of a channels-last tensor
by a 2-D [C, C'] weight mixes only the channels, so it stays channels-last.
Sizes are never used to guess, except for the image input itself, whose
channel axis is the one of size 1, 3 or 4. Transformer tokens (rank 3) whose
tokens are a 4-D tensor's pixels are followed alongside (tokens.py), and so is
what each axis holds through Reshapes and Transposes of any rank (axes.py), so
an image reshaped through 6-D tensors and back (Swin's patch merging, window
reverse; MobileViT's fold) is proven an image again.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..errors import ModelError
from . import axes as axis_algebra
from .shapes import TensorType

__all__ = ["Layout", "detect_input_layout", "channel_axes", "chw_shape", "maps_of_sequences", "IMAGE_CHANNELS"]


IMAGE_CHANNELS = (1, 3, 4)

# Ops whose 4-D output is N,C,H,W by the ONNX spec.
_CHANNELS_FIRST_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool",
        "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "BatchNormalization",
        "InstanceNormalization", "LRN", "MaxUnpool", "DepthToSpace", "SpaceToDepth",
        "DeformConv", "RoiAlign", "MaxRoiPool", "Col2Im",
    }
)
# Ops whose output has the layout of their first 4-D input.
_LAYOUT_PRESERVING_OPS = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish",
        "Tanh", "Softplus", "Softsign", "Mish", "Clip", "Identity", "Dropout", "Cast", "Neg", "Abs", "Exp",
        "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Erf", "Sin", "Cos", "ThresholdedRelu",
        "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Pad", "Slice",
        "QuantizeLinear", "DequantizeLinear", "Shrink", "Sign", "Not", "BitShift", "Concat", "Resize",
        "Upsample", "Tile", "Expand", "Softmax", "LogSoftmax",
        # same shape out as in, whatever axes they normalize over
        "LayerNormalization", "GroupNormalization", "RMSNormalization", "MeanVarianceNormalization",
    }
)
# With keepdims (the default) a reduction leaves every axis where it was, sized 1 where reduced.
_REDUCE_OPS = frozenset(
    {
        "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
    }
)
# Ops that only reshape: the elements stay in row-major order, so their static shapes say where each goes.
_RESHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
# Only the first output is the normalized tensor; the others are statistics or masks.
_FIRST_OUTPUT_OPS = frozenset({"MaxPool", "Dropout", "BatchNormalization", "LayerNormalization"})


@dataclass(frozen=True)
class Layout:
    """Channel axis of a tensor and whether the graph proved it. ``rank`` 4 has a batch axis first;
    rank 3 is an image input without one (C,H,W or H,W,C: a detection model's list of images)."""

    channel_axis: int
    certain: bool
    rank: int = 4

    @property
    def name(self) -> str:
        names = {4: {1: "NCHW", 3: "NHWC"}, 3: {0: "CHW", 2: "HWC"}}[self.rank]
        return names.get(self.channel_axis, f"channels on axis {self.channel_axis}")

    @property
    def channels_first(self) -> bool:
        return self.channel_axis == self.rank - 3

    @property
    def hw_axes(self) -> tuple[int, int]:
        """The axes of height and width."""
        first = self.rank - 3
        height, width = (axis for axis in (first, first + 1, first + 2) if axis != self.channel_axis)
        return height, width


def detect_input_layout(shape: tuple, forced: str | None = None) -> Layout:
    """Layout of an image input of rank 4, or of rank 3 without a batch axis, from its shape;
    ``forced`` ("NCHW"/"NHWC", meaning CHW/HWC at rank 3) overrides.

    The channel axis is the one of size 1, 3 or 4 among the first and last axes after the batch; a
    symbolic or other size there rules that axis out. When both fit (a
    3x3 image with 3 channels), channels first is taken and marked uncertain.
    """
    if len(shape) not in (3, 4):
        raise ModelError(
            f"the model input has shape {list(shape)}; fmonnx needs an image input of rank 4 "
            "(N,C,H,W or N,H,W,C) or 3 (C,H,W or H,W,C)"
        )
    rank = len(shape)
    first_axis, last_axis = rank - 3, rank - 1
    if forced:
        return Layout(first_axis if forced.upper() == "NCHW" else last_axis, True, rank)
    first, last = shape[first_axis] in IMAGE_CHANNELS, shape[last_axis] in IMAGE_CHANNELS
    if first and not last:
        return Layout(first_axis, True, rank)
    if last and not first:
        return Layout(last_axis, True, rank)
    if first and last:
        return Layout(first_axis, False, rank)
    raise ModelError(
        f"the model input has shape {list(shape)}: no axis of size 1, 3 or 4 for image channels; "
        "fmonnx feeds grayscale, RGB or RGBA images (pass --input-layout if the channel axis is symbolic)"
    )


def chw_shape(shape: tuple | None, layout: Layout) -> list | None:
    """A 4-D tensor's (C, H, W) sizes, batch axis dropped, channels taken from ``layout``."""
    if shape is None or len(shape) != 4:
        return None
    spatial = [axis for axis in (1, 2, 3) if axis != layout.channel_axis]
    return [shape[layout.channel_axis], *(shape[axis] for axis in spatial)]


def _transpose_perm(node: onnx.NodeProto) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


def _keepdims(node: onnx.NodeProto) -> bool:
    return all(attr.i != 0 for attr in node.attribute if attr.name == "keepdims")


def channel_axes(
    model: onnx.ModelProto,
    types: dict[str, TensorType],
    input_layout: Layout | None,
    grids: dict | None = None,
    not_maps: set | None = None,
) -> dict[str, Layout]:
    """Propagate channel axes through the graph; returns a Layout for every 4-D tensor reached.

    ``not_maps``, when given, is filled with the outputs of Conv-like ops whose input the axis algebra
    shows is not an image (a sequence rearranged to 4-D: YOLO's DFL); see ``maps_of_sequences``.

    ``grids``, when given, is filled with the ``tokens.TokenGrid`` of every rank-3 token tensor whose
    tokens are proven to be a 4-D tensor's pixels (see tokens.py); tokens reshaped back to (N, h, w, C)
    get that layout.
    """
    from .expose import _Graph
    from .tokens import step

    graph = model.graph
    grids = {} if grids is None else grids
    constants = _Graph(graph)
    layouts: dict[str, Layout] = {}
    initializers = {tensor.name for tensor in graph.initializer}
    image_inputs = [value.name for value in graph.input if value.name not in initializers]
    if input_layout is not None and image_inputs:
        layouts[image_inputs[0]] = input_layout

    initializer_ranks = {tensor.name: len(tensor.dims) for tensor in graph.initializer}

    def rank(name: str) -> int | None:
        tensor_type = types.get(name)
        return tensor_type.rank if tensor_type else initializer_ranks.get(name)

    # What each axis holds (axes.py), only while propagating: users see 4-D Layouts alone.
    atoms: dict[str, axis_algebra.Axes] = {}

    def shape(name: str) -> tuple[int, ...] | None:
        tensor_type = types.get(name)
        return axis_algebra.static_shape(tensor_type.shape) if tensor_type else None

    def axes(name: str) -> axis_algebra.Axes | None:
        if name in atoms:
            return atoms[name]
        layout, static = layouts.get(name), shape(name)
        if layout is None or not layout.certain or layout.rank != 4 or static is None:
            return None
        return axis_algebra.seed(static, layout.channel_axis)

    for node in graph.node:
        op = node.op_type
        result: Layout | None = None
        if op in _CHANNELS_FIRST_OPS:
            result = Layout(1, True)
            source = atoms.get(node.input[0]) if node.input else None
            if not_maps is not None and source is not None and len(source) == 4 \
                    and axis_algebra.image_layout(source) is None:
                not_maps.update(output for output in node.output[:1] if output)
        elif op == "Transpose":
            source = layouts.get(node.input[0]) if node.input else None
            perm = _transpose_perm(node)
            if source is not None:
                perm = perm if perm is not None else [3, 2, 1, 0]
                if source.channel_axis in perm:
                    axis = perm.index(source.channel_axis)
                    # channels moved onto the batch axis: no image layout fmonnx can draw
                    batched = source.rank == 4
                    result = Layout(axis, source.certain, source.rank) if axis != 0 or not batched else None
        elif op in _LAYOUT_PRESERVING_OPS:
            for name in node.input:
                if name in layouts and rank(name) in (4, None):
                    result = layouts[name]
                    break
        elif op in _REDUCE_OPS and node.input and _keepdims(node):
            result = layouts.get(node.input[0])
        elif op == "MatMul" and len(node.input) == 2:
            # x[..., C] @ w[C, C'] contracts the last axis only: channels-last in, channels-last out.
            # On any other layout the last axis is spatial and the product mixes pixels.
            source = layouts.get(node.input[0])
            if source is not None and source.channel_axis == source.rank - 1 and rank(node.input[1]) == 2:
                result = source
        made, shaped = step(node, layouts, grids, types, constants.value)
        grids.update(made)
        layouts.update(shaped)
        moved = _follow_atoms(node, axes, shape, rank)
        if moved is not None and node.output[0]:
            atoms[node.output[0]] = moved
            if result is None and op in _RESHAPE_OPS | {"Transpose"} and node.output[0] not in shaped:
                channel = axis_algebra.image_layout(moved)
                result = Layout(channel, True) if channel is not None else None
        if result is None:
            continue
        outputs = node.output[:1] if op in _FIRST_OUTPUT_OPS else node.output
        for output in outputs:
            if output and rank(output) in (4, None):
                layouts[output] = result
    return layouts


def _follow_atoms(node: onnx.NodeProto, axes, shape, rank) -> axis_algebra.Axes | None:
    """The atoms of ``node``'s first output from those of its inputs (``axes(name)``), or None."""
    op = node.op_type
    if not node.input or not node.output:
        return None
    out = shape(node.output[0])
    if out is None:
        return None
    if op in _RESHAPE_OPS:
        source = axes(node.input[0])
        return axis_algebra.reshape(source, out) if source is not None and shape(node.input[0]) else None
    if op == "Transpose":
        source = axes(node.input[0])
        return axis_algebra.transpose(source, _transpose_perm(node)) if source is not None else None
    if op == "MatMul" and len(node.input) == 2 and rank(node.input[1]) == 2:
        source = axes(node.input[0])
        return axis_algebra.contract_last(source, out[-1]) if source is not None and len(source) == len(out) else None
    if op in _LAYOUT_PRESERVING_OPS:
        # every axis where it was: an input of the output's own sizes (not one broadcast up to them)
        for name in node.input:
            source = axes(name) if name and shape(name) == out else None
            if source is not None:
                return source
    return None


# Ops that rearrange or rescale one tensor: a chain of them from a sequence still holds a sequence.
_REARRANGING_OPS = frozenset(
    {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Softmax", "LogSoftmax", "Identity", "Cast"}
)


def maps_of_sequences(model: onnx.ModelProto, types: dict[str, TensorType], layouts: dict[str, Layout]) -> set[str]:
    """Outputs of Conv-like ops whose input is a rank-3 (or other non-4-D) sequence rearranged into 4-D.

    ONNX calls such an output N,C,H,W, but its "H" and "W" are not the image's: YOLO's DFL turns the
    (1, 64, anchors) box logits into (1, 16, 4, anchors) and convolves them into (1, 1, 4, anchors).
    Walks back from the op's input through rearranging ops that carry no layout.
    """
    graph = model.graph
    producer = {output: node for node in graph.node for output in node.output if output}
    inputs = {value.name for value in graph.input}
    found = set()
    for node in graph.node:
        if node.op_type not in _CHANNELS_FIRST_OPS or not node.input:
            continue
        name, steps, reshaped = node.input[0], 0, False
        while name not in layouts and name not in inputs and steps < 16:
            made_by = producer.get(name)
            if made_by is None or made_by.op_type not in _REARRANGING_OPS or not made_by.input:
                break
            source = made_by.input[0]
            source_rank = types[source].rank if source in types else None
            regrouped = made_by.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
            reshaped |= regrouped and source_rank not in (4, None)
            name, steps = source, steps + 1
        if reshaped and name not in layouts and name not in inputs:  # never reached a proven map or the image
            found.update(output for output in node.output[:1] if output)
    return found
