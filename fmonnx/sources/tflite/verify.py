"""Walk a whole TFLite FlatBuffer in Python before TFLite's C++ code reads it.

TFLite's interpreter does not verify a file read from a path: a truncated ``.tflite`` crashes the
process (a segmentation fault, measured with TensorFlow 2.21) instead of raising. So every table
and vector the interpreter reads (operator codes, subgraphs, tensors, operators, buffers) is read
here first with tf2onnx's generated TFLite schema, where reading past the end raises, and every
index is checked to point inside its list. A file that passes can still be wrong in ways only
TFLite knows (an op's options); those raise in TFLite, they do not crash it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from fmonnx.errors import ModelError

__all__ = ["verify_tflite"]


def verify_tflite(path: str | os.PathLike) -> bytearray:
    """Return the file's bytes after walking its FlatBuffer; ModelError when any part lies outside it."""
    path = Path(path)
    try:
        data = bytearray(path.read_bytes())
    except OSError as exc:
        raise ModelError(f"{path} cannot be read ({exc.strerror}); check its permissions") from exc
    try:
        _walk(data)
    except _Malformed as exc:
        reason = str(exc)
    except UnicodeDecodeError:
        reason = "a tensor name is not UTF-8 text"
    except (IndexError, ValueError, struct.error):  # a read past the end of the bytes
        reason = f"its tables point past its {len(data)} bytes"
    else:
        return data
    raise ModelError(
        f"{path} is not a complete TFLite model, truncated or corrupt ({reason}); convert the model to .tflite again"
    )


class _Malformed(ValueError):
    """A part of the FlatBuffer that reads but points somewhere it cannot."""


def _vector(value) -> np.ndarray:
    return np.asarray(value).reshape(-1)  # the generated code returns 0 for an absent vector


def _inside(name: str, indices, size: int, optional: bool = False) -> None:
    low = -1 if optional else 0
    bad = [int(i) for i in _vector(indices) if not low <= int(i) < size]
    if bad:
        raise _Malformed(f"{name} points at {bad[0]}, outside 0..{size - 1}")


def _walk(data: bytearray) -> None:
    from tf2onnx.tflite.Model import Model

    if len(data) < 8:
        raise _Malformed(f"it has only {len(data)} bytes")
    model = Model.GetRootAsModel(data, 0)
    model.Version()
    codes = model.OperatorCodesLength()
    for i in range(codes):
        code = model.OperatorCodes(i)
        code.BuiltinCode(), code.DeprecatedBuiltinCode(), code.CustomCode()
    buffers = model.BuffersLength()
    for i in range(buffers):
        buffer = model.Buffers(i)
        _vector(buffer.DataAsNumpy())
        if buffer.Offset() and buffer.Offset() + buffer.Size() > len(data):
            raise _Malformed(f"buffer {i} ends past the end of the file")
    if model.SubgraphsLength() < 1:
        raise _Malformed("it has no subgraph")
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        tensors = graph.TensorsLength()
        _inside("a subgraph input", graph.InputsAsNumpy(), tensors)
        _inside("a subgraph output", graph.OutputsAsNumpy(), tensors)
        for t in range(tensors):
            tensor = graph.Tensors(t)
            (tensor.Name() or b"").decode("utf-8")
            _vector(tensor.ShapeAsNumpy()), _vector(tensor.ShapeSignatureAsNumpy())
            _inside("a tensor's buffer", [tensor.Buffer()], max(buffers, 1))
            quantization = tensor.Quantization()
            if quantization is not None:
                _vector(quantization.ScaleAsNumpy()), _vector(quantization.ZeroPointAsNumpy())
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            _inside("an operator's code", [op.OpcodeIndex()], codes)
            _inside("an operator input", op.InputsAsNumpy(), tensors, optional=True)
            _inside("an operator output", op.OutputsAsNumpy(), tensors)
            _vector(op.CustomOptionsAsNumpy())
