"""`fmonnx convert` and `fmonnx render` on Keras files, end to end through the CLI.

Every layer's activations from `fmonnx render MODEL.h5 --save-arrays` are
compared with Keras's own for the exact `input.npy` render fed.
"""

from __future__ import annotations

import json

import keras_models
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fmonnx.cli import cli

pytestmark = pytest.mark.keras

FLAVOURS = [("keras3", "keras"), ("keras3", "h5"), ("tf_keras", "h5")]


@pytest.fixture(scope="module")
def frameworks():
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    return {"keras3": pytest.importorskip("keras"), "tf_keras": pytest.importorskip("tf_keras")}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def photo(write_image):
    rng = np.random.default_rng(3)
    return write_image(rng.integers(0, 255, (48, 40, 3)), "photo.png")


@pytest.mark.parametrize("framework, suffix", FLAVOURS)
@pytest.mark.parametrize("name", ["blocks", "nested"])
def test_render_keras_file_matches_keras_layer_by_layer(frameworks, tmp_path, photo, name, framework, suffix):
    k = frameworks[framework]
    model = keras_models.build(k, keras_models.BUILDERS[name])
    path = tmp_path / f"{name}.{suffix}"
    keras_models.save(model, path)

    out = tmp_path / "maps"
    result = invoke("render", path, photo, "-o", out, "--save-arrays", "--no-report")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == str(path)
    assert manifest["source"]["framework"] == "keras" and manifest["source"]["loader"] == framework
    assert manifest["source"]["check"].startswith("check passed")
    image = manifest["images"][0]
    layers = image["layers"]
    outputs = [layer for layer in layers if layer.get("layer_output")]
    assert [layer["name"] for layer in outputs] == keras_models.spatial_layer_names(k, model)

    fed = np.load(out / image["input_array"])
    expected = keras_models.reference(k, model, fed)
    for layer in outputs:
        got = np.load(out / layer["array"])
        want = np.asarray(expected[layer["name"]])[0].transpose(2, 0, 1)  # Keras is channels last
        assert got.shape == want.shape == tuple(layer["shape"]), layer["name"]
        assert np.max(np.abs(got - want)) <= 1e-5 + 1e-4 * np.max(np.abs(want)), layer["name"]


def test_convert_command_writes_checked_model_with_names(frameworks, tmp_path):
    model = keras_models.build(frameworks["keras3"], keras_models.BUILDERS["tutorial"])
    path = tmp_path / "tutorial.keras"
    keras_models.save(model, path)
    result = invoke("convert", path)
    assert result.exit_code == 0, result.output
    assert "check passed" in result.output and "keras3" in result.output
    written = tmp_path / "tutorial.onnx"
    onnx.checker.check_model(onnx.load(str(written)))
    layers = json.loads(invoke("layers", written, "--json").output)
    names = [row["name"] for row in layers]
    assert names == ["conv2d/Conv", "conv2d", "max_pooling2d", "conv2d_1/Conv", "conv2d_1",
                     "max_pooling2d_1", "conv2d_2/Conv", "conv2d_2", "max_pooling2d_2"]
    by_name = {row["name"]: row for row in layers}
    assert by_name["conv2d"]["layer_output"] is True and by_name["conv2d"]["source_class"] == "Conv2D"
    assert by_name["conv2d/Conv"]["layer_output"] is False and "source_class" not in by_name["conv2d/Conv"]
    assert by_name["conv2d"]["shape"] == [8, 148, 148] and by_name["conv2d"]["channel_axis"] == 3

    again = invoke("convert", path)
    assert again.exit_code == 1 and "already exists" in again.output and "--force" in again.output
    assert invoke("convert", path, "--force", "--no-check").exit_code == 0


def test_lambda_file_is_refused_by_convert_and_render(frameworks, tmp_path, photo):
    model = keras_models.build(frameworks["keras3"], keras_models.with_lambda)
    path = tmp_path / "lambda.h5"
    keras_models.save(model, path)
    for args in (("convert", path), ("render", path, photo, "-o", tmp_path / "o")):
        result = invoke(*args)
        assert result.exit_code == 1 and "Lambda" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "lambda.onnx").exists() and not (tmp_path / "o").exists()


def test_convert_refuses_to_write_over_its_input(tmp_path):
    path = tmp_path / "m.keras"
    path.write_bytes(b"not converted: refused first")
    for out in (path, tmp_path / "sub" / ".." / "m.keras"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        result = invoke("convert", path, "-o", out, "--force")
        assert result.exit_code == 1 and "is the input model" in result.output and "Traceback" not in result.output
    assert path.read_bytes() == b"not converted: refused first"
