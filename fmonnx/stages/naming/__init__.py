"""Names users recognize for exposed tensors, read from how the model was made.

One module per producer, each reading one exporter's conventions (claim.py says the interface), tried in
trust order (``PRODUCERS``); the first that names a tensor decides, and records itself in ``named_by``:

1. recorded.py: ``metadata_props["fmonnx.layers"]``, written by ``fmonnx convert``.
2. dynamo.py and torchscript.py: the two exporters of ``torch.onnx.export`` (calls.py turns the module calls
   they read into names).
3. tf2onnx.py: ``model/backbone/conv1/Conv2D`` is ``backbone/conv1``.
4. fallback.py: the node name (or the tensor name when the node has none).

Names are made unique: when several tensors come from one layer (a Conv and
its fused Relu), the last keeps the layer's name (Transposes and other layout
plumbing aside) and the others get ``<layer>/<op>``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx

from ..expose import Candidate
from ..metadata import LayerRecord, read_layer_metadata
from . import dynamo, fallback, recorded, tf2onnx, torchscript
from .calls import call_name, split_call_name
from .claim import Claim

__all__ = [
    "NamedTensor",
    "PRODUCERS",
    "NAMED_BY",
    "name_tensors",
    "source_layer_name",
    "call_name",
    "split_call_name",
    "naming_notes",
]

# Trust order: fmonnx's own records were checked against the framework; an exporter's scopes are what torch
# saw but are read by heuristics (dynamo's records are explicit, TorchScript's are parsed from node names);
# tf2onnx's node-name convention is a guess for any non-torch model; the node name always exists.
PRODUCERS = (recorded, dynamo, torchscript, tf2onnx, fallback)
NAMED_BY = tuple(producer.NAMED_BY for producer in PRODUCERS)  # every value ``named_by`` takes
# Layout plumbing a converter adds inside a layer; never the layer's own output.
_PLUMBING_OPS = frozenset({"Transpose", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze"})


@dataclass(frozen=True)
class NamedTensor:
    """A candidate with its display name, the framework layer it came from,
    ``layer_output`` (True/False when known, None when unknown), the layer's
    class when recorded (``Conv2D``), ``folded_batchnorm`` when its values may
    include a BatchNorm folded in by the exporter, ``also_output_of``: the
    outer modules (calls) this tensor is also the output of, and ``named_by``:
    which producer rule named it (one of ``NAMED_BY``; empty for a tensor
    named elsewhere, such as pairing's framework side)."""

    candidate: Candidate
    name: str
    source_layer: str
    layer_output: bool | None
    source_class: str | None = None
    folded_batchnorm: bool = False
    also_output_of: tuple[str, ...] = ()
    named_by: str = ""


def source_layer_name(node: onnx.NodeProto, tensor: str, producer: str) -> str:
    """The framework layer a node belongs to, one node alone: the first producer in trust order that reads it
    (a module's innermost path, without its call number)."""
    for module in PRODUCERS:
        layer = module.node_layer(node, tensor, producer)
        if layer is not None:
            return layer
    return fallback.node_layer(node, tensor, producer)


def name_tensors(
    model: onnx.ModelProto, candidates: list[Candidate], records: list[LayerRecord] | None = None
) -> list[NamedTensor]:
    """Give every candidate a unique display name, its source layer and ``named_by``.

    ``records``: the model's checked ``fmonnx.layers`` (read from ``model`` when None).
    """
    records = read_layer_metadata(model) if records is None else records
    claims: dict[str, Claim] = {}
    for producer in PRODUCERS:
        if all(candidate.tensor in claims for candidate in candidates):
            break
        if producer.applies(model, records):
            for tensor, claim in producer.name(model, candidates, records).items():
                claims.setdefault(tensor, claim)
    if records:
        claims = _demoted(claims, candidates)
    layer_of = [(claims[c.tensor].layer, claims[c.tensor].output) for c in candidates]

    members: dict[str, list[int]] = defaultdict(list)
    for index, (layer, _) in enumerate(layer_of):
        members[layer].append(index)
    names: list[str] = []
    for index, (layer, is_output) in enumerate(layer_of):
        candidate = candidates[index]
        fixed = claims[candidate.tensor].name
        if fixed is not None:
            names.append(fixed)
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
    return [
        NamedTensor(candidate, name, claim.layer, claim.output, claim.class_name, claim.folded, claim.also,
                    claim.named_by)
        for candidate, name, claim in zip(candidates, _deduplicate(names), (claims[c.tensor] for c in candidates))
    ]


def _demoted(claims: dict[str, Claim], candidates: list[Candidate]) -> dict[str, Claim]:
    """fmonnx.convert records every 4-D output of every module call: a 4-D tensor it did not record is no
    module's output, whatever the scopes suggest (YOLO's Detect concatenations); a block's token sequence
    (rank 3) is not recorded, so its scopes still name it."""
    maps = {c.tensor: c.op for c in candidates if c.type.rank != 3}  # rank None: shape inference gave up
    demoted = dict(claims)
    for tensor, claim in claims.items():
        if claim.named_by != recorded.NAMED_BY and claim.output and tensor in maps:
            demoted[tensor] = Claim(claim.layer, False, claim.named_by, f"{claim.layer}/{maps[tensor]}",
                                    folded=claim.folded)
    return demoted


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
