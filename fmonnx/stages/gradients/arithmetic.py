"""Gradient rules of the broadcasting arithmetic ops: Add, Sub, Mul, Div, Sum, Mean, Max, Min, Where,
Expand, Tile. Numpy broadcasting is undone with ``Emitter.sum_to_shape`` (axes found at run time)."""

from __future__ import annotations

from ...errors import GradientError
from .registry import RuleContext, rule

__all__: list[str] = []


def _static_shape(ctx: RuleContext, tensor: str):
    tensor_type = ctx.type_of(tensor)
    shape = None if tensor_type is None else tensor_type.shape
    return shape if shape is not None and all(isinstance(size, int) for size in shape) else None


def _unbroadcast(ctx: RuleContext, gradient: str, operand: str) -> str:
    """``gradient`` summed to ``operand``'s shape; no nodes when both shapes are known and equal."""
    shape = _static_shape(ctx, operand)
    if shape is not None and shape == _static_shape(ctx, ctx.output(0)):
        return gradient
    return ctx.emit.sum_to_shape(gradient, operand, ctx.output(0))


@rule("Add", "Sum")
def add(ctx: RuleContext, grads: list) -> dict:
    return {i: _unbroadcast(ctx, grads[0], ctx.input(i)) for i in range(len(ctx.node.input)) if ctx.needs(i)}


@rule("Sub")
def sub(ctx: RuleContext, grads: list) -> dict:
    result = {}
    if ctx.needs(0):
        result[0] = _unbroadcast(ctx, grads[0], ctx.input(0))
    if ctx.needs(1):
        result[1] = _unbroadcast(ctx, ctx.emit.op("Neg", [grads[0]]), ctx.input(1))
    return result


@rule("Mul")
def mul(ctx: RuleContext, grads: list) -> dict:
    a, b, g = ctx.input(0), ctx.input(1), grads[0]
    result = {}
    if ctx.needs(0):
        result[0] = _unbroadcast(ctx, ctx.emit.op("Mul", [g, b]), a)
    if ctx.needs(1):
        result[1] = _unbroadcast(ctx, ctx.emit.op("Mul", [g, a]), b)
    return result


@rule("Div")
def div(ctx: RuleContext, grads: list) -> dict:
    """d(a/b)/da = 1/b; d(a/b)/db = -a/b^2 = -y/b."""
    emit, a, b, g = ctx.emit, ctx.input(0), ctx.input(1), grads[0]
    result = {}
    if ctx.needs(0):
        result[0] = _unbroadcast(ctx, emit.op("Div", [g, b]), a)
    if ctx.needs(1):
        scaled = emit.op("Div", [emit.op("Mul", [g, ctx.output(0)]), b])
        result[1] = _unbroadcast(ctx, emit.op("Neg", [scaled]), b)
    return result


@rule("Mean")
def mean(ctx: RuleContext, grads: list) -> dict:
    share = ctx.emit.op("Mul", [grads[0], ctx.emit.scalar(1.0 / len(ctx.node.input))])
    return {i: _unbroadcast(ctx, share, ctx.input(i)) for i in range(len(ctx.node.input)) if ctx.needs(i)}


@rule("Max", "Min")
def extremum(ctx: RuleContext, grads: list) -> dict:
    """The gradient goes to the operand that holds the result; on ties, to the first such operand only."""
    emit, y, g = ctx.emit, ctx.output(0), grads[0]
    zero = emit.scalar(0.0)
    result = {}
    taken = None
    for i, operand in enumerate(ctx.node.input):
        holds = emit.op("Equal", [operand, y], hint="holds")
        if taken is not None:
            holds = emit.op("And", [holds, emit.op("Not", [taken])])
        if ctx.needs(i):
            result[i] = _unbroadcast(ctx, emit.op("Where", [holds, g, zero]), operand)
        taken = holds if taken is None else emit.op("Or", [taken, holds])
    return result


@rule("Where")
def where(ctx: RuleContext, grads: list) -> dict:
    """The condition is boolean: no gradient."""
    emit, condition, g = ctx.emit, ctx.input(0), grads[0]
    zero = emit.scalar(0.0)
    result = {}
    if ctx.needs(1):
        result[1] = _unbroadcast(ctx, emit.op("Where", [condition, g, zero]), ctx.input(1))
    if ctx.needs(2):
        result[2] = _unbroadcast(ctx, emit.op("Where", [condition, zero, g]), ctx.input(2))
    return result


@rule("Expand")
def expand(ctx: RuleContext, grads: list) -> dict:
    return {0: _unbroadcast(ctx, grads[0], ctx.input(0))}


@rule("Tile")
def tile(ctx: RuleContext, grads: list) -> dict:
    """Output axis k is repeats[k] copies of input axis k: view it as (repeats[k], size[k]) and sum the copies."""
    emit, x = ctx.emit, ctx.input(0)
    rank = ctx.rank(x)
    if rank is None:
        raise GradientError(f"{ctx.describe()}: the rank of its input is unknown; a Tile gradient needs it")
    if rank == 0:
        return {0: emit.reshape_like(grads[0], x)}
    repeats = emit.unsqueeze(ctx.input(1), [1])
    sizes = emit.unsqueeze(emit.shape(x), [1])
    pairs = emit.op("Reshape", [emit.op("Concat", [repeats, sizes], axis=1), emit.ints([-1])], hint="pairs")
    split = emit.op("Reshape", [grads[0], pairs], hint="copies")
    return {0: emit.reduce_sum(split, list(range(0, 2 * rank, 2)), keepdims=False)}
