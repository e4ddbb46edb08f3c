"""Pair the shown tensors of two models, A (the reference) and B, so compare can measure B against A.

Rules, in order, for each of A's planned tensors (graph order):

1. **Same tensor name.** Quantizers, fp16 converters, graph simplifiers and
   onnxruntime's own optimization levels keep ONNX tensor names: the tensor of
   that name in B's graph is the same activation, whatever op makes it there
   (ORT's quantizer folds a Relu into the Conv before it and gives the Conv
   the Relu's output name, so A's ``relu`` pairs with B's Conv output).
2. **Same display name** (render's names: converter metadata, PyTorch module
   paths, tf2onnx scopes) of one of B's planned tensors that rule 1 left free:
   two exports of one network name tensors differently but layers alike.

Then, on each side, the value to compare is traced through what converters and
quantizers insert after the tensor, in the graph (never by name suffixes)::

    T -> QuantizeLinear -> DequantizeLinear -> T'     T' is compared (int8 QDQ)
    T(fp16) -> Cast(to float) -> T'                   T' is compared (fp16 models)

Exposing the DequantizeLinear's output, not the float tensor before the
QuantizeLinear, keeps the int8 path onnxruntime fuses (QLinearConv) in the run.
Nothing is ever matched by position: what finds no partner is listed in
``Pairing.unpaired`` with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import onnx

from ..errors import ModelError
from .expose import Candidate
from .layout import chw_shape
from .names import NamedTensor
from .plan import ModelPlan
from .shapes import TensorType, infer_types

__all__ = ["Pair", "Unpaired", "Pairing", "pair_plans", "pair_layer_outputs", "check_inputs", "trace_value"]

log = logging.getLogger(__name__)

_FLOAT = onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class Pair:
    """A's tensor and B's, to compare. ``a``/``b`` name the tensors to run (after the traced Q->DQ
    or Cast); ``a_source``/``b_source`` the planned tensors they were traced from; ``rule`` how
    they were paired: ``tensor name`` or ``display name``, with ``+ QDQ`` / ``+ Cast`` when traced."""

    name: str  # A's display name
    b_name: str  # B's display name (B's layer, as render would show it)
    a: NamedTensor
    b: NamedTensor
    a_source: str
    b_source: str
    rule: str
    shape: list | None  # [C, H, W] from shape inference (A's); None or symbolic dims when dynamic


@dataclass(frozen=True)
class Unpaired:
    tensor: str
    name: str
    side: str  # "a" or "b"
    reason: str


@dataclass(frozen=True)
class Pairing:
    """``pairs`` in A's graph order; ``plan_a``/``plan_b`` run exactly the paired tensors (B's pointing
    at the traced ones, with their layouts), so each side exposes only what is compared."""

    pairs: list[Pair]
    unpaired: list[Unpaired]
    plan_a: ModelPlan | None  # None when A is a framework's own run (pair_layer_outputs)
    plan_b: ModelPlan


class _Graph:
    """Producers and consumers of one model's tensors, and their inferred types."""

    def __init__(self, plan: ModelPlan):
        model = plan.loaded.model
        self.producer: dict[str, tuple[int, onnx.NodeProto]] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for index, node in enumerate(model.graph.node):
            for output in node.output:
                if output:
                    self.producer[output] = (index, node)
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.outputs = {value.name for value in model.graph.output}
        self.types = infer_types(model)
        self.plan = plan

    def consumer(self, tensor: str, op: str) -> onnx.NodeProto | None:
        """The first node of type ``op`` that reads ``tensor`` as its first input (quantizers may give
        each reader its own DequantizeLinear: they compute the same values)."""
        return next((node for node in self.consumers.get(tensor, []) if node.op_type == op and node.input[0] == tensor),
                    None)


def trace_value(graph: _Graph, tensor: str) -> tuple[str, str]:
    """The tensor whose values stand for ``tensor`` after what quantizers and converters insert:
    the output of Q -> DQ following it, or of a Cast to float32 following an fp16/bf16/double
    tensor; ``tensor`` itself otherwise. Returns (tensor, "" / " + QDQ" / " + Cast")."""
    quantize = graph.consumer(tensor, "QuantizeLinear")
    if quantize is not None:
        dequantize = graph.consumer(quantize.output[0], "DequantizeLinear")
        if dequantize is not None:
            return dequantize.output[0], " + QDQ"
    kind = graph.types.get(tensor)
    if kind is not None and kind.elem_type != _FLOAT:
        for node in graph.consumers.get(tensor, []):
            to = next((attr.i for attr in node.attribute if attr.name == "to"), None)
            if node.op_type == "Cast" and to == _FLOAT:
                return node.output[0], " + Cast"
    return tensor, ""


def _named(graph: _Graph, planned: NamedTensor | None, tensor: str, name: str) -> NamedTensor | None:
    """A NamedTensor for ``tensor`` of ``graph`` (a planned one re-pointed, or a new one); None
    when it is not a float tensor of rank 4 or unknown."""
    kind = graph.types.get(tensor)
    if kind is None or not kind.is_float or kind.rank not in (None, 4):
        return None
    index, node = graph.producer[tensor]
    candidate = Candidate(tensor, node.op_type, node.name, index, kind)
    if planned is not None:
        return dataclasses.replace(planned, candidate=candidate)
    return NamedTensor(candidate, name, name, None)


def _described(kind: TensorType | None) -> str:
    if kind is None:
        return "of unknown type"
    type_name = onnx.TensorProto.DataType.Name(kind.elem_type).lower()
    rank = "unknown rank" if kind.rank is None else f"rank {kind.rank}"
    return f"{type_name}, {rank}"


def check_inputs(plan_a: ModelPlan, plan_b: ModelPlan) -> None:
    """Raise ModelError when A and B do not take the same input (shape, layout, element type):
    the same image could not be fed to both. Symbolic dims match any symbolic dim."""
    a, b = plan_a.input, plan_b.input
    problems = []
    if a.elem_type != b.elem_type:
        problems.append(
            f"type {onnx.TensorProto.DataType.Name(a.elem_type)} vs {onnx.TensorProto.DataType.Name(b.elem_type)}"
        )
    if len(a.shape) != len(b.shape) or any(
        isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a.shape, b.shape)
    ) or any(isinstance(x, int) != isinstance(y, int) for x, y in zip(a.shape, b.shape)):
        problems.append(f"shape {list(a.shape)} vs {list(b.shape)}")
    if plan_a.input_layout.name != plan_b.input_layout.name:
        problems.append(f"layout {plan_a.input_layout.name} vs {plan_b.input_layout.name}")
    if problems:
        raise ModelError(
            f"A and B take different inputs ({'; '.join(problems)}); compare two models that take the same "
            "image input (an fp16 model: keep float32 inputs and outputs, e.g. keep_io_types=True)"
        )


def pair_plans(plan_a: ModelPlan, plan_b: ModelPlan) -> Pairing:
    """Pair A's planned tensors with B's tensors by the rules in the module docstring."""
    graph_a, graph_b = _Graph(plan_a), _Graph(plan_b)
    b_by_tensor = {named.candidate.tensor: named for named in plan_b.tensors}
    b_by_name = {named.name: named for named in plan_b.tensors}
    # rule 1 first for every tensor, so a display name never takes a tensor another pairs by its own name
    by_tensor = {named.candidate.tensor for named in plan_a.tensors if named.candidate.tensor in graph_b.producer}
    used: set[str] = set()
    pairs: list[Pair] = []
    unpaired: list[Unpaired] = []
    layouts_a, layouts_b = dict(plan_a.layouts), dict(plan_b.layouts)
    for named_a in plan_a.tensors:
        tensor = named_a.candidate.tensor
        if tensor in by_tensor:
            source_b, rule = tensor, "tensor name"
        elif named_a.name in b_by_name and b_by_name[named_a.name].candidate.tensor not in by_tensor | used:
            source_b, rule = b_by_name[named_a.name].candidate.tensor, "display name"
        else:
            unpaired.append(Unpaired(tensor, named_a.name, "a", _absent_reason(named_a, graph_b, b_by_name, by_tensor)))
            continue
        used.add(source_b)
        value_a, via_a = trace_value(graph_a, tensor)
        value_b, via_b = trace_value(graph_b, source_b)
        planned_b = b_by_tensor.get(source_b)
        b_name = planned_b.name if planned_b is not None else named_a.name
        run_a = _named(graph_a, named_a, value_a, named_a.name)
        run_b = _named(graph_b, planned_b, value_b, b_name)
        if run_a is None or run_b is None:
            side, value, graph = ("a", value_a, graph_a) if run_a is None else ("b", value_b, graph_b)
            unpaired.append(Unpaired(
                tensor, named_a.name, side,
                f"{'A' if side == 'a' else 'B'}'s tensor {value} is {_described(graph.types.get(value))}, "
                "not a float tensor of rank 4",
            ))
            continue
        layout_a, layout_b = plan_a.layout_of(tensor), plan_b.layout_of(source_b)
        shape_a = chw_shape(graph_a.types[value_a].shape, layout_a)
        shape_b = chw_shape(graph_b.types[value_b].shape, layout_b)
        if shape_a and shape_b and any(isinstance(x, int) and isinstance(y, int) and x != y
                                       for x, y in zip(shape_a, shape_b)):
            unpaired.append(Unpaired(
                tensor, named_a.name, "a", f"shapes differ: A {shape_a}, B {shape_b} (C x H x W) for {source_b}"
            ))
            continue
        layouts_a[value_a] = layout_a
        layouts_b[value_b] = layout_b
        pairs.append(Pair(named_a.name, b_name, run_a, run_b, tensor, source_b, rule + via_b, shape_a))
    for named_b in plan_b.tensors:
        if named_b.candidate.tensor not in used:
            unpaired.append(Unpaired(
                named_b.candidate.tensor, named_b.name, "b",
                "A has no tensor of this name and no layer of this display name (added in B, or renamed)",
            ))
    if not pairs:
        raise ModelError(
            f"no tensor of {plan_a.loaded.path.name} could be paired with one of {plan_b.loaded.path.name} "
            "(no shared tensor names or layer names); compare two versions of the same network"
        )
    plan_a = dataclasses.replace(plan_a, tensors=[pair.a for pair in pairs], layouts=layouts_a)
    plan_b = dataclasses.replace(plan_b, tensors=[pair.b for pair in pairs], layouts=layouts_b)
    log.debug("%d pairs, %d unpaired", len(pairs), len(unpaired))
    return Pairing(pairs, unpaired, plan_a, plan_b)


def pair_layer_outputs(plan_b: ModelPlan, layers: dict[str, str], framework: str = "Keras") -> Pairing:
    """A: a framework's own run, its layers' outputs by layer path (``layers``: path -> class); B: its
    conversion, whose converter recorded each layer's output tensor (``fmonnx.layers`` metadata,
    ``layer_output``). Each layer output pairs with the layer of that path; the layer's inner tensors
    (a Conv2D's pre-activation Conv) have no counterpart in the framework and are listed as unpaired.
    """
    pairs: list[Pair] = []
    unpaired: list[Unpaired] = []
    for named in plan_b.tensors:
        tensor, layer = named.candidate.tensor, named.source_layer
        if named.layer_output is True and layer in layers:
            candidate = Candidate(layer, layers[layer], layer, -1, TensorType(_FLOAT, None))
            own = NamedTensor(candidate, layer, layer, True, layers[layer])
            shape = chw_shape(named.candidate.type.shape, plan_b.layout_of(tensor))
            pairs.append(Pair(layer, named.name, own, named, layer, tensor, "layer output", shape))
        elif named.layer_output is False:
            unpaired.append(Unpaired(
                tensor, named.name, "b", f"an inner tensor of {framework} layer {layer}, which gives its output only"
            ))
        else:
            unpaired.append(Unpaired(tensor, named.name, "b", f"no {framework} layer {layer} has a 4-D output"))
    if not pairs:
        raise ModelError(
            f"none of {plan_b.loaded.path.name}'s tensors is recorded as a {framework} layer's output; "
            f"convert the {framework} file with fmonnx convert"
        )
    plan_b = dataclasses.replace(plan_b, tensors=[pair.b for pair in pairs])
    return Pairing(pairs, unpaired, None, plan_b)


def _absent_reason(named: NamedTensor, graph_b: _Graph, b_by_name: dict, by_tensor: set) -> str:
    node_name = named.candidate.node_name
    same_node = next((node for _, node in graph_b.producer.values() if node_name and node.name == node_name), None)
    if same_node is not None:
        written = ", ".join(output for output in same_node.output if output)
        return (
            f"fused away in B: B's node {node_name} ({same_node.op_type}) writes {written} instead of "
            f"{named.candidate.tensor} (an activation folded into it)"
        )
    other = b_by_name.get(named.name)
    if other is not None and other.candidate.tensor in by_tensor:
        return (
            f"fused away in B: B's layer {named.name} gives {other.candidate.tensor}, which is paired by its "
            "tensor name with another of A's tensors"
        )
    return f"absent from B: no tensor {named.candidate.tensor} and no layer named {named.name} (fused away or renamed)"
