"""Names users recognize for exposed tensors, read from how the model was made.

In order of trust:

1. ``metadata_props["fmonnx.layers"]``, written by ``fmonnx convert``: exact
   Keras layer names per tensor.
2. PyTorch's TorchScript exporter names nodes by module path:
   ``/layer2/layer2.0/downsample/downsample.0/Conv`` is ``layer2.0.downsample.0``.
   The dynamo exporter records ``pkg.torch.onnx.name_scopes`` on each node.
3. tf2onnx names nodes ``<model>/<layer>/<op>``: ``model/conv2d/Conv2D`` is
   ``conv2d``, ``model/backbone/conv1/Conv2D`` is ``backbone/conv1``.
4. Otherwise the node name (or the tensor name when the node has none).

Names are made unique: when several tensors come from one layer (a Conv and
its fused Relu), the last keeps the layer's name (Transposes and other layout
plumbing aside) and the others get ``<layer>/<op>``.
"""

from __future__ import annotations

import ast
import json
import logging
from collections import defaultdict
from dataclasses import dataclass

import onnx

from .expose import Candidate

__all__ = ["NamedTensor", "read_layer_metadata", "source_layer_name", "name_tensors", "LAYERS_KEY", "SOURCE_KEY"]

log = logging.getLogger(__name__)

LAYERS_KEY = "fmonnx.layers"
SOURCE_KEY = "fmonnx.source"
_TF_WRAPPERS = ("StatefulPartitionedCall", "PartitionedCall")
# Layout plumbing a converter adds inside a layer; never the layer's own output.
_PLUMBING_OPS = frozenset({"Transpose", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze"})


@dataclass(frozen=True)
class NamedTensor:
    """A candidate with its display name, the framework layer it came from,
    ``layer_output`` (True/False when a converter said, None when unknown) and
    the layer's class when a converter recorded it (``Conv2D``)."""

    candidate: Candidate
    name: str
    source_layer: str
    layer_output: bool | None
    source_class: str | None = None


def read_layer_metadata(model: onnx.ModelProto) -> list[dict]:
    """The converter's per-layer records (``[]`` when absent or unreadable)."""
    for prop in model.metadata_props:
        if prop.key == LAYERS_KEY:
            try:
                records = json.loads(prop.value)
            except json.JSONDecodeError:
                log.warning("ignoring unreadable %s metadata", LAYERS_KEY)
                return []
            return [r for r in records if isinstance(r, dict) and "layer" in r and "output" in r]
    return []


def _torch_module_path(node_name: str) -> str | None:
    parts = [part for part in node_name.strip("/").split("/") if part]
    if len(parts) < 2:
        return None
    path: list[str] = []
    for scope in parts[:-1]:  # the last part is the op, e.g. Conv or Relu_1
        if path and scope.startswith(path[-1] + "."):
            path[-1] = scope  # a Sequential child repeats its parent: layer1 / layer1.0
        else:
            path.append(scope)
    return ".".join(path)


def _torch_scopes(node: onnx.NodeProto) -> str | None:
    """Module path from the dynamo exporter's scopes, e.g.
    ``['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']`` is ``layer1.0.relu``:
    each module path extends the previous one; the last entry is the call's own name."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [scope for scope in ast.literal_eval(prop.value) if scope]
            except (ValueError, SyntaxError, TypeError):
                return None
            path = None
            for scope in scopes:
                if path is not None and not scope.startswith(path + "."):
                    break
                path = scope
            return path
    return None


def _tf_layer_path(node_name: str) -> str | None:
    parts = [part for part in node_name.split("/") if part and part not in _TF_WRAPPERS]
    if len(parts) < 3:
        return parts[0] if len(parts) == 2 else None
    return "/".join(parts[1:-1])  # drop the model's own name and the op


def source_layer_name(node: onnx.NodeProto, tensor: str, producer: str) -> str:
    """The framework layer a node belongs to, by the conventions in the module docstring."""
    scoped = _torch_scopes(node)
    if scoped:
        return scoped
    name = node.name
    if name.startswith("/"):
        return _torch_module_path(name) or name.strip("/")
    if "/" in name and "torch" not in producer.lower():
        return _tf_layer_path(name) or name
    return name or tensor


def name_tensors(model: onnx.ModelProto, candidates: list[Candidate]) -> list[NamedTensor]:
    """Give every candidate a unique display name and its source layer."""
    by_tensor = {}
    classes = {}
    for record in read_layer_metadata(model):
        by_tensor[record["output"]] = (record["layer"], True)
        for inner in record.get("inner", []):
            by_tensor.setdefault(inner, (record["layer"], False))
        if record.get("class"):
            classes[record["layer"]] = str(record["class"])
    producer = model.producer_name or ""
    layer_of: list[tuple[str, bool | None]] = []
    for candidate in candidates:
        if candidate.tensor in by_tensor:
            layer_of.append(by_tensor[candidate.tensor])
        else:
            node = model.graph.node[candidate.node_index]
            layer_of.append((source_layer_name(node, candidate.tensor, producer), None))

    members: dict[str, list[int]] = defaultdict(list)
    for index, (layer, _) in enumerate(layer_of):
        members[layer].append(index)
    names: list[str] = []
    for index, (layer, is_output) in enumerate(layer_of):
        group = members[layer]
        if is_output is True:
            owns_name = True
        elif any(layer_of[i][1] is True for i in group):
            owns_name = False
        else:
            # the layer's output is its last tensor, not counting a converter's Transposes after it
            real = [i for i in group if candidates[i].op not in _PLUMBING_OPS] or group
            owns_name = index == real[-1]
        names.append(layer if owns_name else f"{layer}/{candidates[index].op}")
    names = _deduplicate(names)
    return [
        NamedTensor(candidate, name, layer, is_output, classes.get(layer) if is_output else None)
        for candidate, name, (layer, is_output) in zip(candidates, names, layer_of)
    ]


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
