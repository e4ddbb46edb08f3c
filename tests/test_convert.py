"""Tests of the Keras -> ONNX converter (fmonnx.sources.keras.convert and its keras_* modules).

The first part needs no TensorFlow: file sniffing, bad files, Lambda refusal
from the stored config, the comparison arithmetic and writing. The tests
marked ``keras`` build tiny Keras models, save them with Keras 3 (.keras and
.h5) and tf_keras (.h5), convert them, and compare every tensor listed in the
metadata, read with onnxruntime, with Keras's own activations for the same
input. They skip cleanly when the [keras] extra is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import keras_models
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fmonnx.errors import ModelError, OutputError
from fmonnx.sources.check import compare
from fmonnx.sources.keras.check import random_inputs
from fmonnx.sources.keras.convert import (
    METADATA_LAYERS,
    METADATA_SOURCE,
    CheckFailedError,
    convert_keras,
    convert_keras_model,
    is_keras_file,
    write_model,
)
from fmonnx.sources.keras.file import choose_loader, lambda_layers, layer_configs, read_keras_file

RTOL, ATOL = 1e-4, 1e-5

# A Keras 2 style config with a Lambda inside a nested model.
LAMBDA_CONFIG = {
    "class_name": "Functional",
    "config": {
        "name": "outer",
        "layers": [
            {"class_name": "InputLayer", "config": {"name": "image"}},
            {
                "class_name": "Functional",
                "config": {
                    "name": "backbone",
                    "layers": [
                        {"class_name": "Conv2D", "config": {"name": "conv1"}},
                        {"class_name": "Lambda", "config": {"name": "evil", "function": "..."}},
                    ],
                },
            },
            {
                "class_name": "TimeDistributed",
                "config": {"name": "td", "layer": {"class_name": "Dense", "config": {"name": "fc"}}},
            },
        ],
    },
}


# --- no TensorFlow needed -------------------------------------------------------------------------


def test_import_does_not_load_tensorflow():
    heavy = "('tensorflow', 'keras', 'tf_keras', 'tf2onnx', 'h5py')"
    code = f"import sys, fmonnx.sources.keras.convert; print(any(m in sys.modules for m in {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_is_keras_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"\x89HDF\r\n\x1a\nrest")
    (tmp_path / "b.bin").write_bytes(b"PK\x03\x04rest")
    (tmp_path / "c.onnx").write_bytes(b"\x08\x07\x12\x04")
    assert is_keras_file(tmp_path / "a.bin")
    assert is_keras_file(tmp_path / "b.bin")
    assert is_keras_file(tmp_path / "missing.h5")
    assert is_keras_file(tmp_path / "model.KERAS")
    assert not is_keras_file(tmp_path / "c.onnx")
    assert not is_keras_file(tmp_path / "missing.onnx")
    assert not is_keras_file(tmp_path)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("model.h5", b"hello, not a model", "neither HDF5 nor a .keras zip"),
        ("model.keras", b"PK\x03\x04 truncated", "zip but cannot be read"),
        ("model.h5", b"\x89HDF\r\n\x1a\n truncated", "HDF5 but cannot be read"),
    ],
)
def test_bad_files(tmp_path, name, content, message):
    if content.startswith(b"\x89HDF"):
        pytest.importorskip("h5py")
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        convert_keras(path)


def test_missing_file_folder_and_saved_model(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        convert_keras(tmp_path / "nope.h5")
    with pytest.raises(ModelError, match="is a folder"):
        convert_keras(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ModelError, match="SavedModel folder.*model.save"):
        convert_keras(tmp_path)


def test_zip_without_config(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(ModelError, match="without config.json"):
        convert_keras(path)


def test_weights_only_h5(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [b"conv"]
        handle.create_group("conv")
    with pytest.raises(ModelError, match="only weights.*model.save"):
        convert_keras(path)


def test_layer_configs_and_lambda_paths():
    assert list(layer_configs(LAMBDA_CONFIG)) == [
        ("image", "InputLayer"),
        ("backbone", "Functional"),
        ("backbone/conv1", "Conv2D"),
        ("backbone/evil", "Lambda"),
        ("td", "TimeDistributed"),
        ("td/fc", "Dense"),
    ]
    assert lambda_layers(LAMBDA_CONFIG) == ["backbone/evil"]


def test_lambda_refused_from_config_before_loading(tmp_path):
    """Refused from the JSON alone: no TensorFlow is imported, no stored code runs."""
    path = tmp_path / "lam.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(LAMBDA_CONFIG))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
    with pytest.raises(ModelError, match=r"Lambda layers \(backbone/evil\).*--unsafe"):
        convert_keras(path)
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "lam.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = json.dumps(LAMBDA_CONFIG)
        handle.attrs["keras_version"] = "2.15.0"
    assert read_keras_file(path).keras_version == "2.15.0"
    with pytest.raises(ModelError, match="backbone/evil"):
        convert_keras(path)


@pytest.mark.parametrize(
    "fmt, version, loader",
    [
        ("h5", "2.15.0", "tf_keras"),
        ("h5", "3.15.1", "keras3"),
        ("h5", "", "tf_keras"),
        ("keras", "", "keras3"),
        ("keras", "2.15.0", "tf_keras"),
    ],
)
def test_choose_loader(fmt, version, loader):
    from fmonnx.sources.keras.file import KerasFile

    assert choose_loader(KerasFile(None, fmt, version, {})) == loader


def test_compare_errors_are_relative_to_each_tensor():
    expected = {"big": np.full((1, 2, 2, 1), 1000.0), "small": np.full((2,), 0.001), "dead": np.zeros(3)}
    actual = {"big": expected["big"] + 0.05, "small": expected["small"] + 1e-6, "dead": np.zeros(3)}
    report = compare(expected, actual, {"big": "t_big"}, rtol=1e-4, atol=0.0)
    by_name = {layer.name: layer for layer in report.layers}
    assert by_name["big"].passed and by_name["big"].rel_error == pytest.approx(5e-5)
    assert by_name["big"].tensor == "t_big"
    assert not by_name["small"].passed and by_name["small"].rel_error == pytest.approx(1e-3)
    assert by_name["dead"].passed and by_name["dead"].rel_error == 0.0
    assert not report.passed and report.worst == "small"
    assert report.max_abs == pytest.approx(0.05)
    assert "FAILED in 1 tensors" in report.summary() and "small" in report.summary()


def test_compare_missing_or_misshapen_fails():
    report = compare({"a": np.ones(3), "b": np.ones(3)}, {"a": np.ones(4)}, {}, rtol=1, atol=1)
    assert [layer.passed for layer in report.layers] == [False, False]
    assert report.max_abs == float("inf")


def test_random_inputs_are_seeded_and_fill_open_axes():
    first = random_inputs([((None, None, None, 3), "float32"), ((None, 5), "int64")], seed=3)
    again = random_inputs([((None, None, None, 3), "float32"), ((None, 5), "int64")], seed=3)
    assert first[0].shape == (1, 64, 64, 3) and first[0].dtype == np.float32
    assert 0 <= first[0].min() and first[0].max() < 1
    assert first[1].shape == (1, 5) and first[1].dtype == np.int64
    np.testing.assert_array_equal(first[0], again[0])


def _tiny_onnx() -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph)


def test_write_model_refuses_overwrite_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "m.onnx"
    assert write_model(_tiny_onnx(), out) == out
    assert onnx.load(out).graph.node[0].op_type == "Relu"
    with pytest.raises(OutputError, match="already exists.*--force"):
        write_model(_tiny_onnx(), out)
    write_model(_tiny_onnx(), out, force=True)
    with pytest.raises(OutputError, match="does not exist"):
        write_model(_tiny_onnx(), tmp_path / "no" / "m.onnx")
    with pytest.raises(OutputError, match="is a folder"):
        write_model(_tiny_onnx(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --- with TensorFlow ------------------------------------------------------------------------------

FLAVOURS = ["keras3.keras", "keras3.h5", "tf_keras.h5"]


@pytest.fixture(scope="module")
def frameworks():
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    keras = pytest.importorskip("keras")
    tf_keras = pytest.importorskip("tf_keras")
    return {"keras3": keras, "tf_keras": tf_keras}


@pytest.fixture(scope="module")
def built(frameworks):
    """``(builder name, framework) -> in-memory model`` (the source of truth for activations)."""
    return {
        (name, framework): keras_models.build(module, builder)
        for name, builder in keras_models.BUILDERS.items()
        for framework, module in frameworks.items()
    }


@pytest.fixture(scope="module")
def converted(built, tmp_path_factory):
    """Converts each (model, flavour) once per module: ``get(name, flavour) -> ConversionResult``."""
    folder = tmp_path_factory.mktemp("keras_models")
    cache = {}

    def get(name, flavour):
        if (name, flavour) not in cache:
            framework, suffix = flavour.split(".")
            path = folder / f"{name}_{framework}.{suffix}"
            keras_models.save(built[name, framework], path)
            cache[name, flavour] = convert_keras(path)
        return cache[name, flavour]

    return get


def _onnx_tensors(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Run ``model`` on ``x`` and fetch ``names``, exposing non-output tensors as extra outputs."""
    import onnxruntime

    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(known[n] for n in names if n not in present)
    session = onnxruntime.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))


def _close(got, want) -> bool:
    return np.max(np.abs(got - want)) <= ATOL + RTOL * np.max(np.abs(want))


@pytest.mark.keras
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("name", list(keras_models.BUILDERS))
def test_layers_and_activations_match_keras(frameworks, built, converted, name, flavour):
    framework = flavour.split(".")[0]
    k, model = frameworks[framework], built[name, framework]
    result = converted(name, flavour)

    assert result.loader == framework
    assert result.check is not None and result.check.passed, result.check.summary()
    meta = {p.key: json.loads(p.value) for p in result.model.metadata_props}
    assert meta[METADATA_LAYERS] == result.layers
    assert meta[METADATA_SOURCE]["loader"] == framework and meta[METADATA_SOURCE]["framework"] == "keras"
    assert [e["layer"] for e in result.layers] == keras_models.spatial_layer_names(k, model)
    classes = {path: type(layer).__name__ for path, layer in keras_models.flat_layers(k, model)}
    assert all(e["class"] == classes[e["layer"]] and e["layout"] == "NHWC" for e in result.layers)
    # The model's own outputs come first.
    assert result.model.graph.output[0].name == model.layers[-1].name
    assert all(t.startswith(e["layer"] + "/") for e in result.layers for t in e["inner"])
    graph = result.model.graph
    assert not [n for n in graph.node for t in [n.name, *n.output] if "fmonnxL" in t]

    x = keras_models.example_input(model)
    want = keras_models.reference(k, model, x)
    names = [e["output"] for e in result.layers] + [t for e in result.layers for t in e["inner"]]
    got = _onnx_tensors(result.model, x, names)
    for entry in result.layers:
        out = got[entry["output"]]
        assert out.shape == want[entry["layer"]].shape, entry
        assert _close(out, want[entry["layer"]]), entry["layer"]
        for inner in entry["inner"]:
            assert got[inner].ndim == 4, inner
    final = _onnx_tensors(result.model, x, [result.model.graph.output[0].name])
    np.testing.assert_allclose(next(iter(final.values())), np.asarray(model(x, training=False)), rtol=1e-4, atol=1e-5)


@pytest.mark.keras
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_inner_tensors_are_pre_activation_convolutions(converted, flavour):
    tutorial = {e["layer"]: e for e in converted("tutorial", flavour).layers}
    assert [len(tutorial[n]["inner"]) for n in ("conv2d", "max_pooling2d")] == [1, 0]
    blocks = {e["layer"]: e for e in converted("blocks", flavour).layers}
    # conv_a has no activation: its Conv output is its output (transposed), not an inner tensor.
    assert {n: len(blocks[n]["inner"]) for n in ("conv_a", "bn_a", "dw_b", "sep_c", "head")} == {
        "conv_a": 0,
        "bn_a": 0,
        "dw_b": 0,
        "sep_c": 2,
        "head": 1,
    }
    result = converted("tutorial", flavour)
    entry = tutorial["conv2d"]
    got = _onnx_tensors(
        result.model,
        np.random.default_rng(0).random((1, 150, 150, 3)).astype("float32"),
        [entry["output"], entry["inner"][0]],
    )
    pre_activation_nchw = got[entry["inner"][0]]
    assert _close(np.maximum(pre_activation_nchw, 0).transpose(0, 2, 3, 1), got[entry["output"]])


@pytest.mark.keras
def test_nested_model_paths_and_model_output_layer(converted):
    nested = [e["layer"] for e in converted("nested", "keras3.keras").layers]
    assert nested == ["backbone/conv1", "backbone/bn1", "backbone/pool1", "head_conv"]
    fcn = converted("fully_conv", "tf_keras.h5")
    # The last conv makes the model's output: one tensor, the first graph output, named after it.
    assert [o.name for o in fcn.model.graph.output] == ["score", "c1"]
    assert [e["output"] for e in fcn.layers] == ["c1", "score"]
    assert fcn.check.input_shapes == [(1, 64, 64, 3)]


@pytest.mark.keras
def test_keras3_h5_and_keras_files_say_their_version(converted, frameworks):
    result = converted("blocks", "keras3.h5")
    assert result.keras_version == frameworks["keras3"].__version__
    source = json.loads({p.key: p.value for p in result.model.metadata_props}[METADATA_SOURCE])
    assert source["file"] == "blocks_keras3.h5"
    assert converted("blocks", "tf_keras.h5").keras_version == frameworks["tf_keras"].__version__


@pytest.mark.keras
@pytest.mark.parametrize("framework, suffix", [("keras3", "keras"), ("keras3", "h5"), ("tf_keras", "h5")])
def test_lambda_refused_unless_unsafe(frameworks, tmp_path, framework, suffix):
    k = frameworks[framework]
    path = tmp_path / f"lam.{suffix}"
    keras_models.save(keras_models.build(k, keras_models.with_lambda), path)
    with pytest.raises(ModelError, match=r"Lambda layers \(double\)"):
        convert_keras(path)
    result = convert_keras(path, unsafe=True)
    assert [(e["layer"], e["class"]) for e in result.layers] == [("conv", "Conv2D"), ("double", "Lambda")]
    assert result.check.passed


@pytest.mark.keras
def test_no_spatial_layer_and_weights_only(frameworks, tmp_path):
    k = frameworks["keras3"]
    model = keras_models.build(k, keras_models.dense_only)
    keras_models.save(model, tmp_path / "mlp.keras")
    with pytest.raises(ModelError, match=r"no layer with a 4-D .*it has: Dense"):
        convert_keras(tmp_path / "mlp.keras")
    model.save_weights(tmp_path / "mlp.weights.h5")
    with pytest.raises(ModelError, match="only weights"):
        convert_keras(tmp_path / "mlp.weights.h5")


@pytest.mark.keras
def test_custom_layer_is_named_and_converts_in_memory(frameworks, tmp_path):
    k = frameworks["keras3"]

    class Scale(k.layers.Layer):
        def call(self, x):
            return x * 3.0

    model = k.Sequential([k.Input((8, 8, 3)), k.layers.Conv2D(2, 3, name="conv"), Scale(name="triple")])
    keras_models.save(model, tmp_path / "custom.keras")
    with pytest.raises(ModelError, match=r"'triple' \(Scale\).*convert_keras_model"):
        convert_keras(tmp_path / "custom.keras")
    result = convert_keras_model(model, opset=13)
    assert [e["layer"] for e in result.layers] == ["conv", "triple"]
    assert result.check.passed
    assert result.model.opset_import[0].version == 13
    assert "call" not in vars(model.layers[0])  # the capture hooks are gone


@pytest.mark.keras
def test_check_failure_carries_the_report(tmp_path, built):
    path = tmp_path / "tutorial.h5"
    keras_models.save(built["tutorial", "tf_keras"], path)
    with pytest.raises(CheckFailedError, match="differs from Keras.*--rtol") as caught:
        convert_keras(path, rtol=0.0, atol=0.0)
    report = caught.value.report
    assert not report.passed and report.max_abs > 0
    assert caught.value.result.model.graph.output[0].name == "dense_2"


@pytest.mark.keras
@pytest.mark.parametrize("name", ["blocks", "nested"])
def test_render_save_arrays_match_keras(frameworks, built, converted, tmp_path, name):
    """The issue's end-to-end contract: every Keras layer, by its Keras name, in `render --save-arrays`."""
    from click.testing import CliRunner
    from PIL import Image

    from fmonnx.cli import cli

    k, model = frameworks["keras3"], built[name, "keras3"]
    onnx_path = write_model(converted(name, "keras3.keras").model, tmp_path / f"{name}.onnx")
    height, width = model.inputs[0].shape[1:3]
    pixels = np.random.default_rng(5).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    out = tmp_path / "maps"
    run = CliRunner().invoke(
        cli, ["render", str(onnx_path), str(tmp_path / "image.png"), "-o", str(out), "--save-arrays"]
    )
    assert run.exit_code == 0, run.output
    image = json.loads((out / "manifest.json").read_text())["images"][0]
    x = np.load(out / image["input_array"])
    want = keras_models.reference(k, model, x)
    shown = {entry["source_layer"]: entry for entry in image["layers"] if entry.get("layer_output")}
    assert list(shown) == keras_models.spatial_layer_names(k, model)
    for layer, entry in shown.items():
        got = np.load(out / entry["array"])
        _, h, w, c = want[layer].shape
        assert got.shape == (c, h, w), (layer, got.shape)
        assert _close(got, np.moveaxis(want[layer][0], -1, 0)), layer
