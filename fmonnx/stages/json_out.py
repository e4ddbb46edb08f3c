"""JSON as fmonnx writes every file: streamed in pieces, each list of plain values on one line,
infinity as ``1e999``, NaN as ``null``; ``Spilled`` lists read back one at a time.

Numbers go through orjson: ``number_lists`` writes float arrays as float32's shortest round-trip
text (``0.46872002``: the float32 value exactly, at most 9 significant digits), 10 times faster
than rounding to 7 digits with numpy did, and no longer (no space after the commas).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import orjson

from .spill import Spilled

__all__ = ["write_manifest", "manifest_json", "json_pieces", "json_text", "number_lists", "nonfinite_json",
           "INFINITY_JSON", "MANIFEST"]


MANIFEST = "manifest.json"
INFINITY_JSON = "1e999"  # overflows to infinity when read: valid JSON, unlike json.dumps's Infinity


def nonfinite_json(value: float) -> str:
    """The JSON text of a non-finite float: ``1e999``, ``-1e999`` or ``null`` (NaN)."""
    if value != value:
        return "null"
    return INFINITY_JSON if value > 0 else f"-{INFINITY_JSON}"


def _exact_json(wide: np.ndarray, narrow: np.ndarray) -> str:
    """A list whose float32 copy ``narrow`` has non-finite values: those written one by one
    (``nonfinite_json``, or float64's own text where only the float32 copy overflowed)."""
    texts = orjson.dumps(narrow, option=orjson.OPT_SERIALIZE_NUMPY).decode()[1:-1].split(",")
    for index in np.flatnonzero(~np.isfinite(narrow)).tolist():
        value = float(wide[index])
        texts[index] = json.dumps(value) if math.isfinite(value) else nonfinite_json(value)
    return f"[{','.join(texts)}]"


def number_lists(arrays) -> list[str]:
    """Each float array as a compact JSON list of its values in float32 (orjson: float32's shortest
    text that reads back to the same float32; ``[]`` when empty). Infinity is ``1e999``, NaN ``null``.

    float64 input is rounded to float32 first: 7.2 significant digits, what the statistics of float32
    activations carry. A value beyond float32's range keeps its float64 text.
    """
    arrays = [np.asarray(array).ravel() for array in arrays]
    with np.errstate(over="ignore"):  # a float64 beyond float32's range: found below, it takes the exact path
        narrow = [array.astype(np.float32, copy=False) for array in arrays]
    option = orjson.OPT_SERIALIZE_NUMPY
    if not narrow or np.isfinite(np.concatenate(narrow)).all():  # the common case: orjson alone
        return [orjson.dumps(values, option=option).decode() for values in narrow]
    # orjson writes NaN and infinity as null: the lists that have them are fixed up
    return [orjson.dumps(values, option=option).decode() if np.isfinite(values).all()
            else _exact_json(array.astype(np.float64), values)
            for array, values in zip(arrays, narrow)]


def _is_flat_list(value) -> bool:
    # the first item decides: manifests hold lists of records or lists of plain values, not mixtures
    return isinstance(value, list) and bool(value) and not isinstance(value[0], (dict, list))


def _flat_json(values: list, separators) -> str:
    """A list of plain values as JSON; non-finite floats as ``nonfinite_json`` writes them."""
    try:
        return json.dumps(values, separators=separators, allow_nan=False)
    except ValueError:  # rare: only then is each value looked at
        gap = separators[0] if separators else ", "
        return "[" + gap.join(
            nonfinite_json(item) if isinstance(item, float) and not math.isfinite(item) else json.dumps(item)
            for item in values
        ) + "]"


def json_pieces(value, indent: int | None = 1, compact: bool = False):
    """The JSON text of ``value``, in pieces to write one after the other (an iterator of str).

    Every fmonnx JSON file is written here: infinity as ``1e999`` (``json`` and a browser's
    ``JSON.parse`` read it back as infinity), NaN as ``null`` (nonfinite_json).
    ``Spilled`` values are read back one at a time, so the whole text is never in memory.
    With ``indent``, the structure is indented and each list of plain values is on one line:
    a ResNet-50's per-channel lists hold 250,000 numbers, one per line they make 300,000
    lines, and json's indenting encoder (pure Python) takes 0.5 s on them; flat lists go
    through the C encoder instead. ``compact``: no spaces at all (``separators=(",", ":")``).
    """
    parts: list = []
    marker = f"@fmonnx-part-{os.getpid()}-{id(parts)}-"

    def swap(item):
        if isinstance(item, Spilled) or (indent is not None and _is_flat_list(item)):
            parts.append(item)
            return f"{marker}{len(parts) - 1}@"
        if isinstance(item, float) and not math.isfinite(item):
            parts.append(nonfinite_json(item))  # text, written as it is
            return f"{marker}{len(parts) - 1}@"
        if isinstance(item, dict):
            return {key: swap(inner) for key, inner in item.items()}
        if isinstance(item, list | tuple):
            return [swap(inner) for inner in item]
        return item

    separators = (",", ":") if compact else None
    swapped = swap(value)
    if indent is None:  # the C encoder, in one piece
        chunks = [json.dumps(swapped, separators=separators, allow_nan=False)]
    else:  # the indenting encoder is Python's anyway: its chunks are written as they come, not joined
        chunks = json.JSONEncoder(indent=indent, separators=separators, allow_nan=False).iterencode(swapped)
    pattern = re.compile(f'"{re.escape(marker)}(\\d+)@"')
    batch: list[str] = []
    for chunk in chunks:
        if marker not in chunk:
            batch.append(chunk)
            if len(batch) >= 4096:
                yield "".join(batch)
                batch.clear()
            continue
        at = 0
        for match in pattern.finditer(chunk):
            batch.append(chunk[at : match.start()])
            yield "".join(batch)
            batch.clear()
            part = parts[int(match.group(1))]
            if isinstance(part, Spilled):
                yield part.text()  # compact already (number_lists, orjson): fits either layout
            elif isinstance(part, str):
                yield part
            else:
                yield _flat_json(part, separators)
            at = match.end()
        batch.append(chunk[at:])
    yield "".join(batch)


def json_text(value, indent: int | None = 1) -> str:
    """``value`` as JSON text, the way fmonnx writes every file (``json_pieces``): each list of plain
    values on one line, infinity as ``1e999``, NaN as ``null``."""
    return "".join(json_pieces(value, indent=indent))


def manifest_json(manifest: dict) -> str:
    """The manifest as JSON: indented structure, each list of plain values on one line (``json_pieces``)."""
    return json_text(manifest)


def write_manifest(folder: Path, manifest: dict) -> None:
    with open(folder / MANIFEST, "w", encoding="utf-8") as file:
        file.writelines(json_pieces(manifest, indent=1))
        file.write("\n")

