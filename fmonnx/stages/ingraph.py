"""Draw inside the graph: nodes after each shown tensor that make its per-channel statistics, its
picture's palette indices and the page's levels, so onnxruntime hands back uint8 maps and five
numbers a channel instead of float maps (on CUDA the float maps never leave the device).

For a shown tensor x (rank 4, channel axis at any position), appended to the model::

    stats    (5, C) float32  mean, std, min, max, zero fraction over the image's pixels
    indices  (N, C, H, W) uint8  each value's palette index: ``to_palette_indices(normalize(x))``
    levels   (N, C, H, W) uint8  with the page only: ``report.page.quantize(x)``

The arithmetic is numpy's op for op, in float32 and in the same order (``x - mean``, ``/ std``,
``* 64``, ``+ 128``, clip, palette), so from the same statistics the pictures are numpy's to the bit
(tests/test_ingraph.py). The statistics are float32 sums where numpy's std sums in float64: a value on
a grey level's edge may land one level off the numpy path's. Dead channels are decided in float64
from the float32 min and max, exactly as ``normalize.flat_spread`` decides them.

Non-finite values are not drawn here: one makes its channel's mean non-finite, and the render takes
that image's float maps instead (``finite_stats``). Nothing here depends on H and W: dynamic sizes run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .colormap import DATA_LEVELS
from .normalize import FLAT_TOLERANCE, METHODS
from .stats import CHANNEL_FIELDS

__all__ = ["MIN_OPSET", "DrawnOutputs", "Shown", "drawing_suffix", "opset_of", "stats_columns", "finite_stats"]

MIN_OPSET = 13  # Reduce* with axes attributes, Clip with inputs, Round: one form of each op to emit
# the palette index of a normalized value v is round(v * 253 / 255) (colormap._INDEX_OF_VALUE); v * 253 / 255
# is never within 1/510 of a half, so float32 rounding of v / (255 / 253) cannot change it
_PALETTE_SCALE = np.float32(255 / (DATA_LEVELS - 1))
_FLOAT_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
GROUP_BYTES = 4 << 20  # float bytes drawn together at most: a group's temporaries are ~6x (arena)


@dataclass(frozen=True)
class Shown:
    """A tensor to draw: its name, element type, channel axis (1..3 of N, ., ., .) and inferred shape
    (ints where known, None when the rank is)."""

    tensor: str
    elem_type: int
    channel_axis: int
    shape: tuple | None = None

    @property
    def static(self) -> bool:
        return self.shape is not None and len(self.shape) == 4 and all(isinstance(dim, int) for dim in self.shape) \
            and self.shape[0] == 1

    @property
    def channels(self) -> int | None:
        return self.shape[self.channel_axis] if self.static else None

    @property
    def spatial(self) -> tuple | None:
        return tuple(dim for axis, dim in enumerate(self.shape) if axis not in (0, self.channel_axis)) \
            if self.static else None

    @property
    def bytes(self) -> int | None:
        return 4 * int(np.prod(self.shape)) if self.static else None


@dataclass(frozen=True)
class DrawnOutputs:
    """The graph outputs made for one shown tensor, and the order of its axes in ``indices``/``levels``."""

    stats: str
    indices: str
    levels: str | None
    perm: tuple[int, ...]  # raw axes -> (N, C, H, W)
    # this tensor's channels in the outputs, shared by the tensors drawn with it
    channels: slice = field(default_factory=lambda: slice(None))


def opset_of(model: onnx.ModelProto) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)


class _Emitter:
    """Appends nodes and constants under one prefix no model name starts with."""

    def __init__(self, model: onnx.ModelProto):
        self.opset = opset_of(model)
        names = {name for node in model.graph.node for name in node.output}
        names.update(tensor.name for tensor in model.graph.initializer)
        names.update(value.name for value in model.graph.input)
        prefix, number = "fmonnx_draw/", 0
        while any(name.startswith(prefix) for name in names):
            number += 1
            prefix = f"fmonnx_draw{number}/"
        self.prefix = prefix
        self.suffix = onnx.ModelProto()
        self.count = 0
        self.constants: dict[tuple, str] = {}

    def node(self, op: str, inputs: list[str], **attributes) -> str:
        self.count += 1
        output = f"{self.prefix}{self.count}"
        self.suffix.graph.node.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def reduce(self, op: str, x: str, axes: list[int] | None, keepdims: int) -> str:
        """A Reduce* node over ``axes`` (None: all); from opset 18 the axes are an input."""
        if axes is None:
            return self.node(op, [x], keepdims=keepdims)
        if self.opset >= 18:
            return self.node(op, [x, self.constant(np.array(axes, dtype=np.int64))], keepdims=keepdims)
        return self.node(op, [x], axes=axes, keepdims=keepdims)

    def constant(self, value) -> str:
        array = np.asarray(value)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.constants:
            name = f"{self.prefix}c{len(self.constants)}"
            self.suffix.graph.initializer.append(numpy_helper.from_array(array, name))
            self.constants[key] = name
        return self.constants[key]

    def output(self, name: str, elem_type: int) -> None:
        self.suffix.graph.output.append(helper.make_tensor_value_info(name, elem_type, None))


def _flat(emit: _Emitter, low: str, high: str, spread: str) -> str:
    """float64 ``normalize.flat_spread``: spread (high - low) <= FLAT_TOLERANCE * max(|low|, |high|)."""
    magnitude = emit.node("Max", [emit.node("Abs", [low]), emit.node("Abs", [high])])
    return emit.node("LessOrEqual", [spread, emit.node("Mul", [magnitude, emit.constant(np.float64(FLAT_TOLERANCE))])])


def _normalized(emit: _Emitter, x: str, d: str, method: str, std: str, low: str, low64: str, high64: str,
                span64: str, dead: str) -> str:
    """normalize.py's arithmetic before the clip; a dead channel (or layer) divides by infinity, so it
    comes out as its flat value (128 standardized, 0 otherwise) exactly."""
    infinity = emit.constant(np.float32(np.inf))
    if method == "standardize":
        std = emit.node("Where", [dead, infinity, std])
        scaled = emit.node("Div", [d, std])
        return emit.node("Add", [emit.node("Mul", [scaled, emit.constant(np.float32(64))]),
                                 emit.constant(np.float32(128))])
    if method == "minmax":
        span, start = span64, low
    else:  # "layer": one min and max for the whole layer, judged as one channel
        low64 = emit.reduce("ReduceMin", low64, None, 0)
        high64 = emit.reduce("ReduceMax", high64, None, 0)
        span = emit.node("Sub", [high64, low64])
        dead = _flat(emit, low64, high64, span)
        start = emit.node("Cast", [low64], to=TensorProto.FLOAT)
    zero = emit.node("Equal", [span, emit.constant(np.float64(0))])
    span = emit.node("Cast", [emit.node("Where", [zero, emit.constant(np.float64(1)), span])], to=TensorProto.FLOAT)
    span = emit.node("Where", [dead, infinity, span])
    scaled = emit.node("Div", [emit.node("Sub", [x, start]), span])
    return emit.node("Mul", [scaled, emit.constant(np.float32(255))])


def _levels(emit: _Emitter, x: str, low: str, span64: str) -> str:
    """report.page.quantize: round((x - min) * (255 / span)) per channel, 0 where the span is 0."""
    span = emit.node("Cast", [span64], to=TensorProto.FLOAT)
    positive = emit.node("Greater", [span, emit.constant(np.float32(0))])
    one = emit.constant(np.float32(1))
    factor = emit.node("Div", [emit.constant(np.float32(255)), emit.node("Where", [positive, span, one])])
    factor = emit.node("Where", [positive, factor, emit.constant(np.float32(0))])
    factor = emit.node("Min", [factor, emit.constant(np.finfo(np.float32).max)])
    scaled = emit.node("Mul", [emit.node("Sub", [x, low]), factor])
    return emit.node("Cast", [emit.node("Add", [scaled, emit.constant(np.float32(0.5))])], to=TensorProto.UINT8)


def _draw_group(emit: _Emitter, group: list[Shown], method: str, page: bool) -> dict[str, DrawnOutputs]:
    """The drawing nodes of tensors of one size and channel axis, concatenated along it: one node of each
    kind for the group (onnxruntime's session opening costs about 0.1 ms a node)."""
    first = group[0]
    xs = [emit.node("Cast", [item.tensor], to=TensorProto.FLOAT) if item.elem_type in _FLOAT_TYPES else item.tensor
          for item in group]
    x = emit.node("Concat", xs, axis=first.channel_axis) if len(xs) > 1 else xs[0]
    pixels = [axis for axis in range(4) if axis != first.channel_axis]  # the batch axis too: it is 1
    mean = emit.reduce("ReduceMean", x, pixels, 1)
    low = emit.reduce("ReduceMin", x, pixels, 1)
    high = emit.reduce("ReduceMax", x, pixels, 1)
    d = emit.node("Sub", [x, mean])
    # the pixels a channel has, from the run: an inferred size can be wrong (a declared shape the run contradicts)
    sizes = emit.node("Gather", [emit.node("Shape", [x]), emit.constant(np.array(pixels, dtype=np.int64))])
    count = emit.node("Cast", [emit.reduce("ReduceProd", sizes, None, 0)], to=TensorProto.FLOAT)
    std = emit.node("Sqrt", [emit.node("Div", [emit.reduce("ReduceSumSquare", d, pixels, 1), count])])
    is_zero = emit.node("Cast", [emit.node("Equal", [x, emit.constant(np.float32(0))])], to=TensorProto.FLOAT)
    zeros = emit.reduce("ReduceMean", is_zero, pixels, 1)
    stats = emit.node("Concat", [mean, std, low, high, zeros], axis=0)
    low64 = emit.node("Cast", [low], to=TensorProto.DOUBLE)
    high64 = emit.node("Cast", [high], to=TensorProto.DOUBLE)
    span64 = emit.node("Sub", [high64, low64])
    dead = _flat(emit, low64, high64, span64)
    scaled = _normalized(emit, x, d, method, std, low, low64, high64, span64, dead)
    clipped = emit.node("Clip", [scaled, emit.constant(np.float32(0)), emit.constant(np.float32(255))])
    # numpy's astype(uint8) of a value in 0..255 is its floor; QuantizeLinear's round(v / scale) is then
    # the palette index in one kernel
    indices = emit.node("QuantizeLinear", [emit.node("Floor", [clipped]), emit.constant(_PALETTE_SCALE),
                                           emit.constant(np.uint8(0))])
    levels = _levels(emit, x, low, span64) if page else None
    perm = (0, first.channel_axis, *(axis for axis in (1, 2, 3) if axis != first.channel_axis))
    if perm != (0, 1, 2, 3):  # channels first, as numpy's maps: a uint8 transpose, a quarter of a float one
        indices = emit.node("Transpose", [indices], perm=list(perm))
        levels = emit.node("Transpose", [levels], perm=list(perm)) if levels else None
    emit.output(stats, TensorProto.FLOAT)
    emit.output(indices, TensorProto.UINT8)
    if levels:
        emit.output(levels, TensorProto.UINT8)
    drawn, start = {}, 0
    for item in group:
        channels = slice(start, start + item.channels) if len(group) > 1 else slice(None)
        drawn[item.tensor] = DrawnOutputs(stats, indices, levels, perm, channels)
        start += item.channels or 0
    return drawn


def _groups(shown: list[Shown], method: str) -> list[list[Shown]]:
    """Tensors drawn together: the same channel axis and static size, at most GROUP_BYTES of floats
    each. A group's temporaries (the concatenation, x - mean, the normalization's steps) are what
    drawing in the graph holds beyond the maps: on a ResNet-50 with the page, groups of 4 MB peak at
    341 MB resident against 405 MB for 16 MB groups (the numpy path: 303 MB), for a session that
    opens in 132 ms against 60 ms. A tensor whose size is not known, and every tensor for the
    ``layer`` method (one scale per tensor), stands alone."""
    groups: list[list[Shown]] = []
    open_groups: dict[tuple, tuple[list[Shown], int]] = {}
    for item in shown:
        size = item.bytes
        if method == "layer" or size is None or size > GROUP_BYTES:
            groups.append([item])
            continue
        key = (item.channel_axis, item.spatial)
        group, held = open_groups.get(key, (None, 0))
        if group is None or held + size > GROUP_BYTES:
            group, held = [], 0
            groups.append(group)
        group.append(item)
        open_groups[key] = (group, held + size)
    return groups


def drawing_suffix(model: onnx.ModelProto, shown: list[Shown], method: str, page: bool, grouped: bool = True
                   ) -> tuple[bytes, dict[str, DrawnOutputs]] | None:
    """Serialized ModelProto bytes that, appended to the model's (see expose.exposed_suffix), add the
    drawing nodes and outputs of every ``shown`` tensor; with them, each tensor's DrawnOutputs.
    ``grouped=False`` draws every tensor alone (no size is trusted: a model that declares a wrong
    shape makes onnxruntime refuse the concatenation of a group).

    None when the model's opset is below MIN_OPSET (the render draws with numpy then).
    """
    if method not in METHODS:
        raise ValueError(f"unknown normalization {method!r}; choose one of {METHODS}")
    if opset_of(model) < MIN_OPSET:
        return None
    emit = _Emitter(model)
    outputs: dict[str, DrawnOutputs] = {}
    for group in _groups(shown, method) if grouped else [[item] for item in shown]:
        outputs.update(_draw_group(emit, group, method, page))
    return emit.suffix.SerializeToString(), outputs


def stats_columns(stats: np.ndarray) -> dict[str, np.ndarray]:
    """The (5, C) stats output -> float64 columns named as ChannelStats' fields."""
    table = np.asarray(stats, dtype=np.float64).reshape(len(CHANNEL_FIELDS), -1)
    return dict(zip(CHANNEL_FIELDS, table))


def finite_stats(stats: np.ndarray) -> bool:
    """False when a channel held a non-finite value (or summed past float32): draw it with numpy."""
    return bool(np.isfinite(stats).all())
