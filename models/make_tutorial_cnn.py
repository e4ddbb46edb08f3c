"""Build tutorial_cnn.onnx: the small Keras CNN of the classic feature-map tutorial.

The architecture follows the well-known Keras "visualising intermediate
activations" tutorial (150x150x3 input, three Conv2D + MaxPooling2D blocks,
Flatten, Dense head), except that the head is Dense(64) -> Dense(3) instead of
Dense(1024) -> Dense(512) -> ..., which keeps the file at ~2.4 MB instead of
~38 MB. No weights are downloaded: the first conv layer gets hand-made
edge/colour filters (see first_layer_filters.py) so its feature maps are
readable on a photo, and every other weight is drawn from a seeded numpy
generator, so re-running gives identical weights.

Run with the TensorFlow venv (tensorflow, tf-keras, tf2onnx, onnxruntime,
matplotlib)::

    /work/venv-tf/bin/python models/make_tutorial_cnn.py

The model is converted from Keras 2 (tf_keras) with tf2onnx at opset 17, which
names the nodes after the Keras layers (``sequential/conv2d/...``), then
checked against onnxruntime on a random input and on a real photo.
"""

from __future__ import annotations

import os

# Keras 3 models are not supported by tf2onnx.convert.from_keras; this must be
# set before tensorflow is imported so that tf.keras is Keras 2 (tf_keras).
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from first_layer_filters import FILTER_NAMES, first_layer_filters  # noqa: E402

SEED = 20240601
INPUT_SHAPE = (150, 150, 3)
NUM_CLASSES = 3
OPSET = 17
OUT_PATH = Path(__file__).resolve().parent / "tutorial_cnn.onnx"


def build_model():
    """The tutorial architecture, with Keras's default layer names."""
    import tensorflow as tf

    # A fresh session restarts Keras's name counters, so the layers are
    # conv2d, max_pooling2d, conv2d_1, ... with no _N suffix from earlier models.
    tf.keras.backend.clear_session()
    layers = tf.keras.layers
    return tf.keras.Sequential(
        [
            tf.keras.Input(shape=INPUT_SHAPE),
            layers.Conv2D(8, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(16, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ]
    )


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """He-normal draw: keeps ReLU activations from shrinking or blowing up."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def set_weights(model, rng: np.random.Generator) -> None:
    """Hand-made first conv layer, seeded random everything else.

    Weights come from numpy rather than Keras initialisers so that they do not
    depend on TensorFlow's random-number implementation.
    """
    first_conv = True
    for layer in model.layers:
        if not layer.weights:
            continue
        kernel_shape = tuple(layer.kernel.shape)
        if layer.__class__.__name__ == "Conv2D" and first_conv:
            weights, biases = first_layer_filters()
            # (out, in, kh, kw) -> Keras's (kh, kw, in, out).
            layer.set_weights([weights.transpose(2, 3, 1, 0), biases])
            first_conv = False
            continue
        fan_in = int(np.prod(kernel_shape[:-1]))
        kernel = he_normal(rng, kernel_shape, fan_in)
        # Small positive biases keep a few more ReLU units alive on dark areas.
        bias = np.full(kernel_shape[-1], 0.01, dtype=np.float32)
        layer.set_weights([kernel, bias])


def convert(model):
    """Convert with tf2onnx; returns the ONNX ModelProto."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *INPUT_SHAPE), tf.float32, name="input"),)
    onnx_model, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    return onnx_model


def load_photo() -> np.ndarray:
    """Grace Hopper from matplotlib's sample data, as a 1x150x150x3 batch in [0, 1]."""
    import matplotlib.cbook
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as img:
        img = img.convert("RGB").resize(INPUT_SHAPE[1::-1], Image.BILINEAR)
        pixels = np.asarray(img, dtype=np.float32)
    return pixels[None] / 255.0


def check_against_onnxruntime(model, path: Path) -> None:
    """Compare Keras and onnxruntime outputs and print the max abs error."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    random_batch = np.random.default_rng(SEED + 1).random((2, *INPUT_SHAPE), dtype=np.float32)
    for label, batch in (("random", random_batch), ("grace_hopper", load_photo())):
        expected = model.predict(batch, verbose=0)
        got = session.run(None, {input_name: batch})[0]
        err = float(np.max(np.abs(expected - got)))
        print(f"{label}: max abs error keras vs onnxruntime = {err:.3g}")
        if err > 1e-4:
            raise SystemExit(f"{label}: outputs differ by {err}")


def report_photo_activity(model) -> None:
    """Print how much of each feature map fires on the photo.

    Every hand-made filter should fire somewhere without firing everywhere
    (except brightness), and the random layers should have no dead channels.
    """
    import tensorflow as tf

    conv_layers = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    probe = tf.keras.Model(model.inputs, [layer.output for layer in conv_layers])
    maps = probe.predict(load_photo(), verbose=0)
    for i, name in enumerate(FILTER_NAMES):
        print(f"conv2d filter {i} ({name}): {np.mean(maps[0][0, ..., i] > 0):.0%} of pixels active")
    for layer, fmap in zip(conv_layers, maps):
        alive = int(np.sum(fmap[0].max(axis=(0, 1)) > 0))
        print(f"{layer.name}: {alive}/{fmap.shape[-1]} channels non-zero on the photo")
    print("class probabilities on the photo:", np.round(model.predict(load_photo(), verbose=0)[0], 3))


def main() -> None:
    import tensorflow as tf

    # All weights come from numpy below; seeding TF too makes the throwaway
    # default initialisation reproducible, so nothing random is left.
    tf.keras.utils.set_random_seed(SEED)
    model = build_model()
    set_weights(model, np.random.default_rng(SEED))
    onnx_model = convert(model)
    OUT_PATH.write_bytes(onnx_model.SerializeToString())
    print(f"wrote {OUT_PATH} ({OUT_PATH.stat().st_size} bytes)")
    check_against_onnxruntime(model, OUT_PATH)
    report_photo_activity(model)


if __name__ == "__main__":
    main()
