"""Names recorded by ``fmonnx convert`` in ``metadata_props["fmonnx.layers"]``: exact layer names per tensor
(schema and checks: stages/metadata.py). The most trusted source: the converter saw the framework's layers."""

from __future__ import annotations

import onnx

from ..expose import Candidate
from ..metadata import LayerRecord
from .claim import Claim

__all__ = ["NAMED_BY", "applies", "name", "node_layer"]

NAMED_BY = "fmonnx metadata"


def applies(model: onnx.ModelProto, records: list[LayerRecord]) -> bool:
    return bool(records)  # the model's checked fmonnx.layers: name_tensors reads them when its caller did not


def name(model: onnx.ModelProto, candidates: list[Candidate], records: list[LayerRecord]) -> dict[str, Claim]:
    """Each recorded output is its layer's output; a layer's ``inner`` tensors are not (a later record's
    output wins over an earlier record's inner tensor)."""
    by_tensor: dict[str, tuple[str, bool]] = {}
    classes: dict[str, str] = {}
    also: dict[str, tuple[str, ...]] = {}  # a converter's outer modules that returned the same tensor
    for record in records:
        by_tensor[record.output] = (record.layer, True)
        also[record.output] = record.also_output_of
        for inner in record.inner:
            by_tensor.setdefault(inner, (record.layer, False))
        if record.class_name:
            classes[record.layer] = record.class_name
    claims = {}
    for candidate in candidates:
        if candidate.tensor in by_tensor:
            layer, output = by_tensor[candidate.tensor]
            claims[candidate.tensor] = Claim(
                layer, output, NAMED_BY, class_name=classes.get(layer) if output else None,
                also=also.get(candidate.tensor, ()) if output else (),
            )
    return claims


def node_layer(node: onnx.NodeProto, tensor: str, producer: str) -> str | None:
    return None  # a record names a tensor, not a node
