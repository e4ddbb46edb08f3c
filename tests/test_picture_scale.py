"""Small maps are stored at their own size and magnified by the viewer (issue 17, "Write less").

- ``tile(..., upscale=False)`` keeps the stored pixels and records ``display_scale``, the
  whole factor the old pictures baked in;
- the page, in headless Chromium, shows every layer's grid at a whole magnification of its
  canvas, at least the layer's display scale, with ``image-rendering: pixelated``;
- the layer PNGs that render writes are at stored size.
"""

import math

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image
from test_browser import browser, open_page  # noqa: F401  (the Chromium fixtures)

from conftest import make_model, save
from fmonnx import RenderOptions, render
from fmonnx.stages.colormap import BACKGROUND
from fmonnx.stages.normalize import normalize
from fmonnx.stages.png import TITLE_HEIGHT
from fmonnx.stages.tile import MIN_TILE, plan_grid, tile

CHANNELS, SIDE, POOL = 256, 30, 10  # conv: 256 x 30 x 30 (no magnification); pool: 256 x 3 x 3 (8x)


def two_scale_model():
    """x (1, 3, 30, 30) -> conv (1x1, 256 channels, weights known) -> relu -> pool (10x10 max) = 3x3 maps."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(CHANNELS, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv_out"], name="conv"),
        helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
        helper.make_node("MaxPool", ["relu_out"], ["pool_out"], name="pool", kernel_shape=[POOL, POOL],
                         strides=[POOL, POOL]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIDE, SIDE])]
    outputs = [helper.make_tensor_value_info("pool_out", TensorProto.FLOAT, [1, CHANNELS, SIDE // POOL, SIDE // POOL])]
    return make_model(nodes, inputs, outputs, [("w", weights)])


@pytest.fixture
def rendered(tmp_path, write_image):
    pixels = np.random.default_rng(1).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    model = save(two_scale_model(), tmp_path, "two_scales.onnx")
    result = render(model, [write_image(pixels)], tmp_path / "maps",
                    RenderOptions(preprocess="raw", save_arrays=True, ops=("Conv", "MaxPool")))
    return result


def expected_display_scale(height: int, width: int) -> int:
    return math.ceil(MIN_TILE / max(height, width)) if max(height, width) < MIN_TILE else 1


@pytest.mark.parametrize("shape", [(5, 3, 3), (7, 7, 7), (3, 14, 9), (2, 30, 30), (3000, 7, 7)])
def test_stored_tiles_keep_their_pixels_and_record_the_old_upscale(shape):
    channels = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    stored = tile(channels, upscale=False)
    upscaled = tile(channels)
    factor = upscaled.describe()["scale"]
    assert stored.describe() == {**upscaled.describe(), "tile": [shape[1], shape[2]], "scale": 1,
                                 "display_scale": factor}
    assert factor == expected_display_scale(*shape[1:]) and upscaled.display_scale == 1
    # the upscaled picture is the stored one with each tile's values repeated: the viewer's nearest neighbour
    rows, columns = stored.rows, stored.columns
    height, width = shape[1:]
    for k in (0, shape[0] - 1):
        top, left = (k // columns) * (height + 1), (k % columns) * (width + 1)
        assert np.array_equal(stored.image[top : top + height, left : left + width], channels[k])
        top, left = (k // columns) * (height * factor + 1), (k % columns) * (width * factor + 1)
        big = upscaled.image[top : top + height * factor, left : left + width * factor]
        assert np.array_equal(big, channels[k].repeat(factor, 0).repeat(factor, 1))
    assert stored.image.shape == (rows * (height + 1) - 1, columns * (width + 1) - 1)
    assert plan_grid(*shape, upscale=False).display_scale == factor


def test_stored_tiles_of_a_huge_layer_are_subsampled_below_max_side():
    plan = plan_grid(40_000, 7, 7, max_side=1000, upscale=False)  # 200 x 200 tiles of 8 pixels: 1600 > max_side 1000
    assert plan.factor == 1 and plan.display_scale == 1
    grid = tile(np.zeros((40_000, 7, 7), np.uint8), upscale=False, max_side=1000)
    assert max(grid.image.shape) <= 1000 and grid.scale < 1 and grid.display_scale == 1


def test_page_shows_each_grid_at_a_whole_magnification_of_at_least_its_display_scale(open_page, rendered):  # noqa: F811
    layers = {layer["name"]: layer for layer in rendered.manifest["images"][0]["layers"]}
    assert [layers[name]["shape"][1:] for name in ("conv", "pool")] == [[SIDE, SIDE], [3, 3]]
    opened = open_page(rendered.index)
    page = opened.page
    for name in ("conv", "pool"):
        section = page.locator(f'section.layer[data-name="{name}"]')
        section.scroll_into_view_if_needed()
        section.locator(".frame.ready").first.wait_for()
        canvas = section.locator(".frame canvas").first
        width, height, css_width, css_height, rendering = canvas.evaluate(
            "(c) => { const box = c.getBoundingClientRect();"
            " return [c.width, c.height, box.width, box.height, getComputedStyle(c).imageRendering]; }"
        )
        magnification = css_width / width
        assert magnification == pytest.approx(round(magnification)) and css_height / height == pytest.approx(
            magnification
        ), (name, width, css_width)
        least = max(layers[name]["grid"]["display_scale"], expected_display_scale(*layers[name]["shape"][1:]))
        assert round(magnification) >= least, (name, magnification, least)
        assert rendering == "pixelated"

    # the layer detail panel: the largest whole factor that fits (never a blurred fraction when one fits)
    page.locator('section.layer[data-name="pool"] h2 button').click()
    detail = page.locator("#detail")
    detail.locator(".frame.ready").first.wait_for()
    canvas = detail.locator(".frame canvas").first
    width, css_width = canvas.evaluate("(c) => [c.width, c.getBoundingClientRect().width]")
    assert css_width / width == pytest.approx(round(css_width / width)) and css_width / width >= 1
    assert opened.problems == []


def test_layer_pngs_are_written_at_stored_size(rendered):
    for layer in rendered.manifest["images"][0]["layers"]:
        grid, (count, height, width) = layer["grid"], layer["shape"]
        assert grid["tile"] == [height, width] and grid["scale"] == 1
        assert grid["display_scale"] == expected_display_scale(height, width)
        padding = grid["padding"]
        picture = np.asarray(Image.open(rendered.folder / layer["png"]))
        grid_height = grid["rows"] * (height + padding) - padding
        grid_width = grid["columns"] * (width + padding) - padding
        assert picture.shape[0] == TITLE_HEIGHT + grid_height and picture.shape[1] >= grid_width
        assert (picture[TITLE_HEIGHT:, grid_width:] == BACKGROUND).all()  # only a wider title bar goes further
        values = np.load(rendered.folder / layer["array"])
        expected = np.round(normalize(values).astype(int) * 253 / 255)  # the palette's 254 ink levels
        for k in (0, count - 1):
            top = TITLE_HEIGHT + (k // grid["columns"]) * (height + padding)
            left = (k % grid["columns"]) * (width + padding)
            drawn = picture[top : top + height, left : left + width].astype(int)
            assert np.abs(drawn - expected[k]).max() <= 1, (layer["name"], k)


def _filter_bytes(encoded: bytes, height: int, width: int) -> list[int]:
    """The filter type of each scanline of an 8-bit, one-channel PNG (its IDAT chunks inflated)."""
    import struct
    import zlib

    data, at = b"", 8
    while at < len(encoded):
        (length,), kind = struct.unpack(">I", encoded[at : at + 4]), encoded[at + 4 : at + 8]
        data += encoded[at + 8 : at + 8 + length] if kind == b"IDAT" else b""
        at += 12 + length
    rows = np.frombuffer(zlib.decompress(data), np.uint8).reshape(height, 1 + width)
    return rows[:, 0].tolist()


def test_png_rows_are_sub_with_isal_and_repeated_rows_up_with_zlib():
    """isal's LZ77 finds a repeated row by itself (same bytes, less work); zlib's run-length strategy needs "Up"."""
    import io

    from fmonnx.stages import png

    pytest.importorskip("isal", reason="the isal package is a dependency; without it only the zlib path exists")
    picture = np.random.default_rng(3).integers(0, 256, (6, 9), dtype=np.uint8).repeat(2, axis=0)  # rows in pairs
    palette = bytes(range(256)) * 3
    with_isal = png.encode_png(picture, palette)
    saved = png._isal
    png._isal = None  # the fallback where no isal wheel exists
    try:
        with_zlib = png.encode_png(picture, palette)
    finally:
        png._isal = saved
    assert _filter_bytes(with_isal, 12, 9) == [1] * 12
    assert _filter_bytes(with_zlib, 12, 9) == [1, 2] * 6
    for encoded in (with_isal, with_zlib):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encoded))), picture)


def test_notebook_thumbnails_magnify_small_maps(rendered):
    """The notebook view's thumbnail of the 3x3 layer (63 x 63 stored maps under a wider title bar,
    display_scale 8) is its maps magnified to the thumbnail's side."""
    import base64
    import io
    import re

    from PIL import Image

    html = rendered._repr_html_()
    thumbnails = re.findall(r'src="data:image/jpeg;base64,([^"]+)" title="([^"]+)"', html)
    sizes = {}
    for encoded, title in thumbnails:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as picture:
            sizes[title.split(":")[0]] = picture.size
    pool = next(layer for layer in rendered.manifest["images"][0]["layers"] if layer["shape"][1] == POOL // 3)
    assert pool["grid"]["display_scale"] > 1
    assert sizes[pool["name"]] == (128, 128)
