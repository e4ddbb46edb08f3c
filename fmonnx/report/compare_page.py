"""The compare page: ``index.html``, one offline page over a compare, everything inlined.

As the render report: one file, no network, its CSS and JS from ``assets/``
(``compare.html``, ``compare.css``, ``compare.js``), the figures inlined as a
JSON block. Each layer's picture (its worst channels as A | B | |A - B|) is
inlined too, as a ``data:`` URL, so the page works when moved on its own.
Layers are ranked by SQNR; clicking one opens its channels side by side.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

from .compare_result import record_json
from .template import INDEX, page_pieces

__all__ = ["INDEX", "write_compare_page"]

log = logging.getLogger(__name__)



def _pieces(record: dict, pictures: dict[str, str]):
    names = f"{Path(record['a']['model']).name} vs {Path(record['b']['model']).name}"
    # record_json writes infinities as 1e999, which JSON.parse reads as Infinity
    data = record_json({"record": record, "pictures": pictures}).replace("\n", "")
    return page_pieces("compare", f"fmonnx compare: {names}", data)


def write_compare_page(root: Path, record: dict) -> str:
    """Write ``root / index.html`` for ``record`` (compare.json's dict), inlining the layers'
    PNGs that ``root`` holds; returns its name relative to ``root``."""
    pictures = {}
    for entry in record["layers"]:
        if entry.get("png"):
            encoded = base64.b64encode((root / entry["png"]).read_bytes()).decode("ascii")
            pictures[entry["name"]] = f"data:image/png;base64,{encoded}"
    with open(root / INDEX, "w", encoding="utf-8") as page:
        page.writelines(_pieces(record, pictures))
    return INDEX
