"""Tiny ONNX models with hand-set weights, so every activation is known in advance."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

# scripts/setup_zoo.sh puts torchvision, timm and pytorch-grad-cam here, beside the venv's torch: appended,
# so the venv's own packages come first (tests/test_explain_zoo.py skips without them)
ZOO = Path(__file__).resolve().parent.parent / ".zoo"
if ZOO.is_dir() and str(ZOO) not in sys.path:
    sys.path.append(str(ZOO))


def make_model(nodes, inputs, outputs, initializers=(), producer="fmonnx-tests", opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "test",
        inputs,
        outputs,
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), name) for name, v in initializers],
    )
    model = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, folder: Path, name: str) -> Path:
    path = folder / name
    onnx.save(model, str(path))
    return path


def copy_weights() -> np.ndarray:
    """1x1 Conv weights, 3 channels in (RGB), 2 out: out0 = in0, out1 = -in1.

    On non-negative images the Relu of out1 is all zero: a dead channel.
    """
    weights = np.zeros((2, 3, 1, 1), np.float32)
    weights[0, 0] = 1.0
    weights[1, 1] = -1.0
    return weights


def copy_model_nchw(names=("conv", "relu", "pool"), producer="fmonnx-tests", size=(4, 6)) -> onnx.ModelProto:
    """input (1,3,H,W) -> Conv(copy) -> Relu -> MaxPool 2x2 -> output."""
    height, width = size
    return make_model(
        [
            helper.make_node("Conv", ["input", "w"], ["conv_out"], name=names[0]),
            helper.make_node("Relu", ["conv_out"], ["relu_out"], name=names[1]),
            helper.make_node("MaxPool", ["relu_out"], ["output"], name=names[2], kernel_shape=[2, 2], strides=[2, 2]),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, height // 2, width // 2])],
        [("w", copy_weights())],
        producer=producer,
    )


def rgb_identity_model_nhwc() -> onnx.ModelProto:
    """input (1,5,6,3) NHWC -> Transpose -> Conv(identity 3->3) -> Relu -> Transpose back -> Sigmoid.

    `relu_out` is NCHW, `back` (and the Sigmoid output) NHWC: the channel axis must
    follow the Transposes, not the sizes.
    """
    weights = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    return make_model(
        [
            helper.make_node("Transpose", ["input"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["nchw", "w"], ["conv_out"], name="conv"),
            helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
            helper.make_node("Transpose", ["relu_out"], ["back"], name="to_nhwc", perm=[0, 2, 3, 1]),
            helper.make_node("Relu", ["back"], ["output"], name="relu_nhwc"),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 5, 6, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5, 6, 3])],
        [("w", weights)],
    )


def dynamic_rgb_model() -> onnx.ModelProto:
    """input (1,3,h,w) -> Conv(identity 3->3) -> Relu: fully convolutional."""
    weights = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    return make_model(
        [
            helper.make_node("Conv", ["input", "w"], ["conv_out"], name="conv"),
            helper.make_node("Relu", ["conv_out"], ["output"], name="relu"),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [("w", weights)],
    )


@pytest.fixture
def write_image(tmp_path):
    """Write a uint8 array as an image file and return its path."""

    def write(array, name="image.png", mode=None, **save_args) -> Path:
        path = tmp_path / name
        Image.fromarray(np.asarray(array, np.uint8), mode).save(path, **save_args)
        return path

    return write


@pytest.fixture
def gradient_rgb():
    """A 6x4 RGB image (H=4, W=6) with distinct values per pixel and channel."""
    rows, cols = np.mgrid[0:4, 0:6]
    return np.stack([rows * 40 + cols * 5, 200 - cols * 30, np.full((4, 6), 77)], axis=-1).astype(np.uint8)


@pytest.fixture
def copy_model_path(tmp_path):
    return save(copy_model_nchw(), tmp_path, "copy.onnx")


@pytest.fixture
def models_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "models"


@pytest.fixture
def unholdable_bounds(monkeypatch):
    """Tiny models are cut into passes only under a bound below what the process itself takes, which
    render refuses (tests/test_hardening_resources.py); lifted here to compare passes with one run."""
    from fmonnx.stages.runner import Runner

    monkeypatch.setattr(Runner, "_least_bound", staticmethod(lambda *args: 0))
