"""Make the backward pass's ONNX nodes: unique names, constants, and the helpers most rules share.

Every name made here starts with ``fmonnx_grad/`` so it never meets a tensor of the model.
Nodes are emitted for the model's own default-domain opset (13 or newer: ReduceSum,
Squeeze and Unsqueeze take their axes as an input there).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["Emitter", "PREFIX", "MIN_OPSET"]

PREFIX = "fmonnx_grad/"
MIN_OPSET = 13


class Emitter:
    """Collects the nodes of the backward pass; each helper returns the name of the tensor it made."""

    def __init__(self, opset: int, prefix: str = PREFIX):
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._count = itertools.count()
        self._constants: dict[tuple, str] = {}
        self._shapes: dict[str, str] = {}

    def name(self, hint: str) -> str:
        return f"{self.prefix}{hint}_{next(self._count)}"

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, outputs: int = 1,
           **attributes) -> str | list[str]:
        """Append one node; its output name, or the list of them when ``outputs`` > 1."""
        names = [self.name(hint or op_type) for _ in range(outputs)]
        node = helper.make_node(op_type, list(inputs), names, name=self.name(f"node_{op_type}"), **attributes)
        self.nodes.append(node)
        return names[0] if outputs == 1 else names

    def const(self, value, dtype=None, hint: str = "const") -> str:
        """A Constant node holding ``value`` (made once per distinct value)."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self.name(hint)
            tensor = numpy_helper.from_array(array, name)
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.name("node_Constant"), value=tensor))
            self._constants[key] = name
        return self._constants[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), np.int64), hint="ints")

    def scalar(self, value: float, dtype=np.float32) -> str:
        return self.const(np.asarray(value, dtype), hint="scalar")

    def shape(self, tensor: str) -> str:
        """``Shape(tensor)``, made once per tensor."""
        if tensor not in self._shapes:
            self._shapes[tensor] = self.op("Shape", [tensor], hint="shape")
        return self._shapes[tensor]

    def zeros_like(self, tensor: str) -> str:
        """Float32 zeros of the shape of ``tensor``."""
        return self.op("ConstantOfShape", [self.shape(tensor)], hint="zeros",
                       value=numpy_helper.from_array(np.zeros(1, np.float32)))

    def reduce_sum(self, tensor: str, axes: Sequence[int] | str, keepdims: bool = True) -> str:
        """Sum over ``axes`` (a list, or the name of an int64 tensor of axes; none: no change)."""
        axes_name = axes if isinstance(axes, str) else self.ints(axes)
        return self.op("ReduceSum", [tensor, axes_name], hint="sum", keepdims=int(keepdims), noop_with_empty_axes=1)

    def unsqueeze(self, tensor: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", [tensor, self.ints(axes)], hint="unsqueeze")

    def squeeze(self, tensor: str, axes: Sequence[int]) -> str:
        return self.op("Squeeze", [tensor, self.ints(axes)], hint="squeeze")

    def reshape_like(self, tensor: str, like: str) -> str:
        return self.op("Reshape", [tensor, self.shape(like)], hint="reshape")

    def sum_to_shape(self, gradient: str, operand: str, output: str) -> str:
        """Undo numpy broadcasting: sum ``gradient`` (shaped like ``output``) down to ``operand``'s shape.

        The axes are found at run time, so dynamic sizes work: every axis the operand lacks
        (leading) or holds at size 1 where the output does not.
        """
        out_shape = self.shape(output)
        operand_shape = self.shape(operand)
        # ranks as Shape(Shape(t)): onnxruntime folds Size(Shape(t)) into t's element count
        out_rank = self.op("Shape", [out_shape], hint="rank")
        operand_rank = self.op("Shape", [operand_shape], hint="rank")
        missing = self.op("Sub", [out_rank, operand_rank], hint="missing")
        ones = self.op("ConstantOfShape", [missing], hint="ones",
                       value=numpy_helper.from_array(np.ones(1, np.int64)))
        padded = self.op("Concat", [ones, operand_shape], hint="padded", axis=0)
        one = self.const(np.asarray(1, np.int64))
        broadcast = self.op("And", [self.op("Equal", [padded, one]),
                                    self.op("Not", [self.op("Equal", [out_shape, one])])], hint="broadcast")
        axes = self.op("Reshape", [self.op("NonZero", [broadcast]), self.ints([-1])], hint="axes")
        summed = self.reduce_sum(gradient, axes, keepdims=True)
        return self.op("Reshape", [summed, operand_shape], hint="unbroadcast")
