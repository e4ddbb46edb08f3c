"""Gradient rule of Resize (nearest, linear, cubic; every coordinate transformation but tf_crop_and_resize).

Resize in these modes is linear in X and separable: along each resized axis it is a matrix A
(out x in). A Resize with the same attributes applied to an identity matrix laid along that axis
gives A^T, sizes found at run time, so dynamic H/W work::

    EyeLike(in x in) -> Resize(same attributes, that axis only) -> A^T (in x out)
    dX = A_h^T @ dY @ A_w          (N-D: one product per resized axis)
"""

from __future__ import annotations

import numpy as np

from ...errors import GradientError
from .pooling import axis_probe, contract, probe_matrix_t
from .registry import RuleContext, rule

__all__: list[str] = []


def _resized_axes(ctx: RuleContext, listed: list[int], scales: str, sizes: str) -> list[int]:
    """The axes whose length changes, when the scales or sizes are constants; else every listed axis
    (but 0, the batch, when all are listed): an axis of scale 1 gets the identity, exact, only slower."""
    x_type = ctx.type_of(ctx.input(0))
    if sizes:
        value = ctx.value(sizes)
        shape = x_type.shape if x_type is not None else None
        if value is not None and shape is not None and all(isinstance(shape[a], int) for a in listed):
            return [a for j, a in enumerate(listed) if int(value[j]) != shape[a]]
    elif scales:
        value = ctx.value(scales)
        if value is not None and value.size == len(listed):
            return [a for j, a in enumerate(listed) if float(value[j]) != 1.0]
    return [a for a in listed if a != 0] if len(listed) == ctx.rank(ctx.input(0)) else listed


@rule("Resize")
def resize(ctx: RuleContext, grads: list) -> dict:
    """dX = the transposed interpolation matrix of each resized axis, applied to dY axis by axis."""
    emit, x, g = ctx.emit, ctx.input(0), grads[0]
    mode = ctx.attr("coordinate_transformation_mode", "half_pixel")
    if mode == "tf_crop_and_resize":
        raise GradientError(f"{ctx.describe()}: no gradient for Resize with tf_crop_and_resize; "
                            f"choose a layer after it")
    rank = ctx.rank(x)
    if rank is None:
        raise GradientError(f"{ctx.describe()}: the rank of its input is unknown; run onnx shape inference on the "
                            f"model, or choose a layer after it")
    scales, sizes = ctx.input(2), ctx.input(3)
    if sizes and ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise GradientError(f"{ctx.describe()}: no gradient for Resize with keep_aspect_ratio_policy; "
                            f"choose a layer after it")
    listed = [a % rank for a in ctx.attr("axes", [])] or list(range(rank))  # scales/sizes' axes (opset 18)
    axes = _resized_axes(ctx, listed, scales, sizes)
    batch = next((i for i in range(rank) if i not in axes), None)
    if batch is None:
        raise GradientError(f"{ctx.describe()}: it resizes every axis; gradients need one axis it keeps "
                            f"(the batch); choose a layer after it")
    attributes = {a.name: ctx.attr(a.name) for a in ctx.node.attribute}
    for axis in axes:
        probe = axis_probe(emit, x, axis, batch, rank)
        mask = emit.const(np.asarray(listed) == axis, hint="axis_mask")
        if sizes:
            # the probe's own shape everywhere but the resized axis, which takes the model's size
            own = emit.op("Gather", [emit.shape(probe), emit.ints(listed)], hint="probe_shape")
            probe_sizes = emit.op("Where", [mask, sizes, own], hint="probe_sizes")
            inputs = [probe, "", "", probe_sizes]
        else:
            ones = emit.const(np.ones(len(listed), np.float32))
            probe_scales = emit.op("Where", [mask, scales, ones], hint="probe_scales")
            inputs = [probe, "", probe_scales]
        resized = emit.op("Resize", inputs, hint="resize_matrix", **attributes)
        g = contract(emit, g, probe_matrix_t(emit, resized, axis, batch, rank), axis, rank)
    return {0: g}
