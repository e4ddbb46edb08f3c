"""Models whose image input has no batch axis (C,H,W or H,W,C), as torchvision's detection exports take a
list of images: every command reads them, feeds one image without a batch axis, and says so."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from PIL import Image

from conftest import make_model, save

SIZE = 16
WEIGHTS = np.random.default_rng(0).normal(size=(2, 3, 3, 3)).astype(np.float32)


def unbatched_model(shape, hwc: bool) -> onnx.ModelProto:
    """input (3,H,W) [or (H,W,3) -> Transpose] -> Unsqueeze axis 0 -> Conv 3->2 -> Relu."""
    first = "input"
    axes = onnx.numpy_helper.from_array(np.array([0], np.int64))
    nodes = [helper.make_node("Constant", [], ["axes"], name="batch_axis", value=axes)]
    if hwc:
        nodes.append(helper.make_node("Transpose", ["input"], ["chw"], name="to_chw", perm=[2, 0, 1]))
        first = "chw"
    nodes += [
        helper.make_node("Unsqueeze", [first, "axes"], ["batched"], name="add_batch"),
        helper.make_node("Conv", ["batched", "w"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_out"], ["output"], name="relu"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, None, None])],
        [("w", WEIGHTS)],
    )


CASES = {
    "chw-fixed": ([3, SIZE, SIZE], False, "CHW"),
    "chw-dynamic": ([3, "h", "w"], False, "CHW"),
    "hwc-fixed": ([SIZE, SIZE, 3], True, "HWC"),
}


def fmonnx(*args):
    command = [sys.executable, "-m", "fmonnx", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr
    return done


def truth(model_path, fed: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime of the unmodified model (conv_out exposed by hand) on ``fed``, batch axis dropped."""
    exposed = onnx.load(str(model_path))
    exposed.graph.output.extend([helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, None)])
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    conv, out = session.run(["conv_out", "output"], {"input": fed})
    return {"conv_out": conv[0], "output": out[0]}


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(3)]
    for index, array in enumerate(pixels):
        Image.fromarray(array).save(folder / f"{index}.png")
    return folder, pixels


@pytest.mark.parametrize("case", CASES)
def test_layers_lists_the_conv_and_relu_of_an_unbatched_input(tmp_path, case):
    shape, hwc, _ = CASES[case]
    model = save(unbatched_model(shape, hwc), tmp_path, "m.onnx")
    done = fmonnx("layers", model, "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [row["tensor"] for row in rows] == ["conv_out", "output"]
    assert all(row["channel_axis"] == 1 and row["layout_certain"] for row in rows)
    if case != "chw-dynamic":
        assert rows[0]["shape"] == [2, SIZE, SIZE]


@pytest.mark.parametrize("case", CASES)
def test_render_feeds_one_image_without_a_batch_axis(tmp_path, images, case):
    shape, hwc, layout = CASES[case]
    folder, pixels = images
    model = save(unbatched_model(shape, hwc), tmp_path, "m.onnx")
    out = tmp_path / "maps"
    done = fmonnx("render", model, folder / "0.png", "-o", out, "--save-arrays", "--no-report",
                  "--preprocess", "raw")
    assert done.returncode == 0, done.stderr
    (image,) = json.loads((out / "manifest.json").read_text())["images"]
    fed = np.load(out / image["input_array"])
    assert fed.ndim == 3
    expected_input = pixels[0].astype(np.float32)
    np.testing.assert_array_equal(fed, expected_input if hwc else expected_input.transpose(2, 0, 1))
    assert image["input_layout"] == layout
    assert image["input_shape"] == list(fed.shape)
    assert image["preprocess"]["unbatched"] is True
    maps = truth(model, fed)
    layers = {layer["tensor"]: layer for layer in image["layers"]}
    assert set(layers) == {"conv_out", "output"}
    for tensor, values in maps.items():
        # float32 sums of pixels 0..255 in another order: off by a few ulps of the largest value
        scale = float(np.abs(values).max())
        np.testing.assert_allclose(np.load(out / layers[tensor]["array"]), values, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch", [None, "4"], ids=["default", "asked"])
def test_scan_runs_one_image_at_a_time(tmp_path, images, case, batch):
    shape, hwc, _ = CASES[case]
    folder, pixels = images
    model = save(unbatched_model(shape, hwc), tmp_path, "m.onnx")
    out = tmp_path / "scan"
    extra = ["--batch", batch] if batch else []
    done = fmonnx("scan", model, folder, "-o", out, "--top", "3", "--preprocess", "raw", "--size", "16x16", *extra)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "one image at a time" in warnings[0] and "no batch axis" in warnings[0]
    record = json.loads((out / "scan.json").read_text())
    assert record["batch"] == 1 and record["images"] == 3
    fed = [array.astype(np.float32) if hwc else array.astype(np.float32).transpose(2, 0, 1) for array in pixels]
    maps = [truth(model, tensor) for tensor in fed]
    layers = {layer["tensor"]: layer for layer in record["layers"]}
    assert set(layers) == {"conv_out", "output"}
    for tensor, layer in layers.items():
        values = np.stack([per_image[tensor] for per_image in maps])
        assert layer["shape"] == [2, SIZE, SIZE]
        for channel in layer["channels"]:
            c = channel["channel"]
            np.testing.assert_allclose(channel["max"], values[:, c].max(), rtol=1e-5)
            np.testing.assert_allclose(channel["mean"], values[:, c].mean(), rtol=1e-4, atol=1e-3)
            per_image = values[:, c].reshape(len(values), -1).max(axis=1)
            assert [entry["image_id"] for entry in channel["top"]] == list(np.argsort(-per_image, kind="stable")[:3])


def test_rank_3_layouts_from_the_shape_or_forced():
    from fmonnx.stages.layout import Layout, detect_input_layout

    assert detect_input_layout((3, "h", "w")) == Layout(0, True, 3)
    assert detect_input_layout(("h", "w", 4)) == Layout(2, True, 3)
    assert detect_input_layout((3, 5, 3)) == Layout(0, False, 3)  # both ends fit: channels first, unproven
    assert detect_input_layout(("c", "h", "w"), "NCHW").name == "CHW"
    assert detect_input_layout(("h", "w", "c"), "NHWC").name == "HWC"
    assert Layout(2, True, 3).hw_axes == (0, 1) and Layout(1, True).hw_axes == (2, 3)
