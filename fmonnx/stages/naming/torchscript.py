"""PyTorch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): module scopes in node names.

The node name ``/layer1/layer1.0/relu_1/Relu`` is ``layer1`` > ``layer1.0`` >
``layer1.0.relu``. The exporter tells repeated calls apart by a suffix on the
innermost scope (``relu``, ``relu_1``, ``relu_2``); a scope ``x_<n>`` is read
as a later call of ``x`` when ``x`` is a scope under the same parent, unless
an initializer is named after a module ``x_<n>`` (``block.conv_1.weight``).
A real ``relu_1`` beside ``relu`` with no named weight (an activation, or a
Conv whose weights were folded) is read as a call (heuristic).
A parent called twice is not suffixed (``/inner/conv``, ``/inner/conv_1``):
its calls merge into one. Naming from the calls: calls.py.

The exporter folds an eval-mode BatchNorm into the Conv before it and names the
fused Conv after the Conv; its weight and bias become constants named
``onnx::Conv_<n>`` instead of the parameters' names, and such a tensor is
marked ``folded_batchnorm`` (a Conv whose weight and bias were both computed
from parameters and constant-folded would be a false alarm).
"""

from __future__ import annotations

from collections import defaultdict

import onnx

from ..expose import Candidate
from ..metadata import LayerRecord
from .calls import CALL_SUFFIX, name_calls
from .claim import Claim

__all__ = ["NAMED_BY", "PRODUCER", "applies", "name", "node_layer", "made_by_torch", "calls"]

NAMED_BY = "torchscript scopes"
PRODUCER = "pytorch"  # the producer_name torch.onnx.export writes (both exporters)
SCOPE_MARK = "/"  # the exporter's node names are scope paths from the root: /layer1/layer1.0/relu_1/Relu
FOLDED_PREFIX = "onnx::"  # the exporter's name for a constant it computed (a folded Conv weight or bias)


def made_by_torch(producer: str) -> bool:
    return "torch" in producer.lower()


def applies(model: onnx.ModelProto, records: list[LayerRecord]) -> bool:
    return any(node.name.startswith(SCOPE_MARK) for node in model.graph.node)


def name(model: onnx.ModelProto, candidates: list[Candidate], records: list[LayerRecord]) -> dict[str, Claim]:
    return name_calls(model, candidates, calls(model), _Hooks())


def node_layer(node: onnx.NodeProto, tensor: str, producer: str) -> str | None:
    """One node alone: its module's innermost path, without its call number."""
    if not node.name.startswith(SCOPE_MARK):
        return None
    scopes = _scopes(node.name)
    return _paths(scopes, set())[-1] if scopes else node.name.strip("/")


class _Hooks:
    NAMED_BY = NAMED_BY

    def recorded(self, node: onnx.NodeProto) -> bool:
        return True

    def fused_from(self, node: onnx.NodeProto) -> str | None:
        return None

    def folded(self, model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
        # a fold always gives the Conv a computed bias too; a weight computed alone (weight_norm) keeps its
        # bias's name
        return model.producer_name == PRODUCER and len(node.input) > 2 and all(
            name.startswith(FOLDED_PREFIX) for name in node.input[1:3]
        )

    def classes(self, node: onnx.NodeProto) -> list[str]:
        return []  # the exporter records no module classes


def _scopes(node_name: str) -> list[str]:
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


def _paths(
    scopes: list[str], known: set[tuple[tuple[str, ...], str]], owners: frozenset[str] = frozenset()
) -> list[str]:
    """Module paths, outermost first, for TorchScript ``scopes`` with call suffixes removed:
    ``relu_1`` is ``relu`` when ``known`` has a ``relu`` scope under the same parent, unless
    a module ``relu_1`` owns a named weight (``owners``)."""
    segments: list[str] = []
    paths: list[str] = []
    for index, scope in enumerate(scopes):
        match = CALL_SUFFIX.match(scope)
        if match and (tuple(scopes[:index]), match.group(1)) in known:
            if ".".join(_enter(segments, scope)) not in owners:
                scope = match.group(1)
        segments = _enter(segments, scope)
        paths.append(".".join(segments))
    return paths


def calls(model: onnx.ModelProto) -> list[list[tuple[str, int]]]:
    """For each node, the module calls it ran in, outermost first, as ``(path, call)``."""
    graph = model.graph
    scopes = [_scopes(node.name) if node.name.startswith(SCOPE_MARK) else [] for node in graph.node]
    known = {(tuple(chain[:index]), scope) for chain in scopes for index, scope in enumerate(chain)}
    owners = frozenset(tensor.name.rsplit(".", 1)[0] for tensor in graph.initializer if "." in tensor.name)
    numbers: dict[tuple[str, ...], int] = {}  # a scope as written (suffix included) -> its call number
    counts: dict[str, int] = defaultdict(int)
    result = []
    for chain in scopes:
        node_calls = []
        for index, path in enumerate(_paths(chain, known, owners)):
            key = tuple(chain[: index + 1])
            if key not in numbers:
                counts[path] += 1
                numbers[key] = counts[path]
            node_calls.append((path, numbers[key]))
        result.append(node_calls)
    return result
