"""scan.json's dict, built from a finished scan: beside the page that shows it (``scan_page``).

``scan_record`` gives the scan's own entries (model, input, engine, images, skipped) with empty
``layers`` and ``files``; ``layer_record`` one layer's entry (per channel statistics and top images).
Statistics are float32-derived, written to 7 significant digits (see ``stages.tally``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import __version__
from ..contract import SCHEMA
from ..stages.tally import NO_IMAGE

__all__ = ["scan_record", "layer_record"]

_RESIZE = ("every image resized (bilinear) to size, the model's input H x W, or --size "
           "(default 224 x 224) when the model's H or W is dynamic")


def _significant(value: float) -> float | None:
    """A float32-derived statistic to 7 significant digits; None for no value."""
    if np.isnan(value):
        return None
    if np.isinf(value):  # data, written as 1e999 like every fmonnx file does
        return float(value)
    return float(f"{value:.7g}")


def scan_record(model_path: Path, engine: str, scanner, top: int, state, collection, resumed_from: int,
                problems: list[str]) -> dict:
    """The scan's entries (``scanner``: a stages.scanner.Scanner, ``state``: its ScanTally)."""
    plan = scanner.plan
    return {
        "schema": SCHEMA,
        "model": str(model_path),
        "fmonnx_version": __version__,
        "engine": engine,
        "provider": scanner.provider,
        "input": {
            "name": plan.input.name, "shape": list(plan.input.shape), "layout": plan.input_layout.name,
            "size": list(scanner.size), "preprocess": scanner.preset, "resize": _RESIZE,
        },
        "batch": scanner.batch,
        "top": top,
        "images": state.scanned,
        "listed": len(collection),
        "resumed_from": int(resumed_from),
        "skipped": [{"image": collection.images[i].label, "reason": state.skipped[i]} for i in sorted(state.skipped)],
        "layers": [],
        "problems": problems,
        "files": [],
    }


def _top(index: int, layer, channel: int, collection, boxes: dict) -> list[dict]:
    top = []
    for rank in range(layer.k):
        image_id = int(layer.top_image[channel, rank])
        if image_id == NO_IMAGE:
            break
        top.append({
            "image": collection.images[image_id].label,
            "image_id": image_id,
            "value": _significant(float(layer.top_value[channel, rank])),
            "y": int(layer.top_y[channel, rank]),
            "x": int(layer.top_x[channel, rank]),
            "box": boxes.get((index, channel, rank)),
        })
    return top


def layer_record(index: int, named, shape, field, layer, collection, boxes: dict, as_map: bool, picture: str,
                 grid, scanned: int) -> dict:
    """Layer ``index``'s entry: ``named`` its plan tensor, ``layer`` its tally, ``boxes`` {(layer, channel,
    rank): box} of the crops, ``picture``/``grid`` its crops sheet."""
    std, dead, zero_fraction = layer.std, layer.dead, layer.zero_fraction
    images = max(scanned, 1)
    channels = [
        {
            "channel": channel,
            "mean": _significant(layer.mean[channel]),
            "std": _significant(std[channel]),
            "min": _significant(layer.minimum[channel]),
            "max": _significant(layer.maximum[channel]),
            "zero_fraction": _significant(zero_fraction[channel]),
            "fire_fraction": _significant(layer.fires[channel] / images),
            "dead": bool(dead[channel]),
            "top": _top(index, layer, channel, collection, boxes),
        }
        for channel in range(layer.channels)
    ]
    return {
        "name": named.name,
        "tensor": named.candidate.tensor,
        "op": named.candidate.op,
        "shape": [shape.channels, shape.height, shape.width],
        "receptive_field": field.describe() if field is not None else None,
        "crops_show": "activation" if as_map else "crop",
        "dead_channels": int(dead.sum()),
        "crops": picture,
        "channels": channels,
        "crops_grid": grid,
    }
