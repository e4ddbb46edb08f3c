"""One tiny model per cause that made keras.applications models fail to convert.

- Keras 3's Normalization holds tensors, not variables (EfficientNet): the
  converted model must have one input and hold mean and variance itself.
- A Conv2D with ``groups > 1`` runs in an XLA-compiled nested function, in
  Keras 3 and tf_keras (ConvNeXt, RegNet): it must become an ONNX Conv.
- The exact GELU uses ``Erfc`` (ConvNeXt), which tf2onnx had no handler for.
- An op tf2onnx cannot convert is named in one line, not left to the checker;
  a Keras 3 .h5 that Keras 3 cannot read back (MobileNetV3) advises .keras.
- tf_keras's ``x + y`` layer (TFOpLambda, RegNet) sets its own ``call``,
  which the layer capture must put back, or Keras's side of the check (and
  the user's model) loses the addition.
- With BatchNormalization statistics randomized, every labelled tensor must
  match its own Keras layer and not its neighbour.

Each model is saved, converted from the file, run in onnxruntime and
compared with Keras's own layer outputs (``keras_models.reference``).
"""

from __future__ import annotations

import json
from math import erf, sqrt

import keras_models
import numpy as np
import pytest

from fmonnx.sources.keras.convert import METADATA_LAYERS, convert_keras, convert_keras_model

pytestmark = pytest.mark.keras

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def frameworks():
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    keras = pytest.importorskip("keras")
    tf_keras = pytest.importorskip("tf_keras")
    return {"keras3": keras, "tf_keras": tf_keras}


def _convert(frameworks, tmp_path, builder, flavour):
    """Build, save as ``flavour`` (``keras3.keras``...), convert the file; return (k, model, result)."""
    framework, suffix = flavour.split(".")
    k = frameworks[framework]
    model = keras_models.build(k, builder)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{model.name}_{framework}.{suffix}"
    keras_models.save(model, path)
    return k, model, convert_keras(path)


def _layer_outputs(result, x: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime's value of every labelled layer output, by Keras path."""
    import onnxruntime

    session = onnxruntime.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert len(session.get_inputs()) == 1, [i.name for i in session.get_inputs()]
    names = [entry["output"] for entry in result.layers]
    values = session.run(names, {session.get_inputs()[0].name: x})
    return {entry["layer"]: value for entry, value in zip(result.layers, values)}


def _assert_matches_keras(k, model, result) -> dict[str, np.ndarray]:
    assert result.check is not None and result.check.passed, result.check.summary()
    x = keras_models.example_input(model)
    want = keras_models.reference(k, model, x)
    got = _layer_outputs(result, x)
    assert sorted(got) == sorted(want)
    for path, value in got.items():
        np.testing.assert_allclose(value, want[path], rtol=RTOL, atol=ATOL * np.max(np.abs(want[path])), err_msg=path)
    final = _onnx_output(result, x)
    np.testing.assert_allclose(final, np.asarray(model(x, training=False)), rtol=RTOL, atol=ATOL)
    return want


def _onnx_output(result, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([result.model.graph.output[0].name], {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("flavour", ["keras3.keras", "keras3.h5"])
def test_normalization_tensors_become_initializers(frameworks, tmp_path, flavour):
    k, model, result = _convert(frameworks, tmp_path, keras_models.normalization, flavour)
    graph = result.model.graph
    assert [i.name for i in graph.input] == ["image"]
    assert [e["layer"] for e in result.layers] == ["norm", "conv"]
    _assert_matches_keras(k, model, result)


@pytest.mark.parametrize("flavour", ["keras3.keras", "tf_keras.h5"])
def test_grouped_convolution_converts(frameworks, tmp_path, flavour):
    k, model, result = _convert(frameworks, tmp_path, keras_models.grouped, flavour)
    ops = {node.op_type for node in result.model.graph.node}
    assert not ops & {"PartitionedCall", "StatefulPartitionedCall"}, ops
    groups = sorted(
        attribute.i
        for node in result.model.graph.node
        if node.op_type == "Conv"
        for attribute in node.attribute
        if attribute.name == "group"
    )
    assert 4 in groups and 2 in groups, groups
    assert [e["layer"] for e in result.layers] == ["stem", "grouped", "bn", "grouped_1x1"]
    # The fused relu's input, the grouped Conv itself, is still found inside its layer.
    grouped = next(e for e in result.layers if e["layer"] == "grouped")
    assert grouped["inner"] and all(t.startswith("grouped/") for t in grouped["inner"])
    _assert_matches_keras(k, model, result)


@pytest.mark.parametrize("flavour", ["keras3.keras", "tf_keras.h5"])
def test_exact_gelu_converts_to_erf(frameworks, tmp_path, flavour):
    k, model, result = _convert(frameworks, tmp_path, keras_models.exact_gelu, flavour)
    ops = {node.op_type for node in result.model.graph.node}
    assert "Erf" in ops and "Erfc" not in ops, ops
    want = _assert_matches_keras(k, model, result)
    # The pre-activations reach the far tails, where erfc and 1 - erf differ most.
    assert want["conv"].min() < -6 and want["conv"].max() > 6
    x = want["conv"].astype(np.float64)
    exact = 0.5 * x * (1 + np.vectorize(erf)(x / sqrt(2)))
    np.testing.assert_allclose(want["gelu"], exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flavour", ["keras3.keras", "tf_keras.h5"])
def test_names_match_own_layer_with_random_batchnorm(frameworks, tmp_path, flavour):
    k, model, result = _convert(frameworks, tmp_path, keras_models.bn_chain, flavour)
    meta = {p.key: json.loads(p.value) for p in result.model.metadata_props}
    assert [e["layer"] for e in meta[METADATA_LAYERS]] == keras_models.spatial_layer_names(k, model)
    want = _assert_matches_keras(k, model, result)
    got = _layer_outputs(result, keras_models.example_input(model))
    order = [e["layer"] for e in result.layers]
    # Each tensor is far from its neighbours' Keras outputs, so a label one layer off would fail above.
    for before, after in zip(order, order[1:]):
        scale = np.max(np.abs(want[after]))
        assert np.max(np.abs(got[after] - want[before])) > 100 * (ATOL + RTOL * scale), (before, after)


@pytest.mark.parametrize("flavour", ["keras3.keras", "tf_keras.h5"])
def test_operator_add_layer_checks_and_still_runs_after_conversion(frameworks, tmp_path, flavour):
    k, model, result = _convert(frameworks, tmp_path, keras_models.operator_add, flavour)
    _assert_matches_keras(k, model, result)
    # Converting an in-memory model leaves it computing what it did (the TFOpLambda keeps its call).
    x = keras_models.example_input(model)
    before = np.asarray(model(x, training=False))
    convert_keras_model(model)
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), before)


def test_op_without_tf2onnx_conversion_is_named(frameworks):
    import tensorflow as tf

    from fmonnx.errors import ConversionError

    k = frameworks["keras3"]

    class Digamma(k.layers.Layer):
        def call(self, x):
            return tf.math.digamma(x)

    x = k.Input((8, 8, 3), name="image")
    y = Digamma(name="digamma")(k.layers.Conv2D(2, 3, name="conv")(x))
    with pytest.raises(ConversionError, match=r"cannot convert the TensorFlow ops Digamma .*whatever the --opset"):
        convert_keras_model(k.Model(x, y))


def test_keras3_h5_keras_cannot_read_back_advises_keras_format(frameworks, tmp_path):
    """MobileNetV3's ``x + 3.0`` between layers: Keras 3 writes the .h5 but cannot load it (its .keras it can)."""
    from fmonnx.errors import ConversionError

    k = frameworks["keras3"]
    x = k.Input((8, 8, 3), name="image")
    y = k.layers.ReLU(6.0, name="relu6")(k.layers.Conv2D(2, 3, name="conv")(x) + 3.0)
    model = k.Model(x, y, name="hard")
    keras_models.save(model, tmp_path / "hard.h5")
    with pytest.raises(ConversionError, match=r"save the model as \.keras instead"):
        convert_keras(tmp_path / "hard.h5")
    keras_models.save(model, tmp_path / "hard.keras")
    assert [e["layer"] for e in convert_keras(tmp_path / "hard.keras").layers][-1] == "relu6"


def test_large_models_free_the_optimizer_copies_and_convert_the_same(frameworks, tmp_path, monkeypatch):
    """Past the size bound the optimizers collect tf2onnx's graph copies as they go (VGG16 ran out of 24 GB
    without it); the bound set to 0 runs that path on a small model: the same check passes, the same layers."""
    import fmonnx.sources.keras.convert as converting

    _, _, plain = _convert(frameworks, tmp_path / "plain", keras_models.blocks, "keras3.keras")
    monkeypatch.setattr(converting, "_FREE_COPIES_ABOVE", 0)
    _, _, freed = _convert(frameworks, tmp_path / "freed", keras_models.blocks, "keras3.keras")
    assert freed.check.passed and plain.check.passed
    assert [layer for layer in freed.layers] == [layer for layer in plain.layers]
