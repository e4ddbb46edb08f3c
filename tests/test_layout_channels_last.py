"""A ConvNeXt block keeps its channel axis through its B,H,W,C stage (issue 14, item 1).

Conv (N,C,H,W) -> Transpose(0,2,3,1) -> LayerNormalization(axis -1) -> MatMul [C, 4C] -> Gelu (Erf form)
-> MatMul [4C, C] -> Mul(gamma) -> Transpose(0,3,1,2) -> Add(residual). Every tensor between the
Transposes is channels-last, and the graph proves it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from PIL import Image

from conftest import make_model, save

C, HIDDEN, SIZE = 8, 32, 6
CHANNELS_LAST = {
    "nhwc": C, "ln": C, "fc1": HIDDEN, "g_div": HIDDEN, "g_erf": HIDDEN, "g_add": HIDDEN, "g_mul": HIDDEN,
    "gelu": HIDDEN, "fc2": C, "scaled": C,
}
CHANNELS_FIRST = {"conv": C, "back": C, "out": C}


def _convnext_block() -> onnx.ModelProto:
    rng = np.random.default_rng(14)
    weights = [
        ("conv_w", rng.normal(size=(C, 3, 3, 3))), ("conv_b", rng.normal(size=C)),
        ("ln_scale", rng.uniform(0.5, 1.5, C)), ("ln_bias", rng.normal(size=C)),
        ("fc1_w", rng.normal(size=(C, HIDDEN))), ("fc2_w", rng.normal(size=(HIDDEN, C))),
        ("gamma", rng.uniform(0.5, 1.5, C)),
        ("sqrt2", np.sqrt(2.0)), ("one", 1.0), ("half", 0.5),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["conv"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["nhwc", "ln_scale", "ln_bias"], ["ln"], axis=-1),
        helper.make_node("MatMul", ["ln", "fc1_w"], ["fc1"]),
        # Gelu as exporters write it: x * 0.5 * (1 + erf(x / sqrt 2))
        helper.make_node("Div", ["fc1", "sqrt2"], ["g_div"]),
        helper.make_node("Erf", ["g_div"], ["g_erf"]),
        helper.make_node("Add", ["g_erf", "one"], ["g_add"]),
        helper.make_node("Mul", ["fc1", "g_add"], ["g_mul"]),
        helper.make_node("Mul", ["g_mul", "half"], ["gelu"]),
        helper.make_node("MatMul", ["gelu", "fc2_w"], ["fc2"]),
        helper.make_node("Mul", ["fc2", "gamma"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["back"], perm=[0, 3, 1, 2]),
        helper.make_node("Add", ["conv", "back"], ["out"]),
    ]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, SIZE, SIZE])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, C, SIZE, SIZE])
    return make_model(nodes, [image], [out], weights)


def _fmonnx(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fmonnx", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_layers_carry_channels_last_through_layernorm_and_matmul(tmp_path):
    path = save(_convnext_block(), tmp_path, "convnext.onnx")
    rows = {row["tensor"]: row for row in json.loads(_fmonnx("layers", str(path), "--json", "--all-spatial"))}
    expected = {**{t: (3, c) for t, c in CHANNELS_LAST.items()}, **{t: (1, c) for t, c in CHANNELS_FIRST.items()}}
    assert set(expected) <= set(rows)
    for tensor, row in rows.items():
        axis, channels = expected[tensor]
        assert (row["channel_axis"], row["layout_certain"]) == (axis, True), tensor
        assert row["shape"] == [channels, SIZE, SIZE], tensor


def test_channels_last_tensor_renders_as_onnxruntime_computes_it(tmp_path):
    model = _convnext_block()
    path = save(model, tmp_path, "convnext.onnx")
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    pixels = np.stack([rows * 40, cols * 40, (rows + cols) * 20], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    out = tmp_path / "maps"
    _fmonnx("render", str(path), str(tmp_path / "photo.png"), "-o", str(out), "--all-spatial", "--save-arrays")
    (image,) = json.loads((out / "manifest.json").read_text())["images"]
    layer = next(entry for entry in image["layers"] if entry["tensor"] == "gelu")
    assert layer["channel_axis"] == 3 and layer["shape"] == [HIDDEN, SIZE, SIZE]
    drawn = np.load(out / layer["array"])

    # Truth: onnxruntime on the unmodified graph, with "gelu" added as an output, fed what fmonnx fed.
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(helper.make_tensor_value_info("gelu", TensorProto.FLOAT, None))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    fed = np.load(out / image["input_array"])
    (truth,) = session.run(["gelu"], {"image": fed})
    assert truth.shape == (1, SIZE, SIZE, HIDDEN)
    assert np.allclose(drawn, truth[0].transpose(2, 0, 1), atol=1e-5)


def test_decomposed_layernorm_keeps_channels_last(tmp_path):
    """LayerNormalization as older exporters write it: the means (B,H,W,1) stay channels-last too."""
    weights = [("conv_w", np.ones((C, 3, 1, 1))), ("two", 2.0), ("eps", 1e-5), ("ln_scale", np.ones(C))]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w"], ["conv"]),
        helper.make_node("Transpose", ["conv"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("ReduceMean", ["nhwc"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["nhwc", "mean"], ["centred"]),
        helper.make_node("Pow", ["centred", "two"], ["squared"]),
        helper.make_node("ReduceMean", ["squared"], ["variance"], axes=[-1]),
        helper.make_node("Add", ["variance", "eps"], ["shifted"]),
        helper.make_node("Sqrt", ["shifted"], ["std"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("Mul", ["normed", "ln_scale"], ["ln"]),
    ]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, SIZE, SIZE])
    ln = helper.make_tensor_value_info("ln", TensorProto.FLOAT, [1, SIZE, SIZE, C])
    path = save(make_model(nodes, [image], [ln], weights), tmp_path, "decomposed.onnx")
    rows = {row["tensor"]: row for row in json.loads(_fmonnx("layers", str(path), "--json", "--all-spatial"))}
    reduced = {"mean", "variance", "shifted", "std"}
    assert {"nhwc", "centred", "squared", "normed", "ln", *reduced} <= set(rows)
    for tensor, row in rows.items():
        if tensor == "conv":
            continue
        assert (row["channel_axis"], row["layout_certain"]) == (3, True), tensor
        assert row["shape"] == [1 if tensor in reduced else C, SIZE, SIZE], tensor
