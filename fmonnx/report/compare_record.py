"""compare.json's dict, built from a finished compare: beside the page that shows it (``compare_page``).

The figures come from ``stages.metrics``' table (``Figures.as_record()``, in the table's order) and
the table itself is written as ``metrics``, which the page reads for its columns. Each paired layer
has ``worst_channels`` (the channels drawn, of the first image) and ``worst_channels_over_images``
(``[{channel, rel_l2}]``: the channels with the most error energy over every image).
"""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..contract import SCHEMA
from ..stages.metrics import metric_table

__all__ = ["WORST_OVER_IMAGES", "side_record", "compare_record"]

WORST_OVER_IMAGES = 5  # channels per layer in worst_channels_over_images


def side_record(path: Path, optimization: str | None, provider: str, plan) -> dict:
    """One side's model, provider, optimization level, source and input (``plan``: a ModelPlan)."""
    return {
        "model": str(path),
        "provider": provider,
        "optimization": optimization or "extended",
        "source": plan.source,
        "input": {"name": plan.input.name, "shape": list(plan.input.shape), "layout": plan.input_layout.name},
    }


def _layer_entry(pair, agreement, noise: dict, picture: dict | None) -> dict:
    entry = {
        "name": pair.name,
        "a_tensor": pair.a.candidate.tensor,
        "b_tensor": pair.b.candidate.tensor,
        "b_name": pair.b_name,
        "paired_by": pair.rule,
        "op": pair.a.candidate.op,
        "shape": list(agreement.shape),
        **agreement.figures().as_record(),
    }
    if pair.a_source != pair.a.candidate.tensor:
        entry["a_source"] = pair.a_source
    if pair.b_source != pair.b.candidate.tensor:
        entry["b_source"] = pair.b_source
    for letter, floor in noise.items():
        entry[f"noise_{letter}"] = floor.figures().noise_record()
    if picture is not None:
        entry["png"] = picture["png"]
        entry["worst_channels"] = picture["channels"]
    worst = agreement.channel_record(WORST_OVER_IMAGES)
    if worst:
        entry["worst_channels_over_images"] = worst
    return entry


def compare_record(sides: dict[str, dict | None], pairing, tolerance, layers: list, noise: dict[str, list],
                   finals: list, outputs: list[tuple[str, str]], drawn: dict[int, dict], images: list[Path],
                   problems: list[str]) -> dict:
    """compare.json's dict. ``sides``: {"a": side_record or None, "b": ...}; ``layers``/``finals``: one
    Agreement per pair/output pair; ``noise``: {side letter: one Agreement per pair} for the sides run
    twice; ``drawn``: {pair position: {"png", "channels"}}."""
    entries = []
    for position, (pair, agreement) in enumerate(zip(pairing.pairs, layers)):
        if agreement.images:
            floors = {letter: floors[position] for letter, floors in noise.items()}
            entries.append(_layer_entry(pair, agreement, floors, drawn.get(position)))
    first = next((entry["name"] for entry in entries if not entry["within_tolerance"]), None)
    final = [
        {"name": name_a, "a_tensor": name_a, "b_tensor": name_b, **agreement.figures().as_record()}
        for agreement, (name_a, name_b) in zip(finals, outputs)
        if agreement.images
    ]
    within = first is None and all(entry["within_tolerance"] for entry in final)
    return {
        "schema": SCHEMA,
        "fmonnx_version": __version__,
        **sides,
        "images": [str(path) for path in images],
        "tolerance": tolerance.describe(),
        "metrics": metric_table(),
        "within_tolerance": within,
        "first_divergence": first,
        "outputs": final,
        "layers": entries,
        "unpaired": [
            {"tensor": item.tensor, "name": item.name, "side": item.side, "reason": item.reason}
            for item in pairing.unpaired
        ],
        "problems": problems,
    }
