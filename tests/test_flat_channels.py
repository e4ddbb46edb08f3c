"""Channels constant up to float32 rounding are drawn flat and reported dead, like exactly constant ones.

The decision (normalize.flat_spread) is tested on synthetic arrays, as keract tests its display; one
real render through the CLI checks that the picture, the manifest and the page's data follow it.
"""

import json
import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper
from PIL import Image

from conftest import make_model, save
from fmonnx.stages.normalize import FLAT_TOLERANCE, channel_stats, flat_spread, normalize
from fmonnx.stages.stats import channel_records, format_table, layer_summary

ULP_1000 = float(np.spacing(np.float32(1000)))  # 6.1e-5: float32's step at 1000


def rounding_residue(base: float, steps: int = 3, shape=(6, 8)) -> np.ndarray:
    """``base`` plus 0..steps float32 steps, in a pattern: what an interpolation leaves of a constant."""
    pattern = np.arange(np.prod(shape)).reshape(shape) % (steps + 1)
    return (np.float32(base) + pattern * np.spacing(np.float32(base))).astype(np.float32)


def layer_of_kinds() -> np.ndarray:
    """(5, 6, 8): residue at 1000, residue at -250, all zero, constant 5, real small variation 1e-3 +- 1e-4."""
    rng = np.random.default_rng(0)
    small = (1e-3 + rng.uniform(-1e-4, 1e-4, size=(6, 8))).astype(np.float32)
    return np.stack([rounding_residue(1000), rounding_residue(-250), np.zeros((6, 8)), np.full((6, 8), 5.0),
                     small]).astype(np.float32)


def test_rounding_residue_is_flat_real_variation_is_not():
    values = layer_of_kinds()
    spread = values.max(axis=(1, 2)).astype(np.float64) - values.min(axis=(1, 2))
    assert (spread[:2] > 0).all()  # not exactly constant: max == min alone would stretch them
    stats = channel_stats(values)
    assert stats.dead.tolist() == [True, True, True, True, False]
    assert stats.flat.tolist() == [True, True, False, False, False]  # the all-zero channel stays merely dead


def test_the_decision_is_relative_to_the_magnitude():
    # a few float32 steps of any magnitude is flat; 10x the tolerance is not, even at 1e-30
    for base in (1e-30, 1e-3, 1.0, 1e6, -3e20):
        assert flat_spread(base, base + 4 * abs(base) * 2.0**-23)
        assert not flat_spread(base, base + 10 * FLAT_TOLERANCE * abs(base))
    assert flat_spread(0.0, 0.0) and not flat_spread(0.0, 1e-38)
    assert flat_spread([1000.0, 0.0], [1000.0 + ULP_1000, 1.0]).tolist() == [True, False]


def test_every_method_draws_the_residue_flat():
    values = layer_of_kinds()
    standardized, minmaxed = normalize(values, "standardize"), normalize(values, "minmax")
    for channel in range(4):
        assert (standardized[channel] == 128).all() and (minmaxed[channel] == 0).all()
    assert np.unique(standardized[4]).size > 10 and minmaxed[4].min() == 0 and minmaxed[4].max() == 255
    whole = normalize(rounding_residue(1000)[None], "layer")  # one scale for a layer that is itself residue
    assert (whole == 0).all()
    shared = normalize(np.stack([rounding_residue(1000), np.linspace(0, 2000, 48).reshape(6, 8)]), "layer")
    assert np.unique(shared[0]).size == 1 and np.unique(shared[1]).size > 40  # its place on the layer's scale


def test_records_and_summary_report_flat_channels_as_dead_with_the_reason():
    stats = channel_stats(layer_of_kinds())
    assert channel_records(stats)["dead"] == [True, True, True, True, False]
    summary = layer_summary(stats)
    assert summary["dead_channels"] == 4 and summary["dead_indices"] == [0, 1, 2, 3]
    assert summary["flat_indices"] == [0, 1]
    row = {"name": "up", "op": "Resize", "shape": [5, 6, 8], "stats": summary}
    assert "dead: 0, 1, 2, 3 (flat within rounding: 0, 1)" in format_table([row]).splitlines()[1]


def bias_model():
    """input (1,3,6,8) -> Conv 1x1 -> output: out0 = 1000 + 1e-6 * red (residue), out1 = red."""
    weights = np.zeros((2, 3, 1, 1), np.float32)
    weights[0, 0], weights[1, 0] = 1e-6, 1.0
    return make_model(
        [helper.make_node("Conv", ["input", "w", "b"], ["output"], name="conv")],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 6, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, 6, 8])],
        [("w", weights), ("b", np.array([1000.0, 0.0]))],
    )


def test_render_draws_the_residue_channel_flat_and_says_so(tmp_path, write_image):
    model = save(bias_model(), tmp_path, "bias.onnx")
    rows, cols = np.mgrid[0:6, 0:8]
    pixels = np.stack([rows * 40 + cols * 5, np.zeros((6, 8)), np.zeros((6, 8))], axis=-1)
    photo = write_image(pixels)
    # the truth, from onnxruntime on the same input: channel 0 moves by a few float32 steps of 1000
    fed = pixels.transpose(2, 0, 1)[None].astype(np.float32)
    output = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": fed})[0][0]
    spread = float(output[0].max()) - float(output[0].min())
    assert 0 < spread <= 4 * ULP_1000 and output[1].max() - output[1].min() == pixels[..., 0].max()

    out = tmp_path / "maps"
    command = [sys.executable, "-m", "fmonnx", "render", str(model), str(photo), "-o", str(out),
               "--preprocess", "raw", "--cmap", "gray", "--ops", "Conv"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (layer,) = json.loads((out / "manifest.json").read_text())["images"][0]["layers"]
    assert layer["channels"]["dead"] == [True, False] and layer["dead_channels"] == 1
    assert layer["stats"]["flat_indices"] == [0]

    picture = np.asarray(Image.open(out / layer["png"]))
    grid, title = layer["grid"], 20  # tiles start below the title bar
    height, width = grid["tile"]
    assert grid["columns"] == 2
    flat_tile = picture[title : title + height, 0:width]
    normal_tile = picture[title : title + height, width + grid["padding"] : 2 * width + grid["padding"]]
    assert np.unique(flat_tile).size == 1
    assert np.unique(normal_tile).size > 10

    page = (out / "index.html").read_text()
    data = json.loads(re.search(r'<script id="fmonnx-data" type="application/json">(.*?)</script>', page, re.S)[1])
    assert data["images"][0]["layers"]["conv"]["channels"]["dead"] == [True, False]
