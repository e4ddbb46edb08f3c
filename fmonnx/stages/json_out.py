"""JSON as fmonnx writes every file: streamed in pieces, each list of plain values on one line,
infinity as ``1e999``, NaN as ``null``; ``Spilled`` lists read back one at a time."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .decimals import nonfinite_json
from .spill import Spilled

__all__ = ["write_manifest", "manifest_json", "json_pieces", "json_text", "MANIFEST"]


MANIFEST = "manifest.json"


def _is_flat_list(value) -> bool:
    # the first item decides: manifests hold lists of records or lists of plain values, not mixtures
    return isinstance(value, list) and bool(value) and not isinstance(value[0], (dict, list))


def _flat_json(values: list, separators) -> str:
    """A list of plain values as JSON; non-finite floats as ``decimals.nonfinite_json`` writes them."""
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
    ``JSON.parse`` read it back as infinity), NaN as ``null`` (decimals.nonfinite_json).
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
                # numbers and booleans only: every ", " in it is json.dumps's separator
                yield part.text().replace(", ", ",") if compact else part.text()
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

