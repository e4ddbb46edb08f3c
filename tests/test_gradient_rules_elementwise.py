"""Gradient rules of activations, arithmetic and shape ops against finite differences (and torch autograd)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from fmonnx.errors import GradientError
from tests.gradient_check import backward_values, check_gradients, forward_model, numeric_gradients

RNG = np.random.default_rng(3)


def away(shape, low=-2.0, high=2.0, kinks=(0.0,), margin=0.1, seed=0):
    """Random values in [low, high] at least ``margin`` from every kink (finite differences stay smooth)."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(low, high, size=shape)
    for kink in kinks:
        close = np.abs(values - kink) < margin
        values[close] = kink + np.where(values[close] >= kink, margin, -margin) * 2
    return values.astype(np.float32)


def unary(op, x, opset=17, extra_inputs=(), initializers=None, step=1e-4, **attrs):
    node = helper.make_node(op, ["x", *extra_inputs], ["y"], **attrs)
    return check_gradients([node], {"x": x}, "y", initializers=initializers, opset=opset, step=step)


SHAPE = (2, 3, 4)
POSITIVE = away(SHAPE, 0.3, 2.0, kinks=())

# the reference evaluator computes Erf in float32: a wider finite-difference step (exactness: test_against_torch)
ERF_STEP = 3e-3

UNARY = [
    ("Relu", {}, 17, away(SHAPE)),
    ("LeakyRelu", {"alpha": 0.2}, 17, away(SHAPE)),
    ("Sigmoid", {}, 17, away(SHAPE)),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 17, away(SHAPE, -4, 4, kinks=(-4 / 3, 2.0))),
    ("HardSigmoid", {}, 17, away(SHAPE, -4, 4, kinks=(-2.5, 2.5))),
    ("HardSwish", {}, 17, away(SHAPE, -5, 5, kinks=(-3.0, 3.0))),
    ("Tanh", {}, 17, away(SHAPE)),
    ("Softplus", {}, 17, away(SHAPE)),
    ("Erf", {"step": ERF_STEP}, 17, away(SHAPE)),
    ("Gelu", {"step": ERF_STEP}, 20, away(SHAPE, -3, 3)),
    ("Gelu", {"approximate": "tanh"}, 20, away(SHAPE, -3, 3)),
    ("Softmax", {}, 17, away(SHAPE)),
    ("Softmax", {"axis": 1}, 13, away(SHAPE)),
    ("Softmax", {"axis": -2}, 17, away(SHAPE)),
    ("LogSoftmax", {"axis": 0}, 17, away(SHAPE)),
    ("LogSoftmax", {}, 13, away(SHAPE)),
    ("Exp", {}, 17, away(SHAPE)),
    ("Log", {}, 17, POSITIVE),
    ("Sqrt", {}, 17, POSITIVE),
    ("Reciprocal", {}, 17, POSITIVE),
    ("Neg", {}, 17, away(SHAPE)),
    ("Abs", {}, 17, away(SHAPE)),
    ("Elu", {"alpha": 0.7}, 17, away(SHAPE)),
    ("Selu", {}, 17, away(SHAPE)),
    ("Selu", {"alpha": 1.2, "gamma": 0.9}, 17, away(SHAPE)),
    ("Mish", {}, 18, away(SHAPE, -3, 3)),
]


@pytest.mark.parametrize("op, attrs, opset, x", UNARY, ids=[f"{u[0]}-{i}" for i, u in enumerate(UNARY)])
def test_unary_rules(op, attrs, opset, x):
    unary(op, x, opset, **attrs)


def test_prelu_broadcast_slope():
    slope = np.array([[0.1], [0.5], [-0.3]], np.float32)  # (3, 1) against (2, 3, 4)
    unary("PRelu", away(SHAPE), extra_inputs=["slope"], initializers={"slope": slope})


@pytest.mark.parametrize("bounds", [("low", "high"), ("low", ""), ("", "high"), ()])
def test_clip_bounds_present_or_absent(bounds):
    values = {"low": np.float32(-0.5), "high": np.float32(0.7)}
    x = away(SHAPE, kinks=(-0.5, 0.7), margin=0.05)
    unary("Clip", x, extra_inputs=list(bounds), initializers={b: values[b] for b in bounds if b})


@pytest.mark.parametrize("exponent", [np.float32(2.5), np.int64(3), np.array([1.5, 2.0, -1.0, 0.5], np.float32)])
def test_pow_constant_exponent(exponent):
    unary("Pow", POSITIVE, extra_inputs=["p"], initializers={"p": exponent})


def test_pow_base_and_exponent():
    node = helper.make_node("Pow", ["x", "p"], ["y"])
    check_gradients([node], {"x": POSITIVE, "p": away((4,), -1.5, 1.5)}, "y")


# ---- arithmetic


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", [((2, 3, 4, 5), (3, 1, 1)), ((1,), (2, 3)), ((2, 3), ()), ((3, 1), (1, 4))],
                         ids=["channel", "one", "scalar", "outer"])
def test_binary_broadcasting(op, shapes):
    a = away(shapes[0], seed=1)
    b = away(shapes[1], 0.5, 2.0, kinks=(), seed=2)
    check_gradients([helper.make_node(op, ["a", "b"], ["y"])], {"a": a, "b": b}, "y")


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary_same_input(op):
    x = away(SHAPE, 0.5, 2.0, kinks=())
    check_gradients([helper.make_node(op, ["x", "x"], ["t"]), helper.make_node("Mul", ["t", "x"], ["y"])],
                    {"x": x}, "y")


def test_binary_one_operand_constant():
    weight = away((3, 1), 0.5, 2.0, kinks=(), seed=4)
    check_gradients([helper.make_node("Div", ["w", "x"], ["y"])], {"x": away(SHAPE, 0.5, 2.0, kinks=())}, "y",
                    initializers={"w": weight})


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
def test_variadic(op):
    inputs = {"a": away((2, 3, 4), seed=1), "b": away((3, 1), seed=2), "c": away((4,), seed=3)}
    check_gradients([helper.make_node(op, list(inputs), ["y"])], inputs, "y")


def test_max_tie_goes_to_first_operand():
    x = away((2, 3))
    got, _ = check_gradients([helper.make_node("Max", ["x", "x"], ["y"])], {"x": x}, "y",
                             seed_values=np.ones((2, 3), np.float32))
    np.testing.assert_allclose(got["x"], np.ones((2, 3)))  # d max(x, x)/dx = 1, not 2


def test_where_broadcasting():
    condition = np.array([[True, False, True], [False, False, True]])
    inputs = {"a": away((2, 3), seed=1), "b": away((3,), seed=2)}
    check_gradients([helper.make_node("Where", ["c", "a", "b"], ["y"])], inputs, "y", initializers={"c": condition})


def test_expand():
    check_gradients([helper.make_node("Expand", ["x", "s"], ["y"])], {"x": away((3, 1))}, "y",
                    initializers={"s": np.array([2, 3, 4], np.int64)})


def test_tile():
    check_gradients([helper.make_node("Tile", ["x", "r"], ["y"])], {"x": away((2, 3))}, "y",
                    initializers={"r": np.array([3, 2], np.int64)})


# ---- shaping


@pytest.mark.parametrize("perm", [[1, 2, 0], None])
def test_transpose(perm):
    unary("Transpose", away(SHAPE), **({} if perm is None else {"perm": perm}))


def test_cast_round_trip():
    nodes = [helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
             helper.make_node("Mul", ["d", "d"], ["e"]),
             helper.make_node("Cast", ["e"], ["y"], to=TensorProto.FLOAT)]
    check_gradients(nodes, {"x": away(SHAPE)}, "y")


@pytest.mark.parametrize("axis", [1, -1])
def test_concat(axis):
    inputs = {"a": away((2, 3, 2), seed=1), "b": away((2, 3, 1), seed=2), "c": away((2, 3, 3), seed=3)}
    if axis == 1:
        inputs = {k: v.transpose(0, 2, 1).copy() for k, v in inputs.items()}
    check_gradients([helper.make_node("Concat", list(inputs), ["y"], axis=axis)], inputs, "y", wrt=["a", "c"])


@pytest.mark.parametrize("opset", [13, 18])
def test_split_unused_outputs(opset):
    x = away((2, 6))
    if opset == 13:
        node = helper.make_node("Split", ["x", "sizes"], ["p", "q", "r"], axis=-1)
        initializers = {"sizes": np.array([1, 3, 2], np.int64)}
    else:
        node = helper.make_node("Split", ["x"], ["p", "q", "r"], axis=1, num_outputs=3)
        initializers = None
    check_gradients([node, helper.make_node("Mul", ["q", "q"], ["y"])], {"x": x}, "y", initializers, opset=opset)


@pytest.mark.parametrize("starts, ends, axes, steps", [
    ([1], [3], [2], [1]),
    ([-1, 0], [-100, 100], [-1, 1], [-2, 2]),  # negative step, clamped ends, negative axis
    ([0, 1, 5], [1, 3, -5], [0, 1, 2], [1, 1, -1]),
])
def test_slice(starts, ends, axes, steps):
    initializers = {"s": np.array(starts, np.int64), "e": np.array(ends, np.int64),
                    "a": np.array(axes, np.int64), "t": np.array(steps, np.int64)}
    unary("Slice", away((2, 3, 6)), extra_inputs=["s", "e", "a", "t"], initializers=initializers)


@pytest.mark.parametrize("mode, opset", [("constant", 13), ("constant", 18), ("reflect", 18), ("edge", 17),
                                         ("wrap", 19)])
def test_pad(mode, opset):
    pads = np.array([0, 1, 2, 0, 2, 1], np.int64)
    unary("Pad", away((2, 3, 4)), opset=opset, extra_inputs=["pads"], initializers={"pads": pads}, mode=mode)


def test_pad_axes_input():
    initializers = {"pads": np.array([2, 1], np.int64), "axes": np.array([-1], np.int64)}
    unary("Pad", away((2, 3, 4)), opset=18, extra_inputs=["pads", "", "axes"], initializers=initializers,
          mode="reflect")


def test_pad_reflect_before_opset_16_is_refused():
    with pytest.raises(GradientError, match="opset 16"):
        unary("Pad", away((2, 3)), opset=13, extra_inputs=["pads"], initializers={"pads": np.array([1, 1, 1, 1])},
              mode="reflect")


@pytest.mark.parametrize("indices, axis, opset", [
    (np.array(0, np.int64), 1, 13),  # a ViT's class token
    (np.array([[2, -1], [0, 2]], np.int64), 1, 17),  # repeated and negative indices add up
    (np.array([1, 0], np.int64), -1, 13),
])
def test_gather(indices, axis, opset):
    unary("Gather", away((2, 3, 4)), opset=opset, extra_inputs=["i"], initializers={"i": indices}, axis=axis)


def test_gather_repeated_indices_before_opset_16_are_refused():
    with pytest.raises(GradientError, match="distinct"):
        unary("Gather", away((3, 2)), opset=13, extra_inputs=["i"], initializers={"i": np.array([0, 0])})


# ---- torch autograd in float64 on the same input and seed


def _torch_gradient(function, x, seed):
    torch = pytest.importorskip("torch")
    tensor = torch.tensor(x.astype(np.float64), requires_grad=True)
    (function(torch, tensor) * torch.tensor(seed.astype(np.float64))).sum().backward()
    return tensor.grad.numpy()


@pytest.mark.parametrize("op, attrs, opset, function", [
    ("Gelu", {"approximate": "tanh"}, 20, lambda t, x: t.nn.functional.gelu(x, approximate="tanh")),
    ("Gelu", {"step": ERF_STEP}, 20, lambda t, x: t.nn.functional.gelu(x)),
    ("Erf", {"step": ERF_STEP}, 17, lambda t, x: t.erf(x)),
    ("Softmax", {"axis": 1}, 17, lambda t, x: t.softmax(x, 1)),
    ("LogSoftmax", {}, 17, lambda t, x: t.log_softmax(x, -1)),
    ("HardSwish", {}, 17, lambda t, x: t.nn.functional.hardswish(x)),
    ("Mish", {}, 18, lambda t, x: t.nn.functional.mish(x)),
    ("Selu", {}, 17, lambda t, x: t.selu(x)),
])
def test_against_torch(op, attrs, opset, function):
    x = away(SHAPE, -4, 4, kinks=(-3.0, 0.0, 3.0), seed=5)
    seed = np.random.default_rng(9).standard_normal(SHAPE).astype(np.float32)
    step = attrs.pop("step", 1e-4)
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    got, _ = check_gradients([node], {"x": x}, "y", opset=opset, seed_values=seed, step=step)
    np.testing.assert_allclose(got["x"], _torch_gradient(function, x, seed), rtol=1e-4, atol=1e-5)


def test_slice_without_axes_and_steps():
    initializers = {"s": np.array([1, -3], np.int64), "e": np.array([2, 100], np.int64)}
    unary("Slice", away((3, 5)), extra_inputs=["s", "e"], initializers=initializers)


def test_pad_negative_pads_crop_and_zero_fill():
    """Negative pads crop (the reference evaluator refuses them): truth is numpy's zero-filled gradient."""
    x = away((2, 3, 4))
    pads = np.array([0, -1, 2, 0, 0, -1], np.int64)
    model = forward_model([helper.make_node("Pad", ["x", "pads"], ["y"], mode="constant")], {"x": x}, "y",
                          {"pads": pads})
    seed = np.random.default_rng(1).standard_normal((2, 2, 5)).astype(np.float32)
    _, got, _ = backward_values(model, {"x": x}, "y", seed, ["x"])
    want = np.zeros_like(x)
    want[:, 1:, 0:3] = seed[:, :, 2:]
    np.testing.assert_allclose(got["x"], want)


def test_dynamic_sizes():
    """Batch, height and width unknown until run time: broadcasting, Concat and Slice use run-time shapes."""
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"]),
             helper.make_node("Concat", ["m", "x"], ["c"], axis=-1),
             helper.make_node("Slice", ["c", "s", "e", "a", "t"], ["y"])]
    initializers = {"w": away((3, 1, 1), seed=2), "s": np.array([-1], np.int64), "e": np.array([0], np.int64),
                    "a": np.array([-1], np.int64), "t": np.array([-2], np.int64)}
    x = away((2, 3, 2, 3))
    model = forward_model(nodes, {"x": x}, "y", initializers)
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim, ["n", "c", "h", "w"]):
        if name != "c":
            dim.dim_param = name
    seed = np.random.default_rng(2).standard_normal((2, 3, 2, 3)).astype(np.float32)
    _, got, _ = backward_values(model, {"x": x}, "y", seed, ["x"])
    want = numeric_gradients(model, {"x": x}, "y", seed, ["x"])
    np.testing.assert_allclose(got["x"], want["x"], rtol=1e-3, atol=1e-4)


def test_prelu_slope_from_the_graph():
    inputs = {"x": away(SHAPE), "slope": away((3, 1), 0.1, 0.9, kinks=(), seed=6)}
    check_gradients([helper.make_node("PRelu", ["x", "slope"], ["y"])], inputs, "y")


def test_clip_bounds_from_the_graph():
    """Bounds (scalars, as ONNX requires) computed in the graph; x kept away from both."""
    x = np.array([[-1.0, -0.2, 0.3, 1.5], [0.9, -0.7, 0.1, 2.0]], np.float32)
    inputs = {"x": x, "low": np.array(-0.5, np.float32), "high": np.array(0.7, np.float32)}
    check_gradients([helper.make_node("Clip", ["x", "low", "high"], ["y"])], inputs, "y")


def test_pow_constant_base():
    check_gradients([helper.make_node("Pow", ["b", "x"], ["y"])], {"x": away(SHAPE)}, "y",
                    initializers={"b": np.array([1.5, 0.5, 2.0, 3.0], np.float32)})


def test_split_equal_pieces_opset_13():
    node = helper.make_node("Split", ["x"], ["p", "q"], axis=0)
    check_gradients([node, helper.make_node("Mul", ["p", "p"], ["y"])], {"x": away((4, 3))}, "y", opset=13)
