"""What a producer module says about one tensor, and the interface every producer module has.

A producer module (recorded.py, dynamo.py, torchscript.py, tf2onnx.py, fallback.py) exposes:

- ``NAMED_BY``: a short stable value recorded per layer (``named_by`` in the manifest and ``fmonnx layers``);
- ``applies(model, records) -> bool``: whether the model was made the way the module reads;
- ``name(model, candidates, records) -> {tensor: Claim}``: the candidates it can name;
- ``node_layer(node, tensor, producer) -> str | None``: the layer of one node alone, or None.

``naming/__init__.py`` tries them in trust order; the first claim on a tensor wins.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Claim"]


@dataclass(frozen=True)
class Claim:
    """One tensor's framework layer, ``output`` (True/False when known, None when unknown), its display
    ``name`` when the producer fixes it (None: derived from the tensors sharing the layer), and
    ``named_by``: the NAMED_BY of the module that decided."""

    layer: str
    output: bool | None
    named_by: str
    name: str | None = None
    class_name: str | None = None
    folded: bool = False
    also: tuple[str, ...] = ()
