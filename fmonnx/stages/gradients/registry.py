"""The gradient rules: one function per ONNX op, found by op type.

A rule gets a RuleContext (the forward node, its types and constants, the emitter) and
the gradients of the node's outputs (a tensor name, or None where an output has none),
and returns ``{input index: gradient tensor}`` for the inputs that ``ctx.needs``.
Weights are constants: a rule never returns gradients for inputs that do not need one.

A new rule is one function in one of ``RULE_MODULES`` with ``@rule("OpType")``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..shapes import TensorType
from .emit import Emitter

__all__ = ["RuleContext", "Rule", "rule", "rules", "RULE_MODULES"]

# the modules whose import registers the rules (loaded on first use)
RULE_MODULES = (
    "fmonnx.stages.gradients.linear",
    "fmonnx.stages.gradients.pooling",
    "fmonnx.stages.gradients.normalization",
    "fmonnx.stages.gradients.resize",
    "fmonnx.stages.gradients.activation",
    "fmonnx.stages.gradients.arithmetic",
    "fmonnx.stages.gradients.shaping",
)


@dataclass
class RuleContext:
    """What a rule may read about its node, and the emitter it writes with."""

    node: onnx.NodeProto
    emit: Emitter
    types: dict[str, TensorType]
    constants: Callable[[str], np.ndarray | None]  # a constant tensor's value, None when not constant or not kept
    needed: frozenset[int]  # the input indices that need a gradient

    @property
    def opset(self) -> int:
        return self.emit.opset

    def needs(self, index: int) -> bool:
        return index in self.needed

    def input(self, index: int) -> str:
        """The node's input name; '' when absent."""
        return self.node.input[index] if index < len(self.node.input) else ""

    def output(self, index: int = 0) -> str:
        return self.node.output[index] if index < len(self.node.output) else ""

    def attr(self, name: str, default=None):
        for attribute in self.node.attribute:
            if attribute.name == name:
                value = helper.get_attribute_value(attribute)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def type_of(self, tensor: str) -> TensorType | None:
        return self.types.get(tensor)

    def rank(self, tensor: str) -> int | None:
        tensor_type = self.types.get(tensor)
        return None if tensor_type is None else tensor_type.rank

    def known_rank(self, tensor: str) -> int:
        """The tensor's rank from shape inference; GradientError when it is unknown."""
        rank = self.rank(tensor)
        if rank is None:
            from ...errors import GradientError

            raise GradientError(f"{self.describe()}: the rank of {tensor!r} is unknown; run onnx shape inference on "
                                f"the model, or choose a layer after it")
        return rank

    def value(self, tensor: str) -> np.ndarray | None:
        """A constant input's value (initializer or Constant node); None when unknown."""
        return self.constants(tensor) if tensor else None

    def describe(self) -> str:
        return f"{self.node.op_type} node {self.node.name or self.output()!r}"


Rule = Callable[[RuleContext, list], dict]

_RULES: dict[str, Rule] = {}


def rule(*op_types: str):
    """Register the decorated function as the gradient rule of ``op_types``."""

    def register(function: Rule) -> Rule:
        for op_type in op_types:
            _RULES[op_type] = function
        return function

    return register


def rules() -> dict[str, Rule]:
    """Every registered rule by op type (the rule modules are imported on first call)."""
    for module in RULE_MODULES:
        importlib.import_module(module)
    return _RULES


def constant_reader(graph: onnx.GraphProto) -> Callable[[str], np.ndarray | None]:
    """A lookup of constant values: initializers whose data is present, and Constant nodes."""
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    constant_nodes = {node.output[0]: node for node in graph.node if node.op_type == "Constant" and node.output}

    def read(name: str) -> np.ndarray | None:
        if name in initializers:
            tensor = initializers[name]
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                return None
            count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
            try:
                array = numpy_helper.to_array(tensor)
            except (ValueError, TypeError):
                return None
            return array if array.size == count else None  # a weight emptied by the plan has no data
        node = constant_nodes.get(name)
        if node is not None:
            for attribute in node.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t)
                if attribute.name in ("value_float", "value_int", "value_floats", "value_ints"):
                    return np.asarray(helper.get_attribute_value(attribute))
        return None

    return read
