"""Choose the intermediate tensors to show, and promote them to graph outputs.

Before::

    input -> Conv -> Relu -> MaxPool -> ... -> output

After (``expose_outputs(model, ["conv_out", "relu_out", "pool_out"])``)::

    input -> Conv -> Relu -> MaxPool -> ... -> output
              |       |        |
          conv_out relu_out pool_out     (extra graph outputs)

The original outputs stay first and unchanged; the input model is never mutated.

``exposed_suffix`` gives the same model serialized, without copying it:
protobuf parses concatenated messages as one message whose repeated fields
are appended, so the model file's bytes followed by a ModelProto that holds
only the extra graph outputs parse as the exposed model::

    [ model file bytes ][ ModelProto{graph{output: conv_out, relu_out, pool_out}} ]
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelError
from .shapes import TensorType

__all__ = ["ACTIVATIONS", "DEFAULT_OPS", "Candidate", "find_candidates", "expose_outputs", "exposed_suffix"]

log = logging.getLogger(__name__)


class _Graph:
    """Who makes and who reads each tensor, and which tensors are constants: what the patterns look at."""

    def __init__(self, graph: onnx.GraphProto):
        self.producer = {output: node for node in graph.node for output in node.output if output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in set(node.input):
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}

    def made_by(self, tensor: str, *ops: str) -> onnx.NodeProto | None:
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type in ops else None

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.initializers or self.made_by(tensor, "Constant") is not None

    def value(self, tensor: str) -> np.ndarray | None:
        """A small constant's value; None when unknown (graph input, external or emptied weights)."""
        if tensor in self.initializers:
            proto = self.initializers[tensor]
            if proto.data_location == onnx.TensorProto.EXTERNAL:
                return None
            try:
                return numpy_helper.to_array(proto)
            except (ValueError, TypeError):
                return None
        node = self.made_by(tensor, "Constant")
        if node is not None:
            for attribute in node.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t)
                if attribute.name in ("value_float", "value_int"):
                    return np.asarray(helper.get_attribute_value(attribute))
        return None

    def scaled(self, tensor: str) -> str | None:
        """``t`` for ``t * c`` or ``t / c`` with ``c`` constant: the tensor being scaled."""
        node = self.made_by(tensor, "Mul", "Div")
        if node is None or len(node.input) != 2:
            return None
        a, b = node.input
        if self.is_constant(b):
            return a
        if node.op_type == "Mul" and self.is_constant(a):
            return b
        return None

    def only_scaled(self, tensor: str) -> bool:
        """True when the tensor's one reader multiplies or divides it by a constant (the pattern goes on)."""
        users = self.consumers.get(tensor, [])
        return len(users) == 1 and users[0].output and self.scaled(users[0].output[0]) == tensor


def _mul_pair(node: onnx.NodeProto) -> list[tuple[str, str]]:
    """Both orders of a two-input Mul's operands."""
    if node.op_type != "Mul" or len(node.input) != 2:
        return []
    a, b = node.input
    return [(a, b), (b, a)]


def _silu(node: onnx.NodeProto, g: _Graph) -> bool:
    """``x * Sigmoid(x)`` (both Mul inputs from the same x); the Sigmoid half alone is not the activation."""
    if node.op_type == "Swish":
        return True
    return any((s := g.made_by(gate, "Sigmoid")) is not None and s.input[0] == x for x, gate in _mul_pair(node))


def _relu6(node: onnx.NodeProto, g: _Graph) -> bool:
    """``Clip(x, 0, max)``, unless x is ``y + c``: that Clip is the inside of a HardSigmoid/HardSwish."""
    if node.op_type != "Clip":
        return False
    low = next((a.f for a in node.attribute if a.name == "min"), None)  # opset < 11
    if len(node.input) > 1 and node.input[1]:
        value = g.value(node.input[1])
        low = None if value is None or value.size != 1 else float(value.reshape(()))
    return low == 0.0 and _shifted(node.input[0], g) is None


def _shifted(tensor: str, g: _Graph) -> str | None:
    """``y`` for ``y + c`` (c constant)."""
    node = g.made_by(tensor, "Add")
    if node is None or len(node.input) != 2:
        return None
    a, b = node.input
    return a if g.is_constant(b) else b if g.is_constant(a) else None


def _hard_gate(tensor: str, g: _Graph) -> tuple[str | None, bool]:
    """``(x, complete)`` when the tensor is HardSigmoid(x) (complete) or ``Clip(x + 3, 0, 6)`` (not yet / 6)."""
    node = g.made_by(tensor, "HardSigmoid")
    if node is not None:
        return node.input[0], True
    inner = g.scaled(tensor)
    clip = g.made_by(inner if inner is not None else tensor, "Clip")
    if clip is None:
        return None, False
    return _shifted(clip.input[0], g), inner is not None


def _hardswish(node: onnx.NodeProto, g: _Graph) -> bool:
    """HardSwish as one op, ``x * HardSigmoid(x)``, ``x * (Clip(x + 3, 0, 6) / 6)`` or ``x * Clip(x + 3, 0, 6) / 6``."""
    if node.op_type == "HardSwish":
        return True
    for x, gate in _mul_pair(node):
        base, complete = _hard_gate(gate, g)
        if base == x and complete:
            return True
    product = g.scaled(node.output[0]) if node.output else None  # the final / 6 of x * Clip(x + 3, 0, 6)
    made = g.made_by(product or "", "Mul")
    return made is not None and any(_hard_gate(gate, g) == (x, False) for x, gate in _mul_pair(made))


def _erf_half(tensor: str, g: _Graph) -> str | None:
    """``x`` for ``1 + Erf(x / sqrt(2))`` (or ``x * (1 / sqrt(2))``)."""
    erf = g.made_by(_shifted(tensor, g) or "", "Erf")
    return g.scaled(erf.input[0]) if erf is not None else None


def _gelu(node: onnx.NodeProto, g: _Graph) -> bool:
    """Gelu (opset 20) or its export ``x * 0.5 * (1 + Erf(x / sqrt(2)))`` in any order: the final Mul."""
    if node.op_type == "Gelu":
        return True
    core = node
    inner = g.scaled(node.output[0]) if node.op_type == "Mul" and node.output else None
    if inner is not None and g.made_by(inner, "Mul") is not None:
        core = g.producer[inner]  # x * (1 + erf) then * 0.5
    for x, half in _mul_pair(core):
        base = _erf_half(half, g)
        if base is not None and base in (x, g.scaled(x)):
            return core is not node or not g.only_scaled(node.output[0])
    return False


def _op(name: str):
    return lambda node, g: node.op_type == name


# What modern networks activate with: name -> does this node make that activation's output?
# A name here works in ``ops`` (``--ops Conv,SiLU``) like an op type; a new activation is one entry.
ACTIVATIONS = {
    "LeakyRelu": _op("LeakyRelu"),
    "PRelu": _op("PRelu"),
    "Elu": _op("Elu"),
    "Selu": _op("Selu"),
    "Celu": _op("Celu"),
    "Mish": _op("Mish"),
    "ReLU6": _relu6,
    "SiLU": _silu,
    "HardSwish": _hardswish,
    "Gelu": _gelu,
}

DEFAULT_OPS = ("Conv", "Relu", "MaxPool", *ACTIVATIONS)


@dataclass(frozen=True)
class Candidate:
    """An intermediate tensor that can be shown: its name, the node that makes it, its type."""

    tensor: str
    op: str
    node_name: str
    node_index: int
    type: TensorType


def _is_spatial(tensor_type: TensorType | None) -> bool:
    return tensor_type is not None and tensor_type.is_float and tensor_type.rank == 4


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors computed from initializers and Constants alone (weights, not feature maps).

    Graph order is topological, so one pass suffices. A node with a subgraph may read the
    image inside it, so its outputs never count as constant.
    """
    constant = {tensor.name for tensor in graph.initializer}
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if all(name in constant for name in node.input if name):
            constant.update(output for output in node.output if output)
    return constant


# The element-wise pieces of an activation written out (SiLU's Sigmoid, HardSwish's Add, Clip and Div,
# GELU's Erf): what lies between a pre-activation map and the activation that reads it.
_GATE_OPS = frozenset({"Sigmoid", "HardSigmoid", "Add", "Sub", "Mul", "Div", "Clip", "Erf", "Tanh", "Softplus"})


def _pre_activations(chosen: dict[str, Candidate], g: _Graph, graph_outputs: set[str]) -> set[str]:
    """Chosen tensors that only feed a chosen modern activation: a Conv's output before its SiLU.

    The activation is the block's output, what its authors think of as its feature map; the value
    before it is the same map, not yet activated. Feeding it means every path from the tensor reaches
    the activation's node within a few nodes (SiLU's Sigmoid half, HardSwish's Add and Clip). A Relu
    network keeps its Conv and Relu pairs, the view fmonnx has always given it.
    """
    def is_activation(node: onnx.NodeProto) -> bool:
        chosen_output = bool(node.output) and node.output[0] in chosen
        return chosen_output and any(pattern(node, g) for pattern in ACTIVATIONS.values())

    def only_into(tensor: str, activation: onnx.NodeProto, depth: int) -> bool:
        readers = g.consumers.get(tensor, [])
        if not readers or tensor in graph_outputs:
            return False
        return all(reader is activation or (depth > 0 and reader.output and all(
            only_into(output, activation, depth - 1) for output in reader.output if output)) for reader in readers)

    def first_activations(tensor: str, depth: int) -> set:
        found = set()
        for reader in g.consumers.get(tensor, []):
            if is_activation(reader):
                found.add(id(reader))
            elif depth > 0 and reader.op_type in _GATE_OPS:
                for output in reader.output:
                    found |= first_activations(output, depth - 1) if output else set()
        return found

    by_id = {id(node): node for nodes in g.consumers.values() for node in nodes}
    dropped = set()
    for tensor in chosen:
        made_by = g.producer.get(tensor)
        if made_by is not None and is_activation(made_by):
            continue  # an activation feeding another is a map of its own
        activations = first_activations(tensor, 5)
        if len(activations) == 1 and only_into(tensor, by_id[next(iter(activations))], 5):
            dropped.add(tensor)
    return dropped


def find_candidates(
    model: onnx.ModelProto,
    types: dict[str, TensorType],
    ops: tuple[str, ...] = DEFAULT_OPS,
    all_spatial: bool = False,
    extra_tensors: tuple[str, ...] = (),
    activated_only: bool = False,
) -> list[Candidate]:
    """Tensors to expose, in graph (topological) order.

    ``ops`` picks node types (may be empty) and ACTIVATIONS by name; ``all_spatial``
    takes every float tensor of rank 4 instead; ``extra_tensors`` are always
    taken (names a converter recorded; the plan leaves out those shape inference
    proves are not 4-D). Graph inputs, initializers, tensors computed from
    initializers and Constants alone, non-float and non-4-D tensors and
    duplicates are skipped. ``activated_only`` (the default view) leaves out a
    tensor whose only use is a chosen activation (see ``_pre_activations``).
    Raises ModelError when nothing is left.
    """
    graph = model.graph
    excluded = {value.name for value in graph.input} | _constant_tensors(graph)
    wanted_extra = set(extra_tensors)
    chosen: dict[str, Candidate] = {}
    patterns = [ACTIVATIONS[name] for name in dict.fromkeys(ops) if name in ACTIVATIONS]
    context = _Graph(graph) if patterns and not all_spatial else None
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            continue
        by_op = all_spatial or node.op_type in ops or any(pattern(node, context) for pattern in patterns)
        for output in node.output:
            if not output or output in excluded or output in chosen:
                continue
            if output in wanted_extra or (by_op and _is_spatial(types.get(output))):
                tensor_type = types.get(output) or TensorType(onnx.TensorProto.FLOAT, None)
                chosen[output] = Candidate(output, node.op_type, node.name, index, tensor_type)
    if activated_only and not all_spatial and chosen:
        dropped = _pre_activations(chosen, context or _Graph(graph), {value.name for value in graph.output})
        chosen = {name: c for name, c in chosen.items() if name not in dropped or name in wanted_extra}
    if not chosen:
        present = Counter(node.op_type for node in graph.node)
        listing = ", ".join(op for op, _ in present.most_common(12))
        asked = "Conv/Relu/MaxPool or activation" if tuple(ops) == DEFAULT_OPS else "/".join(ops or DEFAULT_OPS[:3])
        raise ModelError(
            f"the model has no 4-D {asked} tensors to show (it has: {listing}); "
            f"try --ops with one of those, or --all-spatial"
        )
    return list(chosen.values())


def expose_outputs(model: onnx.ModelProto, candidates: list[Candidate]) -> onnx.ModelProto:
    """Return a copy of ``model`` whose graph also outputs the candidates' tensors.

    The same mechanism as the render path: the model's bytes followed by ``exposed_suffix``.
    """
    exposed = onnx.ModelProto()
    exposed.ParseFromString(model.SerializeToString() + exposed_suffix(model, candidates))
    return exposed


def exposed_suffix(model: onnx.ModelProto, candidates: list[Candidate]) -> bytes:
    """Bytes that, appended to the serialized ``model``, add the candidates' tensors as graph outputs
    (and the nodes the plan appended to ``model`` to draw token tensors, see tokens.py).

    Costs a file copy instead of a copy and a serialization of the whole model
    (0.3 s and two model sizes of memory on a ResNet-50). Tensors that are
    already outputs are not added twice. Only the element type and rank are
    declared (dims left open), so onnxruntime reports the real shapes and
    never rejects a run over an inferred size.
    """
    from .tokens import added_nodes

    extra = onnx.ModelProto()
    # nodes the plan appended (token maps) are not in the file: graph order is kept by appending them last
    added = added_nodes(model)
    if added:  # touching extra.graph alone would make the suffix non-empty, and the session load a copy
        extra.graph.node.extend(added)
    present = {output.name for output in model.graph.output}
    for candidate in candidates:
        if candidate.tensor not in present:
            rank = candidate.type.rank
            shape = None if rank is None else [None] * rank
            extra.graph.output.append(helper.make_tensor_value_info(candidate.tensor, candidate.type.elem_type, shape))
            present.add(candidate.tensor)
    log.debug("exposing %d tensors", len(extra.graph.output))
    return extra.SerializeToString()
