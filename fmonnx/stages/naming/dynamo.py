"""PyTorch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``): name scopes recorded on each node.

``pkg.torch.onnx.name_scopes`` on each node,
``['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']``, module paths then
the FX node's name. Nothing records which call a node belongs to, so a call
is a run of consecutive nodes in one scope (the graph is in execution
order). A run restarts where a node begins the call again (the call's first
op, same inner modules) fed a tensor of the call used outside the module:
SPPF's ``m(m(m(x)))`` with every pool concatenated is ``m``, ``m#2``, ``m#3``.
A scope ``x_<n>`` after ``x``, of its class and with no parameter under it,
is call n+1 of ``x``. A call the optimizer removed entirely (``relu(relu(x))``)
shifts the numbers of later calls, and two calls with no node between them
merge when the first one's output is used only by the second (heuristic).
Nodes the optimizer made carry no record (a Split for ``chunk``); a tensor
used by one is used where that node's outputs are. Naming from the calls: calls.py.

The exporter's optimizer folds an eval-mode BatchNorm into the Conv before it
and gives the fused Conv the BatchNorm's scopes, so it is named after the
BatchNorm (its values are the BatchNorm's output); the Conv's weight keeps its
parameter name (``layer1.0.conv1.weight``), from which the fused node still
counts as inside the Conv's own modules.
"""

from __future__ import annotations

import ast
from collections import defaultdict

import onnx

from ..expose import Candidate
from ..metadata import LayerRecord
from .calls import CALL_SUFFIX, leaves, name_calls, props
from .claim import Claim

__all__ = ["NAMED_BY", "SCOPES_KEY", "applies", "name", "node_layer", "calls"]

NAMED_BY = "dynamo name scopes"
# node metadata_props keys the dynamo exporter writes (torch.onnx's "pkg.torch.onnx.*") and its
# onnxscript rewriter writes (the rule that made a node)
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
CLASSES_KEY = "pkg.torch.onnx.class_hierarchy"
FX_KEYS = ("pkg.torch.onnx.fx_node", CLASSES_KEY)
RULES_KEY = "pkg.onnxscript.rewriter.rule_name"
FUSE_RULE = "FuseBatchNormIntoConv"  # the onnxscript rule that folds a BatchNorm into the Conv before it
BATCHNORM_CLASS = "batch_norm"  # in the class hierarchy of a node still named after its BatchNorm
WEIGHT_SUFFIX = ".weight"  # a parameter's name: module path, then ".weight"


def applies(model: onnx.ModelProto, records: list[LayerRecord]) -> bool:
    return any(prop.key == SCOPES_KEY for node in model.graph.node for prop in node.metadata_props)


def name(model: onnx.ModelProto, candidates: list[Candidate], records: list[LayerRecord]) -> dict[str, Claim]:
    return name_calls(model, candidates, calls(model), _Hooks())


def node_layer(node: onnx.NodeProto, tensor: str, producer: str) -> str | None:
    """One node alone: its module's innermost path, without its call number."""
    paths = _paths(props(node))
    return paths[-1] if paths else None


class _Hooks:
    NAMED_BY = NAMED_BY

    def recorded(self, node: onnx.NodeProto) -> bool:
        # the optimizer's own nodes carry no record (a Split for split_with_sizes): seen through, not outside
        return SCOPES_KEY in props(node)

    def fused_from(self, node: onnx.NodeProto) -> str | None:
        # a Conv with a BatchNorm fused in carries the BatchNorm's scopes; its weight keeps the Conv's
        # parameter name (``layer1.0.conv1.weight``), so the Conv's own modules still count as using its input
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1].endswith(WEIGHT_SUFFIX) \
                and FUSE_RULE in props(node).get(RULES_KEY, ""):
            return node.input[1].rsplit(".", 1)[0]
        return None

    def folded(self, model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
        # the fused Conv carries the BatchNorm's records (its name too) unless the exporter changes
        node_props = props(node)
        return FUSE_RULE in node_props.get(RULES_KEY, "") and BATCHNORM_CLASS not in node_props.get(CLASSES_KEY, "")

    def classes(self, node: onnx.NodeProto) -> list[str]:
        return _class_names(props(node))


def _paths(node_props: dict[str, str]) -> list[str] | None:
    """Module paths, outermost first, from the dynamo exporter's name scopes, e.g.
    ``['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']`` is
    ``['layer1', 'layer1.0', 'layer1.0.relu']``: the last entry is the FX node's
    own name (when the exporter's other node records are there to say so),
    and each module path extends the one before."""
    if SCOPES_KEY not in node_props:
        return None
    try:
        scopes = [str(scope) for scope in ast.literal_eval(node_props[SCOPES_KEY]) if scope]
    except (ValueError, SyntaxError, TypeError):
        return None
    if scopes and any(key in node_props for key in FX_KEYS):
        scopes = scopes[:-1]
    paths: list[str] = []
    for scope in scopes:
        if paths and not scope.startswith(paths[-1] + "."):
            break
        paths.append(scope)
    return paths


def _class_names(node_props: dict[str, str]) -> list[str]:
    """The module classes of the dynamo exporter's class hierarchy, short names, root dropped."""
    try:
        classes = [str(name) for name in ast.literal_eval(node_props.get(CLASSES_KEY, "[]"))]
    except (ValueError, SyntaxError, TypeError):
        return []
    return [name.rsplit(".", 1)[-1] for name in classes[1:]]


def _owner_paths(graph: onnx.GraphProto) -> frozenset[str]:
    """Every module path a named parameter lies under: ``a.b.weight`` gives ``a`` and ``a.b``."""
    owners = set()
    for tensor in graph.initializer:
        parts = tensor.name.split(".")
        owners.update(".".join(parts[:end]) for end in range(1, len(parts)))
    return frozenset(owners)


def _levels(graph: onnx.GraphProto, node_props: list[dict[str, str]]) -> list[list[tuple[str, str]] | None]:
    """Per node, ``(scope as written, module path)`` outermost first (None: no record). A scope ``x_<n>`` is a
    later call of ``x`` when ``x`` is a module met before it and ``x_<n>`` is no module of its own (no parameter
    under it, and the same class as ``x``); its children are renamed with it."""
    owners = _owner_paths(graph)
    seen: dict[str, str | None] = {}  # a module path met so far -> its class
    levels: list[list[tuple[str, str]] | None] = []
    for one in node_props:
        paths = _paths(one)
        if paths is None:
            levels.append(None)
            continue
        classes = _class_names(one)
        node_levels: list[tuple[str, str]] = []
        for index, written in enumerate(paths):
            path = written
            if node_levels and written.startswith(node_levels[-1][0] + "."):
                path = node_levels[-1][1] + written[len(node_levels[-1][0]):]
            kind = classes[index] if index < len(classes) else None
            match = CALL_SUFFIX.match(path)
            if match and match.group(1) in seen and path not in owners and seen[match.group(1)] == kind:
                path = match.group(1)
            seen.setdefault(path, kind)
            node_levels.append((written, path))
        levels.append(node_levels)
    return levels


def calls(model: onnx.ModelProto) -> list[list[tuple[str, int]]]:
    """Per node, the module calls it ran in, outermost first, as ``(path, call)``: a run of nodes in one scope
    is a call, and a run restarts (a repeated call with no node between, SPPF's ``m(m(m(x)))``) at a node that
    begins the call again: the call's first op with the same inner modules, fed a tensor of the call that is
    used outside the module (the earlier call's output)."""
    graph = model.graph
    levels = _levels(graph, [props(node) for node in graph.node])
    recorded = [node_levels is not None for node_levels in levels]
    consumers: dict[str, list[int]] = defaultdict(list)
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers[name].append(index)
    outputs = {output.name for output in graph.output}

    def written(index: int) -> tuple[str, ...]:
        return tuple(scope for scope, _ in levels[index] or [])

    def restarts(index: int, level: int, first: int, made: set[str]) -> bool:
        node, start = graph.node[index], graph.node[first]
        if node.op_type != start.op_type or written(index)[level + 1:] != written(first)[level + 1:]:
            return False
        scope = written(first)[: level + 1]
        return any(
            name in made and leaves(name, lambda user: written(user)[: level + 1] == scope,
                                    consumers, graph, recorded, outputs)
            for name in node.input
        )

    result: list[list[tuple[str, int]]] = []
    counts: dict[str, int] = defaultdict(int)
    current: list[tuple[str, int]] = []
    scopes: list[str] = []  # the open calls' scopes as written
    firsts: list[int] = []  # the open calls' first nodes
    made: list[set[str]] = []  # the tensors each open call made so far
    for index, node_levels in enumerate(levels):
        if node_levels is None:  # no record: in no module, and no break in the runs around it
            result.append([])
            continue
        kept = 0
        while kept < min(len(scopes), len(node_levels)) and scopes[kept] == node_levels[kept][0]:
            kept += 1
        kept = next((level for level in range(kept) if restarts(index, level, firsts[level], made[level])), kept)
        del current[kept:], scopes[kept:], firsts[kept:], made[kept:]
        for scope, path in node_levels[kept:]:
            counts[path] += 1
            current.append((path, counts[path]))
            scopes.append(scope)
            firsts.append(index)
            made.append(set())
        for tensors in made:
            tensors.update(graph.node[index].output)
        result.append(list(current))
    return result
