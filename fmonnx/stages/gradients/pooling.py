"""Gradient rules of the pools and reductions: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool,
ReduceMean, ReduceSum, ReduceMax.

MaxPool sends each output's gradient to the one input its Indices name (a second MaxPool with the
same attributes makes them), added up where windows overlap::

    X -> MaxPool(..., Indices) -> flat indices          dY -> flat
    zeros(X).flat -> ScatterElements(add) -> reshape -> dX     (opset >= 16)
                  -> one ScatterElements per group of non-overlapping windows, summed (13-15)

AveragePool is linear and separable per spatial axis: each axis's matrix A (out x in) is that
AveragePool run on an identity matrix along that axis, and dX = A^T contracted with dY axis by axis.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import numpy_helper

from .emit import Emitter
from .registry import RuleContext, rule

__all__: list[str] = []


_BIG = np.iinfo(np.int64).max


def _flat(emit: Emitter, tensor: str) -> str:
    return emit.op("Reshape", [tensor, emit.ints([-1])], hint="flat")


@rule("MaxPool")
def max_pool(ctx: RuleContext, grads: list) -> dict:
    """Each output's gradient goes to the input its Indices name; overlapping windows add up."""
    emit, x, g = ctx.emit, ctx.input(0), grads[0]
    if g is None:
        return {}
    kernel = list(ctx.attr("kernel_shape"))
    spatial = len(kernel)
    attributes = {a.name: ctx.attr(a.name) for a in ctx.node.attribute}
    attributes["storage_order"] = 0  # row-major indices whatever the model asked for
    _, indices = emit.op("MaxPool", [x], hint="maxpool", outputs=2, **attributes)
    zeros = _flat(emit, emit.zeros_like(x))
    if ctx.opset >= 16:
        flat = emit.op("ScatterElements", [zeros, _flat(emit, indices), _flat(emit, g)], hint="maxpool_dx",
                       reduction="add")
        return {0: emit.reshape_like(flat, x)}
    # opset 13-15 has no reduction: outputs q apart along an axis (q * stride >= extent) never share an input
    strides = list(ctx.attr("strides", [1] * spatial))
    dilations = list(ctx.attr("dilations", [1] * spatial))
    steps = [math.ceil(((k - 1) * d + 1) / s) for k, d, s in zip(kernel, dilations, strides)]
    parts = []
    for offsets in np.ndindex(*steps):
        axes = list(range(2, 2 + spatial))
        starts, ends = emit.ints(offsets), emit.ints([_BIG] * spatial)
        args = [emit.ints(axes), emit.ints(steps)]
        part_g = emit.op("Slice", [g, starts, ends, *args], hint="maxpool_group")
        part_i = emit.op("Slice", [indices, starts, ends, *args], hint="maxpool_group")
        parts.append(emit.op("ScatterElements", [zeros, _flat(emit, part_i), _flat(emit, part_g)], hint="maxpool_dx"))
    flat = parts[0] if len(parts) == 1 else emit.op("Sum", parts, hint="maxpool_dx")
    return {0: emit.reshape_like(flat, x)}


def contract(emit: Emitter, g: str, matrix_t: str, axis: int, rank: int) -> str:
    """Apply ``matrix_t`` (in x out) along ``axis`` of ``g`` (whose length there is out)."""
    if axis == rank - 2:
        return emit.op("MatMul", [matrix_t, g], hint="adjoint")
    matrix = emit.op("Transpose", [matrix_t], hint="matrix", perm=[1, 0])
    if axis == rank - 1:
        return emit.op("MatMul", [g, matrix], hint="adjoint")
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = emit.op("Transpose", [g], hint="moved", perm=perm)
    return emit.op("Transpose", [emit.op("MatMul", [moved, matrix], hint="adjoint")], hint="moved", perm=perm)


def axis_probe(emit: Emitter, x: str, axis: int, batch: int, rank: int) -> str:
    """An identity matrix along ``axis`` of ``x``'s length there, laid out over ``batch`` and ``axis``
    (every other axis 1): an op that acts on ``axis`` alone maps it to its matrix, transposed."""
    length = emit.op("Slice", [emit.shape(x), emit.ints([axis]), emit.ints([axis + 1])], hint="length")
    square = emit.op("ConstantOfShape", [emit.op("Concat", [length, length], hint="square", axis=0)],
                     value=numpy_helper.from_array(np.zeros(1, np.float32)))
    eye = emit.op("EyeLike", [square], hint="eye")
    others = [i for i in range(rank) if i not in (axis, batch)]
    return emit.unsqueeze(eye, others) if others else eye


def probe_matrix_t(emit: Emitter, probed: str, axis: int, batch: int, rank: int) -> str:
    """The (in x out) matrix from an op's output on ``axis_probe``."""
    others = [i for i in range(rank) if i not in (axis, batch)]
    square = emit.squeeze(probed, others) if others else probed
    return square if batch < axis else emit.op("Transpose", [square], hint="matrix_t", perm=[1, 0])


@rule("AveragePool")
def average_pool(ctx: RuleContext, grads: list) -> dict:
    """dX = A_1^T ... A_k^T dY: each axis's pooling matrix is AveragePool on an identity along that axis."""
    emit, x, g = ctx.emit, ctx.input(0), grads[0]
    kernel = list(ctx.attr("kernel_shape"))
    spatial, rank = len(kernel), len(kernel) + 2
    strides = list(ctx.attr("strides", [1] * spatial))
    dilations = ctx.attr("dilations")
    pads = list(ctx.attr("pads", [0] * (2 * spatial)))
    for i in range(spatial):
        attributes = dict(kernel_shape=[1] * spatial, strides=[1] * spatial, pads=[0] * (2 * spatial),
                          auto_pad=ctx.attr("auto_pad", "NOTSET"), ceil_mode=ctx.attr("ceil_mode", 0),
                          count_include_pad=ctx.attr("count_include_pad", 0))
        attributes["kernel_shape"][i], attributes["strides"][i] = kernel[i], strides[i]
        attributes["pads"][i], attributes["pads"][spatial + i] = pads[i], pads[spatial + i]
        if attributes["auto_pad"] != "NOTSET":
            del attributes["pads"]
        if dilations:
            attributes["dilations"] = [1] * spatial
            attributes["dilations"][i] = dilations[i]
        probe = axis_probe(emit, x, 2 + i, 0, rank)
        pooled = emit.op("AveragePool", [probe], hint="avgpool_matrix", **attributes)
        g = contract(emit, g, probe_matrix_t(emit, pooled, 2 + i, 0, rank), 2 + i, rank)
    return {0: g}


def _count(emit: Emitter, x: str, y: str) -> str:
    """How many inputs each output averages (float): size(X) / size(Y)."""
    return emit.op("Cast", [emit.op("Div", [emit.op("Size", [x]), emit.op("Size", [y])])], to=1, hint="count")


@rule("GlobalAveragePool")
def global_average_pool(ctx: RuleContext, grads: list) -> dict:
    emit, x = ctx.emit, ctx.input(0)
    spread = emit.op("Expand", [grads[0], emit.shape(x)], hint="spread")
    return {0: emit.op("Div", [spread, _count(emit, x, ctx.output(0))], hint="gap_dx")}


def _split_among_maxima(emit: Emitter, x: str, y_kept: str, g_kept: str, sum_axes: str | None, noop: int) -> str:
    """dY shared evenly among the inputs equal to their output's max (like torch.amax)."""
    mask = emit.op("Cast", [emit.op("Equal", [x, y_kept])], to=1, hint="is_max")
    inputs = [mask] if sum_axes is None else [mask, sum_axes]
    ties = emit.op("ReduceSum", inputs, hint="ties", keepdims=1, noop_with_empty_axes=noop)
    return emit.op("Mul", [mask, emit.op("Div", [g_kept, ties])], hint="max_dx")


@rule("GlobalMaxPool")
def global_max_pool(ctx: RuleContext, grads: list) -> dict:
    emit, x = ctx.emit, ctx.input(0)
    axes = emit.ints(range(2, ctx.known_rank(x)))
    return {0: _split_among_maxima(emit, x, ctx.output(0), grads[0], axes, 0)}


def _reduce_axes(ctx: RuleContext) -> str | None:
    """The reduction's axes tensor (attribute before opset 18 for ReduceMean/Max, input otherwise); None: all."""
    if ctx.node.op_type == "ReduceSum" or ctx.opset >= 18:
        return ctx.input(1) or None
    axes = ctx.attr("axes")
    return ctx.emit.ints(axes) if axes else None


def _kept(ctx: RuleContext, tensor: str, axes: str | None) -> str:
    """``tensor`` (shaped like the output) with the reduced axes back as size 1, when keepdims=0."""
    if ctx.attr("keepdims", 1):
        return tensor
    if axes is None:  # reduced over all: a scalar broadcasts as it is
        return tensor
    return ctx.emit.op("Unsqueeze", [tensor, axes], hint="kept")


@rule("ReduceSum", "ReduceMean")
def reduce_sum_mean(ctx: RuleContext, grads: list) -> dict:
    emit, x = ctx.emit, ctx.input(0)
    axes = _reduce_axes(ctx)
    spread = emit.op("Expand", [_kept(ctx, grads[0], axes), emit.shape(x)], hint="spread")
    if ctx.node.op_type == "ReduceSum":
        return {0: spread}
    return {0: emit.op("Div", [spread, _count(emit, x, ctx.output(0))], hint="mean_dx")}


@rule("ReduceMax")
def reduce_max(ctx: RuleContext, grads: list) -> dict:
    emit, x = ctx.emit, ctx.input(0)
    axes = _reduce_axes(ctx)
    noop = ctx.attr("noop_with_empty_axes", 0)
    if axes is None and noop:  # no axes and noop: the identity
        return {0: grads[0]}
    y_kept, g_kept = _kept(ctx, ctx.output(0), axes), _kept(ctx, grads[0], axes)
    return {0: _split_among_maxima(emit, x, y_kept, g_kept, axes, noop)}
