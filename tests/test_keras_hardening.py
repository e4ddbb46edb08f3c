"""Keras files that would run stored code, or that break the reader, are refused with one line.

The first tests need only the JSON walk; the marked ones build real tf_keras ``.h5`` files whose Lambda
writes a marker file when its bytecode is loaded, and show that convert refuses them with no marker.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fmonnx.errors import ModelError
from fmonnx.sources.keras.file import lambda_layers, layer_configs, read_keras_file

LAMBDA = {"class_name": "Lambda", "config": {"name": "evil", "function": "...", "function_type": "lambda"}}


def _model(*layers) -> dict:
    return {"class_name": "Functional", "config": {"name": "outer", "layers": list(layers)}}


@pytest.mark.parametrize("config, expected", [
    (_model({"class_name": "Bidirectional", "config": {
        "name": "bi", "layer": {"class_name": "LSTM", "config": {"name": "fwd"}}, "backward_layer": LAMBDA}}),
     ["bi/evil"]),
    (_model({"class_name": "Dense", "config": {"name": "fc", "kernel_initializer": LAMBDA}}), ["fc/evil"]),
    (_model({"class_name": "Custom", "config": {"name": "c", "anything": [{"deeper": LAMBDA}]}}), ["c/evil"]),
    (_model({"class_name": "Dense", "config": {"name": "fc", "activation": {
        "class_name": "__lambda__", "config": {"code": "..."}}}}), ["fc/__lambda__"]),
    (_model({"class_name": "Mystery", "config": {"name": "m", "function_type": "lambda", "function": "..."}}),
     ["m"]),
    (_model({"class_name": "Foo", "registered_name": "Lambda", "config": {"name": "f"}}), ["f"]),
])
def test_code_bearing_objects_are_found_under_any_key(config, expected):
    assert lambda_layers(config) == expected


def test_a_wrappers_backward_layer_is_a_layer_and_odd_shapes_do_not_crash():
    config = _model({"class_name": "Bidirectional", "config": {
        "name": "bi", "layer": {"class_name": "LSTM", "config": {"name": "fwd"}},
        "backward_layer": {"class_name": "LSTM", "config": {"name": "bwd"}}}})
    assert list(layer_configs(config)) == [("bi", "Bidirectional"), ("bi/fwd", "LSTM"), ("bi/bwd", "LSTM")]
    unhashable = _model({"class_name": "Dense", "registered_name": [1, 2], "config": {"name": "fc", "dtype": {
        "class_name": "DTypePolicy", "registered_name": {"a": 1}}}})
    assert list(layer_configs(unhashable)) == [("fc", "Dense")] and lambda_layers(unhashable) == []
    for odd in ({"class_name": "Functional", "config": {"layers": 5}},
                {"class_name": "Functional", "config": {"layers": {"a": 1}}},
                {"class_name": "Functional", "config": {"layers": [5, "x", {"class_name": 3}]}},
                {"class_name": "Functional", "config": 7}):
        assert list(layer_configs(odd)) == [] and lambda_layers(odd) == []


def _keras_zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    import warnings

    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore")
        for name, data in entries:
            archive.writestr(name, data)
    return path


def _patch_headers(path: Path, offset_local: int, offset_central: int, value: int) -> None:
    """Set a 2-byte field in every local and central header of the zip ``path``."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", offset_local), (b"PK\x01\x02", offset_central)):
        start = data.find(signature)
        while start != -1:
            struct.pack_into("<H", data, start + offset, value)
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))


CONFIG = json.dumps(_model({"class_name": "InputLayer", "config": {"name": "image"}})).encode()


def _unsupported_compression(path):
    _keras_zip(path, [("config.json", CONFIG), ("metadata.json", b"{}")])
    _patch_headers(path, 8, 10, 99)  # compression method 99 (AES), which zipfile cannot read


def _future_zip_version(path):
    _keras_zip(path, [("config.json", CONFIG), ("metadata.json", b"{}")])
    _patch_headers(path, 4, 6, 99)  # "version needed to extract" 9.9


def _twice(path):
    _keras_zip(path, [("config.json", CONFIG), ("config.json", json.dumps(_model(LAMBDA)).encode())])


def _layers_a_number(path):
    _keras_zip(path, [("config.json", b'{"class_name": "Functional", "config": {"layers": 5}}')])


def _config_not_utf8(path):
    _keras_zip(path, [("config.json", "{}".encode("utf-16"))])


@pytest.mark.parametrize("make, message", [
    (_unsupported_compression, "zip that Python cannot read"),
    (_future_zip_version, "zip that Python cannot read"),
    (_twice, "holds the entry 'config.json' twice"),
    (_config_not_utf8, "cannot be read"),
])
def test_unreadable_keras_zips_are_one_model_error(tmp_path, make, message):
    path = tmp_path / "model.keras"
    make(path)
    with pytest.raises(ModelError, match=message):
        read_keras_file(path)


@pytest.mark.parametrize("make", [_unsupported_compression, _future_zip_version, _twice, _layers_a_number,
                                  _config_not_utf8])
def test_the_cli_says_one_line_and_writes_nothing(tmp_path, make):
    path = tmp_path / "model.keras"
    make(path)
    done = subprocess.run([sys.executable, "-m", "fmonnx", "convert", str(path)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()  # TensorFlow's own start-up lines go to the log, not here
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "model.onnx").exists()


# --- real tf_keras files whose Lambda bytecode writes a marker -----------------------------------------------


def _h5_with_marker_lambda(tmp_path: Path, marker: Path) -> tuple[Path, dict]:
    """A real tf_keras .h5 whose Lambda, when its bytecode is loaded and run, creates ``marker``."""
    tf_keras = pytest.importorskip("tf_keras")
    function = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")  # noqa: S307 - the test's own code
    model = tf_keras.Sequential([
        tf_keras.Input((8, 8, 3)), tf_keras.layers.Conv2D(2, 3, name="conv"),
        tf_keras.layers.Lambda(function, name="evil"),
    ])
    path = tmp_path / "lam.h5"
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once; from here only loading may
    import h5py

    with h5py.File(path, "r") as handle:
        config = json.loads(handle.attrs["model_config"])
    return path, config


def _set_config(path: Path, config: dict) -> None:
    import h5py

    with h5py.File(path, "a") as handle:
        handle.attrs["model_config"] = json.dumps(config)


@pytest.mark.keras
def test_lambda_nested_as_backward_layer_is_refused_and_never_loaded(tmp_path):
    marker = tmp_path / "marker"
    path, config = _h5_with_marker_lambda(tmp_path, marker)
    layers = config["config"]["layers"]
    evil = next(layer for layer in layers if layer["class_name"] == "Lambda")
    layers.remove(evil)
    layers.append({"class_name": "Bidirectional", "config": {
        "name": "bi", "layer": {"class_name": "LSTM", "config": {"name": "fwd", "units": 2}},
        "backward_layer": evil}})
    _set_config(path, config)
    done = subprocess.run([sys.executable, "-m", "fmonnx", "convert", str(path)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 1 and "Lambda layers (bi/evil)" in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not marker.exists() and not (tmp_path / "lam.onnx").exists()


@pytest.mark.keras
def test_tf_keras_h5_loads_in_safe_mode_even_past_the_walk(tmp_path):
    """The second guard: a Lambda the walk did not see (called here without the walk) still does not run."""
    from fmonnx.sources.keras.load import load_keras_model

    marker = tmp_path / "marker"
    path, _ = _h5_with_marker_lambda(tmp_path, marker)
    keras_file = read_keras_file(path)
    with pytest.raises(Exception, match="could not be loaded|safe_mode"):
        load_keras_model(keras_file, "tf_keras")
    assert not marker.exists()
    model, _, _ = load_keras_model(keras_file, "tf_keras", unsafe=True)  # proof the bytecode is live
    model(__import__("numpy").zeros((1, 8, 8, 3), "float32"))
    assert marker.exists()


@pytest.mark.parametrize("version", ["3" * 5000, "3.x; rm -rf", 3.15, ["3"]])
def test_a_saving_version_that_is_not_a_version_is_one_model_error(tmp_path, version):
    path = _keras_zip(tmp_path / "model.keras", [("config.json", CONFIG),
                                                 ("metadata.json", json.dumps({"keras_version": version}).encode())])
    with pytest.raises(ModelError, match="not a version number"):
        read_keras_file(path)


@pytest.mark.parametrize("version", ["3.15.1", "2.15.0", "3.0.0rc1", "2.13.1+local", ""])
def test_real_saving_versions_are_read(tmp_path, version):
    path = _keras_zip(tmp_path / "model.keras", [("config.json", CONFIG),
                                                 ("metadata.json", json.dumps({"keras_version": version}).encode())])
    assert read_keras_file(path).keras_version == version
