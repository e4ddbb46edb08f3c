"""Tiny Keras models for the converter tests, buildable with Keras 3 or tf_keras.

Every builder takes the Keras module (``keras`` or ``tf_keras``) and returns a
model with explicit layer names and seeded weights; BatchNormalization layers
get random statistics so that they are not the identity. ``reference``
computes the Keras activations of the 4-D layers with plain Keras probe
models, independently of fmonnx's own capture.
"""

from __future__ import annotations

import warnings

import numpy as np

SEED = 1234


def tutorial(k):
    """The tutorial's model: Conv2D 8/16/32 + MaxPooling2D, Flatten, Dense 1024/512/3, input 150x150x3."""
    L = k.layers
    return k.Sequential(
        [
            k.Input((150, 150, 3)),
            L.Conv2D(8, 3, activation="relu", name="conv2d"),
            L.MaxPooling2D(2, name="max_pooling2d"),
            L.Conv2D(16, 3, activation="relu", name="conv2d_1"),
            L.MaxPooling2D(2, name="max_pooling2d_1"),
            L.Conv2D(32, 3, activation="relu", name="conv2d_2"),
            L.MaxPooling2D(2, name="max_pooling2d_2"),
            L.Flatten(name="flatten"),
            L.Dense(1024, activation="relu", name="dense"),
            L.Dense(512, activation="relu", name="dense_1"),
            L.Dense(3, activation="softmax", name="dense_2"),
        ],
        name="tutorial",
    )


def blocks(k):
    """Functional: Conv2D without activation, BatchNormalization, LeakyReLU, DepthwiseConv2D,
    ReLU(max_value=6), Add, SeparableConv2D with relu, Concatenate, AveragePooling2D, UpSampling2D."""
    L = k.layers
    x = k.Input((32, 32, 3), name="image")
    a = L.Conv2D(8, 3, padding="same", name="conv_a")(x)
    a = L.BatchNormalization(name="bn_a")(a)
    a = L.LeakyReLU(name="leaky_a")(a)
    b = L.DepthwiseConv2D(3, padding="same", name="dw_b")(a)
    b = L.BatchNormalization(name="bn_b")(b)
    b = L.ReLU(max_value=6, name="relu6_b")(b)
    s = L.Add(name="add")([a, b])
    c = L.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep_c")(s)
    m = L.Concatenate(name="concat")([s, c])
    p = L.AveragePooling2D(2, name="avgpool")(m)
    u = L.UpSampling2D(2, name="upsample")(p)
    h = L.Conv2D(4, 1, activation="sigmoid", name="head")(u)
    g = L.GlobalAveragePooling2D(name="gap")(h)
    y = L.Dense(3, name="logits")(g)
    return k.Model(x, y, name="blocks")


def nested(k):
    """A Functional backbone used as a layer: its layers get paths ``backbone/conv1``."""
    L = k.layers
    inner_input = k.Input((24, 24, 3), name="backbone_in")
    f = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inner_input)
    f = L.BatchNormalization(name="bn1")(f)
    f = L.MaxPooling2D(2, name="pool1")(f)
    backbone = k.Model(inner_input, f, name="backbone")
    x = k.Input((24, 24, 3), name="image")
    y = backbone(x)
    y = L.Conv2D(4, 3, name="head_conv")(y)
    y = L.GlobalMaxPooling2D(name="gmp")(y)
    y = L.Dense(2, name="out")(y)
    return k.Model(x, y, name="nested")


def fully_conv(k):
    """Open height and width, and a 4-D model output (a layer that is also the model's output)."""
    L = k.layers
    x = k.Input((None, None, 3), name="image")
    y = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x)
    y = L.Conv2D(2, 1, name="score")(y)
    return k.Model(x, y, name="fcn")


def with_lambda(k):
    """A Lambda layer: its Python code is stored in the file."""
    L = k.layers
    return k.Sequential(
        [k.Input((8, 8, 3)), L.Conv2D(2, 3, name="conv"), L.Lambda(lambda t: t * 2.0, name="double")],
        name="lam",
    )


def dense_only(k):
    """No layer with a 4-D output."""
    return k.Sequential([k.Input((4,)), k.layers.Dense(2, name="fc")], name="mlp")


BUILDERS = {"tutorial": tutorial, "blocks": blocks, "nested": nested, "fully_conv": fully_conv}


# --- one builder per cause of a keras.applications failure (tests/test_convert_zoo_causes.py) -----


def normalization(k):
    """Keras 3's Normalization keeps mean and variance as tensors, not variables (EfficientNet)."""
    L = k.layers
    x = k.Input((16, 16, 3), name="image")
    n = L.Normalization(mean=[0.4, 0.5, 0.6], variance=[0.05, 0.08, 0.1], name="norm")(x)
    y = L.Conv2D(4, 3, padding="same", name="conv")(n)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return k.Model(x, y, name="normalization")


def grouped(k):
    """A Conv2D with groups > 1, which Keras compiles with XLA in a nested function (ConvNeXt, RegNet)."""
    L = k.layers
    x = k.Input((16, 16, 4), name="image")
    y = L.Conv2D(8, 3, padding="same", name="stem")(x)
    y = L.Conv2D(8, 3, padding="same", groups=4, activation="relu", name="grouped")(y)
    y = L.BatchNormalization(name="bn")(y)
    y = L.Conv2D(6, 1, groups=2, name="grouped_1x1")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return k.Model(x, y, name="grouped")


def exact_gelu(k):
    """The exact (erf) GELU of ConvNeXt, on pre-activations from about -12 to 12."""
    L = k.layers
    x = k.Input((12, 12, 3), name="image")
    c = L.Conv2D(8, 3, padding="same", kernel_initializer=k.initializers.RandomNormal(0, 2.0), name="conv")(x)
    g = L.Activation("gelu", name="gelu")(c)
    d = L.Dense(4, name="dense_gelu", activation="gelu")(g)
    y = L.GlobalAveragePooling2D(name="gap")(d)
    return k.Model(x, y, name="exact_gelu")


def operator_add(k):
    """``x + skip`` between layers (RegNet's residuals): tf_keras makes it a TFOpLambda layer whose
    ``call`` is set on the instance."""
    L = k.layers
    x = k.Input((16, 16, 3), name="image")
    skip = L.Conv2D(4, 1, name="skip")(x)
    y = L.Conv2D(4, 3, padding="same", name="conv")(x)
    y = L.ReLU(name="relu")(y + skip)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return k.Model(x, y, name="operator_add")


def bn_chain(k):
    """Conv / BatchNormalization / ReLU repeated: a label one layer off shows in the numbers only
    when BatchNormalization is not the identity (see ``build``)."""
    L = k.layers
    x = k.Input((16, 16, 3), name="image")
    y = x
    for i in range(3):
        y = L.Conv2D(6, 3, padding="same", name=f"conv{i}")(y)
        y = L.BatchNormalization(name=f"bn{i}")(y)
        y = L.ReLU(name=f"relu{i}")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return k.Model(x, y, name="bn_chain")


def build(k, builder):
    """Build with seeded weights; give every BatchNormalization random statistics."""
    k.utils.set_random_seed(SEED)
    model = builder(k)
    rng = np.random.default_rng(SEED)
    for _, layer in flat_layers(k, model):
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = (w.shape for w in layer.get_weights())
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma).astype("float32"),
                    rng.normal(0, 0.2, beta).astype("float32"),
                    rng.normal(0, 0.2, mean).astype("float32"),
                    rng.uniform(0.5, 1.5, var).astype("float32"),
                ]
            )
    return model


def save(model, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf_keras calls .h5 "legacy"; that is the point here
        model.save(str(path))


def flat_layers(k, model, prefix=""):
    """``(path, layer)`` for the layers of ``model``, nested models flattened, input layers left out."""
    for layer in model.layers:
        if isinstance(layer, k.Model):
            yield from flat_layers(k, layer, prefix + layer.name + "/")
        elif type(layer).__name__ != "InputLayer":
            yield prefix + layer.name, layer


def spatial_layer_names(k, model) -> list[str]:
    """Paths of the layers whose Keras output is 4-D, in layer order."""
    return [path for path, layer in flat_layers(k, model) if len(layer.output.shape) == 4]


def example_input(model, seed: int = 7) -> np.ndarray:
    """A seeded random input for the model; open axes get size 40."""
    shape = tuple(1 if i == 0 else (40 if s is None else int(s)) for i, s in enumerate(model.inputs[0].shape))
    return np.random.default_rng(seed).random(shape, dtype=np.float64).astype("float32")


def reference(k, model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Keras's own activations of every 4-D layer for input ``x``, by path.

    Uses a probe model per (nested) model, with outputs = its layers' outputs.
    A nested model must take the outer model's input directly, as in the
    builders above.
    """
    result = {}

    def probe(owner, prefix):
        direct = [
            (prefix + layer.name, layer)
            for layer in owner.layers
            if not isinstance(layer, k.Model) and type(layer).__name__ != "InputLayer"
        ]
        direct = [(path, layer) for path, layer in direct if len(layer.output.shape) == 4]
        if direct:
            outputs = k.Model(owner.inputs[0], [layer.output for _, layer in direct])(x, training=False)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            result.update({p: np.asarray(o) for (p, _), o in zip(direct, outputs)})
        for layer in owner.layers:
            if isinstance(layer, k.Model):
                probe(layer, prefix + layer.name + "/")

    probe(model, "")
    return result
