"""Untrusted model metadata and non-finite activations, through the real CLI (issue 13).

- ``fmonnx.layers`` / ``fmonnx.source`` metadata that breaks the converters' schema (stages/metadata.py)
  gives one ``Error:`` line naming the entry and field, exit 1, and nothing written.
- ``fmonnx.layers`` naming a 2-D tensor: every command skips it with a warning, as render does.
- Infinite activations (a Conv with float32-max weights) are written as data: valid JSON
  (``1e999`` for infinity, null for NaN) with their count, never a crash.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from conftest import copy_model_nchw, make_model, save
from fmonnx.stages.json_out import json_text, number_lists
from fmonnx.stages.metadata import LAYERS_KEY, SOURCE_KEY, LayerRecord, read_layer_metadata, read_source_metadata


def fmonnx(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmonnx", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def with_metadata(model: onnx.ModelProto, **props) -> onnx.ModelProto:
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key = {"layers": LAYERS_KEY, "source": SOURCE_KEY}[key]
        entry.value = value if isinstance(value, str) else json.dumps(value)
    return model


@pytest.fixture
def image(tmp_path) -> Path:
    rows, cols = np.mgrid[0:4, 0:6]
    pixels = np.stack([rows * 40 + cols * 5, 200 - cols * 30, np.full((4, 6), 77)], axis=-1).astype(np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    return path


GOOD = {"layer": "conv2d", "class": "Conv2D", "output": "relu_out", "inner": ["conv_out"], "layout": "NCHW"}

BAD_LAYERS = {
    "a list for the layer name": ([{**GOOD, "layer": ["conv2d"]}], ["entry 0", '"layer"', "string"]),
    "an object for the list": ({"layer": "conv2d", "output": "relu_out"}, ["JSON object", "list"]),
    "a number for the list": (5, ["number", "list"]),
    "a string for inner": ([{**GOOD, "inner": "conv_out"}], ["entry 0 (layer 'conv2d')", '"inner"', "list"]),
    "a list for the layout": ([{**GOOD, "layout": ["NCHW"]}], ['"layout"', "NHWC", "NCHW"]),
    "an unknown layout": ([GOOD, {**GOOD, "layer": "b", "layout": "CHW"}], ["entry 1 (layer 'b')", '"layout"']),
    "an object for also_output_of": ([{**GOOD, "also_output_of": {"x": 1}}], ['"also_output_of"', "list"]),
    "a number for the class": ([{**GOOD, "class": 3}], ['"class"', "string"]),
    "no output": ([{"layer": "conv2d"}], ['"output"', "missing"]),
    "a string for an entry": (["conv2d"], ["entry 0", "object"]),
    "text that is not JSON": ("[{", ["not JSON"]),
}


@pytest.mark.parametrize("case", list(BAD_LAYERS))
@pytest.mark.parametrize("command", ["render", "layers", "scan"])
def test_malformed_layer_metadata_is_one_error_line(case, command, image, tmp_path):
    value, words = BAD_LAYERS[case]
    model = save(with_metadata(copy_model_nchw(), layers=value), tmp_path, "bad.onnx")
    out = tmp_path / "out"
    args = {"render": [model, image, "-o", out], "layers": [model], "scan": [model, image, "-o", out]}[command]
    result = fmonnx(command, *args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert LAYERS_KEY in errors[0] and "fmonnx convert" in errors[0] and "bad.onnx" in errors[0]
    for word in words:
        assert word in errors[0], errors[0]
    assert not out.exists()


BAD_SOURCES = {
    "a list": ([1, 2], "JSON object"),
    "a nested object": ({"framework": {"a": [1, 2]}}, '"framework"'),
    "a non-finite number": ('{"framework": "keras", "opset": NaN}', '"opset"'),
    "a very long text": ({"framework": "x" * 5000}, '"framework"'),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_malformed_source_metadata_is_one_error_line(case, image, tmp_path):
    value, word = BAD_SOURCES[case]
    model = save(with_metadata(copy_model_nchw(), source=value), tmp_path, "bad.onnx")
    out = tmp_path / "out"
    result = fmonnx("render", model, image, "-o", out, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and SOURCE_KEY in errors[0] and word in errors[0], result.stderr
    assert not out.exists()


def test_the_converters_records_pass_the_schema():
    """What the two converters write (their docstrings' examples) reads back unchanged."""
    keras = {"layer": "backbone/conv1", "class": "Conv2D", "output": "backbone/conv1", "inner": ["backbone/conv1/Conv"],
             "layout": "NHWC"}
    torch = {"layer": "layer1.0.relu#2", "class": "ReLU", "output": "layer1.0.relu#2", "layout": "NCHW",
             "also_output_of": ["layer1.0", "layer1"]}
    source = {"framework": "pytorch", "torch_version": "2.13", "module": "Net", "file": None, "converter": "x",
              "example_input": [1, 3, 224, 224], "spatial": "dynamic", "opset": 18}
    model = with_metadata(copy_model_nchw(), layers=[keras, torch], source=source)
    assert read_layer_metadata(model) == [
        LayerRecord("backbone/conv1", "backbone/conv1", "Conv2D", ("backbone/conv1/Conv",), "NHWC"),
        LayerRecord("layer1.0.relu#2", "layer1.0.relu#2", "ReLU", (), "NCHW", ("layer1.0", "layer1")),
    ]
    assert read_source_metadata(model) == source
    assert read_layer_metadata(copy_model_nchw()) == [] and read_source_metadata(copy_model_nchw()) is None


def flatten_model(records: list[dict]) -> onnx.ModelProto:
    """input (1,3,4,6) -> Conv -> Relu -> Flatten (1, 48) -> Relu; ``records`` as its fmonnx.layers."""
    model = make_model(
        [
            helper.make_node("Conv", ["input", "w"], ["conv_out"], name="conv"),
            helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
            helper.make_node("Flatten", ["relu_out"], ["flat"], name="flat"),
            helper.make_node("Relu", ["flat"], ["output"], name="relu2"),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 48])],
        [("w", np.ones((2, 3, 1, 1)))],
    )
    return with_metadata(model, layers=records)


FLATTEN = {"layer": "flatten", "class": "Flatten", "output": "flat", "layout": "NCHW"}


def test_scan_skips_a_recorded_2d_tensor_with_a_warning(image, tmp_path):
    model = save(flatten_model([GOOD, FLATTEN]), tmp_path, "flat.onnx")
    result = fmonnx("scan", model, image, "-o", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert any("flatten" in line and "not 4-D" in line for line in warnings), result.stderr
    record = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert [layer["name"] for layer in record["layers"]] == ["conv2d/Conv", "conv2d"]
    render = fmonnx("render", model, image, "-o", tmp_path / "render", cwd=tmp_path)
    assert render.returncode == 0 and "flatten" in render.stderr and "not 4-D" in render.stderr


def test_scan_of_only_recorded_2d_tensors_is_one_error_line(image, tmp_path):
    model = save(flatten_model([FLATTEN]), tmp_path, "flat.onnx")
    for command in ("scan", "render"):
        result = fmonnx(command, model, image, "-o", tmp_path / "out", cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "flatten" in errors[0] and "--ops" in errors[0], result.stderr
        assert not (tmp_path / "out").exists()


def infinite_model() -> onnx.ModelProto:
    """A Conv whose channel 0 is 3e38 * (R + G): infinite on some pixels, up to 3.4e38 on the others
    (its std overflows float32), channel 1 the blue input; then Relu and MaxPool."""
    weights = np.zeros((2, 3, 1, 1), np.float32)
    weights[0, 0] = weights[0, 1] = 3e38
    weights[1, 2] = 1.0
    return make_model(
        [
            helper.make_node("Conv", ["input", "w"], ["conv_out"], name="conv"),
            helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
            helper.make_node("MaxPool", ["relu_out"], ["output"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, 2, 3])],
        [("w", weights)],
    )


def test_infinite_activations_are_written_as_data(image, tmp_path):
    model = save(infinite_model(), tmp_path, "inf.onnx")
    out = tmp_path / "render"
    result = fmonnx("render", model, image, "-o", out, cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())  # json reads 1e999 as inf
    conv = manifest["images"][0]["layers"][0]
    assert conv["name"] == "conv" and conv["stats"]["nonfinite_values"] > 0
    assert "Infinity" not in (out / "manifest.json").read_text() and "NaN" not in (out / "manifest.json").read_text()

    stats = fmonnx("stats", "--json", model, image, cwd=tmp_path)
    assert stats.returncode == 0 and "Traceback" not in stats.stderr, stats.stderr
    assert "Infinity" not in stats.stdout and "NaN" not in stats.stdout
    layers = json.loads(stats.stdout)["layers"]
    assert layers[0]["stats"]["nonfinite_values"] == conv["stats"]["nonfinite_values"]
    assert layers[0]["channels"]["std"] == conv["channels"]["std"]

    for command, args, record in (
        ("compare", [model, model, image], "compare.json"),
        ("scan", [model, image], "scan.json"),
    ):
        result = fmonnx(command, *args, "-o", tmp_path / command, cwd=tmp_path)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        text = (tmp_path / command / record).read_text()
        assert "Infinity" not in text and "NaN" not in text
        json.loads(text)


def test_json_writes_non_finite_numbers_one_way():
    """Infinity is 1e999 (JSON.parse and json read it back as infinity), NaN is null, in every writer."""
    values = np.array([1.5, np.inf, -np.inf, np.nan, 0.1234567891], np.float32)
    assert number_lists([values[:3], values[3:]]) == ["[1.5,1e999,-1e999]", "[null,0.12345679]"]
    record = {"a": [1.5, float("inf"), float("nan")], "b": {"c": -float("inf"), "d": float("nan")}}
    assert json.loads(json_text(record)) == {"a": [1.5, float("inf"), None], "b": {"c": -float("inf"), "d": None}}


@pytest.mark.parametrize("command", ["render", "layers", "scan"])
def test_a_name_that_is_not_utf8_is_one_error_line(command, image, tmp_path):
    """protobuf hands a string field holding invalid UTF-8 over as bytes; the model is refused where it is read."""
    model = copy_model_nchw()
    model.graph.node[0].name = "first-node-of-the-test"
    data = model.SerializeToString()
    name = model.graph.node[0].name.encode()
    assert data.count(name) == 1
    path = tmp_path / "broken.onnx"
    path.write_bytes(data.replace(name, b"\x80" + name[1:]))
    args = {"render": ("render", path, image, "-o", tmp_path / "out"), "layers": ("layers", path),
            "scan": ("scan", path, image, "-o", tmp_path / "out")}[command]
    done = fmonnx(*args, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not UTF-8 text" in lines[0] and "node 0" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()
