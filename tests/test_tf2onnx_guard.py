"""Tests of the guard around fmonnx's linear-time tf2onnx patches (fmonnx.sources.keras.linear).

The patches replace private tf2onnx methods; they are installed only on the releases they were
written for and only when every method they replace or call is there. Otherwise tf2onnx converts
unpatched, with one warning. A renamed method is simulated by deleting it from the real tf2onnx
class inside the test (restored in ``finally``), a new release by setting ``tf2onnx.__version__``.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import keras_models
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LOGGER = "fmonnx.sources.keras.linear"


@pytest.fixture(scope="module")
def tf2onnx():
    pytest.importorskip("tensorflow")
    module = pytest.importorskip("tf2onnx")
    import tf2onnx.convert  # noqa: F401 - loads the optimizers the patches replace
    import tf2onnx.optimizer.transpose_optimizer  # noqa: F401

    return module


def _patched(tf2onnx) -> dict:
    """The objects tf2onnx now finds under the names linear_time replaces."""
    from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer

    return {
        "extract_sub_graph_nodes": tf2onnx.graph.Graph.extract_sub_graph_nodes,
        "pre_optimize_action": TransposeOptimizer.pre_optimize_action,
        "_optimize_at_current_graph_level": TransposeOptimizer._optimize_at_current_graph_level,
        "_optimizers": tf2onnx.optimizer._optimizers,
    }


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def _convert_and_check(keras):
    """Convert a small Keras 3 model and compare its ONNX output with Keras's own, with onnxruntime."""
    import onnxruntime

    from fmonnx.sources.keras.convert import convert_keras_model

    model = keras_models.build(keras, keras_models.blocks)
    result = convert_keras_model(model)
    assert result.check is not None and result.check.passed, result.check.summary()
    x = keras_models.example_input(model)
    session = onnxruntime.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run([result.model.graph.output[0].name], {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, np.asarray(model(x, training=False)), rtol=1e-4, atol=1e-5)


@pytest.mark.keras
def test_patches_installed_inside_and_restored_after_even_on_error(tf2onnx, caplog):
    from fmonnx.sources.keras.linear import fold_constant_reshapes, linear_time, move_transposes, reachable_nodes

    stock = _patched(tf2onnx)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        with linear_time(tf2onnx, free_copies=True):
            inside = _patched(tf2onnx)
            assert inside["extract_sub_graph_nodes"] is reachable_nodes
            assert inside["pre_optimize_action"] is fold_constant_reshapes
            assert inside["_optimize_at_current_graph_level"] is move_transposes
            assert inside["_optimizers"] is not stock["_optimizers"]
            assert list(inside["_optimizers"]) == list(stock["_optimizers"])
        assert all(_patched(tf2onnx)[name] is stock[name] for name in stock)

        with pytest.raises(RuntimeError, match="tf2onnx failed"):
            with linear_time(tf2onnx, free_copies=True):
                assert _patched(tf2onnx)["extract_sub_graph_nodes"] is reachable_nodes
                raise RuntimeError("tf2onnx failed")
        assert all(_patched(tf2onnx)[name] is stock[name] for name in stock)
    assert _warnings(caplog) == []


def _falls_back(tf2onnx, keras, caplog, reason: str) -> None:
    """linear_time patches nothing and warns once; a model converts and checks with stock tf2onnx."""
    from fmonnx.sources.keras.linear import linear_time

    stock = _patched(tf2onnx)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        with linear_time(tf2onnx, free_copies=True):
            inside = _patched(tf2onnx)
            assert all(inside[name] is stock[name] for name in stock)
    assert all(_patched(tf2onnx)[name] is stock[name] for name in stock)
    assert len(_warnings(caplog)) == 1
    assert reason in _warnings(caplog)[0]
    assert "converting with stock tf2onnx, which is slower on models with hundreds of layers" in _warnings(caplog)[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _convert_and_check(keras)
    assert len(_warnings(caplog)) == 1


@pytest.mark.keras
@pytest.mark.parametrize("missing", ["pre_optimize_action", "_handle_nhwc_tranpose"])
def test_missing_private_method_falls_back_to_stock_tf2onnx(tf2onnx, caplog, missing):
    """A release that moves a method the patches replace (pre_optimize_action) or call
    (_handle_nhwc_tranpose) off TransposeOptimizer. It goes to the base class, so stock tf2onnx,
    which calls it through ``self``, still runs; before the guard the first raised KeyError."""
    keras = pytest.importorskip("keras")
    from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer

    (base,) = TransposeOptimizer.__bases__
    original = TransposeOptimizer.__dict__[missing]
    assert missing not in vars(base)
    delattr(TransposeOptimizer, missing)
    setattr(base, missing, original)
    try:
        _falls_back(tf2onnx, keras, caplog, f"has no TransposeOptimizer.{missing}, which fmonnx's")
    finally:
        delattr(base, missing)
        setattr(TransposeOptimizer, missing, original)


@pytest.mark.keras
def test_changed_signature_falls_back(tf2onnx, caplog):
    """Same name, other parameters: the patches' contract no longer holds."""
    keras = pytest.importorskip("keras")
    graph_class = tf2onnx.graph.Graph
    original = graph_class.__dict__["extract_sub_graph_nodes"]

    def extract_sub_graph_nodes(self, outputs_name, input_checker=None, remove_unused_inputs=True, keep=()):
        return original(self, outputs_name, input_checker, remove_unused_inputs)

    graph_class.extract_sub_graph_nodes = extract_sub_graph_nodes
    try:
        _falls_back(tf2onnx, keras, caplog, "Graph.extract_sub_graph_nodes(self, outputs_name, input_checker, ")
    finally:
        graph_class.extract_sub_graph_nodes = original


@pytest.mark.keras
@pytest.mark.parametrize("version", ["1.18.0", "1.15.1", "2.0.0", "nightly"])
def test_version_outside_range_falls_back(tf2onnx, caplog, monkeypatch, version):
    keras = pytest.importorskip("keras")
    monkeypatch.setattr(tf2onnx, "__version__", version)
    _falls_back(
        tf2onnx, keras, caplog, f"tf2onnx {version} is not the version fmonnx's linear-time patches were written for"
    )


@pytest.mark.keras
def test_cli_shows_the_warning_and_converts(tf2onnx, tmp_path):
    """``fmonnx convert`` under a tf2onnx outside the range: the warning on stderr, the model written."""
    keras = pytest.importorskip("keras")
    keras_models.save(keras_models.build(keras, keras_models.blocks), tmp_path / "b.keras")
    # python -m fmonnx, with the version changed first in the same process.
    script = (
        "import runpy, sys, tf2onnx; tf2onnx.__version__ = '1.99.0'; "
        "sys.argv = ['fmonnx', 'convert', 'b.keras']; runpy.run_module('fmonnx', run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "linear-time patches" in line]
    assert lines == [
        "tf2onnx 1.99.0 is not the version fmonnx's linear-time patches were written for (1.16-1.17); "
        "converting with stock tf2onnx, which is slower on models with hundreds of layers"
    ]
    assert "check passed" in done.stdout + done.stderr and (tmp_path / "b.onnx").is_file()


def test_pyproject_bound_is_the_guards_range():
    from fmonnx.sources.keras.linear import TF2ONNX_VERSIONS

    # Python 3.10 has no tomllib: the [keras] extra is one line of pyproject.toml.
    (extra,) = re.findall(r"^keras = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    (requirement,) = [r for r in re.findall(r'"([^"]+)"', extra) if r.startswith("tf2onnx")]
    bounds = dict(re.findall(r"(>=|<)\s*([\d.]+)", requirement))
    assert set(bounds) == {">=", "<"}, requirement
    (low_major, low_minor), (high_major, high_minor) = TF2ONNX_VERSIONS
    assert bounds[">="] == f"{low_major}.{low_minor}" and bounds["<"] == f"{high_major}.{high_minor}"


@pytest.mark.keras
def test_installed_tf2onnx_is_patched(tf2onnx):
    """The venv's tf2onnx is inside the range and has every method: the fast path is the one tested."""
    from fmonnx.sources.keras.linear import unpatchable

    assert unpatchable(tf2onnx) is None
