"""The default view shows each block's activated output once: SiLU, HardSwish, GELU, ReLU6, LeakyRelu, PRelu."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

H, W = 4, 6
# 1x1 Conv, 3 channels in, 4 out, with negative weights so every activation's negative side is reached
WEIGHTS = np.array([[1, -2, 0.5], [-1, 0.25, 3], [0, 1, -1], [2, 2, -4]], np.float32).reshape(4, 3, 1, 1)


def _scalar(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def activation_model(nodes, extra=(), opset=17) -> onnx.ModelProto:
    """input -> Conv(1x1) -> conv_out -> <nodes, ending in "act"> -> MaxPool 2x2 -> output."""
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["conv_out"], name="conv"),
            *nodes,
            helper.make_node("MaxPool", ["act"], ["output"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        ],
        "activations",
        [value("input", TensorProto.FLOAT, [1, 3, H, W])],
        [value("output", TensorProto.FLOAT, [1, 4, H // 2, W // 2])],
        initializer=[numpy_helper.from_array(WEIGHTS, "w"), *extra],
    )
    model = helper.make_model(graph, producer_name="fmonnx-tests", opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 20 else 8
    onnx.checker.check_model(model, full_check=True)
    return model


node = helper.make_node
SLOPE = numpy_helper.from_array(np.array([0.1, 0.2, 0.3, 0.4], np.float32).reshape(4, 1, 1), "slope")
CASES = {
    "silu": ([node("Sigmoid", ["conv_out"], ["sig"]), node("Mul", ["conv_out", "sig"], ["act"])], [], 17),
    "silu_swapped": ([node("Sigmoid", ["conv_out"], ["sig"]), node("Mul", ["sig", "conv_out"], ["act"])], [], 17),
    "hardswish_op": ([node("HardSwish", ["conv_out"], ["act"])], [], 17),
    "hardswish_hardsigmoid": (
        [node("HardSigmoid", ["conv_out"], ["gate"], alpha=1 / 6), node("Mul", ["conv_out", "gate"], ["act"])], [], 17
    ),
    "hardswish_clip": (
        [
            node("Add", ["conv_out", "three"], ["shifted"]),
            node("Clip", ["shifted", "zero", "six"], ["clipped"]),
            node("Mul", ["conv_out", "clipped"], ["product"]),
            node("Div", ["product", "six"], ["act"]),
        ],
        [_scalar("three", 3.0), _scalar("zero", 0.0), _scalar("six", 6.0)],
        17,
    ),
    "hardswish_clip_gate": (
        [
            node("Add", ["three", "conv_out"], ["shifted"]),
            node("Clip", ["shifted", "zero", "six"], ["clipped"]),
            node("Div", ["clipped", "six"], ["gate"]),
            node("Mul", ["gate", "conv_out"], ["act"]),
        ],
        [_scalar("three", 3.0), _scalar("zero", 0.0), _scalar("six", 6.0)],
        17,
    ),
    "relu6": ([node("Clip", ["conv_out", "zero", "six"], ["act"])], [_scalar("zero", 0.0), _scalar("six", 6.0)], 17),
    "relu6_opset9": ([node("Clip", ["conv_out"], ["act"], min=0.0, max=6.0)], [], 9),
    "leakyrelu": ([node("LeakyRelu", ["conv_out"], ["act"], alpha=0.1)], [], 17),
    "prelu": ([node("PRelu", ["conv_out", "slope"], ["act"])], [SLOPE], 17),
    "elu": ([node("Elu", ["conv_out"], ["act"])], [], 17),
    "gelu_erf": (
        [
            node("Div", ["conv_out", "sqrt2"], ["scaled"]),
            node("Erf", ["scaled"], ["erf"]),
            node("Add", ["erf", "one"], ["erf_plus"]),
            node("Mul", ["conv_out", "erf_plus"], ["product"]),
            node("Mul", ["product", "half"], ["act"]),
        ],
        [_scalar("sqrt2", np.sqrt(2.0)), _scalar("one", 1.0), _scalar("half", 0.5)],
        17,
    ),
    "gelu_erf_half_first": (
        [
            node("Mul", ["conv_out", "half"], ["halved"]),
            node("Mul", ["conv_out", "rsqrt2"], ["scaled"]),
            node("Erf", ["scaled"], ["erf"]),
            node("Add", ["one", "erf"], ["erf_plus"]),
            node("Mul", ["halved", "erf_plus"], ["act"]),
        ],
        [_scalar("rsqrt2", 1 / np.sqrt(2.0)), _scalar("one", 1.0), _scalar("half", 0.5)],
        17,
    ),
    "gelu_op": ([node("Gelu", ["conv_out"], ["act"])], [], 20),
}


def fmonnx(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmonnx", *map(str, args)], capture_output=True, text=True)


def default_tensors(path) -> list[str]:
    result = fmonnx("layers", path, "--json")
    assert result.returncode == 0, result.stderr
    return [row["tensor"] for row in json.loads(result.stdout)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_activation_output_is_in_the_default_view_once(case, tmp_path):
    nodes, extra, opset = CASES[case]
    path = tmp_path / f"{case}.onnx"
    onnx.save(activation_model(nodes, extra, opset), path)
    # the activated output once, the pool after: no Sigmoid half, no Clip inside a HardSwish, and not the
    # Conv's output, which only feeds the activation (the block's output is the activated map)
    assert default_tensors(path) == ["act", "output"]
    # --all-spatial still has the Conv's output, and every part of the activation
    result = fmonnx("layers", path, "--json", "--all-spatial")
    assert "conv_out" in [row["tensor"] for row in json.loads(result.stdout)]


def test_a_conv_read_elsewhere_too_stays_in_the_default_view(tmp_path):
    """Leaving out the pre-activation map is only for a map that nothing else reads (a residual branch
    reading the Conv's output keeps it)."""
    nodes, extra, opset = CASES["silu"]
    nodes = [*nodes, node("Add", ["conv_out", "act"], ["summed"])]
    model = activation_model(nodes, extra, opset)
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    pool.input[0] = "summed"
    path = tmp_path / "residual.onnx"
    onnx.save(model, path)
    assert default_tensors(path)[:2] == ["conv_out", "act"]


def test_relu_only_models_are_unchanged(tmp_path):
    """A Clip that is not a ReLU6 (its lower bound is not 0) is not an activation; Conv/Relu/MaxPool are as before."""
    nodes = [node("Clip", ["conv_out", "low", "six"], ["clipped"]), node("Relu", ["clipped"], ["act"])]
    path = tmp_path / "clip.onnx"
    onnx.save(activation_model(nodes, [_scalar("low", -1.0), _scalar("six", 6.0)]), path)
    assert default_tensors(path) == ["conv_out", "act", "output"]


def test_explicit_ops_still_mean_exactly_those_ops(tmp_path):
    path = tmp_path / "silu.onnx"
    onnx.save(activation_model(*CASES["silu"]), path)
    result = fmonnx("layers", path, "--json", "--ops", "Conv,Sigmoid")
    assert result.returncode == 0, result.stderr
    assert [row["tensor"] for row in json.loads(result.stdout)] == ["conv_out", "sig"]
    result = fmonnx("layers", path, "--json", "--ops", "SiLU")
    assert [row["tensor"] for row in json.loads(result.stdout)] == ["act"]


def test_rendered_silu_is_x_sigmoid_x_of_the_conv(tmp_path):
    import onnxruntime as ort
    from PIL import Image

    path = tmp_path / "silu.onnx"
    onnx.save(activation_model(*CASES["silu"]), path)
    rows, cols = np.mgrid[0:H, 0:W]
    pixels = np.stack([rows * 60 + cols * 7, 250 - cols * 40, np.full((H, W), 90)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    out = tmp_path / "maps"
    result = fmonnx("render", path, tmp_path / "image.png", "--out", out, "--save-arrays", "--no-report")
    assert result.returncode == 0, result.stderr
    (image,) = json.loads((out / "manifest.json").read_text())["images"]
    fed = np.load(out / image["input_array"])
    (layer,) = [layer for layer in image["layers"] if layer["tensor"] == "act"]
    saved = np.load(out / layer["array"])

    # the truth: the unmodified model's Conv, run alone by onnxruntime on the same input, then numpy's SiLU
    conv_only = onnx.ModelProto()
    conv_only.CopyFrom(onnx.load(path))
    del conv_only.graph.node[1:]
    conv_only.graph.output[0].CopyFrom(helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, None))
    (conv,) = ort.InferenceSession(conv_only.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": fed}
    )
    expected = conv[0] / (1 + np.exp(-conv[0]))
    assert expected.min() < 0  # the negative side of SiLU is in the picture
    np.testing.assert_allclose(saved, expected, rtol=1e-5, atol=1e-6)
    # and the unmodified model's own output is the max-pool of it
    (pooled,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": fed})
    np.testing.assert_allclose(pooled[0], expected.reshape(4, H // 2, 2, W // 2, 2).max(axis=(2, 4)), rtol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("dynamo", [False, True])
def test_torch_exported_silu_is_in_the_default_view(dynamo, tmp_path):
    torch = pytest.importorskip("torch")
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.MaxPool2d(2)).eval()
    path = tmp_path / "silu.onnx"
    torch.onnx.export(module, (torch.rand(1, 3, 8, 8),), str(path), dynamo=dynamo, input_names=["input"])
    model = onnx.load(path)
    producer = {out: n for n in model.graph.node for out in n.output}
    tensors = default_tensors(path)
    made = [producer[t].op_type for t in tensors]
    silu = [t for t in tensors if producer[t].op_type in ("Mul", "Swish")]
    assert "Sigmoid" not in made and len(silu) == 1, made

    from fmonnx import RenderOptions, activations

    image = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)).save(image)
    options = RenderOptions(preprocess="unit", save_arrays=False)
    maps = activations(path, image, options)
    fed = torch.from_numpy(np.asarray(Image.open(image), np.float32).transpose(2, 0, 1)[None] / 255.0)
    with torch.no_grad():
        expected = module[1](module[0](fed))[0].numpy()
    shown = [v for v in maps.values() if v.shape == expected.shape and np.allclose(v, expected, atol=1e-5)]
    assert len(shown) == 1


def test_a_conv_over_a_rearranged_sequence_is_not_a_feature_map(tmp_path):
    """YOLO's DFL: box logits (1, 16, anchors) rearranged to (1, 4, 4, anchors), softmaxed and convolved. ONNX
    calls the Conv's output N,C,H,W, but its H and W are not the image's: not drawn, and said why."""
    shape_3d = numpy_helper.from_array(np.array([1, 16, 64], np.int64), "to_seq")
    shape_4d = numpy_helper.from_array(np.array([1, 4, 4, 64], np.int64), "to_bins")
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["input", "w16"], ["head"], name="head"),
        helper.make_node("Reshape", ["head", "to_seq"], ["seq"], name="flatten"),
        helper.make_node("Reshape", ["seq", "to_bins"], ["bins"], name="bins"),
        helper.make_node("Transpose", ["bins"], ["moved"], name="move", perm=[0, 2, 1, 3]),
        helper.make_node("Softmax", ["moved"], ["soft"], name="softmax", axis=1),
        helper.make_node("Conv", ["soft", "w1"], ["dfl"], name="dfl"),
    ]
    graph = helper.make_graph(
        nodes, "dfl", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("dfl", TensorProto.FLOAT, [1, 1, 4, 64])],
        initializer=[numpy_helper.from_array(rng.normal(size=(16, 3, 1, 1)).astype(np.float32), "w16"),
                     numpy_helper.from_array(rng.normal(size=(1, 4, 1, 1)).astype(np.float32), "w1"),
                     shape_3d, shape_4d],
    )
    path = tmp_path / "dfl.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert default_tensors(path) == ["head"]
    result = fmonnx("layers", path, "--all-spatial")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("dfl"))
    assert "not drawn" in line and "sequence rearranged" in line
