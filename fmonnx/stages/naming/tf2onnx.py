"""tf2onnx's node names, ``<model>/<layer>/<op>``: ``model/conv2d/Conv2D`` is ``conv2d``,
``model/backbone/conv1/Conv2D`` is ``backbone/conv1``. Read for any model not exported by torch."""

from __future__ import annotations

import onnx

from ..expose import Candidate
from ..metadata import LayerRecord
from .claim import Claim
from .torchscript import made_by_torch

__all__ = ["NAMED_BY", "applies", "name", "node_layer"]

NAMED_BY = "tf2onnx"
# tf2onnx keeps the scopes of TensorFlow's function-call ops in its node names; they are no layer
WRAPPERS = ("StatefulPartitionedCall", "PartitionedCall")


def applies(model: onnx.ModelProto, records: list[LayerRecord]) -> bool:
    return not made_by_torch(model.producer_name or "")


def name(model: onnx.ModelProto, candidates: list[Candidate], records: list[LayerRecord]) -> dict[str, Claim]:
    claims = {}
    for candidate in candidates:
        layer = node_layer(model.graph.node[candidate.node_index], candidate.tensor, model.producer_name or "")
        if layer is not None:
            claims[candidate.tensor] = Claim(layer, None, NAMED_BY)
    return claims


def node_layer(node: onnx.NodeProto, tensor: str, producer: str) -> str | None:
    if "/" not in node.name or made_by_torch(producer):
        return None
    parts = [part for part in node.name.split("/") if part and part not in WRAPPERS]
    if len(parts) < 3:
        return parts[0] if len(parts) == 2 else None
    return "/".join(parts[1:-1])  # drop the model's own name and the op
