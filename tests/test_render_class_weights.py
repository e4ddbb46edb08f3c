"""render --class-weights: each layer's Grad-CAM weights for the top class in the manifest, and the page's
order by them. A tiny classifier whose weights are known by hand: d logit_k / d relu = FC[k, c] / (H * W)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_browser import browser, open_page, wait_drawn  # noqa: F401 (fixtures)
from test_explain_cli import _looped

from conftest import make_model, save
from fmonnx import RenderOptions, render

H, W = 6, 8
RNG = np.random.default_rng(15)
CONV = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)
CONV_BIAS = np.array([0.3, -0.2, 0.1, 0.0], np.float32)
# channel weights far apart, so the order by weight is one order
FC = np.array([[0.5, -1.0, 2.0, 1.5], [-2.0, 3.0, -0.5, 1.0], [1.0, 0.25, -1.5, -3.0]], np.float32)
FC_BIAS = np.array([0.1, 0.0, -0.1], np.float32)


def classifier() -> onnx.ModelProto:
    """input (1,3,6,8) -> 1x1 conv -> relu -> GAP -> Flatten -> Gemm (3 classes)."""
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fc_bias"], ["logits"], name="fc", transB=1),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, H, W])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        [("w", CONV), ("b", CONV_BIAS), ("fc", FC), ("fc_bias", FC_BIAS)],
    )


@pytest.fixture
def photos(tmp_path):
    from PIL import Image

    paths = []
    for index in range(2):
        path = tmp_path / f"photo{index}.png"
        Image.fromarray(RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _expected(fed: np.ndarray) -> tuple[int, dict[str, np.ndarray], np.ndarray]:
    """The top class, each layer's Grad-CAM weights (mean gradient per channel) and the logits, in numpy."""
    conv = np.einsum("oi,bihw->bohw", CONV[:, :, 0, 0].astype(np.float64), fed) + CONV_BIAS[None, :, None, None]
    relu = np.maximum(conv, 0)
    logits = FC @ relu.mean(axis=(2, 3))[0] + FC_BIAS
    top = int(np.argmax(logits))
    relu_weights = FC[top] / (H * W)
    conv_weights = relu_weights * (conv[0] > 0).mean(axis=(1, 2))  # Relu passes the gradient where conv > 0
    return top, {"relu": relu_weights, "conv": conv_weights}, logits


def _layers(image: dict) -> dict[str, dict]:
    return {layer["name"]: layer for layer in image["layers"]}


def test_manifest_holds_the_top_class_weights_of_each_layer(tmp_path, photos):
    path = save(classifier(), tmp_path, "m.onnx")
    result = render(path, photos, tmp_path / "out", RenderOptions(class_weights=True, save_arrays=True))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert len(manifest["images"]) == 2
    for image in manifest["images"]:
        fed = np.load(tmp_path / "out" / image["input_array"]).astype(np.float64)
        top, weights, logits = _expected(fed)
        target = image["class_target"]
        assert target["index"] == [[0, top]] and target["kind"] == "class" and target["output"] == "logits"
        np.testing.assert_allclose(target["score"], logits[top], rtol=1e-5)
        layers = _layers(image)
        assert set(weights) <= set(layers)
        for name, expected in weights.items():
            np.testing.assert_allclose(layers[name]["class_weights"], expected, rtol=1e-5, atol=1e-7)
        assert not any("class weights" in problem for problem in image["problems"])
    # the returned outline carries them too
    assert _layers(result.manifest["images"][0])["relu"]["class_weights"] == _layers(manifest["images"][0])["relu"][
        "class_weights"]


def test_without_the_flag_nothing_changes(tmp_path, photos):
    path = save(classifier(), tmp_path, "m.onnx")
    render(path, photos[:1], tmp_path / "out")
    text = (tmp_path / "out" / "manifest.json").read_text()
    assert "class_weights" not in text and "class_target" not in text
    assert '"class_weights":false' in (tmp_path / "out" / "index.html").read_text()


def _fmonnx(*args):
    return subprocess.run([sys.executable, "-m", "fmonnx", *map(str, args)], capture_output=True, text=True)


def test_cli_flag(tmp_path, photos):
    path = save(classifier(), tmp_path, "m.onnx")
    out = tmp_path / "out"
    result = _fmonnx("render", path, photos[0], "-o", out, "--class-weights", "--save-arrays")
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr
    image = json.loads((out / "manifest.json").read_text())["images"][0]
    top, weights, _ = _expected(np.load(out / image["input_array"]).astype(np.float64))
    assert image["class_target"]["index"] == [[0, top]]
    np.testing.assert_allclose(_layers(image)["relu"]["class_weights"], weights["relu"], rtol=1e-5)
    assert "--class-weights" in _fmonnx("render", "--help").stdout


def test_op_without_gradient_rule_renders_with_a_warning(tmp_path, photos):
    """A Loop on the path to the score: no backward pass, but every map is still rendered."""
    path = save(_looped(), tmp_path, "loop.onnx")
    out = tmp_path / "out"
    result = _fmonnx("render", path, *photos, "-o", out, "--class-weights")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    for image in manifest["images"]:
        problems = [p for p in image["problems"] if p.startswith("class weights left out: ")]
        assert len(problems) == 1 and "Loop" in problems[0], image["problems"]
        assert "class_target" not in image and not any("class_weights" in layer for layer in image["layers"])
        assert "relu2" in _layers(image)
    assert result.stderr.count("Warning: class weights left out") == 2, result.stderr


def _sort_options(page) -> list[str]:
    return page.locator("#sort option").evaluate_all("(o) => o.map((x) => x.value)")


def _grid_channels(page, name: str) -> list[int]:
    frame = page.locator(f'section.layer[data-name="{name}"] .frame').first
    return frame.evaluate("(f) => Array.from(f.grid.channels)")


def test_page_orders_channels_by_weight(open_page, tmp_path, photos):  # noqa: F811
    path = save(classifier(), tmp_path, "m.onnx")
    plain = render(path, photos, tmp_path / "plain")
    opened = open_page(plain.index)
    assert _sort_options(opened.page) == ["index", "mean"]  # no class weights: no such order

    result = render(path, photos, tmp_path / "weighted", RenderOptions(class_weights=True))
    opened = open_page(result.index)
    page = opened.page
    assert _sort_options(page) == ["index", "mean", "weight"]
    relu = _layers(result.manifest["images"][0])["relu"]
    wait_drawn(page, 1)
    assert _grid_channels(page, "relu") == [0, 1, 2, 3]
    page.select_option("#sort", "weight")
    expected = sorted(range(4), key=lambda c: (-relu["class_weights"][c], c))  # largest first, ties by index
    assert expected != [0, 1, 2, 3]
    assert _grid_channels(page, "relu") == expected
    # side by side, the second image's grid follows the first image's order
    frames = page.locator('section.layer[data-name="relu"] .frame')
    assert frames.count() == 2
    assert frames.nth(1).evaluate("(f) => Array.from(f.grid.channels)") == expected
    assert "photo0.png" in page.locator("#sort").get_attribute("title")
    # one image shown: its own weights
    page.select_option("#image", "1")
    second = _layers(result.manifest["images"][1])["relu"]["class_weights"]
    assert _grid_channels(page, "relu") == sorted(range(4), key=lambda c: (-second[c], c))
    assert "photo1.png" in page.locator("#sort").get_attribute("title")
    assert not opened.problems, opened.problems
