"""Gradient rules of Conv, ConvTranspose, Gemm, MatMul, the pools and reductions, the normalizations and
Resize: onnxruntime's backward nodes against finite differences (and torch autograd for a few)."""

from __future__ import annotations

import numpy as np
import pytest
from gradient_check import backward_values, check_gradients, forward_model
from onnx import helper

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


# ---- Conv / ConvTranspose -------------------------------------------------------------------------------------

CONV_CASES = {
    "plain": dict(x=(1, 2, 5, 5), w=(3, 2, 3, 3), attrs={}),
    "stride2_pads": dict(x=(1, 2, 6, 7), w=(3, 2, 3, 3), attrs=dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "stride_remainder": dict(x=(1, 1, 8, 7), w=(2, 1, 3, 2), attrs=dict(strides=[3, 2])),
    "asym_pads_dilation": dict(x=(1, 2, 6, 6), w=(2, 2, 2, 3), attrs=dict(pads=[0, 2, 1, 0], dilations=[2, 1])),
    "groups": dict(x=(1, 4, 5, 5), w=(6, 2, 3, 3), attrs=dict(group=2, strides=[2, 1], pads=[1, 0, 1, 0])),
    "depthwise": dict(x=(2, 3, 5, 5), w=(3, 1, 3, 3), attrs=dict(group=3, pads=[1, 1, 1, 1], strides=[2, 2])),
    "same_upper": dict(x=(1, 2, 7, 6), w=(2, 2, 3, 2), attrs=dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same_lower": dict(x=(1, 2, 7, 6), w=(2, 2, 4, 3), attrs=dict(auto_pad="SAME_LOWER", strides=[2, 3])),
    "valid": dict(x=(1, 2, 6, 5), w=(2, 2, 3, 3), attrs=dict(auto_pad="VALID", strides=[2, 2])),
    "conv1d": dict(x=(1, 2, 9), w=(3, 2, 3), attrs=dict(strides=[2], pads=[2, 1])),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_input_gradient(case):
    spec = CONV_CASES[case]
    check_gradients([node("Conv", ["x", "w", "b"], **spec["attrs"])], {"x": rand(*spec["x"])}, "y",
                    initializers={"w": rand(*spec["w"]), "b": rand(spec["w"][0])})


def test_conv_dynamic_height_width():
    """Symbolic H, W in the graph: the crop is found at run time."""
    check_gradients([node("Conv", ["x", "w"], strides=[2, 2], pads=[1, 0, 0, 1])], {"x": rand(1, 2, 7, 6)}, "y",
                    initializers={"w": rand(3, 2, 3, 3)}, input_shapes={"x": [1, 2, "H", "W"]})


def test_conv_bias_gradient_when_bias_is_chosen():
    check_gradients([node("Conv", ["x", "w", "b"], pads=[1, 1, 1, 1])], {"x": rand(1, 2, 4, 4), "b": rand(3)}, "y",
                    initializers={"w": rand(3, 2, 3, 3)})


CONVT_CASES = {
    "plain": dict(x=(1, 2, 4, 4), w=(2, 3, 3, 3), attrs={}),
    "stride_pads": dict(x=(1, 2, 4, 3), w=(2, 3, 3, 3), attrs=dict(strides=[2, 2], pads=[1, 0, 0, 1])),
    "output_padding_dilation": dict(x=(1, 2, 3, 4), w=(2, 2, 3, 2),
                                    attrs=dict(strides=[3, 2], output_padding=[2, 1], dilations=[1, 2])),
    "same_upper": dict(x=(1, 2, 3, 4), w=(2, 1, 3, 5), attrs=dict(strides=[2, 3], auto_pad="SAME_UPPER")),
    "same_lower": dict(x=(1, 2, 3, 4), w=(2, 1, 3, 4), attrs=dict(strides=[2, 3], auto_pad="SAME_LOWER")),
    "same_output_shape": dict(x=(1, 1, 3, 3), w=(1, 2, 4, 3),
                              attrs=dict(strides=[2, 2], auto_pad="SAME_LOWER", output_shape=[5, 4])),
}  # grouped ConvTranspose: onnx's reference evaluator cannot run it, so torch checks it below


@pytest.mark.parametrize("case", sorted(CONVT_CASES))
def test_conv_transpose_input_gradient(case):
    spec = CONVT_CASES[case]
    check_gradients([node("ConvTranspose", ["x", "w"], **spec["attrs"])], {"x": rand(*spec["x"])}, "y",
                    initializers={"w": rand(*spec["w"])})


@pytest.mark.parametrize("output_shape", [[6, 7], [5, 8], [7, 6]])
def test_conv_transpose_output_shape_like_onnxruntime(output_shape):
    """onnx's reference evaluator rejects output_shape without auto_pad: the truth is onnxruntime's own
    forward on basis vectors (the op is linear in x)."""
    x = rand(1, 2, 3, 3)
    model = forward_model([node("ConvTranspose", ["x", "w"], strides=[2, 3], output_shape=output_shape)],
                          {"x": x}, "y", {"w": rand(2, 3, 4, 3)})
    seed = rand(1, 3, *output_shape[-2:])
    _, got, _ = backward_values(model, {"x": x}, "y", seed, ["x"])
    np.testing.assert_allclose(got["x"], linear_map_gradient(model, x, seed), rtol=1e-4, atol=1e-5)


def test_conv_transpose_dynamic_height_width():
    check_gradients([node("ConvTranspose", ["x", "w"], strides=[2, 2], auto_pad="SAME_LOWER")], {"x": rand(1, 2, 3, 4)},
                    "y", initializers={"w": rand(2, 2, 3, 3)}, input_shapes={"x": [1, 2, "H", "W"]})


# ---- Gemm / MatMul -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_every_operand(trans_a, trans_b):
    a = rand(4, 3) if trans_a else rand(3, 4)
    b = rand(5, 4) if trans_b else rand(4, 5)
    check_gradients([node("Gemm", ["a", "b", "c"], alpha=0.7, beta=1.5, transA=trans_a, transB=trans_b)],
                    {"a": a, "b": b, "c": rand(1, 5)}, "y")


@pytest.mark.parametrize("shape_c", [(), (5,), (3, 1), (3, 5)])
def test_gemm_bias_broadcasts(shape_c):
    check_gradients([node("Gemm", ["a", "b", "c"], beta=0.5)], {"a": rand(3, 4), "b": rand(4, 5), "c": rand(*shape_c)},
                    "y", wrt=["c"])


def test_gemm_constant_weight_only_input_gradient():
    got, _ = check_gradients([node("Gemm", ["a", "w", "c"], transB=1)], {"a": rand(2, 4)}, "y",
                             initializers={"w": rand(3, 4), "c": rand(3)})
    assert set(got) == {"a"}


MATMUL_CASES = {
    "2d": ((3, 4), (4, 2)),
    "batched": ((2, 3, 4), (2, 4, 2)),
    "broadcast_weight": ((2, 3, 4), (4, 2)),
    "broadcast_both": ((2, 1, 3, 4), (3, 4, 2)),
    "vector_left": ((4,), (2, 4, 3)),
    "vector_right": ((2, 3, 4), (4,)),
    "vectors": ((4,), (4,)),
}


@pytest.mark.parametrize("case", sorted(MATMUL_CASES))
def test_matmul_both_operands(case):
    shape_a, shape_b = MATMUL_CASES[case]
    check_gradients([node("MatMul", ["a", "b"])], {"a": rand(*shape_a), "b": rand(*shape_b)}, "y")


# ---- pools and reductions ------------------------------------------------------------------------------------

def distinct(*shape):
    """Values without ties (a max has one winner), well apart for finite differences."""
    values = RNG.permutation(int(np.prod(shape))).astype(np.float32) * 0.1
    return values.reshape(shape)


MAXPOOL_CASES = {
    "2x2_s2": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "3x3_s2_pad_overlap": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "3x3_s1_overlap": dict(kernel_shape=[3, 3]),
    "ceil_mode_asym": dict(kernel_shape=[3, 2], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1),
    "dilated": dict(kernel_shape=[2, 2], dilations=[2, 1], strides=[1, 2]),
    "storage_order": dict(kernel_shape=[2, 3], strides=[1, 2], storage_order=1),
}


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("case", sorted(MAXPOOL_CASES))
def test_max_pool_through_indices(case, opset):
    check_gradients([node("MaxPool", ["x"], **MAXPOOL_CASES[case])], {"x": distinct(2, 2, 6, 7)}, "y", opset=opset)


def test_max_pool_with_indices_output_in_the_model():
    check_gradients([node("MaxPool", ["x"], ["y", "i"], kernel_shape=[3, 3], strides=[2, 2])],
                    {"x": distinct(1, 2, 7, 7)}, "y")


AVGPOOL_CASES = {
    "2x2_s2": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "pads_exclude": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "pads_include": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 2], count_include_pad=1),
    "ceil_mode": dict(kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1),
    "same_upper": dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
}


@pytest.mark.parametrize("case", sorted(AVGPOOL_CASES))
def test_average_pool(case):
    check_gradients([node("AveragePool", ["x"], **AVGPOOL_CASES[case])], {"x": rand(1, 2, 6, 7)}, "y")


def test_average_pool_dilations_opset19():
    check_gradients([node("AveragePool", ["x"], kernel_shape=[2, 2], dilations=[2, 1], pads=[1, 1, 0, 0])],
                    {"x": rand(1, 2, 6, 5)}, "y", opset=19)


def test_average_pool_1d():
    check_gradients([node("AveragePool", ["x"], kernel_shape=[3], strides=[2], pads=[1, 1])], {"x": rand(2, 3, 7)}, "y")


def test_average_pool_dynamic_height_width():
    check_gradients([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                    {"x": rand(1, 2, 5, 7)}, "y", input_shapes={"x": [1, 2, "H", "W"]})


def test_global_pools():
    check_gradients([node("GlobalAveragePool", ["x"])], {"x": rand(2, 3, 4, 5)}, "y")
    check_gradients([node("GlobalMaxPool", ["x"])], {"x": distinct(2, 3, 4, 5)}, "y")


def test_global_max_pool_splits_ties_like_torch():
    torch = pytest.importorskip("torch")
    x = np.zeros((1, 2, 3, 3), np.float32)
    x[0, 0, 0, 1] = x[0, 0, 2, 2] = 5.0  # two maxima in channel 0, all equal in channel 1
    seed = np.asarray([2.0, 3.0], np.float32).reshape(1, 2, 1, 1)
    model = forward_model([node("GlobalMaxPool", ["x"])], {"x": x}, "y")
    _, got, _ = backward_values(model, {"x": x}, "y", seed, ["x"])
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (torch.amax(tx, dim=(2, 3), keepdim=True) * torch.tensor(seed, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(got["x"], tx.grad.numpy(), rtol=1e-6)


def reduce_node(op, opset, axes, keepdims, noop=None):
    """A Reduce* node with its axes as attribute or input, as the opset wants; the extra initializer when input."""
    attrs = {"keepdims": keepdims}
    if noop is not None:
        attrs["noop_with_empty_axes"] = noop
    as_input = op == "ReduceSum" or opset >= 18
    if axes is not None and not as_input:
        attrs["axes"] = axes
    inputs = ["x", "axes"] if as_input and axes is not None else ["x"]
    initializers = {"axes": np.asarray(axes, np.int64)} if as_input and axes is not None else {}
    return node(op, inputs, **attrs), initializers


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axes", [[1], [-1, 2], None])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reductions(op, opset, axes, keepdims):
    reduce, initializers = reduce_node(op, opset, axes, keepdims)
    check_gradients([reduce], {"x": distinct(2, 3, 2, 4)}, "y", initializers=initializers, opset=opset)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax"])
def test_reductions_noop_with_empty_axes(op):
    reduce, initializers = reduce_node(op, 18, None, 0, noop=1)
    check_gradients([reduce], {"x": distinct(2, 3)}, "y", initializers=initializers, opset=18)
    reduce, initializers = reduce_node(op, 18, [], 0, noop=0)
    check_gradients([reduce], {"x": distinct(2, 3)}, "y", initializers=initializers, opset=18)


def test_reduce_max_splits_ties():
    x = np.asarray([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]], np.float32)
    reduce, initializers = reduce_node("ReduceMax", 18, [1], 0)
    model = forward_model([reduce], {"x": x}, "y", initializers, 18)
    _, got, _ = backward_values(model, {"x": x}, "y", np.asarray([1.0, 4.0], np.float32), ["x"])
    np.testing.assert_allclose(got["x"], [[0, 0.5, 0.5], [2, 0, 2]])


# ---- normalizations -------------------------------------------------------------------------------------------

def test_batch_normalization_inference():
    check_gradients([node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)], {"x": rand(2, 3, 3, 4)},
                    "y", initializers={"s": rand(3), "b": rand(3), "m": rand(3), "v": np.abs(rand(3)) + 0.5})


def test_batch_normalization_rank2():
    check_gradients([node("BatchNormalization", ["x", "s", "b", "m", "v"])], {"x": rand(4, 3)},
                    "y", initializers={"s": rand(3), "b": rand(3), "m": rand(3), "v": np.abs(rand(3)) + 0.5})


@pytest.mark.parametrize("axis", [-1, 1, -2, 2])
def test_layer_normalization(axis):
    shape = (2, 3, 4)
    normalized = shape[axis:]
    check_gradients([node("LayerNormalization", ["x", "s", "b"], axis=axis, epsilon=1e-3)], {"x": rand(*shape)}, "y",
                    initializers={"s": rand(*normalized), "b": rand(*normalized)}, rtol=2e-3, atol=3e-4)


def test_layer_normalization_with_statistics_outputs():
    check_gradients([node("LayerNormalization", ["x", "s"], ["y", "mean", "inv"], axis=-1)], {"x": rand(3, 5)}, "y",
                    initializers={"s": rand(5)}, rtol=2e-3, atol=3e-4)


def test_instance_normalization():
    check_gradients([node("InstanceNormalization", ["x", "s", "b"], epsilon=1e-3)], {"x": rand(2, 3, 3, 4)}, "y",
                    initializers={"s": rand(3), "b": rand(3)}, rtol=2e-3, atol=3e-4)


# ---- Resize --------------------------------------------------------------------------------------------------

COORDINATE_MODES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]


def resize_case(mode, coordinate, shape=(1, 2, 3, 4), scales=(1, 1, 2, 1.5), sizes=None, opset=17, **attrs):
    initializers = {}
    if sizes is not None:
        initializers["sizes"] = np.asarray(sizes, np.int64)
        inputs = ["x", "", "", "sizes"]
    else:
        initializers["scales"] = np.asarray(scales, np.float32)
        inputs = ["x", "", "scales"]
    check_gradients([node("Resize", inputs, mode=mode, coordinate_transformation_mode=coordinate, **attrs)],
                    {"x": rand(*shape)}, "y", initializers=initializers, opset=opset)


@pytest.mark.parametrize("coordinate", COORDINATE_MODES)
@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
def test_resize_nearest(coordinate, nearest_mode):
    resize_case("nearest", coordinate, nearest_mode=nearest_mode)
    resize_case("nearest", coordinate, nearest_mode=nearest_mode, scales=(1, 1, 0.5, 0.75), shape=(1, 1, 4, 4))


@pytest.mark.parametrize("coordinate", COORDINATE_MODES)
def test_resize_linear(coordinate):
    resize_case("linear", coordinate)
    resize_case("linear", coordinate, sizes=(1, 2, 5, 3))


def linear_map_gradient(model, x, seed):
    """The gradient of a map linear in x: onnxruntime of the unmodified model on each basis vector."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    gradient = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        basis = np.zeros_like(x)
        basis[index] = 1.0
        gradient[index] = np.sum(session.run(None, {"x": basis})[0] * seed)
    return gradient


def test_resize_nearest_tf_half_pixel_opset13():
    """onnx's reference evaluator lacks this mode: the truth is onnxruntime's forward on basis vectors."""
    x = rand(1, 2, 3, 4)
    model = forward_model([node("Resize", ["x", "", "scales"], mode="nearest",
                                coordinate_transformation_mode="tf_half_pixel_for_nn")],
                          {"x": x}, "y", {"scales": np.asarray([1, 1, 2, 1.5], np.float32)}, opset=13)
    seed = rand(1, 2, 6, 6)
    _, got, _ = backward_values(model, {"x": x}, "y", seed, ["x"])
    np.testing.assert_allclose(got["x"], linear_map_gradient(model, x, seed), rtol=1e-5, atol=1e-6)


def test_resize_half_pixel_symmetric_opset19():
    resize_case("linear", "half_pixel_symmetric", opset=19)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_antialias_downscale_opset18(mode):
    resize_case(mode, "half_pixel", scales=(1, 1, 0.5, 0.6), shape=(1, 1, 6, 5), opset=18, antialias=1)


def test_resize_axes_attribute_opset18():
    resize_case("linear", "align_corners", shape=(1, 2, 3, 4), scales=(2, 1.5), opset=18, axes=[2, 3])
    resize_case("nearest", "asymmetric", shape=(1, 3, 4, 2), sizes=(6, 2), opset=18, axes=[1, 2])
    # negative axes: onnx's reference evaluator fails on them, onnxruntime's forward is the truth
    x = rand(1, 2, 3, 4)
    model = forward_model([node("Resize", ["x", "", "scales"], mode="linear", axes=[-1, -2])], {"x": x}, "y",
                          {"scales": np.asarray([1.5, 2], np.float32)}, opset=18)
    seed = rand(1, 2, 6, 6)
    _, got, _ = backward_values(model, {"x": x}, "y", seed, ["x"])
    np.testing.assert_allclose(got["x"], linear_map_gradient(model, x, seed), rtol=1e-5, atol=1e-6)


def test_resize_cubic():
    resize_case("cubic", "half_pixel", scales=(1, 1, 2, 2), shape=(1, 1, 4, 4))


def test_resize_channels_last():
    resize_case("linear", "half_pixel", shape=(1, 3, 2, 2), scales=(1, 2, 1.5, 1))


def test_resize_dynamic_sizes_from_a_shape():
    """FPN-style: the sizes come from another tensor's shape at run time, H and W symbolic."""
    nodes = [node("Shape", ["ref"], ["size"]),
             node("Resize", ["x", "", "", "size"], mode="nearest"),
             ]
    check_gradients(nodes, {"x": rand(1, 2, 3, 3), "ref": rand(1, 2, 6, 5)}, "y", wrt=["x"],
                    input_shapes={"x": [1, 2, "H", "W"], "ref": [1, 2, "H2", "W2"]})


# ---- against torch autograd (float64) ------------------------------------------------------------------------

def onnx_gradient(nodes, x, initializers=None, opset=17):
    """(output, gradient of sum(output * seed) wrt x, seed) by the backward nodes in onnxruntime."""
    import onnxruntime as ort

    model = forward_model(nodes, {"x": x}, "y", initializers, opset)
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    seed = rand(*out.shape)
    _, got, _ = backward_values(model, {"x": x}, "y", seed, ["x"])
    return out, got["x"], seed


def torch_gradient(function, x, seed):
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = function(tx)
    (out * torch.tensor(seed, dtype=torch.float64)).sum().backward()
    return out.detach().numpy(), tx.grad.numpy()


def assert_like_torch(nodes, x, function, initializers=None, opset=17):
    out, got, seed = onnx_gradient(nodes, x, initializers, opset)
    want_out, want = torch_gradient(function, x, seed)
    np.testing.assert_allclose(out, want_out, rtol=1e-4, atol=1e-5, err_msg="forward")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_conv_like_torch():
    torch = pytest.importorskip("torch")
    w = rand(6, 2, 3, 3)
    assert_like_torch([node("Conv", ["x", "w"], group=2, strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 2])],
                      rand(1, 4, 8, 9), lambda t: torch.nn.functional.conv2d(
                          t, torch.tensor(w, dtype=torch.float64), stride=2, padding=1, dilation=(1, 2), groups=2),
                      {"w": w})


def test_grouped_conv_transpose_like_torch():
    torch = pytest.importorskip("torch")
    w = rand(4, 3, 3, 3)
    assert_like_torch([node("ConvTranspose", ["x", "w"], group=2, strides=[2, 2], pads=[1, 1, 0, 0],
                            output_padding=[1, 1])],
                      rand(1, 4, 3, 4), lambda t: convt_cropped(torch, t, w), {"w": w})


def convt_cropped(torch, t, w):
    """ONNX pads [1, 1, 0, 0] (begin 1, end 0): torch's full output cropped by one row and column in front."""
    full = torch.nn.functional.conv_transpose2d(t, torch.tensor(w, dtype=torch.float64), stride=2, groups=2,
                                                output_padding=1)
    return full[..., 1:, 1:]


def test_max_pool_resnet_stem_like_torch():
    torch = pytest.importorskip("torch")
    for opset in (13, 17):
        assert_like_torch([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                          distinct(1, 2, 8, 9),
                          lambda t: torch.nn.functional.max_pool2d(t, 3, stride=2, padding=1), opset=opset)


@pytest.mark.parametrize("include", [0, 1])
@pytest.mark.parametrize("ceil", [0, 1])
def test_average_pool_like_torch(include, ceil):
    torch = pytest.importorskip("torch")
    assert_like_torch([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                            count_include_pad=include, ceil_mode=ceil)],
                      rand(1, 2, 6, 7), lambda t: torch.nn.functional.avg_pool2d(
                          t, 3, stride=2, padding=1, ceil_mode=bool(ceil), count_include_pad=bool(include)))


@pytest.mark.parametrize("align", [False, True])
def test_resize_bilinear_like_torch(align):
    torch = pytest.importorskip("torch")
    coordinate = "align_corners" if align else "pytorch_half_pixel"
    resize = node("Resize", ["x", "", "", "sizes"], mode="linear", coordinate_transformation_mode=coordinate)
    assert_like_torch([resize],
                      rand(1, 2, 3, 4), lambda t: torch.nn.functional.interpolate(
                          t, size=(7, 5), mode="bilinear", align_corners=align),
                      {"sizes": np.asarray([1, 2, 7, 5], np.int64)})


def test_resize_nearest_like_torch():
    torch = pytest.importorskip("torch")
    assert_like_torch([node("Resize", ["x", "", "scales"], mode="nearest", coordinate_transformation_mode="asymmetric",
                            nearest_mode="floor")],
                      rand(1, 2, 3, 4), lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest"),
                      {"scales": np.asarray([1, 1, 2, 2], np.float32)})


def test_layer_norm_like_torch():
    torch = pytest.importorskip("torch")
    s, b = rand(4, 5), rand(4, 5)
    assert_like_torch([node("LayerNormalization", ["x", "s", "b"], axis=-2, epsilon=1e-5)], rand(2, 3, 4, 5),
                      lambda t: torch.nn.functional.layer_norm(t, (4, 5), torch.tensor(s, dtype=torch.float64),
                                                               torch.tensor(b, dtype=torch.float64), eps=1e-5),
                      {"s": s, "b": b})


@pytest.mark.parametrize("opset", [13, 17])
def test_batch_norm_like_torch(opset):
    torch = pytest.importorskip("torch")
    s, b, m, v = rand(3), rand(3), rand(3), np.abs(rand(3)) + 0.5

    def t64(a):
        return torch.tensor(a, dtype=torch.float64)

    assert_like_torch([node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-5)], rand(2, 3, 4, 4),
                      lambda t: torch.nn.functional.batch_norm(t, t64(m), t64(v), t64(s), t64(b), False, 0.0, 1e-5),
                      {"s": s, "b": b, "m": m, "v": v}, opset=opset)


# ---- dynamic sizes, a chain, and what raises -----------------------------------------------------------------

def test_conv_same_upper_and_max_pool_dynamic_height_width():
    nodes = [node("Conv", ["x", "w"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),
             node("MaxPool", ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    check_gradients(nodes, {"x": rand(1, 2, 7, 6)}, "y", initializers={"w": rand(3, 2, 3, 2)},
                    input_shapes={"x": [1, 2, "H", "W"]})


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_small_cnn_chain(opset):
    """Conv -> BatchNormalization -> MaxPool -> Resize -> AveragePool -> GlobalAveragePool -> Flatten -> Gemm."""
    nodes = [node("Conv", ["x", "w", "cb"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
             node("MaxPool", ["n"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             node("Resize", ["p", "", "scales"], ["r"], mode="linear"),
             node("AveragePool", ["r"], ["a"], kernel_shape=[2, 2]),
             node("GlobalAveragePool", ["a"], ["g"]),
             node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "fc", "fb"], transB=1)]
    initializers = {"w": rand(3, 2, 3, 3), "cb": rand(3), "s": rand(3), "b": rand(3), "m": rand(3),
                    "v": np.abs(rand(3)) + 0.5, "scales": np.asarray([1, 1, 2, 2], np.float32),
                    "fc": rand(4, 3), "fb": rand(4)}
    if opset < 14:  # onnx's reference BatchNormalization-9 disagrees with onnxruntime (torch checks that one)
        nodes[1] = node("Identity", ["c"], ["n"])
    check_gradients(nodes, {"x": rand(1, 2, 8, 8)}, "y", initializers=initializers, opset=opset)


@pytest.mark.parametrize("nodes, message", [
    ([node("Resize", ["x", "", "", "sizes"], keep_aspect_ratio_policy="not_larger")], "keep_aspect_ratio"),
    ([node("Resize", ["x", "roi", "scales"], mode="linear", coordinate_transformation_mode="tf_crop_and_resize")],
     "tf_crop_and_resize"),
    ([node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1)], "inference"),
])
def test_what_cannot_be_differentiated_raises(nodes, message):
    from fmonnx.errors import GradientError

    x = rand(1, 2, 3, 3)
    initializers = {"sizes": np.asarray([1, 2, 5, 5], np.int64),
                    "roi": np.asarray([0, 0, 0, 0, 1, 1, 1, 1], np.float32),
                    "scales": np.asarray([1, 1, 2, 2], np.float32), "s": rand(2), "b": rand(2), "m": rand(2),
                    "v": np.ones(2, np.float32)}
    used = {name for n in nodes for name in n.input}
    model = forward_model(nodes, {"x": x}, "y", {k: v for k, v in initializers.items() if k in used}, 18)
    with pytest.raises(GradientError, match=message):
        backward_values(model, {"x": x}, "y", np.ones((1, 2, 5, 5), np.float32), ["x"])
