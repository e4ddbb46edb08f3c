"""Linear-time pruning for tf2onnx graphs with many outputs.

tf2onnx's ``Graph.extract_sub_graph_nodes`` (behind ``delete_unused_nodes``,
which every optimizer pass and the conversion itself call) walks back from
each graph output separately and unions the results. fmonnx makes every
layer an output, so with L layers that is L walks over up to L layers each:
conversion time grew with the square of the layer count (DenseNet121: 72 of
148 s in this one function).

``linear_pruning`` replaces the method, while the block runs, with one walk
from all outputs at once. The set of nodes it returns is the same: the union
of the nodes reachable backwards from each output, skipping nodes that
``input_checker`` rejects::

    Before:  for each output o: walk(o)            O(outputs x nodes)
    After:   walk(all outputs), one visited set    O(nodes + edges)
"""

from __future__ import annotations

import contextlib
import logging
from types import ModuleType
from typing import Iterator

__all__ = ["reachable_nodes", "linear_pruning"]

logger = logging.getLogger(__name__)


def reachable_nodes(graph, outputs_name, input_checker=None, remove_unused_inputs=True) -> list:
    """The nodes of tf2onnx ``graph`` that the tensors ``outputs_name`` depend on (same contract as
    ``Graph.extract_sub_graph_nodes``: graph inputs are kept unless ``remove_unused_inputs``)."""
    wanted = list(outputs_name)
    if not remove_unused_inputs:
        wanted += [node.output[0] for node in graph.inputs]
    found: set = set()
    stack = []
    for output in wanted:
        node = graph.get_node_by_output(output, search_in_parent_graphs=False)
        if node is not None and node not in found and (input_checker is None or input_checker(node) is not False):
            found.add(node)
            stack.append(node)
    while stack:
        node = stack.pop()
        for name in list(node.input) + list(node.get_implicit_inputs()):
            source = graph.get_node_by_output(name, search_in_parent_graphs=False)
            if source is None or source in found:
                continue
            if input_checker is not None and input_checker(source) is False:
                continue
            found.add(source)
            stack.append(source)
    return list(found)


@contextlib.contextmanager
def linear_pruning(tf2onnx: ModuleType) -> Iterator[None]:
    """Make tf2onnx's ``Graph.extract_sub_graph_nodes`` one walk from all outputs while the block runs."""
    graph_class = tf2onnx.graph.Graph
    original = graph_class.__dict__["extract_sub_graph_nodes"]
    graph_class.extract_sub_graph_nodes = reachable_nodes
    try:
        yield
    finally:
        graph_class.extract_sub_graph_nodes = original
