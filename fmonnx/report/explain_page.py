"""The explain page: ``index.html``, one offline page over an explanation, everything inlined.

As the other pages (``template.page_pieces``): one file, no network, its CSS and JS from ``assets/``
(``explain.html``, ``explain.css``, ``explain.js``) and explain.json's record inlined as a JSON block.
The pictures stay beside it as PNGs (overlays/, channels/, choices/), loaded by relative path.

Per image: the photo with the heat of the explained target; a target picker (the choices: top
classes, detected boxes, segmentation classes) that switches that heat; a strip of the target's map
through the depth of the network (every explained layer, graph order); and for the layer selected in
the strip its channels ranked by weight, each with its feature map, so each map is tied to the
prediction. A layer whose map is zero says why (the score does not depend on it, or no positive evidence).
"""

from __future__ import annotations

import json
from pathlib import Path

from .template import INDEX, page_pieces

__all__ = ["INDEX", "write_explain_page"]


def write_explain_page(root: Path, record: dict) -> str:
    """Write ``root / index.html`` for ``record`` (explain.json's dict, strict JSON data); returns its name."""
    model = Path(str(record.get("model") or "model")).name
    data = json.dumps(record, separators=(",", ":"), allow_nan=False)
    with open(Path(root) / INDEX, "w", encoding="utf-8") as page:
        page.writelines(page_pieces("explain", f"fmonnx explain: {model}", data))
    return INDEX
