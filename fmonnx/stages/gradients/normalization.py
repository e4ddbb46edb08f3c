"""Gradient rules of the normalizations: BatchNormalization (inference), LayerNormalization,
InstanceNormalization.

BatchNormalization in inference mode is a per-channel scale. The other two normalize over axes
with statistics of the input itself, so dX is the full formula (xhat = (x - mean) * rstd)::

    dxhat = dY * scale
    dX = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))     (means over the normalized axes)
"""

from __future__ import annotations

from ...errors import GradientError
from .emit import Emitter
from .registry import RuleContext, rule

__all__: list[str] = []


def _per_channel(emit: Emitter, vector: str, rank: int) -> str:
    """A (C,) tensor shaped to broadcast on axis 1 of a rank-``rank`` tensor."""
    return emit.unsqueeze(vector, list(range(1, rank - 1))) if rank > 2 else vector


def _mean(emit: Emitter, tensor: str, axes: list[int]) -> str:
    """Mean over ``axes`` (kept), as a ReduceSum over a run-time count: ReduceSum takes axes as input from 13."""
    total = emit.reduce_sum(tensor, axes, keepdims=True)
    count = emit.op("Cast", [emit.op("Div", [emit.op("Size", [tensor]), emit.op("Size", [total])])], to=1,
                    hint="count")
    return emit.op("Div", [total, count], hint="mean")


def _normalized_gradient(emit: Emitter, x: str, dxhat: str, axes: list[int], epsilon: float) -> str:
    """dX of xhat = (x - mean) / sqrt(var + eps) over ``axes``, given d xhat."""
    centered = emit.op("Sub", [x, _mean(emit, x, axes)], hint="centered")
    variance = _mean(emit, emit.op("Mul", [centered, centered]), axes)
    rstd = emit.op("Reciprocal", [emit.op("Sqrt", [emit.op("Add", [variance, emit.scalar(epsilon)])])], hint="rstd")
    xhat = emit.op("Mul", [centered, rstd], hint="xhat")
    projection = emit.op("Mul", [xhat, _mean(emit, emit.op("Mul", [dxhat, xhat]), axes)])
    inner = emit.op("Sub", [emit.op("Sub", [dxhat, _mean(emit, dxhat, axes)]), projection])
    return emit.op("Mul", [rstd, inner], hint="norm_dx")


@rule("BatchNormalization")
def batch_normalization(ctx: RuleContext, grads: list) -> dict:
    """Inference mode: dX = dY * scale / sqrt(var + eps), per channel (axis 1)."""
    if ctx.attr("training_mode", 0) or len([o for o in ctx.node.output if o]) > 1:
        raise GradientError(f"{ctx.describe()}: gradients are written for inference-mode BatchNormalization only; "
                            f"export the model in eval mode")
    emit, x = ctx.emit, ctx.input(0)
    epsilon = float(ctx.attr("epsilon", 1e-5))
    std = emit.op("Sqrt", [emit.op("Add", [ctx.input(4), emit.scalar(epsilon)])], hint="std")
    factor = _per_channel(emit, emit.op("Div", [ctx.input(1), std], hint="bn_factor"), ctx.known_rank(x))
    return {0: emit.op("Mul", [grads[0], factor], hint="bn_dx")}


@rule("LayerNormalization")
def layer_normalization(ctx: RuleContext, grads: list) -> dict:
    """Normalized over axes axis..rank-1; only X gets a gradient (Mean and InvStdDev outputs have none)."""
    emit, x, g = ctx.emit, ctx.input(0), grads[0]
    if g is None:
        return {}
    rank = ctx.known_rank(x)
    axis = ctx.attr("axis", -1)
    axis = axis + rank if axis < 0 else axis
    dxhat = emit.op("Mul", [g, ctx.input(1)], hint="dxhat")
    return {0: _normalized_gradient(emit, x, dxhat, list(range(axis, rank)), float(ctx.attr("epsilon", 1e-5)))}


@rule("InstanceNormalization")
def instance_normalization(ctx: RuleContext, grads: list) -> dict:
    """Normalized over the spatial axes of each sample and channel; scale is per channel."""
    emit, x = ctx.emit, ctx.input(0)
    rank = ctx.known_rank(x)
    dxhat = emit.op("Mul", [grads[0], _per_channel(emit, ctx.input(1), rank)], hint="dxhat")
    return {0: _normalized_gradient(emit, x, dxhat, list(range(2, rank)), float(ctx.attr("epsilon", 1e-5)))}
