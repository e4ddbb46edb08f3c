"""One offline page from its assets: ``assets/<name>.html`` with its CSS, JS, title and data inlined.

The compare and scan pages share this; the render report streams its data in pieces (page.py).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

__all__ = ["INDEX", "page_pieces"]

INDEX = "index.html"  # every page's file name in its folder

_ASSETS = Path(__file__).parent / "assets"


def page_pieces(name: str, title: str, data: str) -> Iterator[str]:
    """The text of the page ``name`` in pieces, to write one after another; ``data`` is JSON text on one line."""
    template = (_ASSETS / f"{name}.html").read_text(encoding="utf-8")
    parts = {
        "{{TITLE}}": html.escape(title),
        "{{STYLE}}": (_ASSETS / f"{name}.css").read_text(encoding="utf-8"),
        "{{SCRIPT}}": (_ASSETS / f"{name}.js").read_text(encoding="utf-8"),
        # "<" escaped keeps any name (even "</script>") from closing the data block
        "{{DATA}}": data.replace("<", "\\u003c"),
    }
    at = 0
    for match in re.finditer("|".join(map(re.escape, parts)), template):
        yield template[at : match.start()]
        yield parts[match.group(0)]
        at = match.end()
    yield template[at:]
