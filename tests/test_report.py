"""The report's data (quantize, the data scripts), index.html, and RenderResult, without a browser."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import copy_weights, make_model, save
from onnx import TensorProto, helper

import fmonnx.report.page as report
from fmonnx import RenderOptions, render
from fmonnx.report.result import RenderResult
from fmonnx.stages.normalize import channel_stats


def page_payload(index_html: str) -> dict:
    block = re.search(r'<script id="fmonnx-data" type="application/json">(.*?)</script>', index_html, re.S)
    return json.loads(block.group(1))


def test_quantize_stretches_each_channel_and_flattens_dead_ones():
    values = np.array([[[0.0, 1.0], [2.0, 3.0]], [[7.0, 7.0], [7.0, 7.0]], [[-2.0, np.nan], [0.0, 2.0]]], np.float32)
    levels = report.quantize(values, channel_stats(values))
    assert levels.dtype == np.uint8
    assert levels[0].tolist() == [[0, 85], [170, 255]]
    assert not levels[1].any()
    assert levels[2].tolist() == [[0, 128], [128, 255]]  # NaN counts as 0, as in the stats


def test_dequantize_is_within_half_a_level():
    values = np.random.default_rng(0).normal(size=(5, 9, 11)).astype(np.float32) * np.arange(1, 6)[:, None, None]
    stats = channel_stats(values)
    back = report.dequantize(report.quantize(values, stats), stats.min, stats.max)
    step = (stats.max - stats.min)[:, None, None] / 255
    assert np.all(np.abs(back - values) <= step / 2 + 1e-5)


def test_data_script_round_trips(tmp_path):
    values = np.random.default_rng(1).random((7, 3, 5)).astype(np.float32)
    stats = channel_stats(values)
    geometry = report.write_layer_data(tmp_path, "report/000_x.js", values, stats)
    assert geometry["channels"] == 7 and geometry["tile"] == [3, 5] and geometry["scale"] == 1
    assert geometry["columns"] * geometry["rows"] >= 7
    text = (tmp_path / "report/000_x.js").read_text()
    assert text.startswith('fmonnxData("report/000_x.js","iVBOR')  # a PNG, base64
    assert np.array_equal(report.read_layer_data(tmp_path, geometry), report.quantize(values, stats))


def test_huge_layers_are_subsampled_in_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "MAX_SIDE", 40)
    values = np.random.default_rng(2).random((4, 60, 60)).astype(np.float32)
    geometry = report.write_layer_data(tmp_path, "big.js", values, channel_stats(values))
    assert geometry["scale"] < 1
    levels = report.read_layer_data(tmp_path, geometry)
    assert levels.shape[0] == 4 and levels.shape[1:] == tuple(geometry["tile"]) and levels.shape[1] < 60


def test_render_writes_the_page_and_lists_every_file(copy_model_path, write_image, gradient_rgb, tmp_path):
    out = tmp_path / "maps"
    result = render(copy_model_path, [write_image(gradient_rgb, "photo.png")], out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert result.manifest == manifest and isinstance(result, RenderResult)
    written = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    assert set(manifest["files"]) == written - {"manifest.json"}
    assert {"index.html", "report/input_000.jpg", "report/000_conv.js"} <= written
    for layer in manifest["images"][0]["layers"]:
        assert (out / layer["report_data"]["file"]).exists()
    page = (out / "index.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "the page must not load anything from the network"
    data = page_payload(page)
    assert [layer["name"] for layer in data["layers"]] == ["conv", "relu", "pool"]
    relu = data["images"][0]["layers"]["relu"]
    assert relu["channels"]["dead"] == [False, True] and relu["data"]["file"] == "report/001_relu.js"
    assert data["images"][0]["picture"] == "report/input_000.jpg"
    assert set(data["colormaps"]) >= {"viridis", "gray"}
    render(copy_model_path, [write_image(gradient_rgb, "photo.png")], out)  # its own report is replaceable


def test_several_images_get_data_per_image(copy_model_path, write_image, gradient_rgb, tmp_path):
    out = tmp_path / "maps"
    render(copy_model_path, [write_image(gradient_rgb, "a.png"), write_image(255 - gradient_rgb, "b.png")], out)
    data = page_payload((out / "index.html").read_text())
    files = [image["layers"]["conv"]["data"]["file"] for image in data["images"]]
    assert len(set(files)) == 2 and all((out / file).exists() for file in files)
    assert [image["picture"] for image in data["images"]] == ["report/input_000.jpg", "report/input_001.jpg"]


def test_names_cannot_break_out_of_the_page(tmp_path, write_image, gradient_rgb):
    hostile = "c</script><img src=x onerror=alert(1)>"
    model = make_model(
        [
            helper.make_node("Conv", ["input", "w"], [hostile], name="conv"),
            helper.make_node("Relu", [hostile], ["output"], name="relu"),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, 4, 6])],
        [("w", copy_weights())],
    )
    out = tmp_path / "maps"
    render(save(model, tmp_path, "m.onnx"), [write_image(gradient_rgb)], out)
    page = (out / "index.html").read_text()
    assert page.count("</script>") == 2  # the data block's and the page script's own
    assert "<img src=x" not in page
    assert page_payload(page)["layers"][0]["tensor"] == hostile


def test_no_report_writes_only_pictures_and_manifest(copy_model_path, write_image, gradient_rgb, tmp_path):
    out = tmp_path / "maps"
    result = render(copy_model_path, [write_image(gradient_rgb)], out, RenderOptions(report=False))
    assert not (out / "index.html").exists() and not (out / "report").exists()
    assert result.index is None
    assert "report_data" not in result.manifest["images"][0]["layers"][0]


def test_result_maps_exact_with_arrays_and_close_without(copy_model_path, write_image, gradient_rgb, tmp_path):
    photo = write_image(gradient_rgb)
    exact = render(copy_model_path, [photo], tmp_path / "a", RenderOptions(save_arrays=True, preprocess="raw"))
    rebuilt = render(copy_model_path, [photo], tmp_path / "b", RenderOptions(preprocess="raw"))
    red = gradient_rgb[..., 0].astype(np.float32)
    assert np.array_equal(exact.maps("conv")[0], red)
    approx = rebuilt.maps("conv")
    assert approx.shape == (2, 4, 6)
    assert np.abs(approx[0] - red).max() <= (red.max() - red.min()) / 510 + 1e-4
    assert not rebuilt.maps("relu")[1].any()
    assert rebuilt["images"] is rebuilt.manifest["images"]
    with pytest.raises(Exception, match="no layer named 'nope'; the layers are: conv, relu, pool"):
        rebuilt.maps("nope")


def test_repr_html_shows_layers_grids_and_dead_channels(copy_model_path, write_image, gradient_rgb, tmp_path):
    result = render(copy_model_path, [write_image(gradient_rgb)], tmp_path / "maps")
    page = result._repr_html_()
    assert page.startswith('<div class="fmonnx-result">') and page.endswith("</div>")
    assert page.split("<tbody>")[1].count("<tr>") == 3 and page.count('src="data:image/jpeg;base64,') == 3
    relu_row = next(row for row in page.split("<tr>") if "<b>relu</b>" in row)
    assert "1 dead" in relu_row
    assert "index.html" in page and "CPUExecutionProvider" in page


def test_plot_layer_draws_a_matplotlib_figure(copy_model_path, write_image, gradient_rgb, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = render(copy_model_path, [write_image(gradient_rgb)], tmp_path / "maps")
    figure = result.plot_layer("relu")
    try:
        (axes,) = figure.axes
        assert axes.get_title().startswith("relu [Relu] 2x4x6")
        assert axes.images[0].get_array().shape[:2] == (4, 13)  # 2 tiles of 4x6, 1 pixel between
        hidden = result.plot_layer("relu", hide_dead=True, cmap="gray")
        assert hidden.axes[0].images[0].get_array().shape[:2] == (4, 6)
        plt.close(hidden)
    finally:
        plt.close(figure)


def test_render_and_repr_do_not_import_matplotlib(copy_model_path, write_image, gradient_rgb, tmp_path):
    script = (
        "import sys; from fmonnx import render; "
        f"r = render({str(copy_model_path)!r}, [{str(write_image(gradient_rgb))!r}], {str(tmp_path / 'm')!r}); "
        "r._repr_html_(); print('matplotlib' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False"
