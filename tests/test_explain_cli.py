"""fmonnx explain as users touch it: the CLI as a subprocess, the API from a bare ``import fmonnx``, on tiny
models built here whose scores and gradients numpy computes independently."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import fmonnx
from conftest import make_model, save

RNG = np.random.default_rng(3)
W1 = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
W2 = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
FC = RNG.standard_normal((5, 6)).astype(np.float32)
FC_BIAS = RNG.standard_normal(5).astype(np.float32)


def classifier(extra_nodes=(), extra_outputs=(), extra_init=(), head_input="relu2") -> onnx.ModelProto:
    """input (1,3,8,8) -> conv1 -> relu1 -> pool -> conv2 -> relu2 -> GAP -> Flatten -> Gemm -> Softmax."""
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["conv1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool", "w2"], ["conv2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        *extra_nodes,
        helper.make_node("GlobalAveragePool", [head_input], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fc_bias"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 5]), *extra_outputs],
        [("w1", W1), ("w2", W2), ("fc", FC), ("fc_bias", FC_BIAS), *extra_init],
    )


@pytest.fixture
def photo(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return path


def _fmonnx(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fmonnx", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def _head_gradient(relu2: np.ndarray, k: int) -> np.ndarray:
    """d logits[k] / d relu2 for GAP -> Gemm: FC[k, c] / (H * W) everywhere in channel c."""
    _, _, h, w = relu2.shape
    return np.broadcast_to((FC[k] / (h * w))[:, None, None], relu2.shape[1:])


def test_default_target_is_top_class_before_softmax(tmp_path, photo):
    ex = fmonnx.explain(save(classifier(), tmp_path, "m.onnx"), photo)
    relu2 = ex.layer("relu2").activation[None]
    logits = FC @ relu2.mean(axis=(2, 3))[0] + FC_BIAS
    top = int(np.argmax(logits))
    assert ex.target["index"] == [[0, top]] and ex.target["kind"] == "class"
    assert ex.target["output"] == "probabilities"  # the output named; the score is its Softmax's input
    np.testing.assert_allclose(ex.target["score"], logits[top], rtol=1e-5)
    assert [layer.name for layer in ex.layers] == ["relu2"]  # the default layer: the last with H, W > 1
    np.testing.assert_allclose(ex.layers[0].gradient, _head_gradient(relu2, top), rtol=1e-5, atol=1e-7)
    weights = FC[top] / 16
    np.testing.assert_allclose(ex.layers[0].weights, weights, rtol=1e-5)
    np.testing.assert_allclose(ex.layers[0].raw, np.maximum((weights[:, None, None] * relu2[0]).sum(0), 0),
                               rtol=1e-4, atol=1e-6)
    assert "class" in repr(ex) and "<img" in ex._repr_html_()


def test_layers_by_every_name_and_the_input_fed(tmp_path, photo):
    path = save(classifier(), tmp_path, "m.onnx")
    ex = fmonnx.explain(path, photo, target=4, layers=["conv1", "pool", "relu2"])
    assert [layer.name for layer in ex.layers] == ["conv1", "pool", "relu2"]
    assert ex.target["index"] == [[0, 4]]
    maps = fmonnx.activations(path, photo)  # the same tensors render shows under the same names
    for layer in ex.layers:
        np.testing.assert_array_equal(layer.activation, maps[layer.name])
    assert ex.input.shape == (1, 3, 8, 8)


def test_unreached_layer_is_zero_and_said(tmp_path, photo):
    """A branch the score does not read: its gradient is zero and the explanation says so."""
    side = [helper.make_node("Conv", ["input", "w_side"], ["side"], name="side"),
            helper.make_node("Relu", ["side"], ["side_relu"], name="side_relu")]
    model = classifier(side, [helper.make_tensor_value_info("side_relu", TensorProto.FLOAT, [1, 2, 8, 8])],
                       [("w_side", RNG.standard_normal((2, 3, 1, 1)).astype(np.float32))])
    ex = fmonnx.explain(save(model, tmp_path, "m.onnx"), photo, layers="all")
    side_layer = ex.layer("side_relu")
    assert not side_layer.depends and not side_layer.gradient.any() and not side_layer.raw.any()
    assert ex.layer("relu2").depends
    assert any("does not depend on" in problem and "side_relu" in problem for problem in ex.explained.problems)


def _looped(body_op="Identity") -> onnx.ModelProto:
    """relu2 goes through a Loop (one trip, its body reads relu2 from the outer graph) before the head."""
    body = helper.make_graph(
        [helper.make_node(body_op, ["relu2"], ["looped_inner"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("looped_inner", TensorProto.FLOAT, None)],
    )
    loop = [helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("t", TensorProto.INT64, [], [1])),
            helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
            helper.make_node("Loop", ["trips", "cond"], ["looped"], name="the_loop", body=body),
            helper.make_node("Constant", [], ["axis0"], value=helper.make_tensor("a", TensorProto.INT64, [1], [0])),
            helper.make_node("Squeeze", ["looped", "axis0"], ["looped_map"], name="squeeze")]
    return classifier(loop, head_input="looped_map")


def test_op_without_rule_is_one_error_line_and_nothing_written(tmp_path, photo):
    path = save(_looped(), tmp_path, "loop.onnx")
    out = tmp_path / "out"
    result = _fmonnx("explain", path, photo, "-o", out, "--layer", "relu2")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no gradient rule for the Loop node 'the_loop'"), \
        result.stderr
    assert "--method eigencam" in lines[0] and "Traceback" not in result.stderr
    assert not out.exists()
    # the gradient-free methods still explain that model
    ex = fmonnx.explain(path, photo, layers=["relu2"], method="eigencam")
    assert ex.layers[0].raw.shape == (4, 4) and ex.layers[0].gradient is None


@pytest.mark.parametrize("args, message", [
    (["--target", "banana"], "--target 'banana' is not understood"),
    (["--layer", "nope"], "no layer 'nope'"),
    (["--target", "box:0"], "needs a YOLO-style detector output"),
    (["--target", "output:probabilities[0,9]"], ""),
])
def test_bad_choices_are_one_error_line(tmp_path, photo, args, message):
    path = save(classifier(), tmp_path, "m.onnx")
    result = _fmonnx("explain", path, photo, "-o", tmp_path / "out", *args)
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_writes_json_pictures_and_page_and_replaces_its_own_output(tmp_path, photo):
    path = save(classifier(), tmp_path, "m.onnx")
    out = tmp_path / "out"
    for _ in range(2):  # the second run replaces the first's folder
        result = _fmonnx("explain", path, photo, "-o", out, "--target", "1", "--save-arrays")
        assert result.returncode == 0, result.stderr
    data = json.loads((out / "explain.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    image = data["images"][0]
    assert data["method"] == "gradcam" and image["target"]["index"] == [[0, 1]]
    assert [layer["name"] for layer in image["layers"]] == ["conv1", "relu1", "pool", "conv2", "relu2"]
    assert image["chosen"] == "relu2"
    for layer in image["layers"]:
        assert (out / layer["overlay"]).is_file()
        assert len(layer["top_channels"]) >= 1
    assert (out / "index.html").is_file()
    assert {choice["target"]["index"][0][1] for choice in image["choices"]} >= {1}
    assert "Wrote the gradcam explanation of 1 image" in result.stdout


def test_element_target_and_saliency(tmp_path, photo):
    path = save(classifier(), tmp_path, "m.onnx")
    ex = fmonnx.explain(path, photo, target="output:probabilities[0,2]", method="saliency")
    assert ex.target["kind"] == "element" and ex.target["index"] == [[0, 2]]
    probabilities = fmonnx.explain(path, photo, target=2).layers[0]
    del probabilities
    (layer,) = ex.layers
    assert layer.name == "input" and layer.raw.shape == (8, 8)
    np.testing.assert_allclose(layer.raw, np.abs(layer.gradient * layer.activation).sum(0), rtol=1e-5, atol=1e-8)


def test_ablation_and_score_cam_weights_equal_their_definitions(tmp_path, photo):
    path = save(classifier(), tmp_path, "m.onnx")
    ablation = fmonnx.explain(path, photo, target=0, layers=["relu2"], method="ablationcam").layers[0]
    relu2 = ablation.activation
    pooled = relu2.mean(axis=(1, 2))
    score = FC[0] @ pooled + FC_BIAS[0]
    ablated = score - FC[0] * pooled  # channel k zeroed: its term leaves the logit
    np.testing.assert_allclose(ablation.weights, (score - ablated) / score, rtol=1e-4, atol=1e-6)

    score_cam = fmonnx.explain(path, photo, target=0, layers=["relu2"], method="scorecam").layers[0]
    assert score_cam.weights.shape == (6,)
    np.testing.assert_allclose(score_cam.weights.sum(), 1.0, rtol=1e-5)  # a softmax over the channels


def test_memory_bound_is_respected_or_refused(tmp_path, photo):
    path = save(classifier(), tmp_path, "m.onnx")
    out = tmp_path / "out"
    result = _fmonnx("explain", path, photo, "-o", out, "--max-memory", "1M")
    assert result.returncode == 1 and "over --max-memory 1M" in result.stderr, result.stderr
    assert not out.exists()
    assert _fmonnx("explain", path, photo, "-o", out, "--max-memory", "2G").returncode == 0


def test_cli_method_choices_are_the_library_methods():
    from fmonnx.cli import cli
    from fmonnx.stages.cam import METHODS

    option = next(param for param in cli.commands["explain"].params if param.name == "method")
    assert tuple(option.type.choices) == METHODS
