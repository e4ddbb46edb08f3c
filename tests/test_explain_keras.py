"""fmonnx.explain on a Keras model against tf.GradientTape: every named layer's gradient of the same
pre-softmax logit, on the exact input fmonnx fed (Keras is NHWC; fmonnx's layers are (C, H, W))."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras_models import build, save  # noqa: E402

import fmonnx  # noqa: E402

pytestmark = pytest.mark.keras

TOLERANCE = 1e-2
LAYERS = ["conv1", "bn", "pool", "conv2"]


def small_cnn(k):
    """Conv2D+ReLU, BatchNormalization (random statistics, see keras_models.build), MaxPooling2D, Conv2D+ReLU,
    GlobalAveragePooling2D, Dense with softmax (its logits are taken from its input, kernel and bias)."""
    L = k.layers
    x = k.Input((16, 16, 3), name="image")
    y = L.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(x)
    y = L.BatchNormalization(name="bn")(y)
    y = L.MaxPooling2D(2, name="pool")(y)
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    y = L.Dense(5, activation="softmax", name="probs")(y)
    return k.Model(x, y, name="small_cnn")


def relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def keras_gradients(model, x: np.ndarray, cls: int):
    """(logit, {layer: NHWC output}, {layer: d logit / d output}) by tf.GradientTape on Keras's own model."""
    dense = model.get_layer("probs")
    probe = tf.keras.Model(model.inputs, [model.get_layer(n).output for n in LAYERS] + [dense.input])
    kernel, bias = dense.get_weights()
    with tf.GradientTape() as tape:
        *outputs, features = probe(tf.constant(x), training=False)
        logit = tf.matmul(features, kernel)[0, cls] + bias[cls]  # the pre-softmax logit
    grads = tape.gradient(logit, outputs)
    return (float(logit), {n: np.asarray(o) for n, o in zip(LAYERS, outputs)},
            {n: np.asarray(g) for n, g in zip(LAYERS, grads)})


def test_keras_layer_gradients_equal_gradient_tape(tmp_path):
    from PIL import Image

    model = build(tf.keras, small_cnn)
    path = tmp_path / "small.keras"
    save(model, path)
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(image)

    ex = fmonnx.explain(path, image, layers="all")
    assert ex.target["kind"] == "class"
    (index,) = ex.target["index"]
    cls = index[-1]
    assert ex.input.shape == (1, 16, 16, 3)
    logit, outputs, gradients = keras_gradients(model, ex.input, cls)
    # the score is the logit before the softmax, and the top class
    np.testing.assert_allclose(ex.target["score"], logit, rtol=1e-4, atol=1e-5)
    features = model.get_layer("probs").input
    logits = tf.keras.Model(model.inputs, features)(ex.input).numpy() @ model.get_layer("probs").get_weights()[0]
    assert cls == int(np.argmax(logits[0] + model.get_layer("probs").get_weights()[1]))

    checked = 0
    # pool is on the score's path; conv1/Conv and conv2/Conv are the ONNX Convs' pre-ReLU outputs, whose
    # gradient is Keras's gradient of the ReLU output where that output is positive (the chain rule)
    for name, keras_name, relu in [("pool", "pool", False), ("conv1/Conv", "conv1", True),
                                   ("conv2/Conv", "conv2", True)]:
        layer = ex.layer(name)
        assert not layer.folded_batchnorm, name
        gradient = np.moveaxis(gradients[keras_name][0], -1, 0)
        if relu:
            gradient = gradient * (np.moveaxis(outputs[keras_name][0], -1, 0) > 0)
        else:
            assert relative(layer.activation, np.moveaxis(outputs[name][0], -1, 0)) < 1e-4, name
        assert layer.gradient.shape == gradient.shape, name
        assert relative(layer.gradient, gradient) < TOLERANCE, (name, relative(layer.gradient, gradient))
        checked += 1
    assert checked >= 3

    # Grad-CAM as the Keras tutorial computes it: channel-pooled gradients times the activations, ReLU
    pooled = tf.reduce_mean(gradients["pool"], axis=(0, 1, 2))
    heatmap = tf.nn.relu(tf.squeeze(outputs["pool"][0] @ pooled[..., tf.newaxis])).numpy()
    assert relative(ex.layer("pool").raw, heatmap) < TOLERANCE


@pytest.mark.parametrize("name", ["conv1", "bn", "conv2"])
def test_keras_side_branch_layer_views_get_their_gradient(tmp_path, name):
    """A Keras layer's NHWC output is a Transpose beside the converted graph's NCHW path: its gradient is
    the same Transpose of its source's gradient, as tf.GradientTape gives on the Keras layer."""
    from PIL import Image

    model = build(tf.keras, small_cnn)
    path = tmp_path / "small.keras"
    save(model, path)
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(image)
    ex = fmonnx.explain(path, image, layers=[name])
    _, outputs, gradients = keras_gradients(model, ex.input, ex.target["index"][0][-1])
    layer = ex.layer(name)
    assert relative(layer.activation, np.moveaxis(outputs[name][0], -1, 0)) < 1e-4
    assert relative(layer.gradient, np.moveaxis(gradients[name][0], -1, 0)) < TOLERANCE
