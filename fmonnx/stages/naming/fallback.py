"""The last resort: a tensor is named after the node that made it, or after itself when the node has none."""

from __future__ import annotations

import onnx

from ..expose import Candidate
from ..metadata import LayerRecord
from .claim import Claim

__all__ = ["NAMED_BY", "applies", "name", "node_layer"]

NAMED_BY = "node name"


def applies(model: onnx.ModelProto, records: list[LayerRecord]) -> bool:
    return True


def name(model: onnx.ModelProto, candidates: list[Candidate], records: list[LayerRecord]) -> dict[str, Claim]:
    return {
        candidate.tensor: Claim(node_layer(model.graph.node[candidate.node_index], candidate.tensor, ""), None,
                                NAMED_BY)
        for candidate in candidates
    }


def node_layer(node: onnx.NodeProto, tensor: str, producer: str) -> str:
    return node.name or tensor
