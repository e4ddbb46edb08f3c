"""Issue 14, item 7: constants are not layers, open sizes read as ints or null, compare's own final outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

import fmonnx
from conftest import copy_weights, make_model, save
from fmonnx.options import RenderOptions


def _weights_through_identity():
    """input (1,3,4,4) -> Conv(Identity(w)) -> Relu, and a Constant * w product nothing reads from the image."""
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [1], [2.0])
    return make_model(
        [
            helper.make_node("Identity", ["w"], ["w_copy"], name="Identity_38"),
            helper.make_node("Constant", [], ["two"], name="const", value=scale),
            helper.make_node("Mul", ["w_copy", "two"], ["w_scaled"], name="scale_w"),
            helper.make_node("Conv", ["w_scaled", "w"], ["weights_conv"], name="conv_of_weights"),
            helper.make_node("Conv", ["input", "w_copy"], ["conv_out"], name="conv"),
            helper.make_node("Relu", ["conv_out"], ["output"], name="relu"),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, 4, 4])],
        [("w", copy_weights())],
    )


def test_all_spatial_leaves_out_tensors_computed_from_weights_alone(tmp_path):
    path = save(_weights_through_identity(), tmp_path, "weights.onnx")
    spatial = [row["tensor"] for row in fmonnx.list_layers(path, RenderOptions(all_spatial=True))]
    assert spatial == ["conv_out", "output"]
    default = [row["tensor"] for row in fmonnx.list_layers(path)]
    assert default == ["conv_out", "output"]  # the Conv of two weights is no feature map either


def _symbolic_model():
    """input (1,3,H,W) -> Conv 3x3 stride 2 pad 1 -> Relu; conv_out's H x W declared as a torch export writes them."""
    weights = np.ones((2, 3, 3, 3), np.float32)
    model = make_model(
        [
            helper.make_node("Conv", ["input", "w"], ["conv_out"], name="conv", kernel_shape=[3, 3], strides=[2, 2],
                             pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv_out"], ["output"], name="relu"),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "s65", "s66"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, None, None])],
        [("w", weights)],
    )
    model.graph.value_info.append(helper.make_tensor_value_info(
        "conv_out", TensorProto.FLOAT, [1, 2, "(((s65 - 1)//2)) + 1", "(((s66 - 1)//2)) + 1"]))
    return model


def _layers_json(*args):
    done = subprocess.run([sys.executable, "-m", "fmonnx", "layers", "--json", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_layers_json_gives_ints_or_null_never_expressions(tmp_path):
    path = save(_symbolic_model(), tmp_path, "symbolic.onnx")
    rows = _layers_json(str(path))
    assert [row["shape"] for row in rows] == [[2, None, None], [2, None, None]]


def test_layers_resolves_open_sizes_at_size(tmp_path):
    model = _symbolic_model()
    path = save(model, tmp_path, "symbolic.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (truth,) = session.run(None, {"input": np.zeros((1, 3, 9, 12), np.float32)})
    rows = _layers_json(str(path), "--size", "9x12")
    assert [row["shape"] for row in rows] == [list(truth.shape[1:])] * 2 == [[2, 5, 6]] * 2


def _converted_like(tmp_path):
    """A classifier-like model as fmonnx convert leaves it: its own output first, then its layers as outputs,
    recorded in fmonnx.layers."""
    model = make_model(
        [
            helper.make_node("Conv", ["input", "w"], ["conv1"], name="conv"),
            helper.make_node("Relu", ["conv1"], ["relu1"], name="relu"),
            helper.make_node("ReduceMean", ["relu1"], ["logits"], name="pool", axes=[2, 3], keepdims=0),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("conv1", TensorProto.FLOAT, [1, 2, 4, 6]),
         helper.make_tensor_value_info("relu1", TensorProto.FLOAT, [1, 2, 4, 6])],
        [("w", copy_weights())],
    )
    layers = [{"layer": "conv1", "class": "Conv2d", "output": "conv1", "layout": "NCHW"},
              {"layer": "relu1", "class": "ReLU", "output": "relu1", "layout": "NCHW"}]
    helper.set_model_props(model, {"fmonnx.layers": json.dumps(layers)})
    return save(model, tmp_path, "converted.onnx")


def test_compare_final_outputs_are_the_model_own(tmp_path, write_image, gradient_rgb):
    path = _converted_like(tmp_path)
    rgb_image = write_image(gradient_rgb)
    out = tmp_path / "cmp"
    done = subprocess.run(
        [sys.executable, "-m", "fmonnx", "compare", str(path), str(path), str(rgb_image), "-o", str(out)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "compare.json").read_text())
    assert [entry["name"] for entry in record["outputs"]] == ["logits"]
    assert [entry["name"] for entry in record["layers"]] == ["conv1", "relu1"]
    summary = done.stdout.strip().splitlines()[-1]
    assert "final outputs: logits " in summary and "conv1 " not in summary.split("final outputs:")[1]


def test_summary_names_a_few_final_outputs_and_counts_the_rest():
    """Seven detector heads: three named, four counted."""
    from fmonnx.report.compare_result import CompareResult

    outputs = [{"name": f"head{index}", "sqnr_db": 40.0 + index} for index in range(7)]
    record = {"outputs": outputs, "layers": [], "first_divergence": None, "within_tolerance": True}
    summary = CompareResult("unused", record).summary()
    assert "head0 40.0 dB, head1 41.0 dB, head2 42.0 dB and 4 more" in summary
    assert "head3" not in summary
