"""4-D tensors whose first axis is not the image batch (Swin's window batches, attention heads) are not
feature maps: ``layers`` and ``render`` leave out the same ones, and ``--all-spatial`` says why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from conftest import make_model, save

RNG = np.random.default_rng(14)
W1 = RNG.normal(size=(4, 3, 1, 1)).astype(np.float32)
W2 = RNG.normal(size=(2, 4, 3, 3)).astype(np.float32)
REASON = "first axis 4 is not the image batch: window or head batches are not feature maps"


def window_model(batch: int | str = 1) -> onnx.ModelProto:
    """input [1,3,8,8] -> Conv 3->4 -> Reshape [4,4,4,4] (a window batch) -> Relu -> Reshape [1,4,8,8] -> Conv 4->2.

    With a symbolic ``batch`` the Reshapes say -1, as exports with a dynamic batch do: only shape
    inference at the batch fmonnx feeds (1) proves the window axis.
    """
    first = 4 if batch == 1 else -1
    shapes = [("windows_shape", [first, 4, 4, 4]), ("image_shape", [first // 4, 4, 8, 8])]
    nodes = [helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(np.array(v, np.int64)))
             for name, v in shapes]
    nodes += [
        helper.make_node("Conv", ["input", "w1"], ["conv1_out"], name="conv1"),
        helper.make_node("Reshape", ["conv1_out", "windows_shape"], ["windows"], name="to_windows"),
        helper.make_node("Relu", ["windows"], ["windows_relu"], name="window_relu"),
        helper.make_node("Reshape", ["windows_relu", "image_shape"], ["merged"], name="from_windows"),
        helper.make_node("Conv", ["merged", "w2"], ["output"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 2, 8, 8])],
        [("w1", W1), ("w2", W2)],
    )


def fmonnx(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmonnx", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(params=[1, "N"], ids=["batch1", "symbolic_batch"])
def model(request, tmp_path) -> Path:
    return save(window_model(request.param), tmp_path, "windows.onnx")


@pytest.fixture
def image(tmp_path) -> Path:
    pixels = np.random.default_rng(1).integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    return path


def layer_rows(model: Path, *flags, cwd: Path) -> list[dict]:
    result = fmonnx("layers", model, "--json", *flags, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def rendered(model: Path, image: Path, out: Path, *flags, cwd: Path) -> tuple[subprocess.CompletedProcess, dict]:
    result = fmonnx("render", model, image, "-o", out, "--save-arrays", *flags, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result, json.loads((out / "manifest.json").read_text())


def test_layers_and_render_leave_out_the_same_window_tensors(model, image, tmp_path):
    rows = layer_rows(model, cwd=tmp_path)
    result, manifest = rendered(model, image, tmp_path / "out", cwd=tmp_path)
    drawn = [layer["name"] for layer in manifest["images"][0]["layers"]]
    assert [row["name"] for row in rows] == drawn
    assert [row["tensor"] for row in rows] == ["conv1_out", "output"]
    assert "not 4-D" not in result.stderr and "Warning" not in result.stderr


def test_all_spatial_layers_lists_window_tensors_with_the_reason(model, tmp_path):
    rows = {row["tensor"]: row for row in layer_rows(model, "--all-spatial", cwd=tmp_path)}
    assert list(rows) == ["conv1_out", "windows", "windows_relu", "merged", "output"]
    assert rows["windows"]["not_shown"] == REASON and rows["windows_relu"]["not_shown"] == REASON
    assert all("not_shown" not in rows[name] for name in ("conv1_out", "merged", "output"))
    table = fmonnx("layers", model, "--all-spatial", cwd=tmp_path)
    assert table.returncode == 0 and table.stdout.count(REASON) == 2, table.stdout


def test_all_spatial_render_says_one_summary_line_and_keeps_the_feature_maps(model, image, tmp_path):
    result, manifest = rendered(model, image, tmp_path / "out", "--all-spatial", cwd=tmp_path)
    warnings = [line for line in result.stderr.splitlines() if "not the image batch" in line]
    assert len(warnings) == 1 and warnings[0].startswith("Warning: "), result.stderr
    rows = layer_rows(model, "--all-spatial", cwd=tmp_path)
    assert REASON in warnings[0] and all(row["name"] in warnings[0] for row in rows if "not_shown" in row)
    assert "not 4-D" not in result.stderr
    entry = manifest["images"][0]
    assert [layer["name"] for layer in entry["layers"]] == [row["name"] for row in rows if "not_shown" not in row]
    # the feature maps drawn are the unmodified model's tensors, as onnxruntime gives them
    feed = np.load(tmp_path / "out" / entry["input_array"])
    exposed = onnx.load(model)
    exposed.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                                for name in ("conv1_out", "merged"))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    truth = dict(zip(["output", "conv1_out", "merged"], session.run(None, {"input": feed})))
    arrays = {layer["tensor"]: np.load(tmp_path / "out" / layer["array"]) for layer in entry["layers"]}
    assert sorted(arrays) == ["conv1_out", "merged", "output"]
    for name, values in arrays.items():
        np.testing.assert_allclose(values, truth[name][0], rtol=1e-6, atol=1e-6)
