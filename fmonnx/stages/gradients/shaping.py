"""Gradient rules of the ops that move or copy values: Identity, Dropout, Cast, Reshape, Flatten,
Transpose, Squeeze, Unsqueeze, Concat, Split, Slice, Pad, Gather.

Slice, Gather and Pad (edge, reflect, wrap) share one trick: the forward op is applied to a
tensor of flat element indices shaped like its input, which says exactly where each output
element came from (clamping, negative steps and indices included); the gradient is then
scattered back to those places.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ...errors import GradientError
from .registry import RuleContext, rule

__all__: list[str] = []

# ScatterElements' reduction attribute (to add up repeated indices) exists from this opset
_SCATTER_ADD_OPSET = 16


@rule("Identity", "Dropout")
def identity(ctx: RuleContext, grads: list) -> dict:
    """Dropout in inference mode is the identity (its mask output has no gradient)."""
    return {0: grads[0]}


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: RuleContext, grads: list) -> dict:
    """Values keep their order: the gradient takes the input's shape back."""
    return {0: ctx.emit.reshape_like(grads[0], ctx.input(0))}


@rule("Cast")
def cast(ctx: RuleContext, grads: list) -> dict:
    """The gradient goes back in the input's float type (float16 input, float32 compute, say)."""
    tensor_type = ctx.type_of(ctx.input(0))
    if tensor_type is None or not tensor_type.is_float:
        return {0: grads[0]}
    return {0: ctx.emit.op("Cast", [grads[0]], to=tensor_type.elem_type)}


@rule("Transpose")
def transpose(ctx: RuleContext, grads: list) -> dict:
    perm = ctx.attr("perm")
    if perm is None:
        rank = ctx.rank(ctx.input(0))
        if rank is None:
            # the default perm reverses the axes: its own inverse
            return {0: ctx.emit.op("Transpose", [grads[0]])}
        perm = list(reversed(range(rank)))
    inverse = [int(axis) for axis in np.argsort(perm)]
    return {0: ctx.emit.op("Transpose", [grads[0]], perm=inverse)}


@rule("Concat")
def concat(ctx: RuleContext, grads: list) -> dict:
    """Each input gets its run-time-sized piece of the gradient along the axis."""
    emit, axis = ctx.emit, ctx.attr("axis")
    axes = emit.ints([axis])
    start = emit.ints([0])
    result = {}
    for i, operand in enumerate(ctx.node.input):
        end = emit.op("Add", [start, emit.op("Gather", [emit.shape(operand), axes], axis=0)], hint="end")
        if ctx.needs(i):
            result[i] = emit.op("Slice", [grads[0], start, end, axes], hint="piece")
        start = end
    return result


@rule("Split")
def split(ctx: RuleContext, grads: list) -> dict:
    """The pieces' gradients concatenated back; a piece without one counts as zeros."""
    pieces = [g if g is not None else ctx.emit.zeros_like(ctx.output(i)) for i, g in enumerate(grads)]
    return {0: ctx.emit.op("Concat", pieces, axis=ctx.attr("axis", 0))}


def _flat_indices(ctx: RuleContext, tensor: str) -> str:
    """int64 0..n-1 shaped like ``tensor``: each element's flat position."""
    emit = ctx.emit
    count = emit.op("Size", [tensor], hint="count")
    positions = emit.op("Range", [emit.const(np.int64(0)), count, emit.const(np.int64(1))], hint="positions")
    return emit.reshape_like(positions, tensor)


def _scatter_back(ctx: RuleContext, gradient: str, sources: str, tensor: str, add: bool) -> str:
    """Zeros shaped like ``tensor`` with ``gradient`` added at the flat positions ``sources``."""
    emit = ctx.emit
    zeros = emit.op("ConstantOfShape", [emit.unsqueeze(emit.op("Size", [tensor]), [0])], hint="zeros",
                    value=numpy_helper.from_array(np.zeros(1, np.float32)))
    flat = [emit.op("Reshape", [name, emit.ints([-1])]) for name in (sources, gradient)]
    attributes = {"reduction": "add"} if add else {}
    scattered = emit.op("ScatterElements", [zeros, *flat], hint="scattered", axis=0, **attributes)
    return emit.reshape_like(scattered, tensor)


@rule("Slice")
def slice_(ctx: RuleContext, grads: list) -> dict:
    """A slice takes each element at most once: the same Slice of the flat positions says where to scatter."""
    x = ctx.input(0)
    sources = ctx.emit.op("Slice", [_flat_indices(ctx, x), *ctx.node.input[1:]], hint="sources")
    return {0: _scatter_back(ctx, grads[0], sources, x, add=False)}


def _distinct(ctx: RuleContext, x: str, indices: str) -> bool:
    """Whether a Gather's indices are constant and pick each position at most once."""
    value = ctx.value(indices)
    tensor_type = ctx.type_of(x)
    if value is None or tensor_type is None or tensor_type.shape is None:
        return False
    size = tensor_type.shape[ctx.attr("axis", 0)]
    if not isinstance(size, int):
        return False
    positions = np.where(value < 0, value + size, value).ravel()
    return len(np.unique(positions)) == positions.size


@rule("Gather")
def gather(ctx: RuleContext, grads: list) -> dict:
    """Repeated indices add up (ScatterElements reduction, opset 16); before, only known distinct indices."""
    x, indices = ctx.input(0), ctx.input(1)
    add = ctx.opset >= _SCATTER_ADD_OPSET
    if not add and not _distinct(ctx, x, indices):
        raise GradientError(
            f"{ctx.describe()}: below opset {_SCATTER_ADD_OPSET} a Gather gradient needs constant, distinct "
            f"indices and a known axis size; convert the model to opset {_SCATTER_ADD_OPSET} or newer "
            f"(onnx.version_converter) or choose a layer after it")
    sources = ctx.emit.op("Gather", [_flat_indices(ctx, x), indices], hint="sources", axis=ctx.attr("axis", 0))
    return {0: _scatter_back(ctx, grads[0], sources, x, add=add)}


@rule("Pad")
def pad(ctx: RuleContext, grads: list) -> dict:
    """Constant mode: pad the gradient by the negated pads (crops what was added, zero-fills what was cut).
    Edge, reflect and wrap copy input elements: their copies' gradients add up at the source (opset 16)."""
    emit, x = ctx.emit, ctx.input(0)
    mode = ctx.attr("mode", "constant")
    if ctx.opset < 11:
        raise GradientError(f"{ctx.describe()}: Pad with pads as an attribute (opset < 11) has no gradient rule")
    if mode == "constant":
        inputs = [grads[0], emit.op("Neg", [ctx.input(1)], hint="unpads")]
        if ctx.input(3):
            inputs += ["", ctx.input(3)]
        return {0: emit.op("Pad", inputs, hint="unpadded", mode="constant")}
    if ctx.opset < _SCATTER_ADD_OPSET:
        raise GradientError(
            f"{ctx.describe()}: a Pad in {mode} mode needs opset {_SCATTER_ADD_OPSET} or newer for its gradient; "
            f"convert the model (onnx.version_converter) or choose a layer after it")
    inputs = [_flat_indices(ctx, x), ctx.input(1)]
    if ctx.input(3):
        inputs += ["", ctx.input(3)]
    sources = emit.op("Pad", inputs, hint="sources", mode=mode)
    return {0: _scatter_back(ctx, grads[0], sources, x, add=True)}
