"""Linear-time replacements for the steps of tf2onnx that are quadratic in the number of layers.

fmonnx makes every Keras layer a graph output, and with L layers three
steps of tf2onnx's conversion took time proportional to L squared
(DenseNet121, 426 layers: 148 s; NASNetLarge, 1,041 layers: over 600 s):

``Graph.extract_sub_graph_nodes`` (behind ``delete_unused_nodes``, called
after every optimizer pass) walked back from each graph output separately::

    Before:  for each output o: walk(o)             O(outputs x nodes)
    After:   walk(all outputs), one visited set     O(nodes + edges)

``TransposeOptimizer.pre_optimize_action`` folds each Reshape of constants
(Keras 3 reshapes every bias) into a constant, and re-sorted the whole
graph, and scanned every node, after each one::

    Before:  for each constant Reshape: fold, scan all nodes, sort graph
    After:   for each constant Reshape: fold; then sort graph once

``TransposeOptimizer._optimize_at_current_graph_level`` restarted its scan
of all nodes after every Transpose it moved::

    Before:  repeat: scan nodes until one Transpose moves, restart
    After:   repeat: scan all nodes, moving every Transpose it can, until a scan moves none

The first two give the same graph as the originals. The third makes its
moves with the original's own handlers, in another order, and goes on while
any round moves something; the original stopped after its first round without
a move, leaving the Transposes it had just split into branches where they
were. So it removes more of them (ResNet50: 104 Transposes left instead of
223, MobileNetV2 104 instead of 195); the layer-by-layer check covers the result.
``linear_time`` installs them on tf2onnx's classes while its block runs, only on the
tf2onnx releases they were written for (``TF2ONNX_VERSIONS``, pyproject's bound) and when
every private method they replace or call is there with the expected parameters; otherwise
it logs one warning and tf2onnx converts unpatched.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import inspect
import logging
import re
from types import ModuleType
from typing import Iterator

import numpy as np

__all__ = [
    "TF2ONNX_VERSIONS",
    "reachable_nodes",
    "fold_constant_reshapes",
    "move_transposes",
    "linear_time",
    "freeing_optimizers",
    "unpatchable",
]

logger = logging.getLogger(__name__)

# The tf2onnx releases the patches were written for, as (lowest, first excluded) minor versions:
# 1.16.0 to 1.17.0 have the same code in every method below. pyproject's [keras] bound is tested equal.
TF2ONNX_VERSIONS = ((1, 16), (1, 18))

# The private tf2onnx functions the patches replace or call, as (module path, class or "", name,
# parameter names). A release that renames one (say, fixes "tranpose") must not reach the patches.
_TRANSPOSE = "tf2onnx.optimizer.transpose_optimizer"
_PRIVATE_API = [
    (
        "tf2onnx.graph",
        "Graph",
        "extract_sub_graph_nodes",
        ("self", "outputs_name", "input_checker", "remove_unused_inputs"),
    ),
    (_TRANSPOSE, "TransposeOptimizer", "pre_optimize_action", ("self",)),
    (_TRANSPOSE, "TransposeOptimizer", "_optimize_at_current_graph_level", ("self", "graph")),
    (_TRANSPOSE, "TransposeOptimizer", "_handle_nhwc_tranpose", ("self", "trans")),
    (_TRANSPOSE, "TransposeOptimizer", "_remove_useless_tranpose", ("self", "trans")),
    (_TRANSPOSE, "TransposeOptimizer", "merge_duplicated_transposes", ("self",)),
    (_TRANSPOSE, "TransposeOptimizer", "post_optimize_action", ("self",)),
    (_TRANSPOSE, "", "is_transpose", ("transpose_node",)),
    (_TRANSPOSE, "", "is_useless_transpose", ("transpose_node",)),
]


def reachable_nodes(graph, outputs_name, input_checker=None, remove_unused_inputs=True) -> list:
    """The nodes of tf2onnx ``graph`` that the tensors ``outputs_name`` depend on (same contract as
    ``Graph.extract_sub_graph_nodes``: graph inputs are kept unless ``remove_unused_inputs``; nodes
    that ``input_checker`` rejects are not entered)."""
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


def fold_constant_reshapes(optimizer) -> None:
    """``TransposeOptimizer.pre_optimize_action`` with one topological sort instead of one per Reshape.

    A Reshape of a constant by a constant shape becomes a constant with the
    Reshape's output name, so its consumers need no rewiring.
    """
    graph = optimizer._g
    optimizer._output_names = [graph.get_node_by_output(out).name for out in graph.outputs]
    reshapes = [
        node
        for node in graph.get_nodes()
        if node.type == "Reshape" and node.inputs[0].is_const() and node.inputs[1].is_const()
    ]
    for reshape in reshapes:
        value = reshape.inputs[0].get_tensor_value(as_list=False)
        shape = reshape.inputs[1].get_tensor_value(as_list=True)
        # A 0 in an ONNX Reshape's shape keeps that axis's size.
        shape = [value.shape[i] if size == 0 else size for i, size in enumerate(shape)]
        name = reshape.output[0]
        graph.remove_node(reshape.name)
        graph.make_const(name, np.reshape(value, shape))
    if reshapes:
        graph.topological_sort(graph.get_nodes())


def move_transposes(optimizer, graph):
    """``TransposeOptimizer._optimize_at_current_graph_level``, scanning all nodes per round, not per move."""
    from tf2onnx.optimizer.transpose_optimizer import is_transpose, is_useless_transpose

    optimizer._g = graph
    optimizer.pre_optimize_action()
    moves, changed = 0, True
    while changed:
        changed = False
        optimizer._force_stop = {}
        for node in list(optimizer.nodes):
            if graph.get_node_by_name(node.name) is not node:
                continue  # removed or replaced by an earlier move in this round
            if is_transpose(node) and optimizer._handle_nhwc_tranpose(node):
                changed = optimizer.graph_been_opt = True
                moves += 1
                continue
            if graph.get_node_by_name(node.name) is node and is_useless_transpose(node):
                optimizer._remove_useless_tranpose(node)
                changed = True
                moves += 1
        if optimizer._force_stop.get("stop") == 1:
            break
    logger.debug("moved or removed %d transposes", moves)
    optimizer.merge_duplicated_transposes()
    optimizer.post_optimize_action()
    return optimizer._g


@contextlib.contextmanager
def linear_time(tf2onnx: ModuleType, free_copies: bool = False) -> Iterator[None]:
    """Install the linear-time replacements on tf2onnx's classes while the block runs, and with
    ``free_copies`` its optimizers that free the graph copies (``freeing_optimizers``)."""
    problem = unpatchable(tf2onnx)
    if problem is not None:
        # All or nothing, the freeing optimizers included: they too replace a private table.
        logger.warning("%s; converting with stock tf2onnx, which is slower on models with hundreds of layers", problem)
        yield
        return
    from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer

    replacements = [
        (tf2onnx.graph.Graph, "extract_sub_graph_nodes", reachable_nodes),
        (TransposeOptimizer, "pre_optimize_action", fold_constant_reshapes),
        (TransposeOptimizer, "_optimize_at_current_graph_level", move_transposes),
    ]
    if free_copies:  # a full collection costs ~0.2 s, 50 times a conversion: only where the copies are large
        replacements.append((tf2onnx.optimizer, "_optimizers", freeing_optimizers(tf2onnx)))
    originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in replacements]
    try:
        for owner, name, function in replacements:
            setattr(owner, name, function)
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def unpatchable(tf2onnx: ModuleType) -> str | None:
    """Why the patches must not be installed on this ``tf2onnx`` (a sentence), or None when they fit."""
    version = getattr(tf2onnx, "__version__", "")
    match = re.match(r"(\d+)\.(\d+)", version)
    (low_major, low_minor), (high_major, high_minor) = TF2ONNX_VERSIONS
    written_for = f"{low_major}.{low_minor}-{high_major}.{high_minor - 1}"
    if match is None or not TF2ONNX_VERSIONS[0] <= (int(match[1]), int(match[2])) < TF2ONNX_VERSIONS[1]:
        return (
            f"tf2onnx {version or '(no version)'} is not the version fmonnx's linear-time patches were written "
            f"for ({written_for})"
        )
    for module_name, class_name, name, parameters in _PRIVATE_API:
        where = f"{class_name}.{name}" if class_name else name
        try:
            owner = importlib.import_module(module_name)
            owner = getattr(owner, class_name) if class_name else owner
            # The class's own dict, as linear_time reads and restores it, not an inherited method.
            found = tuple(inspect.signature(vars(owner)[name]).parameters)
        except (ImportError, AttributeError, KeyError, TypeError, ValueError):
            found = None
        if found != parameters:
            shown = "no " + where if found is None else f"{where}({', '.join(found)})"
            expected = f"{where}({', '.join(parameters)})"
            return f"tf2onnx {version} has {shown}, which fmonnx's linear-time patches replace or call as {expected}"
    optimizers = getattr(getattr(tf2onnx, "optimizer", None), "_optimizers", None)
    if not isinstance(optimizers, dict):
        return f"tf2onnx {version} has no optimizer._optimizers table, which fmonnx's linear-time patches replace"
    return None


def freeing_optimizers(tf2onnx: ModuleType) -> dict:
    """tf2onnx's optimizers, each collecting garbage before it runs.

    tf2onnx deep-copies the whole graph, weights included, before every optimizer so it can
    fall back when one fails; the discarded copies hold reference cycles, which only the cyclic
    collector frees, and large arrays barely trigger it. VGG16 (138 M weights) reached 24 GB and
    was killed; collecting before each optimizer keeps about two copies alive.
    """

    def collecting(factory):
        def make():
            optimizer = factory()
            run = optimizer.optimize

            def optimize(graph, iteration):
                gc.collect()
                return run(graph, iteration)

            optimizer.optimize = optimize
            return optimizer

        return make

    optimizers = tf2onnx.optimizer._optimizers
    return type(optimizers)((name, collecting(factory)) for name, factory in optimizers.items())
