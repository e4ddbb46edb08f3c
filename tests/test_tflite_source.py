"""TFLite as a source: Keras models converted to .tflite in the test, then to ONNX by fmonnx.

Every recorded feature map is compared with the TFLite interpreter's own tensor of that name, read here
(``experimental_preserve_all_tensors``), independently of the converter's check.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from fmonnx.errors import ModelError
from fmonnx.sources.tflite.file import is_tflite_file


def test_is_tflite_file_reads_the_header(tmp_path):
    good = tmp_path / "model.bin"
    good.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 24)
    named = tmp_path / "named.tflite"
    named.write_bytes(b"\x89HDF\r\n\x1a\n")
    assert is_tflite_file(good)
    assert not is_tflite_file(named)  # the suffix alone does not make one
    assert not is_tflite_file(tmp_path / "missing.tflite")
    assert not is_tflite_file(tmp_path)


def _keras_model():
    import keras

    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    # 4608 weights: past the 1024 below which dynamic-range quantization leaves a tensor float
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu6", name="head")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(x))
    rng = np.random.default_rng(0)
    for weight in model.weights:  # weights that move BatchNormalization away from identity
        value = rng.normal(size=weight.shape).astype("float32") * 0.5
        weight.assign(np.abs(value) + 0.5 if "variance" in weight.path else value)
    return model


@pytest.fixture(scope="module")
def tflite_files(tmp_path_factory):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = pytest.importorskip("tensorflow")
    folder = tmp_path_factory.mktemp("tflite")
    model = _keras_model()
    files = {}
    for kind, optimizations in (("float", []), ("dynamic", [tf.lite.Optimize.DEFAULT])):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = optimizations
        files[kind] = folder / f"{kind}.tflite"
        files[kind].write_bytes(converter.convert())
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([_input(seed)] for seed in range(4))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    files["int8"] = folder / "int8.tflite"
    files["int8"].write_bytes(converter.convert())
    files["keras"] = model
    return files


def _interpreter_tensors(path, x):
    """{tensor name: array} of every tensor TFLite computed on ``x``."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_tensor_details()}


def _onnx_tensors(model, x, names):
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))


def _input(seed=1):
    return np.random.default_rng(seed).normal(size=(1, 16, 16, 3)).astype(np.float32)


@pytest.mark.keras
def test_float_feature_maps_are_the_interpreter_tensors(tflite_files):
    from fmonnx.sources.conversion import ConvertedModel
    from fmonnx.sources.tflite.convert import convert_tflite
    from fmonnx.stages.metadata import read_layer_metadata, read_source_metadata

    result = convert_tflite(tflite_files["float"])
    assert isinstance(result, ConvertedModel)
    assert result.check is not None and result.check.passed, result.check.summary()
    names = [e["layer"] for e in result.layers]
    for keras_name in ("stem", "bn", "pool", "dw", "head"):
        assert any(f"/{keras_name}_1/" in name for name in names), (keras_name, names)
    assert [e["class"] for e in result.layers] == ["CONV_2D", "MUL", "ADD", "MAX_POOL_2D", "DEPTHWISE_CONV_2D",
                                                    "CONV_2D"]
    records = read_layer_metadata(result.model)
    assert [(r.layer, r.output, r.layout) for r in records] == [(n, n, "NHWC") for n in names]
    assert read_source_metadata(result.model)["framework"] == "tflite"
    assert result.source["file"] == "float.tflite" and result.source["tensorflow_version"]
    # the check report lists every layer and the model's output
    assert [layer.name for layer in result.check.layers][-len(names):] == names
    assert any(layer.name.startswith("output:") for layer in result.check.layers)

    x = _input()
    want = _interpreter_tensors(tflite_files["float"], x)
    output = result.model.graph.output[0].name
    got = _onnx_tensors(result.model, x, names + [output])
    for name in names:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5 * np.abs(want[name]).max())
    # and the model's output is Keras's own
    keras_out = np.asarray(tflite_files["keras"](x, training=False))
    np.testing.assert_allclose(got[output], keras_out, rtol=1e-4, atol=1e-5)


@pytest.mark.keras
def test_fused_activation_name_holds_the_activated_values(tflite_files):
    from fmonnx.sources.tflite.convert import convert_tflite

    result = convert_tflite(tflite_files["float"])
    stem = next(e["layer"] for e in result.layers if "/stem_1/Relu" in e["layer"])
    head = next(e["layer"] for e in result.layers if "/head_1/Relu6" in e["layer"])
    got = _onnx_tensors(result.model, _input(), [stem, head])
    assert got[stem].min() >= 0 and (got[stem] == 0).mean() > 0.2  # a ReLU's output, not the Conv before it
    assert got[head].min() >= 0 and got[head].max() <= 6 and (got[head] == 6).any()


@pytest.mark.keras
def test_dynamic_range_quantized_model_converts(tflite_files):
    import tensorflow as tf

    from fmonnx.sources.check import CheckFailedError
    from fmonnx.sources.tflite.convert import QUANTIZED_RTOL, convert_tflite

    path = tflite_files["dynamic"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    assert any(d["dtype"] == np.int8 for d in interpreter.get_tensor_details())  # really quantized
    result = convert_tflite(path)
    assert result.check.passed and result.check.rtol == QUANTIZED_RTOL
    assert result.details["hybrid_ops"] >= 1
    x = _input()
    want = _interpreter_tensors(path, x)
    names = [e["layer"] for e in result.layers]
    got = _onnx_tensors(result.model, x, names)
    for name in names:
        scale = np.abs(want[name]).max()
        assert np.abs(got[name] - want[name]).max() <= QUANTIZED_RTOL * scale, name
    # asked for float tolerances, the check refuses, and nothing is written
    with pytest.raises(CheckFailedError) as caught:
        convert_tflite(path, rtol=1e-4)
    assert not caught.value.report.passed and "differs from TFLite" in str(caught.value)


@pytest.mark.keras
def test_saved_model_renders_with_tflite_names(tflite_files, tmp_path, write_image):
    import fmonnx
    from fmonnx.sources.tflite.convert import convert_tflite

    result = convert_tflite(tflite_files["float"])
    saved = result.save(tmp_path / "model.onnx")
    image = write_image(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    maps = fmonnx.activations(saved, image)
    stem = next(e["layer"] for e in result.layers if "/stem_1/Relu" in e["layer"])
    assert any(stem in name or name in stem for name in maps), list(maps)
    assert all(a.ndim == 3 for a in maps.values())


@pytest.mark.keras
def test_truncated_file_is_one_clear_error(tflite_files, tmp_path):
    from fmonnx.sources.tflite.convert import convert_tflite

    data = tflite_files["float"].read_bytes()
    cut = tmp_path / "cut.tflite"
    for kept in (0.1, 0.5, 0.9, 0.999):  # TFLite itself crashes the process on these (TensorFlow 2.21)
        cut.write_bytes(data[: int(len(data) * kept)])
        assert is_tflite_file(cut)
        with pytest.raises(ModelError) as caught:
            convert_tflite(cut)
        message = str(caught.value)
        assert "cut.tflite" in message and "truncated or corrupt" in message and "\n" not in message
    not_tflite = tmp_path / "other.tflite"
    not_tflite.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(ModelError, match="TFL3"):
        convert_tflite(not_tflite)


@pytest.mark.keras
def test_full_integer_model_is_refused_with_one_line(tflite_files):
    from fmonnx.sources.tflite.convert import convert_tflite

    with pytest.raises(ModelError) as caught:
        convert_tflite(tflite_files["int8"])
    message = str(caught.value)
    assert "full-integer quantized" in message and "Optimize.DEFAULT" in message and "\n" not in message


@pytest.mark.keras
@pytest.mark.parametrize("command", [
    ["layers", "{model}"], ["convert", "{model}", "-o", "{out}.onnx"], ["render", "{model}", "{photo}", "-o", "{out}"],
    ["explain", "{model}", "{photo}", "-o", "{out}"], ["compare", "{model}", "{model}", "{photo}", "-o", "{out}"],
])
def test_every_command_takes_a_tflite_file(tflite_files, tmp_path, write_image, command):
    """Added through the registry alone: each command finds the source there (sources/registry.py)."""
    import subprocess
    import sys

    photo = write_image(np.random.default_rng(5).integers(0, 256, (40, 40, 3)), "photo.png")
    args = [part.format(model=tflite_files["float"], photo=photo, out=tmp_path / "out") for part in command]
    done = subprocess.run([sys.executable, "-m", "fmonnx", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
