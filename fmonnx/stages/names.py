"""Names users recognize for exposed tensors, read from how the model was made.

In order of trust:

1. ``metadata_props["fmonnx.layers"]``, written by ``fmonnx convert``: exact
   layer names per tensor (schema and checks: metadata.py).
2. PyTorch's ``torch.onnx.export`` (see "PyTorch" below).
3. tf2onnx names nodes ``<model>/<layer>/<op>``: ``model/conv2d/Conv2D`` is
   ``conv2d``, ``model/backbone/conv1/Conv2D`` is ``backbone/conv1``.
4. Otherwise the node name (or the tensor name when the node has none).

Names are made unique: when several tensors come from one layer (a Conv and
its fused Relu), the last keeps the layer's name (Transposes and other layout
plumbing aside) and the others get ``<layer>/<op>``.

PyTorch
-------
Each node is placed in the module calls it ran in, outermost first:

- TorchScript exporter (``dynamo=False``): the node name,
  ``/layer1/layer1.0/relu_1/Relu`` is ``layer1`` > ``layer1.0`` >
  ``layer1.0.relu``. The exporter tells repeated calls apart by a suffix on the
  innermost scope (``relu``, ``relu_1``, ``relu_2``); a scope ``x_<n>`` is read
  as a later call of ``x`` when ``x`` is a scope under the same parent, unless
  an initializer is named after a module ``x_<n>`` (``block.conv_1.weight``).
  A real ``relu_1`` beside ``relu`` with no named weight (an activation, or a
  Conv whose weights were folded) is read as a call (heuristic).
  A parent called twice is not suffixed (``/inner/conv``, ``/inner/conv_1``):
  its calls merge into one.
- dynamo exporter: ``pkg.torch.onnx.name_scopes`` on each node,
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
  used by one is used where that node's outputs are.

A tensor takes a module's bare name only when it is that call's output: made
by a node of the call (sub-modules included) and used outside it, or a graph
output. When it leaves several nested calls (``bn`` and its child ``bn.act``),
the innermost module names it and the others are kept in ``also_output_of``.
Any other tensor of a call is ``<call>/<Op>`` (``layer_output`` false); a node
in no module (the top-level ``forward``'s own ops) keeps its node name. Calls
are named by ``call_name``: ``layer1.0.relu``, ``layer1.0.relu#2``, ``#3``...

Both exporters fold an eval-mode BatchNorm into the Conv before it. The dynamo
exporter's optimizer gives the fused Conv the BatchNorm's scopes, so it is
named after the BatchNorm (its values are the BatchNorm's output); the Conv's
weight keeps its parameter name (``layer1.0.conv1.weight``), from which the
fused node still counts as inside the Conv's own modules. The TorchScript
exporter names the fused Conv after the Conv; its weight and bias become
constants named ``onnx::Conv_<n>`` instead of the parameters' names, and such a
tensor is marked ``folded_batchnorm`` (a Conv whose weight and bias were both
computed from parameters and constant-folded would be a false alarm).
"""

from __future__ import annotations

import ast
import logging
import re
from collections import defaultdict
from dataclasses import dataclass

import onnx

from .expose import Candidate
from .metadata import LAYERS_KEY, SOURCE_KEY, LayerRecord, read_layer_metadata

__all__ = [
    "NamedTensor",
    "read_layer_metadata",
    "source_layer_name",
    "name_tensors",
    "call_name",
    "split_call_name",
    "naming_notes",
    "LAYERS_KEY",  # defined in metadata.py, with their schema; the converters import them from here
    "SOURCE_KEY",
]

log = logging.getLogger(__name__)

_TF_WRAPPERS = ("StatefulPartitionedCall", "PartitionedCall")
# Layout plumbing a converter adds inside a layer; never the layer's own output.
_PLUMBING_OPS = frozenset({"Transpose", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze"})
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_CLASSES_KEY = "pkg.torch.onnx.class_hierarchy"
_FX_KEYS = ("pkg.torch.onnx.fx_node", _CLASSES_KEY)
_RULES_KEY = "pkg.onnxscript.rewriter.rule_name"
_CALL_SUFFIX = re.compile(r"^(.+)_(\d+)$")
_CALL_NAME = re.compile(r"^(.+)#(\d+)$")


@dataclass(frozen=True)
class NamedTensor:
    """A candidate with its display name, the framework layer it came from,
    ``layer_output`` (True/False when known, None when unknown), the layer's
    class when recorded (``Conv2D``), ``folded_batchnorm`` when its values may
    include a BatchNorm folded in by the exporter, and ``also_output_of``: the
    outer modules (calls) this tensor is also the output of."""

    candidate: Candidate
    name: str
    source_layer: str
    layer_output: bool | None
    source_class: str | None = None
    folded_batchnorm: bool = False
    also_output_of: tuple[str, ...] = ()


def call_name(path: str, call: int = 1) -> str:
    """The name of a module call: ``layer1.0.relu`` for the first call (``call=1``),
    ``layer1.0.relu#2`` for the second, ``#3`` for the third..."""
    return path if call == 1 else f"{path}#{call}"


def split_call_name(name: str) -> tuple[str, int]:
    """``call_name`` reversed: ``layer1.0.relu#2`` is ``("layer1.0.relu", 2)``."""
    match = _CALL_NAME.match(name)
    return (match.group(1), int(match.group(2))) if match else (name, 1)


def _props(node: onnx.NodeProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in node.metadata_props}


def _dynamo_paths(props: dict[str, str]) -> list[str] | None:
    """Module paths, outermost first, from the dynamo exporter's name scopes, e.g.
    ``['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']`` is
    ``['layer1', 'layer1.0', 'layer1.0.relu']``: the last entry is the FX node's
    own name (when the exporter's other node records are there to say so),
    and each module path extends the one before."""
    if _SCOPES_KEY not in props:
        return None
    try:
        scopes = [str(scope) for scope in ast.literal_eval(props[_SCOPES_KEY]) if scope]
    except (ValueError, SyntaxError, TypeError):
        return None
    if scopes and any(key in props for key in _FX_KEYS):
        scopes = scopes[:-1]
    paths: list[str] = []
    for scope in scopes:
        if paths and not scope.startswith(paths[-1] + "."):
            break
        paths.append(scope)
    return paths


def _script_scopes(node_name: str) -> list[str]:
    """The scopes of a TorchScript-exported node name, outermost first:
    ``/layer1/layer1.0/relu_1/Relu`` is ``['layer1', 'layer1.0', 'relu_1']``."""
    parts = [part for part in node_name.strip("/").split("/") if part]
    return parts[:-1]  # the last part is the op, e.g. Conv or Relu_1


def _enter(segments: list[str], scope: str) -> list[str]:
    """The path segments inside ``scope``: a Sequential's child repeats its parent
    (``layer1`` then ``layer1.0`` is ``layer1.0``), any other child adds a segment."""
    if segments and scope.startswith(segments[-1] + "."):
        return [*segments[:-1], scope]
    return [*segments, scope]


def _script_paths(
    scopes: list[str], known: set[tuple[tuple[str, ...], str]], owners: frozenset[str] = frozenset()
) -> list[str]:
    """Module paths, outermost first, for TorchScript ``scopes`` with call suffixes removed:
    ``relu_1`` is ``relu`` when ``known`` has a ``relu`` scope under the same parent, unless
    a module ``relu_1`` owns a named weight (``owners``)."""
    segments: list[str] = []
    paths: list[str] = []
    for index, scope in enumerate(scopes):
        match = _CALL_SUFFIX.match(scope)
        if match and (tuple(scopes[:index]), match.group(1)) in known:
            if ".".join(_enter(segments, scope)) not in owners:
                scope = match.group(1)
        segments = _enter(segments, scope)
        paths.append(".".join(segments))
    return paths


def _torch_module_path(node_name: str) -> str | None:
    scopes = _script_scopes(node_name)
    return _script_paths(scopes, set())[-1] if scopes else None


def _tf_layer_path(node_name: str) -> str | None:
    parts = [part for part in node_name.split("/") if part and part not in _TF_WRAPPERS]
    if len(parts) < 3:
        return parts[0] if len(parts) == 2 else None
    return "/".join(parts[1:-1])  # drop the model's own name and the op


def source_layer_name(node: onnx.NodeProto, tensor: str, producer: str) -> str:
    """The framework layer a node belongs to, by the conventions in the module docstring
    (one node alone: a module's innermost path, without its call number)."""
    paths = _dynamo_paths(_props(node))
    if paths:
        return paths[-1]
    name = node.name
    if name.startswith("/"):
        return _torch_module_path(name) or name.strip("/")
    if "/" in name and "torch" not in producer.lower():
        return _tf_layer_path(name) or name
    return name or tensor


@dataclass(frozen=True)
class _TorchName:
    name: str
    layer: str
    output: bool | None
    also: tuple[str, ...]
    folded: bool
    class_name: str | None


def _inner(torch_name: _TorchName, op: str) -> _TorchName:
    """``torch_name`` as a tensor inside its module (``<module>/<Op>``), not the module's output."""
    return _TorchName(f"{torch_name.layer}/{op}", torch_name.layer, False, (), torch_name.folded, None)


def _owner_paths(graph: onnx.GraphProto) -> frozenset[str]:
    """Every module path a named parameter lies under: ``a.b.weight`` gives ``a`` and ``a.b``."""
    owners = set()
    for tensor in graph.initializer:
        parts = tensor.name.split(".")
        owners.update(".".join(parts[:end]) for end in range(1, len(parts)))
    return frozenset(owners)


def _dynamo_levels(graph: onnx.GraphProto, props: list[dict[str, str]]) -> list[list[tuple[str, str]] | None]:
    """Per node, ``(scope as written, module path)`` outermost first (None: no record). A scope ``x_<n>`` is a
    later call of ``x`` when ``x`` is a module met before it and ``x_<n>`` is no module of its own (no parameter
    under it, and the same class as ``x``); its children are renamed with it."""
    owners = _owner_paths(graph)
    seen: dict[str, str | None] = {}  # a module path met so far -> its class
    levels: list[list[tuple[str, str]] | None] = []
    for node_props in props:
        paths = _dynamo_paths(node_props)
        if paths is None:
            levels.append(None)
            continue
        classes = _class_names(node_props)
        node_levels: list[tuple[str, str]] = []
        for index, written in enumerate(paths):
            path = written
            if node_levels and written.startswith(node_levels[-1][0] + "."):
                path = node_levels[-1][1] + written[len(node_levels[-1][0]):]
            kind = classes[index] if index < len(classes) else None
            match = _CALL_SUFFIX.match(path)
            if match and match.group(1) in seen and path not in owners and seen[match.group(1)] == kind:
                path = match.group(1)
            seen.setdefault(path, kind)
            node_levels.append((written, path))
        levels.append(node_levels)
    return levels


def _torch_calls(model: onnx.ModelProto) -> list[list[tuple[str, int]]] | None:
    """For each node, the module calls it ran in, outermost first, as ``(path, call)``
    with ``call`` counted from 1; None when the model was not made by torch.onnx.export."""
    graph = model.graph
    props = [_props(node) for node in graph.node]
    if any(_SCOPES_KEY in p for p in props):
        return _dynamo_calls(graph, props)
    if not any(node.name.startswith("/") for node in graph.node):
        return None
    scopes = [_script_scopes(node.name) if node.name.startswith("/") else [] for node in graph.node]
    known = {(tuple(chain[:index]), scope) for chain in scopes for index, scope in enumerate(chain)}
    owners = frozenset(tensor.name.rsplit(".", 1)[0] for tensor in graph.initializer if "." in tensor.name)
    numbers: dict[tuple[str, ...], int] = {}  # a scope as written (suffix included) -> its call number
    counts = defaultdict(int)
    calls = []
    for chain in scopes:
        node_calls = []
        for index, path in enumerate(_script_paths(chain, known, owners)):
            key = tuple(chain[: index + 1])
            if key not in numbers:
                counts[path] += 1
                numbers[key] = counts[path]
            node_calls.append((path, numbers[key]))
        calls.append(node_calls)
    return calls


def _leaves(tensor: str, inside, consumers: dict[str, list[int]], graph: onnx.GraphProto,
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


def _dynamo_calls(graph: onnx.GraphProto, props: list[dict[str, str]]) -> list[list[tuple[str, int]]]:
    """Dynamo calls: a run of nodes in one scope is a call, and a run restarts (a repeated call with no node
    between, SPPF's ``m(m(m(x)))``) at a node that begins the call again: the call's first op with the same
    inner modules, fed a tensor of the call that is used outside the module (the earlier call's output)."""
    levels = _dynamo_levels(graph, props)
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
            name in made and _leaves(name, lambda user: written(user)[: level + 1] == scope,
                                     consumers, graph, recorded, outputs)
            for name in node.input
        )

    calls: list[list[tuple[str, int]]] = []
    counts: dict[str, int] = defaultdict(int)
    current: list[tuple[str, int]] = []
    scopes: list[str] = []  # the open calls' scopes as written
    firsts: list[int] = []  # the open calls' first nodes
    made: list[set[str]] = []  # the tensors each open call made so far
    for index, node_levels in enumerate(levels):
        if node_levels is None:  # no record: in no module, and no break in the runs around it
            calls.append([])
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
        calls.append(list(current))
    return calls


def _folded_batchnorm(model: onnx.ModelProto, node: onnx.NodeProto, props: dict[str, str], dynamo: bool) -> bool:
    """Whether a Conv's values may include a BatchNorm folded in while it is named after the Conv."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    if dynamo:  # the fused Conv carries the BatchNorm's records (its name too) unless the exporter changes
        target = props.get(_CLASSES_KEY, "")
        return "FuseBatchNormIntoConv" in props.get(_RULES_KEY, "") and "batch_norm" not in target
    # a fold always gives the Conv a computed bias too; a weight computed alone (weight_norm) keeps its bias's name
    return model.producer_name == "pytorch" and len(node.input) > 2 and all(
        name.startswith("onnx::") for name in node.input[1:3]
    )


def _name_torch(model: onnx.ModelProto, candidates: list[Candidate], calls) -> dict[str, _TorchName]:
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
    dynamo = any(prop.key == _SCOPES_KEY for node in graph.node for prop in node.metadata_props)
    member = [set(node_calls) for node_calls in calls]
    # the dynamo optimizer's own nodes carry no record (a Split for split_with_sizes): seen through, not outside
    recorded = [not dynamo or _SCOPES_KEY in _props(node) for node in graph.node]
    # A dynamo Conv with a BatchNorm fused in carries the BatchNorm's scopes; its weight keeps the Conv's
    # parameter name (``layer1.0.conv1.weight``), so the Conv's own modules still count as using its input.
    fused_from = {
        index: node.input[1].rsplit(".", 1)[0]
        for index, node in enumerate(graph.node)
        if dynamo and node.op_type == "Conv" and len(node.input) > 1 and node.input[1].endswith(".weight")
        and "FuseBatchNormIntoConv" in _props(node).get(_RULES_KEY, "")
    }

    def inside(call: tuple[str, int], user: int) -> bool:
        origin = fused_from.get(user)
        return call in member[user] or (origin is not None and f"{origin}.".startswith(f"{call[0]}."))

    named = {}
    for candidate in candidates:
        node = graph.node[candidate.node_index]
        props = _props(node)
        folded = _folded_batchnorm(model, node, props, dynamo) and all(
            copied.get(name, name) in initializers for name in node.input[1:3]
        )
        chain = calls[candidate.node_index]
        if not chain:
            raw = node.name or candidate.tensor
            named[candidate.tensor] = _TorchName(raw.strip("/") or raw, raw, None, (), folded, None)
            continue
        left = [
            call for call in chain
            if _leaves(candidate.tensor, lambda user, call=call: inside(call, user), consumers, graph, recorded,
                       graph_outputs)
        ]
        path, number = chain[-1]
        if left and left[-1] == chain[-1]:
            classes = _class_names(props)
            class_name = classes[len(chain) - 1] if len(classes) > len(chain) else None
            also = tuple(call_name(*call) for call in reversed(left[:-1]))
            named[candidate.tensor] = _TorchName(call_name(path, number), path, True, also, folded, class_name)
        else:
            also = tuple(call_name(*call) for call in reversed(left))
            named[candidate.tensor] = _TorchName(
                f"{call_name(path, number)}/{candidate.op}", path, False, also, folded, None
            )
    return named


def _class_names(props: dict[str, str]) -> list[str]:
    """The module classes of the dynamo exporter's class hierarchy, short names, root dropped."""
    try:
        classes = [str(name) for name in ast.literal_eval(props.get(_CLASSES_KEY, "[]"))]
    except (ValueError, SyntaxError, TypeError):
        return []
    return [name.rsplit(".", 1)[-1] for name in classes[1:]]


def name_tensors(
    model: onnx.ModelProto, candidates: list[Candidate], records: list[LayerRecord] | None = None
) -> list[NamedTensor]:
    """Give every candidate a unique display name and its source layer.

    ``records``: the model's checked ``fmonnx.layers`` (read from ``model`` when None).
    """
    by_tensor = {}
    classes = {}
    recorded_also: dict[str, tuple[str, ...]] = {}  # a converter's outer modules that returned the same tensor
    for record in read_layer_metadata(model) if records is None else records:
        by_tensor[record.output] = (record.layer, True)
        recorded_also[record.output] = record.also_output_of
        for inner in record.inner:
            by_tensor.setdefault(inner, (record.layer, False))
        if record.class_name:
            classes[record.layer] = record.class_name
    calls = _torch_calls(model)
    torch_named = _name_torch(model, candidates, calls) if calls is not None else {}
    if by_tensor:
        # fmonnx.convert records every 4-D output of every module call: a 4-D tensor it did not record is
        # no module's output, whatever the scopes suggest (YOLO's Detect concatenations); a block's token
        # sequence (rank 3) is not recorded, so its scopes still name it
        maps = {c.tensor: c.op for c in candidates if c.type.rank != 3}  # rank None: shape inference gave up
        torch_named = {tensor: _inner(torch_name, maps[tensor]) if torch_name.output and tensor in maps
                       else torch_name for tensor, torch_name in torch_named.items() if tensor not in by_tensor}
    producer = model.producer_name or ""
    layer_of: list[tuple[str, bool | None]] = []
    for candidate in candidates:
        if candidate.tensor in by_tensor:
            layer_of.append(by_tensor[candidate.tensor])
        elif candidate.tensor in torch_named:
            torch_name = torch_named[candidate.tensor]
            layer_of.append((torch_name.layer, torch_name.output))
        else:
            node = model.graph.node[candidate.node_index]
            layer_of.append((source_layer_name(node, candidate.tensor, producer), None))

    members: dict[str, list[int]] = defaultdict(list)
    for index, (layer, _) in enumerate(layer_of):
        members[layer].append(index)
    names: list[str] = []
    for index, (layer, is_output) in enumerate(layer_of):
        candidate = candidates[index]
        if candidate.tensor not in by_tensor and candidate.tensor in torch_named:
            names.append(torch_named[candidate.tensor].name)
            continue
        group = members[layer]
        if is_output is True:
            owns_name = True
        elif any(layer_of[i][1] is True for i in group):
            owns_name = False
        else:
            # the layer's output is its last tensor, not counting a converter's Transposes after it
            real = [i for i in group if candidates[i].op not in _PLUMBING_OPS] or group
            owns_name = index == real[-1]
        names.append(layer if owns_name else f"{layer}/{candidate.op}")
    names = _deduplicate(names)
    result = []
    for candidate, name, (layer, is_output) in zip(candidates, names, layer_of):
        torch_name = torch_named.get(candidate.tensor) if candidate.tensor not in by_tensor else None
        if torch_name is not None:
            result.append(NamedTensor(
                candidate, name, layer, is_output, torch_name.class_name, torch_name.folded, torch_name.also
            ))
        else:
            source_class = classes.get(layer) if is_output else None
            also = recorded_also.get(candidate.tensor, ()) if is_output else ()
            result.append(NamedTensor(candidate, name, layer, is_output, source_class, also_output_of=also))
    return result


def _deduplicate(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    taken = set(names)
    for name in names:
        if name not in seen:
            seen[name] = 1
            unique.append(name)
            continue
        count = seen[name]
        while f"{name}_{count}" in taken:
            count += 1
        seen[name] = count + 1
        taken.add(f"{name}_{count}")
        unique.append(f"{name}_{count}")
    return unique


def naming_notes(named: list[NamedTensor], limit: int = 4) -> list[str]:
    """One line per thing the names cannot promise, for the terminal and the manifest's ``problems``."""
    folded = [tensor.name for tensor in named if tensor.folded_batchnorm]
    if not folded:
        return []
    shown = ", ".join(folded[:limit]) + (f", ... (+{len(folded) - limit})" if len(folded) > limit else "")
    return [
        f"{len(folded)} Conv tensors hold a BatchNorm folded in by the TorchScript exporter ({shown}): "
        "their values are Conv + BatchNorm; to see the two apart, convert the module with "
        "fmonnx.convert(module, example) or `fmonnx convert model.pt2`, or export with do_constant_folding=False"
    ]
