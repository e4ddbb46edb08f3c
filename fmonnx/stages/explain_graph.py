"""The model a gradient explanation runs: the planned layers exposed, and the backward pass of
one score with respect to them, appended to the model file as one suffix (see expose.py).

Inputs added: ``SEED`` (the target's seed, shaped like the scored tensor) and, for a
classifier, ``USE_TOP1`` (a float scalar: 1 makes the seed the arg max's one-hot in the
graph, so the default target needs one run). Outputs added: every layer tensor, its
gradient, the score and the scored tensor.

A token layer (tokens.py draws a (N, k+L, C) sequence as an (N, h, w, C) map) is
differentiated at its sequence, and its gradient drawn by a copy of the same map nodes:
the map only selects tokens, so the map of the gradient is the gradient of the map.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx
from onnx import helper

from .gradients.backward import build_backward, default_opset
from .gradients.emit import Emitter
from .score import score_tensor, top1_seed
from .shapes import TensorType, infer_types
from .tokens import ADDED_NODE_PREFIX, MAP_SUFFIX, added_nodes

__all__ = [
    "ExplainGraph", "build_explain_graph", "build_forward_graph", "score_depends_on", "weighted_ancestors", "SEED",
    "USE_TOP1",
]

log = logging.getLogger(__name__)

SEED = "fmonnx_grad/seed"
USE_TOP1 = "fmonnx_grad/use_top1"


@dataclass
class ExplainGraph:
    suffix: bytes
    output: str  # the model output the target names
    scored: str  # the tensor the score is read from (the output, or a final Softmax's input)
    before_softmax: bool
    score: str
    gradients: dict[str, str]  # layer tensor (as planned) -> its gradient's tensor
    unreached: frozenset[str]  # layer tensors the score does not depend on
    scored_type: TensorType | None
    top1: bool  # whether USE_TOP1 is an input
    seeded: bool = True  # whether SEED is an input (False: a forward-only graph, the score computed outside)


def _token_source(model: onnx.ModelProto, tensor: str) -> str | None:
    """The token sequence a planned map tensor draws, or None for an ordinary tensor."""
    if not tensor.endswith(MAP_SUFFIX):
        return None
    if not any(node.name.startswith(ADDED_NODE_PREFIX) and tensor in node.output for node in model.graph.node):
        return None
    return tensor[: -len(MAP_SUFFIX)]


def _mapped_gradient(model: onnx.ModelProto, tokens: str, gradient: str) -> tuple[list[onnx.NodeProto], str]:
    """Copies of the nodes that draw ``tokens`` as a map, drawing ``gradient`` instead."""
    old, new = tokens + MAP_SUFFIX, gradient + MAP_SUFFIX

    def renamed(name: str) -> str:
        if name == tokens:
            return gradient
        return new + name[len(old):] if name.startswith(old) else name

    nodes = []
    for node in model.graph.node:
        if node.name.startswith(ADDED_NODE_PREFIX + old + "/") or (
            node.name.startswith(ADDED_NODE_PREFIX) and old in node.output
        ):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = ADDED_NODE_PREFIX + renamed(node.name[len(ADDED_NODE_PREFIX):])
            copy.input[:] = [renamed(name) for name in node.input]
            copy.output[:] = [renamed(name) for name in node.output]
            for attribute in copy.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.name.startswith(old):
                    attribute.t.name = renamed(attribute.t.name)
            nodes.append(copy)
    return nodes, new


_VIEW_OPS = frozenset({"Transpose", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def _ancestors(model: onnx.ModelProto, tensor: str) -> set[str]:
    ancestors = {tensor}
    for node in reversed(model.graph.node):
        if any(out in ancestors for out in node.output):
            ancestors.update(name for name in node.input if name)
    return ancestors


def _view_of(model: onnx.ModelProto, tensor: str, ancestors: set[str]) -> tuple[str, list[onnx.NodeProto]]:
    """``(source, nodes)``: a tensor off the score's path that only rearranges one on it (a Keras layer's
    NHWC output is a Transpose beside the converted graph's NCHW path), and the nodes from source to
    it; ``(tensor, [])`` otherwise. The score depends on such a view through its source, so its
    gradient is the same rearrangement of the source's gradient."""
    producer = {out: node for node in model.graph.node for out in node.output if out}
    chain: list[onnx.NodeProto] = []
    current = tensor
    while current not in ancestors:
        node = producer.get(current)
        if node is None or node.op_type not in _VIEW_OPS or node.output[0] != current:
            return tensor, []
        chain.append(node)
        current = node.input[0]
    return current, chain[::-1]


def _replayed(nodes: list[onnx.NodeProto], source: str, gradient: str) -> tuple[list[onnx.NodeProto], str]:
    """Copies of ``nodes`` (a chain that starts at ``source``) applied to ``gradient`` instead."""
    names = {source: gradient}
    copies = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{gradient}/view/{node.name or node.output[0]}"
        copy.input[:] = [names.get(name, name) for name in node.input]
        for index, name in enumerate(node.output):
            names[name] = f"{gradient}/view/{name}"
            copy.output[index] = names[name]
        copies.append(copy)
    return copies, names[nodes[-1].output[0]]


def build_explain_graph(model: onnx.ModelProto, output: str, layers: list[str], with_top1: bool | None = None,
                        types: dict[str, TensorType] | None = None, extra_wrt: tuple[str, ...] = ()) -> ExplainGraph:
    """The suffix that turns ``model``'s file into the explain model for a score on ``output``.

    ``layers``: the planned tensors to expose and differentiate; ``extra_wrt``: more tensors
    (the graph input, for saliency). ``with_top1`` None: when the scored tensor has rank 2.
    """
    types = types if types is not None else infer_types(model)
    scored, before_softmax = score_tensor(model, output)
    scored_type = types.get(scored)
    if with_top1 is None:
        with_top1 = scored_type is not None and scored_type.rank == 2
    emit = Emitter(default_opset(model))
    seed = SEED
    if with_top1:
        seed = emit.op("Add", [SEED, top1_seed(emit, scored, USE_TOP1)], hint="seed")
    sources = {layer: _token_source(model, layer) or layer for layer in layers}
    ancestors = _ancestors(model, scored)
    views = {layer: _view_of(model, source, ancestors) for layer, source in sources.items()}
    wanted = [*dict.fromkeys(view for view, _ in views.values()), *extra_wrt]
    backward = build_backward(model, types, scored, seed, wanted, emit)
    nodes = [*added_nodes(model), *backward.nodes]
    gradients: dict[str, str] = {}
    for layer, source in sources.items():
        view, chain = views[layer]
        gradient = backward.gradients[view]
        if chain:
            replayed, gradient = _replayed(chain, view, gradient)
            nodes += replayed
        if source == layer:
            gradients[layer] = gradient
        else:
            mapped, name = _mapped_gradient(model, source, gradient)
            nodes += mapped
            gradients[layer] = name
    for tensor in extra_wrt:
        gradients[tensor] = backward.gradients[tensor]
    unreached = frozenset(layer for layer in sources if views[layer][0] in backward.unreached)
    unreached |= frozenset(t for t in extra_wrt if t in backward.unreached)

    suffix = onnx.ModelProto()
    suffix.graph.node.extend(nodes)
    shape = None if scored_type is None or scored_type.shape is None else [
        dim if isinstance(dim, int) else None for dim in scored_type.shape]
    suffix.graph.input.append(helper.make_tensor_value_info(SEED, onnx.TensorProto.FLOAT, shape))
    if with_top1:
        suffix.graph.input.append(helper.make_tensor_value_info(USE_TOP1, onnx.TensorProto.FLOAT, []))
    present = {value.name for value in model.graph.output}
    for name in [*layers, *gradients.values(), backward.score, scored]:
        if name not in present:
            elem = types[name].elem_type if name in types and types[name].elem_type else onnx.TensorProto.FLOAT
            suffix.graph.output.append(helper.make_tensor_value_info(name, elem, None))
            present.add(name)
    log.debug("explain graph: %d nodes appended", len(nodes))
    return ExplainGraph(suffix.SerializeToString(), output, scored, before_softmax, backward.score, gradients,
                        unreached, scored_type, with_top1)


def score_depends_on(model: onnx.ModelProto, scored: str, tensors: list[str]) -> set[str]:
    """The ``tensors`` that ``scored`` is computed from (through any op), token maps by their sequence."""
    ancestors = _ancestors(model, scored)
    return {tensor for tensor in tensors
            if _view_of(model, _token_source(model, tensor) or tensor, ancestors)[0] in ancestors}


_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "QLinearConv", "ConvInteger"})


def weighted_ancestors(model: onnx.ModelProto, scored: str) -> set[str]:
    """The tensors from which ``scored`` is reached through at least one weighted op (Conv, Gemm, MatMul...),
    views of them (a Keras layer's Transpose) and token maps counted by what they show."""
    plain, weighted = {scored}, set()
    for node in reversed(model.graph.node):
        outputs = [out for out in node.output if out]
        if any(out in weighted for out in outputs) or (node.op_type in _WEIGHTED_OPS and
                                                        any(out in plain for out in outputs)):
            weighted.update(name for name in node.input if name)
        elif any(out in plain for out in outputs):
            plain.update(name for name in node.input if name)
    found = set(weighted)
    for node in model.graph.node:
        if node.op_type in _VIEW_OPS and node.input and node.input[0] in found:
            found.update(node.output)
    producers = {out: node for node in model.graph.node for out in node.output}
    for out, node in producers.items():
        if node.name.startswith(ADDED_NODE_PREFIX) and out.endswith(MAP_SUFFIX) and out[: -len(MAP_SUFFIX)] in found:
            found.add(out)
    return found


def build_forward_graph(model: onnx.ModelProto, output: str, layers: list[str],
                        types: dict[str, TensorType] | None = None) -> ExplainGraph:
    """The suffix of a forward-only explain model (the gradient-free methods): the layers and the
    scored tensor exposed, no backward pass, so ops without a gradient rule do not matter."""
    types = types if types is not None else infer_types(model)
    scored, before_softmax = score_tensor(model, output)
    suffix = onnx.ModelProto()
    suffix.graph.node.extend(added_nodes(model))
    present = {value.name for value in model.graph.output}
    for name in [*layers, scored]:
        if name not in present:
            elem = types[name].elem_type if name in types and types[name].elem_type else onnx.TensorProto.FLOAT
            suffix.graph.output.append(helper.make_tensor_value_info(name, elem, None))
            present.add(name)
    unreached = frozenset(set(layers) - score_depends_on(model, scored, layers))
    return ExplainGraph(suffix.SerializeToString(), output, scored, before_softmax, "", {}, unreached,
                        types.get(scored), False, seeded=False)
