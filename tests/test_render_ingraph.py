"""A render drawn in the graph (the default) against the same render drawn with numpy
(``RenderOptions(draw_in_graph=False)``, the reference path), through ``fmonnx.render``.

What must hold: the manifest's names, shapes, grids, dead and flat channels and file lists are the
same; min-max and layer normalization and the page's levels are equal to the bit (they depend on each
channel's min and max only, exact in float32); standardize pictures are within one grey level (the
graph's mean and std are float32 sums, numpy's std a float64 one), and nearly all equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

import fmonnx
from conftest import make_model, save
from fmonnx.report.page import read_layer_data

CHANNELS = 12


def _model(dynamic: bool = False, log_input: bool = False):
    """image -> Conv (dead, constant, flat and live channels) -> Relu -> MaxPool; Relu of the Conv's
    N,H,W,C transpose (a channels-last map). ``log_input``: Log of the image first (-inf at black pixels)."""
    rng = np.random.default_rng(17)
    weight = rng.normal(size=(CHANNELS, 3, 3, 3))
    bias = rng.normal(size=CHANNELS)
    weight[:3] = 0
    bias[:3] = (0, 900, 1000)  # distinct means: --top orders near-ties by float32 sums
    weight[2] = 2e-5  # within float32 rounding of 1000: flat
    height, width = ("H", "W") if dynamic else (20, 16)
    source = "image"
    nodes = []
    if log_input:
        nodes.append(helper.make_node("Log", ["image"], ["logged"]))
        source = "logged"
    nodes += [
        helper.make_node("Conv", [source, "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Transpose", ["conv"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("LeakyRelu", ["nhwc"], ["nhwc_act"], alpha=0.1),
    ]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, height, width])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * 4) for name in ("pool", "nhwc_act")]
    return make_model(nodes, [image], outputs, [("w", weight), ("b", bias)])


@pytest.fixture()
def photo(tmp_path) -> Path:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(26, 21, 3), dtype=np.uint8)
    pixels[:4, :4] = 0  # black: Log gives -inf there
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def _render(model_path: Path, photo: Path, out: Path, in_graph: bool, **options) -> dict:
    fmonnx.render(model_path, [photo], out, fmonnx.RenderOptions(draw_in_graph=in_graph, **options))
    return json.loads((out / "manifest.json").read_text())


def _png(folder: Path, name: str) -> np.ndarray:
    with Image.open(folder / name) as image:
        return np.asarray(image)


def _compare(tmp_path: Path, model, photo: Path, exact: bool, **options) -> tuple[dict, dict]:
    path = save(model, tmp_path, "model.onnx")
    numpy_out, graph_out = tmp_path / "numpy", tmp_path / "graph"
    reference = _render(path, photo, numpy_out, False, **options)
    drawn = _render(path, photo, graph_out, True, **options)
    assert drawn["files"] == reference["files"]
    layers = list(zip(reference["images"][0]["layers"], drawn["images"][0]["layers"]))
    assert [a["name"] for a, _ in layers] == [b["name"] for _, b in layers] and layers
    differing = total = 0
    for old, new in layers:
        for field in ("shape", "channel_axis", "grid", "dead_channels", "selection", "png", "report_data"):
            assert old.get(field) == new.get(field), (old["name"], field)
        for field in ("dead_indices", "flat_indices", "channels", "flat"):
            assert old["stats"][field] == new["stats"][field], (old["name"], field)
        for field in ("min", "max", "mean", "std", "zero_fraction"):
            assert new["stats"][field] == pytest.approx(old["stats"][field], rel=1e-5, abs=1e-5), field
        before, after = _png(numpy_out, old["png"]), _png(graph_out, new["png"])
        assert before.shape == after.shape
        difference = np.abs(before.astype(int) - after)
        if exact:
            np.testing.assert_array_equal(after, before, err_msg=old["name"])
        assert difference.max() <= 1, old["name"]
        differing += int((difference > 0).sum())
        total += difference.size
        if "report_data" in old:
            np.testing.assert_array_equal(read_layer_data(graph_out, new["report_data"]),
                                          read_layer_data(numpy_out, old["report_data"]))
    assert differing <= total // 200
    overview = np.abs(_png(numpy_out, "overview.png").astype(int) - _png(graph_out, "overview.png"))
    assert overview.max() <= (0 if exact else 1)
    return reference, drawn


@pytest.mark.parametrize("normalization", ["standardize", "minmax", "layer"])
def test_every_normalization(tmp_path, photo, normalization):
    _compare(tmp_path, _model(), photo, exact=normalization != "standardize", normalization=normalization)


@pytest.mark.parametrize(
    "options",
    [{"top": 5}, {"max_channels": 4}, {"layout": "belt"}, {"layout": "belt", "top": 3, "normalization": "minmax"}],
)
def test_channel_selection_and_layouts(tmp_path, photo, options):
    reference, drawn = _compare(tmp_path, _model(), photo, exact=options.get("normalization") == "minmax", **options)
    if "top" in options or "max_channels" in options:
        assert all("selection" in layer for layer in drawn["images"][0]["layers"])


def test_dead_flat_and_channels_last(tmp_path, photo):
    reference, drawn = _compare(tmp_path, _model(), photo, exact=False)
    layers = {layer["name"]: layer for layer in drawn["images"][0]["layers"]}
    conv = next(layer for name, layer in layers.items() if layer["tensor"] == "conv")
    assert conv["stats"]["dead_indices"][:3] == [0, 1, 2] and conv["stats"]["flat_indices"] == [2]
    nhwc = next(layer for layer in layers.values() if layer["tensor"] == "nhwc_act")
    assert nhwc["channel_axis"] == 3 and nhwc["shape"] == [CHANNELS, 20, 16]


def test_dynamic_height_and_width(tmp_path, photo):
    reference, drawn = _compare(tmp_path, _model(dynamic=True), photo, exact=False)
    assert drawn["images"][0]["layers"][0]["shape"][1:] == [26, 21]


def test_saved_arrays_are_the_float_maps(tmp_path, photo):
    path = save(_model(), tmp_path, "model.onnx")
    reference = _render(path, photo, tmp_path / "numpy", False, save_arrays=True)
    drawn = _render(path, photo, tmp_path / "graph", True, save_arrays=True)
    for old, new in zip(reference["images"][0]["layers"], drawn["images"][0]["layers"]):
        np.testing.assert_array_equal(np.load(tmp_path / "graph" / new["array"]),
                                      np.load(tmp_path / "numpy" / old["array"]))


def test_non_finite_maps_are_drawn_and_counted_as_before(tmp_path, photo):
    reference, drawn = _compare(tmp_path, _model(log_input=True), photo, exact=True)
    counts = [layer["stats"]["nonfinite_values"] for layer in drawn["images"][0]["layers"]]
    assert max(counts) > 0
    assert counts == [layer["stats"]["nonfinite_values"] for layer in reference["images"][0]["layers"]]


def test_a_declared_shape_the_run_contradicts(tmp_path, photo):
    """pool is declared 8x8 (as conv) but the run gives 4x4: onnxruntime refuses concatenating the two
    for drawing, so they are drawn apart; the render says what it said before, with the same pictures."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["conv"], ["pool"], kernel_shape=[2, 2], strides=[2, 2])]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    declared = helper.make_tensor_value_info("pool", TensorProto.FLOAT, [1, 4, 8, 8])
    model = make_model(nodes, [image], [declared], [("w", rng.normal(size=(4, 3, 3, 3)))])
    reference, drawn = _compare(tmp_path, model, photo, exact=False)
    assert drawn["images"][0]["problems"] == reference["images"][0]["problems"]
    assert any("the run gave [1, 4, 4, 4]" in problem for problem in drawn["images"][0]["problems"])
