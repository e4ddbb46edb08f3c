"""Gradient rules of the linear ops with weights: Conv, ConvTranspose, Gemm, MatMul.

The input gradient of a Conv is a ConvTranspose with the same weight tensor (by name), and
the other way round; sizes are fixed at run time, so dynamic H/W work::

    dY -> ConvTranspose(W, pads 0) -> Pad end (stride - 1) -> Slice [pad_begin, pad_begin + H) -> dX
"""

from __future__ import annotations

import numpy as np

from ...errors import GradientError
from .emit import Emitter
from .registry import RuleContext, rule

__all__: list[str] = []


_BIG = np.iinfo(np.int64).max


def _spatial_rank(ctx: RuleContext, weight: str) -> int:
    kernel = ctx.attr("kernel_shape")
    if kernel:
        return len(kernel)
    rank = ctx.rank(weight) or ctx.rank(ctx.input(0))
    if rank is None:
        raise GradientError(f"{ctx.describe()}: its rank is unknown; run onnx shape inference on the model, "
                            f"or choose a layer after it")
    return rank - 2


def _kernel(ctx: RuleContext, weight: str, spatial: int) -> list[int]:
    kernel = ctx.attr("kernel_shape")
    if kernel:
        return list(kernel)
    value = ctx.value(weight)
    shape = list(value.shape) if value is not None else None
    if shape is None and ctx.type_of(weight) is not None:
        shape = list(ctx.type_of(weight).shape or [])
    if not shape or any(not isinstance(d, int) for d in shape[2:]):
        raise GradientError(f"{ctx.describe()}: its kernel size is unknown; set kernel_shape, or make the weight "
                            f"a constant")
    return shape[2:2 + spatial]


def _spatial_dims(emit: Emitter, tensor: str) -> str:
    """Shape(tensor)[2:] at run time."""
    return emit.op("Slice", [emit.shape(tensor), emit.ints([2]), emit.ints([_BIG])], hint="spatial")


def _no_weight_gradient(ctx: RuleContext):
    if ctx.needs(1):
        raise GradientError(f"{ctx.describe()}: its weight depends on the chosen tensors; gradients are written "
                            f"for constant weights only: choose a layer after it")


@rule("Conv")
def conv(ctx: RuleContext, grads: list) -> dict:
    """dX = ConvTranspose(dY, W) cropped to X; dB = dY summed over all axes but 1."""
    _no_weight_gradient(ctx)
    emit, g, x, w = ctx.emit, grads[0], ctx.input(0), ctx.input(1)
    spatial = _spatial_rank(ctx, w)
    strides = list(ctx.attr("strides", [1] * spatial))
    dilations = list(ctx.attr("dilations", [1] * spatial))
    group = ctx.attr("group", 1)
    result = {}
    if ctx.needs(2):
        result[2] = emit.reduce_sum(g, [0, *range(2, 2 + spatial)], keepdims=False)
    if not ctx.needs(0):
        return result
    kernel = _kernel(ctx, w, spatial)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    # the gradient of the zero-padded input: (out - 1) * stride + extent, up to stride - 1 short of it
    full = emit.op("ConvTranspose", [g, w], hint="conv_dx", group=group, strides=strides, dilations=dilations,
                   kernel_shape=kernel, pads=[0] * (2 * spatial))
    if any(s > 1 for s in strides):
        pads = emit.ints([0] * (2 + spatial) + [0, 0] + [s - 1 for s in strides])
        full = emit.op("Pad", [full, pads], hint="conv_dx_padded")
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    size = _spatial_dims(emit, x)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        stride = emit.ints(strides)
        out = emit.op("Div", [emit.op("Add", [size, emit.ints([s - 1 for s in strides])]), stride])
        total = emit.op("Sub", [emit.op("Add", [emit.op("Mul", [emit.op("Sub", [out, emit.ints([1])]), stride]),
                                               emit.ints(extent)]), size])
        total = emit.op("Max", [total, emit.ints([0] * spatial)])
        if auto_pad == "SAME_LOWER":
            total = emit.op("Add", [total, emit.ints([1] * spatial)])
        begin = emit.op("Div", [total, emit.ints([2] * spatial)], hint="pad_begin")
    else:
        pads = [0] * (2 * spatial) if auto_pad == "VALID" else list(ctx.attr("pads", [0] * (2 * spatial)))
        begin = emit.ints(pads[:spatial])
    end = emit.op("Add", [begin, size])
    result[0] = emit.op("Slice", [full, begin, end, emit.ints(range(2, 2 + spatial))], hint="conv_dx")
    return result


def _convt_pads(ctx: RuleContext, spatial: int, output_shape: list[int], auto_pad: str) -> str:
    """The Pad pads that take dY back to the uncropped ConvTranspose output, found at run time.

    Full size F = stride * (in - 1) + output_padding + extent; the output is output_shape, or in * stride
    for auto_pad SAME; F - output is cropped, the larger half in front except for SAME_UPPER
    (onnxruntime's and onnx's reference convention).
    """
    emit, w = ctx.emit, ctx.input(1)
    strides = list(ctx.attr("strides", [1] * spatial))
    dilations = list(ctx.attr("dilations", [1] * spatial))
    kernel = _kernel(ctx, w, spatial)
    extra = [op + (k - 1) * d + 1 for op, k, d in zip(ctx.attr("output_padding", [0] * spatial), kernel, dilations)]
    size = _spatial_dims(emit, ctx.input(0))
    full = emit.op("Add", [emit.op("Mul", [emit.op("Sub", [size, emit.ints([1] * spatial)]), emit.ints(strides)]),
                           emit.ints(extra)], hint="convt_full")
    out = emit.ints(output_shape[-spatial:]) if output_shape else emit.op("Mul", [size, emit.ints(strides)])
    total = emit.op("Sub", [full, out], hint="convt_cropped")
    half = emit.op("Div", [total, emit.ints([2] * spatial)])
    begin = half if auto_pad == "SAME_UPPER" else emit.op("Sub", [total, half])
    end = emit.op("Sub", [total, begin])
    zeros = emit.ints([0, 0])
    return emit.op("Concat", [zeros, begin, zeros, end], hint="convt_pads", axis=0)


@rule("ConvTranspose")
def conv_transpose(ctx: RuleContext, grads: list) -> dict:
    """dX = Conv(dY padded back by the cropped pads, W): the adjoint with the same weights."""
    _no_weight_gradient(ctx)
    emit, g, w = ctx.emit, grads[0], ctx.input(1)
    spatial = _spatial_rank(ctx, w)
    result = {}
    if ctx.needs(2):
        result[2] = emit.reduce_sum(g, [0, *range(2, 2 + spatial)], keepdims=False)
    if not ctx.needs(0):
        return result
    auto_pad, output_shape = ctx.attr("auto_pad", "NOTSET"), ctx.attr("output_shape")
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        g = emit.op("Pad", [g, _convt_pads(ctx, spatial, list(output_shape or []), auto_pad)], hint="convt_dy_padded")
    else:
        pads = [0] * (2 * spatial) if auto_pad == "VALID" else list(ctx.attr("pads", [0] * (2 * spatial)))
        if any(pads):
            g = emit.op("Pad", [g, emit.ints([0, 0, *pads[:spatial], 0, 0, *pads[spatial:]])],
                        hint="convt_dy_padded")
    attributes = dict(strides=list(ctx.attr("strides", [1] * spatial)), group=ctx.attr("group", 1),
                      dilations=list(ctx.attr("dilations", [1] * spatial)), pads=[0] * (2 * spatial))
    if ctx.attr("kernel_shape"):
        attributes["kernel_shape"] = list(ctx.attr("kernel_shape"))
    # output_padding only adds rows no input position reaches: the strided Conv skips them
    result[0] = emit.op("Conv", [g, w], hint="convt_dx", **attributes)
    return result


@rule("Gemm")
def gemm(ctx: RuleContext, grads: list) -> dict:
    """Y = alpha * op(A) @ op(B) + beta * C: each gradient is one Gemm (or a broadcast sum for C)."""
    emit, g, a, b = ctx.emit, grads[0], ctx.input(0), ctx.input(1)
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    result = {}
    if ctx.needs(0):
        if trans_a:
            result[0] = emit.op("Gemm", [b, g], hint="gemm_da", alpha=alpha, transA=trans_b, transB=1)
        else:
            result[0] = emit.op("Gemm", [g, b], hint="gemm_da", alpha=alpha, transB=0 if trans_b else 1)
    if ctx.needs(1):
        if trans_b:
            result[1] = emit.op("Gemm", [g, a], hint="gemm_db", alpha=alpha, transA=1, transB=trans_a)
        else:
            result[1] = emit.op("Gemm", [a, g], hint="gemm_db", alpha=alpha, transA=0 if trans_a else 1)
    if ctx.needs(2) and ctx.input(2):
        scaled = g if beta == 1.0 else emit.op("Mul", [g, emit.scalar(beta)], hint="gemm_dc")
        rank_c = ctx.rank(ctx.input(2))
        result[2] = _sum_to_shape(emit, scaled, 2, ctx.input(2), 2 if rank_c is None else rank_c)
    return result


def _sum_to_shape(emit: Emitter, gradient: str, gradient_rank: int, operand: str, operand_rank: int) -> str:
    """Undo broadcasting with static ranks: sum the leading axes away, then every axis where the operand has 1.

    (Emitter.sum_to_shape fails onnxruntime's shape inference when the shapes are static.)
    """
    if gradient_rank > operand_rank:
        gradient = emit.reduce_sum(gradient, list(range(gradient_rank - operand_rank)), keepdims=False)
    ones = emit.op("NonZero", [emit.op("Equal", [emit.shape(operand), emit.const(np.asarray(1, np.int64))])])
    gradient = emit.reduce_sum(gradient, emit.op("Reshape", [ones, emit.ints([-1])], hint="axes"), keepdims=True)
    return emit.op("Reshape", [gradient, emit.shape(operand)], hint="unbroadcast")


def _swap_last(emit: Emitter, tensor: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return emit.op("Transpose", [tensor], hint="transposed", perm=perm)


@rule("MatMul")
def matmul(ctx: RuleContext, grads: list) -> dict:
    """dA = dY @ B^T, dB = A^T @ dY, summed over broadcast batch axes; 1-D operands get their axis back."""
    emit, g, a, b = ctx.emit, grads[0], ctx.input(0), ctx.input(1)
    rank_a, rank_b = ctx.rank(a), ctx.rank(b)
    if rank_a is None or rank_b is None:
        raise GradientError(f"{ctx.describe()}: the ranks of its operands are unknown; run onnx shape inference "
                            f"on the model, or choose a layer after it")
    a2 = a if rank_a >= 2 else emit.unsqueeze(a, [0])
    b2 = b if rank_b >= 2 else emit.unsqueeze(b, [-1])
    if rank_a == 1 and rank_b == 1:
        g2 = emit.unsqueeze(g, [0, 1])
    elif rank_a == 1:
        g2 = emit.unsqueeze(g, [-2])
    elif rank_b == 1:
        g2 = emit.unsqueeze(g, [-1])
    else:
        g2 = g
    result = {}
    if ctx.needs(0):
        full = emit.op("MatMul", [g2, _swap_last(emit, b2, max(rank_b, 2))], hint="matmul_da")
        if rank_a == 1:
            full = emit.squeeze(full, [-2])
        result[0] = _sum_to_shape(emit, full, max(rank_a, rank_b, 2) - (rank_a == 1), a, rank_a)
    if ctx.needs(1):
        full = emit.op("MatMul", [_swap_last(emit, a2, max(rank_a, 2)), g2], hint="matmul_db")
        if rank_b == 1:
            full = emit.squeeze(full, [-1])
        result[1] = _sum_to_shape(emit, full, max(rank_a, rank_b, 2) - (rank_b == 1), b, rank_b)
    return result
