"""Write the reverse-mode derivative of one scalar score into an ONNX graph.

The score is ``sum(target * seed)``: ``target`` is a tensor of the model (a classifier's
logits, a detector's output), ``seed`` a tensor of the same shape that says which elements
count and how much (a one-hot class, a mask), made in the graph or fed as an input. The
gradient of the score with respect to ``target`` is then the seed itself, and each node on
a path from a chosen tensor to ``target`` adds its rule's nodes, last node first::

    input -> Conv -> Relu -> ... -> logits                  (the model, unchanged)
                      |                |
                     relu_out       seed (fed or made)
                                       |
    d score/d relu_out <- ... <- rules(Gemm) <- seed        (appended nodes)

Weights are constants. Nodes off every path from a chosen tensor to the target need no
rule; a node on such a path without one raises GradientError naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from ...errors import GradientError
from ..shapes import TensorType
from .emit import MIN_OPSET, Emitter
from .registry import RuleContext, constant_reader, rules

__all__ = ["Backward", "build_backward", "default_opset", "NON_DIFFERENTIABLE"]

log = logging.getLogger(__name__)

# ops whose outputs are integers, booleans or piecewise constant: no gradient flows through them
NON_DIFFERENTIABLE = frozenset({
    "Shape", "Size", "ArgMax", "ArgMin", "NonZero", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual",
    "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "Floor", "Ceil", "Round", "Sign", "NonMaxSuppression",
    "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
    "Range", "OneHot", "Constant",
})


@dataclass
class Backward:
    """The appended nodes and what they compute.

    ``gradients``: chosen tensor -> the name of its gradient (same shape); ``score``: the
    scalar score's name; ``unreached``: chosen tensors the score does not depend on (their
    gradient is zeros).
    """

    nodes: list[onnx.NodeProto]
    gradients: dict[str, str]
    score: str
    unreached: tuple[str, ...]


def default_opset(model: onnx.ModelProto) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)


def _inputs_of(node: onnx.NodeProto) -> list[str]:
    """A node's inputs and the outer tensors its subgraphs read (If/Loop/Scan bodies)."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            inner = {out for n in graph.node for out in n.output} | {v.name for v in graph.input}
            inner |= {t.name for t in graph.initializer}
            for sub in graph.node:
                names += [name for name in _inputs_of(sub) if name not in inner]
    return names


def _carries_gradient(tensor: str, producer: onnx.NodeProto | None, types: dict[str, TensorType]) -> bool:
    tensor_type = types.get(tensor)
    if tensor_type is not None and tensor_type.elem_type:
        return tensor_type.is_float
    return producer is None or producer.op_type not in NON_DIFFERENTIABLE


def build_backward(model: onnx.ModelProto, types: dict[str, TensorType], target: str, seed: str,
                   wrt: Sequence[str], emitter: Emitter | None = None) -> Backward:
    """The nodes that compute ``d sum(target * seed) / d t`` for each ``t`` in ``wrt``.

    ``model``'s graph is read, never changed; ``types`` are its inferred tensor types
    (shapes.infer_types). Raises GradientError when the model's opset is below 13 or a
    node on a path from a chosen tensor to ``target`` has no rule.
    """
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise GradientError(
            f"the model uses ONNX opset {opset}; gradients are written for opset {MIN_OPSET} or newer: "
            f"re-export it with a newer opset (or convert it with onnx.version_converter)"
        )
    emit = emitter or Emitter(opset)
    graph = model.graph
    nodes = list(graph.node)
    wanted = list(dict.fromkeys(wrt))

    # tensors that depend on a chosen tensor, through float tensors only
    depends = set(wanted)
    for node in nodes:
        if node.op_type in NON_DIFFERENTIABLE:
            continue
        if any(name in depends for name in _inputs_of(node)):
            depends.update(out for out in node.output if out and _carries_gradient(out, node, types))
    # tensors the target depends on
    ancestors = {target}
    for node in reversed(nodes):
        if any(out in ancestors for out in node.output):
            ancestors.update(_inputs_of(node))

    score = emit.op("ReduceSum", [emit.op("Mul", [target, seed], hint="scored")], hint="score", keepdims=0)
    gradients: dict[str, list[str]] = {target: [seed]} if target in depends else {}
    final: dict[str, str] = {}

    def total(tensor: str) -> str | None:
        if tensor in final:
            return final[tensor]
        parts = gradients.get(tensor)
        if not parts:
            return None
        final[tensor] = parts[0] if len(parts) == 1 else emit.op("Sum", parts, hint="accumulated")
        return final[tensor]

    table = rules()
    read = constant_reader(graph)
    for node in reversed(nodes):
        outputs = [total(out) if out else None for out in node.output]
        if all(g is None for g in outputs):
            continue
        needed = frozenset(
            index for index, name in enumerate(node.input)
            if name and name in depends and name in ancestors and name != ""
        )
        # a subgraph (If, Loop, Scan) that reads a chosen tensor from the outer graph: no rule sees inside
        implicit = any(name in depends for name in set(_inputs_of(node)) - set(node.input))
        if (not needed and not implicit) or node.op_type in NON_DIFFERENTIABLE:
            continue
        function = table.get(node.op_type) if node.domain in ("", "ai.onnx") and not implicit else None
        if function is None:
            where = node.name or node.output[0]
            raise GradientError(
                f"no gradient rule for the {node.op_type} node {where!r}, which lies between the chosen layers and "
                f"the score; choose a layer after it (--layer), or a method without gradients "
                f"(--method eigencam, scorecam or ablationcam)"
            )
        context = RuleContext(node, emit, types, read, needed)
        produced = function(context, outputs)
        for index, gradient in produced.items():
            if gradient is not None and index in needed:
                gradients.setdefault(node.input[index], []).append(gradient)

    result: dict[str, str] = {}
    unreached = []
    for tensor in wanted:
        gradient = total(tensor)
        if gradient is None:
            unreached.append(tensor)
            gradient = emit.zeros_like(tensor)
        result[tensor] = gradient
    log.debug("backward pass: %d nodes for %d tensors", len(emit.nodes), len(wanted))
    return Backward(emit.nodes, result, score, tuple(unreached))
