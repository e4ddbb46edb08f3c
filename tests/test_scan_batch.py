"""Scan finds the batch a graph can run: a graph that pins its batch (as torchvision's detection exports do)
is scanned at that batch, with one warning line, and gives what onnxruntime gives image by image."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from conftest import make_model, save

SIZE = 16
IMAGES = 5
WEIGHTS = np.random.default_rng(0).normal(size=(2, 3, 3, 3)).astype(np.float32)


def pinned_model(input_batch, pinned: int, shape=None) -> onnx.ModelProto:
    """input (B,3,16,16) -> Conv 3->2 -> Reshape [pinned, -1, 16, 16] -> Relu: the Reshape hard-codes the batch,
    so a run of more images folds them into the channels of one."""
    shape = numpy_helper.from_array(np.array(shape or [pinned, -1, SIZE, SIZE], np.int64))
    return make_model(
        [
            helper.make_node("Constant", [], ["pin"], name="pin_shape", value=shape),
            helper.make_node("Conv", ["input", "w"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Reshape", ["conv_out", "pin"], ["pinned"], name="pin"),
            helper.make_node("Relu", ["pinned"], ["output"], name="relu"),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [input_batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [pinned, 2, SIZE, SIZE])],
        [("w", WEIGHTS)],
    )


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(IMAGES)]
    for index, array in enumerate(pixels):
        Image.fromarray(array).save(folder / f"{index}.png")
    return folder, pixels


def scan_cli(model, folder, out, *args):
    command = [sys.executable, "-m", "fmonnx", "scan", str(model), str(folder), "-o", str(out), "--top", "3",
               "--preprocess", "raw", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    record = json.loads((out / "scan.json").read_text())
    # the Reshape that pins the batch also hides the Relu's channel axis from the graph: said on its own line
    return record, [line for line in done.stderr.splitlines()
                    if line.startswith("Warning:") and "does not prove the channel axis" not in line]


def truth(model_path, pixels, batch: int) -> dict[str, np.ndarray]:
    """onnxruntime on the unmodified model, one image at a time (repeated to fill a fixed batch): per tensor,
    (images, 2, 16, 16)."""
    exposed = onnx.load(str(model_path))
    exposed.graph.output.extend([helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, None)])
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    maps = {"conv_out": [], "output": []}
    for array in pixels:
        tensor = np.repeat(array.transpose(2, 0, 1)[None].astype(np.float32), batch, axis=0)
        conv, out = session.run(["conv_out", "output"], {"input": tensor})
        maps["conv_out"].append(conv[0])
        maps["output"].append(out[0])
    return {name: np.stack(values) for name, values in maps.items()}


def assert_matches(record, maps):
    layers = {layer["tensor"]: layer for layer in record["layers"]}
    assert set(layers) == {"conv_out", "output"}
    for tensor, values in maps.items():
        layer = layers[tensor]
        assert layer["shape"] == [2, SIZE, SIZE]
        for channel in layer["channels"]:
            c = channel["channel"]
            np.testing.assert_allclose(channel["max"], values[:, c].max(), rtol=1e-5)
            np.testing.assert_allclose(channel["min"], values[:, c].min(), rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(channel["mean"], values[:, c].mean(), rtol=1e-4, atol=1e-3)
            per_image = values[:, c].reshape(len(values), -1).max(axis=1)
            assert [entry["image_id"] for entry in channel["top"]] == list(np.argsort(-per_image, kind="stable")[:3])


@pytest.mark.parametrize("input_batch", [1, "N"], ids=["fixed-1", "symbolic"])
def test_a_graph_pinned_to_batch_1_scans_one_image_at_a_time(tmp_path, images, input_batch):
    folder, pixels = images
    model = save(pinned_model(input_batch, 1), tmp_path, "pinned.onnx")
    record, warnings = scan_cli(model, folder, tmp_path / "out")
    assert record["batch"] == 1
    assert len(warnings) == 1 and "one image at a time" in warnings[0] and "batches of 16" in warnings[0]
    assert record["images"] == IMAGES
    assert_matches(record, truth(model, pixels, 1))
    alone, none = scan_cli(model, folder, tmp_path / "alone", "--batch", "1")
    assert none == [] and alone["batch"] == 1
    assert alone["layers"] == record["layers"]


def test_a_graph_with_a_fixed_batch_of_3_scans_in_threes_padding_the_last(tmp_path, images):
    folder, pixels = images
    model = save(pinned_model(3, 3), tmp_path, "three.onnx")
    record, warnings = scan_cli(model, folder, tmp_path / "out")
    assert record["batch"] == 3 and warnings == []  # the model's own batch, not asked otherwise: nothing to say
    assert record["images"] == IMAGES
    assert_matches(record, truth(model, pixels, 3))
    asked, warnings = scan_cli(model, folder, tmp_path / "asked", "--batch", "4")
    assert asked["batch"] == 3
    assert len(warnings) == 1 and "batches of 4" in warnings[0] and "scanned batches of 3" in warnings[0]
    assert asked["layers"] == record["layers"]


def test_a_fixed_batch_of_3_graph_that_can_batch_is_batched_as_asked(tmp_path, images):
    folder, pixels = images
    model = save(pinned_model(3, 3, shape=[-1, 2, SIZE, SIZE]), tmp_path, "free.onnx")
    record, warnings = scan_cli(model, folder, tmp_path / "out", "--batch", "4")
    assert record["batch"] == 4 and warnings == []
    assert_matches(record, truth(model, pixels, 3))
