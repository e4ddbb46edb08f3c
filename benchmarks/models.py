"""The benchmark's models, built here so nothing is downloaded.

``resnet50()`` is the standard ResNet-50 v1.5 topology (torchvision's: the
stride sits on the 3x3 conv of each bottleneck), input (1, 3, 224, 224),
BatchNorm folded into Conv biases, random He-scaled weights. Ops: Conv, Relu,
MaxPool, Add, GlobalAveragePool, Flatten, Gemm. ``fully_convolutional()`` is
the same stem and stages without the head and with dynamic H x W, for the
2048 x 2048 memory test. Built files are cached under ``benchmarks/.cache/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["CACHE", "TUTORIAL", "build_resnet50", "resnet50", "fully_convolutional"]

CACHE = Path(__file__).parent / ".cache"
TUTORIAL = Path(__file__).parent.parent / "models" / "tutorial_cnn.onnx"

_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # width, blocks, stride
_EXPANSION = 4


class _Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        values = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def bias(self, name: str, size: int) -> str:
        values = self.rng.standard_normal(size, dtype=np.float32) * np.float32(0.05)
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def conv(self, name: str, x: str, c_in: int, c_out: int, kernel: int, stride: int = 1) -> str:
        w = self.weight(f"{name}.weight", (c_out, c_in, kernel, kernel), c_in * kernel * kernel)
        b = self.bias(f"{name}.bias", c_out)
        pad = kernel // 2
        out = f"/{name.replace('.', '/')}/Conv_output_0"
        self.nodes.append(
            helper.make_node(
                "Conv", [x, w, b], [out], name=f"/{name.replace('.', '/')}/Conv",
                kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4,
            )
        )
        return out

    def op(self, op: str, name: str, inputs: list[str], **attrs) -> str:
        out = f"/{name.replace('.', '/')}/{op}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"/{name.replace('.', '/')}/{op}", **attrs))
        return out


def _body(builder: _Builder, x: str) -> tuple[str, int]:
    x = builder.conv("conv1", x, 3, 64, 7, 2)
    x = builder.op("Relu", "relu", [x])
    x = builder.op("MaxPool", "maxpool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = 64
    for stage, (width, blocks, stride) in enumerate(_STAGES, start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            s = stride if block == 0 else 1
            y = builder.op("Relu", f"{prefix}.relu1", [builder.conv(f"{prefix}.conv1", x, c_in, width, 1)])
            y = builder.op("Relu", f"{prefix}.relu2", [builder.conv(f"{prefix}.conv2", y, width, width, 3, s)])
            y = builder.conv(f"{prefix}.conv3", y, width, width * _EXPANSION, 1)
            shortcut = x
            if block == 0:
                shortcut = builder.conv(f"{prefix}.downsample.0", x, c_in, width * _EXPANSION, 1, s)
            x = builder.op("Relu", f"{prefix}.relu", [builder.op("Add", f"{prefix}.add", [y, shortcut])])
            c_in = width * _EXPANSION
    return x, c_in


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _cached(name: str, build) -> Path:
    path = CACHE / name
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        onnx.save(build(), str(partial))
        partial.replace(path)
    return path


def build_resnet50() -> onnx.ModelProto:
    builder = _Builder()
    x, channels = _body(builder, "input")
    pooled = builder.op("GlobalAveragePool", "avgpool", [x])
    flat = builder.op("Flatten", "flatten", [pooled], axis=1)
    w = builder.weight("fc.weight", (1000, channels), channels)
    b = builder.bias("fc.bias", 1000)
    builder.nodes.append(helper.make_node("Gemm", [flat, w, b], ["logits"], name="/fc/Gemm", transB=1))
    graph = helper.make_graph(
        builder.nodes, "resnet50",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        builder.initializers,
    )
    return _model(graph)


def _build_fully_convolutional() -> onnx.ModelProto:
    builder = _Builder()
    x, _ = _body(builder, "input")
    graph = helper.make_graph(
        builder.nodes, "resnet50_fcn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 2048, "out_height", "out_width"])],
        builder.initializers,
    )
    return _model(graph)


def resnet50() -> Path:
    """Path of the cached ResNet-50 (about 100 MB), built on first use."""
    return _cached("resnet50.onnx", build_resnet50)


def fully_convolutional() -> Path:
    """Path of the cached headless ResNet-50 with dynamic H x W, built on first use."""
    return _cached("resnet50_fcn.onnx", _build_fully_convolutional)
