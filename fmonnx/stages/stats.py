"""Per-channel statistics as plain records, and the per-layer stats table.

``channel_records`` turns a layer's ChannelStats into columns (one value per
channel) for ``fmonnx stats``, ``channel_columns`` writes the same columns as JSON
text for the manifest (what a render keeps of them until the manifest is written),
``layer_summary`` gives the layer's numbers,
``format_table`` lays the rows out for a terminal.

Columns rather than one record per channel keep a 2048-channel layer small in
JSON, and load straight into a table: ``pandas.DataFrame(layer["channels"])``.
"""

from __future__ import annotations

import json

import numpy as np
import orjson

from .json_out import number_lists
from .normalize import ChannelStats, flat_spread

__all__ = ["CHANNEL_FIELDS", "channel_records", "channel_columns", "layer_summary", "format_table"]


CHANNEL_FIELDS = ("mean", "std", "min", "max", "zero_fraction")


def channel_records(stats: ChannelStats) -> dict:
    """``{field: [value per channel]}`` for CHANNEL_FIELDS, plus ``dead`` (bool per channel: drawn flat,
    constant or within float32 rounding of it, see ChannelStats).

    The values are those ``channel_columns`` writes in the manifest (float32's shortest text, read back),
    so ``fmonnx stats`` and a render's manifest agree to the digit.
    """
    columns = number_lists([getattr(stats, name) for name in CHANNEL_FIELDS])
    records = {name: json.loads(text) for name, text in zip(CHANNEL_FIELDS, columns)}  # json: 1e999 is infinity
    records["dead"] = stats.dead.tolist()
    return records


def channel_columns(layers: list[ChannelStats]) -> list[dict[str, str]]:
    """Each layer's per-channel columns (CHANNEL_FIELDS, then ``dead``), every column as compact JSON text.

    Text is 3 times smaller than a list of Python floats. The numbers are written by orjson in float32's
    shortest text (json_out.number_lists): exact, and 10 times faster than rounding to 7 digits was.
    """
    numbers = iter(number_lists([getattr(stats, name) for stats in layers for name in CHANNEL_FIELDS]))
    result = []
    for stats in layers:
        columns = {name: next(numbers) for name in CHANNEL_FIELDS}
        columns["dead"] = orjson.dumps(stats.dead, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        result.append(columns)
    return result


def layer_summary(stats: ChannelStats) -> dict:
    """The layer's numbers: ChannelStats.summary() plus channel count, pooled std and dead channel indices.

    ``flat_indices``: the dead channels that are not exactly constant, only within float32 rounding
    of it (normalize.flat_spread): why they are dead, since their rounded min and max may differ.
    """
    summary = stats.summary()
    count = int(stats.mean.size)
    if count:
        # every channel has H x W values, so the layer's variance pools the channels' equally
        variance = float(np.mean(stats.std**2 + stats.mean**2) - np.mean(stats.mean) ** 2)
        summary["std"] = float(np.sqrt(max(variance, 0.0)))
    else:
        summary["std"] = 0.0
    summary["channels"] = count
    summary["dead_indices"] = np.flatnonzero(stats.dead).tolist()
    summary["flat_indices"] = np.flatnonzero(stats.flat).tolist()
    # the whole layer's span, judged as its channels are: the page's "layer" normalization reads it
    summary["flat"] = bool(count) and bool(flat_spread(np.min(stats.min), np.max(stats.max)))
    return summary


def _number(value: float) -> str:
    return f"{value:.4g}"


def _listed(indices: list[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, indices[:limit]))
    more = f", ... (+{len(indices) - limit})" if len(indices) > limit else ""
    return f"{shown}{more}"


def _dead_note(stats: dict) -> str:
    flat = stats.get("flat_indices") or []
    return f"dead: {_listed(stats['dead_indices'])}" + (f" (flat within rounding: {_listed(flat)})" if flat else "")


def format_table(layers: list[dict]) -> str:
    """The rows of ``layer_stats(...)["layers"]`` as a text table; layers with dead channels are flagged ``!``."""
    header = ("name", "op", "C x H x W", "mean", "std", "min", "max", "zeros", "dead")
    rows = []
    for layer in layers:
        stats = layer["stats"]
        dead = stats["dead_channels"]
        rows.append(
            (
                layer["name"],
                layer["op"],
                "x".join(map(str, layer["shape"])),
                _number(stats["mean"]),
                _number(stats["std"]),
                _number(stats["min"]),
                _number(stats["max"]),
                f"{stats['zero_fraction']:.1%}",
                f"{dead}/{stats['channels']}" + (" !" if dead else ""),
                _dead_note(stats) if dead else "",
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    numeric = {3, 4, 5, 6, 7}

    def line(cells) -> str:
        parts = [
            f"{cell:>{width}}" if index in numeric else f"{cell:<{width}}"
            for index, (cell, width) in enumerate(zip(cells, widths))
        ]
        extra = f"  {cells[len(header)]}" if len(cells) > len(header) and cells[len(header)] else ""
        return "  ".join(parts).rstrip() + extra

    lines = [line(header)] + [line(row) for row in rows]
    total = sum(layer["stats"]["dead_channels"] for layer in layers)
    flagged = sum(1 for layer in layers if layer["stats"]["dead_channels"])
    lines.append(
        f"{len(layers)} layers; {total} dead channels in {flagged} layers"
        " (constant over the whole image, to float32 rounding)"
    )
    return "\n".join(lines)
