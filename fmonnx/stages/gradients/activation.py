"""Gradient rules of the elementwise activations and unary math ops.

Where the forward output makes the derivative cheaper it is reused (Sigmoid: g*y*(1-y));
the forward tensors are read by name, never recomputed unless the rule needs a new one.
"""

from __future__ import annotations

import math

from ...errors import GradientError
from .registry import RuleContext, rule

__all__: list[str] = []


def _mul(ctx: RuleContext, *tensors: str) -> str:
    result = tensors[0]
    for tensor in tensors[1:]:
        result = ctx.emit.op("Mul", [result, tensor])
    return result


def _pass_where(ctx: RuleContext, condition: str, gradient: str, otherwise: str | None = None) -> str:
    """``gradient`` where ``condition`` holds, ``otherwise`` (default zero) elsewhere."""
    return ctx.emit.op("Where", [condition, gradient, otherwise or ctx.emit.scalar(0.0)], hint="masked")


def _positive(ctx: RuleContext, tensor: str) -> str:
    return ctx.emit.op("Greater", [tensor, ctx.emit.scalar(0.0)], hint="positive")


def _one_minus(ctx: RuleContext, tensor: str) -> str:
    return ctx.emit.op("Sub", [ctx.emit.scalar(1.0), tensor])


@rule("Relu")
def relu(ctx: RuleContext, grads: list) -> dict:
    return {0: _pass_where(ctx, _positive(ctx, ctx.input(0)), grads[0])}


@rule("LeakyRelu")
def leaky_relu(ctx: RuleContext, grads: list) -> dict:
    scaled = _mul(ctx, grads[0], ctx.emit.scalar(ctx.attr("alpha", 0.01)))
    return {0: _pass_where(ctx, _positive(ctx, ctx.input(0)), grads[0], scaled)}


@rule("PRelu")
def prelu(ctx: RuleContext, grads: list) -> dict:
    """The slope broadcasts to x's shape (unidirectionally); it is a weight, differentiated only when it needs to be."""
    x, slope, g = ctx.input(0), ctx.input(1), grads[0]
    positive = _positive(ctx, x)
    result = {}
    if ctx.needs(0):
        result[0] = _pass_where(ctx, positive, g, _mul(ctx, g, slope))
    if ctx.needs(1):
        result[1] = ctx.emit.sum_to_shape(_pass_where(ctx, positive, ctx.emit.scalar(0.0), _mul(ctx, g, x)), slope,
                                 ctx.output(0))
    return result


@rule("Clip")
def clip(ctx: RuleContext, grads: list) -> dict:
    """torch.clamp's convention: x gets the gradient where min <= x <= max, a bound where x is beyond it."""
    emit, x, low, high, g = ctx.emit, ctx.input(0), ctx.input(1), ctx.input(2), grads[0]
    inside = None
    result = {}
    if low:
        inside = emit.op("GreaterOrEqual", [x, low])
        if ctx.needs(1):
            result[1] = ctx.emit.sum_to_shape(_pass_where(ctx, inside, emit.scalar(0.0), g), low, ctx.output(0))
    if high:
        below = emit.op("LessOrEqual", [x, high])
        if ctx.needs(2):
            result[2] = ctx.emit.sum_to_shape(_pass_where(ctx, below, emit.scalar(0.0), g), high, ctx.output(0))
        inside = below if inside is None else emit.op("And", [inside, below])
    if ctx.needs(0):
        result[0] = g if inside is None else _pass_where(ctx, inside, g)
    return result


@rule("Sigmoid")
def sigmoid(ctx: RuleContext, grads: list) -> dict:
    y = ctx.output(0)
    return {0: _mul(ctx, grads[0], y, _one_minus(ctx, y))}


@rule("HardSigmoid")
def hard_sigmoid(ctx: RuleContext, grads: list) -> dict:
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    emit = ctx.emit
    t = emit.op("Add", [_mul(ctx, ctx.input(0), emit.scalar(alpha)), emit.scalar(beta)])
    inside = emit.op("And", [emit.op("Greater", [t, emit.scalar(0.0)]), emit.op("Less", [t, emit.scalar(1.0)])])
    return {0: _pass_where(ctx, inside, _mul(ctx, grads[0], emit.scalar(alpha)))}


@rule("HardSwish")
def hard_swish(ctx: RuleContext, grads: list) -> dict:
    """y = x * hardsigmoid(x; 1/6, 1/2): 0 below -3, x/3 + 1/2 inside, 1 above 3 (torch's convention)."""
    emit, x = ctx.emit, ctx.input(0)
    slope = emit.op("Add", [_mul(ctx, x, emit.scalar(1.0 / 3.0)), emit.scalar(0.5)])
    slope = emit.op("Where", [emit.op("Greater", [x, emit.scalar(3.0)]), emit.scalar(1.0), slope])
    slope = emit.op("Where", [emit.op("Less", [x, emit.scalar(-3.0)]), emit.scalar(0.0), slope])
    return {0: _mul(ctx, grads[0], slope)}


@rule("Tanh")
def tanh(ctx: RuleContext, grads: list) -> dict:
    y = ctx.output(0)
    return {0: _mul(ctx, grads[0], _one_minus(ctx, _mul(ctx, y, y)))}


@rule("Softplus")
def softplus(ctx: RuleContext, grads: list) -> dict:
    return {0: _mul(ctx, grads[0], ctx.emit.op("Sigmoid", [ctx.input(0)]))}


def _gaussian(ctx: RuleContext, x: str, scale: float) -> str:
    """scale * exp(-x^2 / 2)."""
    emit = ctx.emit
    exponent = _mul(ctx, x, x, emit.scalar(-0.5))
    return _mul(ctx, emit.op("Exp", [exponent]), emit.scalar(scale))


@rule("Erf")
def erf(ctx: RuleContext, grads: list) -> dict:
    """2/sqrt(pi) * exp(-x^2) = 2/sqrt(pi) * exp(-(sqrt(2) x)^2 / 2)."""
    scaled = _mul(ctx, ctx.input(0), ctx.emit.scalar(math.sqrt(2.0)))
    return {0: _mul(ctx, grads[0], _gaussian(ctx, scaled, 2.0 / math.sqrt(math.pi)))}


@rule("Gelu")
def gelu(ctx: RuleContext, grads: list) -> dict:
    emit, x = ctx.emit, ctx.input(0)
    approximate = ctx.attr("approximate", "none")
    if approximate == "tanh":
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        x2 = _mul(ctx, x, x)
        inner = _mul(ctx, emit.op("Add", [x, _mul(ctx, x2, x, emit.scalar(c))]), emit.scalar(k))
        t = emit.op("Tanh", [inner])
        dinner = _mul(ctx, emit.op("Add", [emit.scalar(1.0), _mul(ctx, x2, emit.scalar(3 * c))]), emit.scalar(k))
        left = _mul(ctx, emit.op("Add", [emit.scalar(1.0), t]), emit.scalar(0.5))
        right = _mul(ctx, x, emit.scalar(0.5), _one_minus(ctx, _mul(ctx, t, t)), dinner)
        slope = emit.op("Add", [left, right])
    elif approximate == "none":
        cdf = emit.op("Erf", [_mul(ctx, x, emit.scalar(1.0 / math.sqrt(2.0)))])
        cdf = _mul(ctx, emit.op("Add", [emit.scalar(1.0), cdf]), emit.scalar(0.5))
        slope = emit.op("Add", [cdf, _mul(ctx, x, _gaussian(ctx, x, 1.0 / math.sqrt(2.0 * math.pi)))])
    else:
        raise GradientError(f"{ctx.describe()}: Gelu approximate={approximate!r} has no gradient rule")
    return {0: _mul(ctx, grads[0], slope)}


def _axis(ctx: RuleContext) -> int:
    if ctx.opset < 13:
        raise GradientError(f"{ctx.describe()}: Softmax before opset 13 (flattened axes) has no gradient rule")
    return ctx.attr("axis", -1)


@rule("Softmax")
def softmax(ctx: RuleContext, grads: list) -> dict:
    """dx = y * (g - sum(g * y, axis))."""
    y, g = ctx.output(0), grads[0]
    dot = ctx.emit.reduce_sum(_mul(ctx, g, y), [_axis(ctx)], keepdims=True)
    return {0: _mul(ctx, y, ctx.emit.op("Sub", [g, dot]))}


@rule("LogSoftmax")
def log_softmax(ctx: RuleContext, grads: list) -> dict:
    """dx = g - exp(y) * sum(g, axis)."""
    y, g = ctx.output(0), grads[0]
    total = ctx.emit.reduce_sum(g, [_axis(ctx)], keepdims=True)
    return {0: ctx.emit.op("Sub", [g, _mul(ctx, ctx.emit.op("Exp", [y]), total)])}


@rule("Exp")
def exp(ctx: RuleContext, grads: list) -> dict:
    return {0: _mul(ctx, grads[0], ctx.output(0))}


@rule("Log")
def log(ctx: RuleContext, grads: list) -> dict:
    return {0: ctx.emit.op("Div", [grads[0], ctx.input(0)])}


@rule("Sqrt")
def sqrt(ctx: RuleContext, grads: list) -> dict:
    return {0: ctx.emit.op("Div", [_mul(ctx, grads[0], ctx.emit.scalar(0.5)), ctx.output(0)])}


@rule("Reciprocal")
def reciprocal(ctx: RuleContext, grads: list) -> dict:
    y = ctx.output(0)
    return {0: ctx.emit.op("Neg", [_mul(ctx, grads[0], y, y)])}


@rule("Neg")
def neg(ctx: RuleContext, grads: list) -> dict:
    return {0: ctx.emit.op("Neg", [grads[0]])}


@rule("Abs")
def abs_(ctx: RuleContext, grads: list) -> dict:
    return {0: _mul(ctx, grads[0], ctx.emit.op("Sign", [ctx.input(0)]))}


def _as_float(ctx: RuleContext, tensor: str) -> str:
    """An exponent may be an integer tensor: cast to float32 (the gradients' type)."""
    tensor_type = ctx.type_of(tensor)
    if tensor_type is not None and tensor_type.elem_type == 1:
        return tensor
    return ctx.emit.op("Cast", [tensor], to=1)


@rule("Pow")
def pow_(ctx: RuleContext, grads: list) -> dict:
    """d/dx x^p = p x^(p-1); d/dp x^p = x^p log x (numpy broadcasting undone on both)."""
    emit, x, p, y, g = ctx.emit, ctx.input(0), ctx.input(1), ctx.output(0), grads[0]
    result = {}
    if ctx.needs(0):
        exponent = _as_float(ctx, p)
        power = emit.op("Pow", [x, emit.op("Sub", [exponent, emit.scalar(1.0)])])
        result[0] = ctx.emit.sum_to_shape(_mul(ctx, g, exponent, power), x, y)
    if ctx.needs(1):
        result[1] = ctx.emit.sum_to_shape(_mul(ctx, g, y, emit.op("Log", [x])), p, y)
    return result


@rule("Elu")
def elu(ctx: RuleContext, grads: list) -> dict:
    """Below zero y = alpha (e^x - 1), so dy/dx = y + alpha."""
    alpha = ctx.attr("alpha", 1.0)
    negative = _mul(ctx, grads[0], ctx.emit.op("Add", [ctx.output(0), ctx.emit.scalar(alpha)]))
    return {0: _pass_where(ctx, _positive(ctx, ctx.input(0)), grads[0], negative)}


@rule("Selu")
def selu(ctx: RuleContext, grads: list) -> dict:
    """Below zero y = gamma alpha (e^x - 1), so dy/dx = y + gamma alpha; above, gamma."""
    alpha = ctx.attr("alpha", 1.67326319217681884765625)
    gamma = ctx.attr("gamma", 1.05070102214813232421875)
    emit = ctx.emit
    negative = _mul(ctx, grads[0], emit.op("Add", [ctx.output(0), emit.scalar(alpha * gamma)]))
    return {0: _pass_where(ctx, _positive(ctx, ctx.input(0)), _mul(ctx, grads[0], emit.scalar(gamma)), negative)}


@rule("Mish")
def mish(ctx: RuleContext, grads: list) -> dict:
    """y = x tanh(softplus(x)): dy/dx = t + x sigmoid(x) (1 - t^2) with t = tanh(softplus(x))."""
    emit, x = ctx.emit, ctx.input(0)
    t = emit.op("Tanh", [emit.op("Softplus", [x])])
    slope = emit.op("Add", [t, _mul(ctx, x, emit.op("Sigmoid", [x]), _one_minus(ctx, _mul(ctx, t, t)))])
    return {0: _mul(ctx, grads[0], slope)}
