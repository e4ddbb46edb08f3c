"""Module calls to names, for both exporters of ``torch.onnx.export`` (torchscript.py and dynamo.py say how
each places a node in the module calls it ran in, outermost first).

A tensor takes a module's bare name only when it is that call's output: made
by a node of the call (sub-modules included) and used outside it, or a graph
output. When it leaves several nested calls (``bn`` and its child ``bn.act``),
the innermost module names it and the others are kept in ``also_output_of``.
Any other tensor of a call is ``<call>/<Op>`` (``layer_output`` false); a node
in no module (the top-level ``forward``'s own ops) keeps its node name. Calls
are named by ``call_name``: ``layer1.0.relu``, ``layer1.0.relu#2``, ``#3``...
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

import onnx

from ...contract import call_name, split_call_name
from ..expose import Candidate
from .claim import Claim
from .fallback import NAMED_BY as NO_MODULE  # a node in no module keeps its node name

__all__ = ["call_name", "split_call_name", "name_calls", "leaves", "props", "CALL_SUFFIX", "Exporter"]

# how both exporters tell a later call (or a second module of one name) apart: ``relu_1`` after ``relu``
CALL_SUFFIX = re.compile(r"^(.+)_(\d+)$")


class Exporter(Protocol):
    """What name_calls asks of an exporter module about its nodes."""

    NAMED_BY: str

    def recorded(self, node: onnx.NodeProto) -> bool: ...  # False: a node the exporter left no record on

    def fused_from(self, node: onnx.NodeProto) -> str | None: ...  # a fused Conv's own module path

    def folded(self, model: onnx.ModelProto, node: onnx.NodeProto) -> bool: ...

    def classes(self, node: onnx.NodeProto) -> list[str]: ...


def props(node: onnx.NodeProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in node.metadata_props}


def leaves(tensor: str, inside: Callable[[int], bool], consumers: dict[str, list[int]], graph: onnx.GraphProto,
           recorded: list[bool], outputs: set[str]) -> bool:
    """Whether ``tensor`` is used where ``inside(node)`` is false or is a graph output. A node with no record
    (the optimizer's: a Split made of split_with_sizes and getitem) is seen through to its own users."""
    todo, done = [tensor], set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        if name in outputs:
            return True
        for user in consumers.get(name, []):
            if not recorded[user]:
                todo.extend(graph.node[user].output)
            elif not inside(user):
                return True
    return False


def name_calls(model: onnx.ModelProto, candidates: list[Candidate], calls: list[list[tuple[str, int]]],
               exporter: Exporter) -> dict[str, Claim]:
    """A claim for every candidate, from ``calls``: per node, the module calls it ran in, outermost first, as
    ``(path, call)`` with ``call`` counted from 1."""
    graph = model.graph
    consumers: dict[str, list[int]] = defaultdict(list)
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers[name].append(index)
    graph_outputs = {output.name for output in graph.output}
    initializers = {tensor.name for tensor in graph.initializer}
    # the TorchScript exporter keeps one copy of equal constants (fresh BatchNorms fold to equal biases) and
    # feeds the other Convs through an Identity of it
    copied = {node.output[0]: node.input[0] for node in graph.node
              if node.op_type == "Identity" and node.input and node.input[0] in initializers}
    member = [set(node_calls) for node_calls in calls]
    recorded = [exporter.recorded(node) for node in graph.node]
    fused_from = {index: origin for index, node in enumerate(graph.node)
                  if (origin := exporter.fused_from(node)) is not None}

    def inside(call: tuple[str, int], user: int) -> bool:
        origin = fused_from.get(user)
        return call in member[user] or (origin is not None and f"{origin}.".startswith(f"{call[0]}."))

    claims = {}
    for candidate in candidates:
        node = graph.node[candidate.node_index]
        folded = (
            node.op_type == "Conv" and len(node.input) >= 2 and exporter.folded(model, node)
            and all(copied.get(name, name) in initializers for name in node.input[1:3])
        )
        chain = calls[candidate.node_index]
        if not chain:
            raw = node.name or candidate.tensor
            claims[candidate.tensor] = Claim(raw, None, NO_MODULE, raw.strip("/") or raw, folded=folded)
            continue
        left = [
            call for call in chain
            if leaves(candidate.tensor, lambda user, call=call: inside(call, user), consumers, graph, recorded,
                      graph_outputs)
        ]
        path, number = chain[-1]
        if left and left[-1] == chain[-1]:
            classes = exporter.classes(node)
            class_name = classes[len(chain) - 1] if len(classes) > len(chain) else None
            also = tuple(call_name(*call) for call in reversed(left[:-1]))
            claims[candidate.tensor] = Claim(path, True, exporter.NAMED_BY, call_name(path, number), class_name,
                                             folded, also)
        else:
            also = tuple(call_name(*call) for call in reversed(left))
            claims[candidate.tensor] = Claim(path, False, exporter.NAMED_BY,
                                             f"{call_name(path, number)}/{candidate.op}", folded=folded, also=also)
    return claims
