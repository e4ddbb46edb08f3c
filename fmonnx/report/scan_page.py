"""The scan page: ``index.html``, one offline page over a scan, everything inlined.

As the other pages: one file, no network, its CSS and JS from ``assets/`` (``scan.html``,
``scan.css``, ``scan.js``), scan.json's figures inlined as a JSON block and each layer's crops
picture inlined as a ``data:`` URL, so the page works when moved on its own (above INLINE_LIMIT of
pictures, a large model's, the page refers to ``crops/*.jpg`` beside it instead: offline still). A layer lists its
channels, each with its top-k crops (cells of the layer's picture) and its statistics; channels can
be sorted and dead ones hidden, as in the render report. Each channel gives the command that renders
its top image in full (``fmonnx render``), and links to that render when OUT/renders/ holds it.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

from .scan_result import record_json
from .template import INDEX, page_pieces

__all__ = ["INDEX", "write_scan_page"]

log = logging.getLogger(__name__)

INLINE_LIMIT = 24 * 2**20  # bytes of crops pictures inlined; above it the page links crops/*.jpg beside it


def _pieces(record: dict, pictures: dict[str, str]):
    data = record_json({"record": record, "pictures": pictures}).replace("\n", "")
    return page_pieces("scan", f"fmonnx scan: {Path(record['model']).name}", data)


def write_scan_page(root: Path, record: dict) -> str:
    """Write ``root / index.html`` for ``record`` (scan.json's dict), inlining the crops pictures that
    ``root`` holds; returns its name relative to ``root``."""
    total = sum((root / entry["crops"]).stat().st_size for entry in record["layers"])
    pictures = {}
    for entry in record["layers"]:
        if total > INLINE_LIMIT:  # a browser chokes on a page of hundreds of MB: the pictures stay beside it
            pictures[entry["name"]] = entry["crops"]
            continue
        encoded = base64.b64encode((root / entry["crops"]).read_bytes()).decode("ascii")
        pictures[entry["name"]] = f"data:image/jpeg;base64,{encoded}"
    with open(root / INDEX, "w", encoding="utf-8") as page:
        page.writelines(_pieces(record, pictures))
    return INDEX
