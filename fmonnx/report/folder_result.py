"""The base of what ``render``, ``compare`` and ``scan`` return: an output folder and its JSON record.

``FolderResult`` holds what the three share: ``folder``, ``record`` (the JSON file ``RECORD`` in the
folder, given by the command or read from the folder on first use and checked with
``contract.check_schema``), ``result[key]`` as on the dict, ``index`` (the folder's index.html) and the
pieces of the notebook views (a picture file embedded as a data URI, the link to the page).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from ..contract import check_schema
from ..errors import FmonnxError

__all__ = ["FolderResult"]


class FolderResult:
    """A finished command's output: ``folder`` and ``record``, the dict its ``RECORD`` file holds."""

    RECORD = "manifest.json"  # the record's file name in the folder
    COMMAND = "render"  # the command that writes the folder, for the message when it is gone

    def __init__(self, folder: str | Path, record: dict | None = None):
        self.folder = Path(folder)
        self._record = record

    @property
    def record(self) -> dict:
        """The record's dict (read from the folder on first use when the command did not hand it over)."""
        if self._record is None:
            self._record = self._read_record()
        return self._record

    def _read_record(self) -> dict:
        path = self.folder / self.RECORD
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise FmonnxError(
                f"cannot read {path} ({exc.strerror or exc}); the {self.COMMAND}'s folder was moved or deleted: "
                f"{self.COMMAND} again"
            ) from None
        check_schema(record, path)
        return record

    def __getitem__(self, key: str):
        return self.record[key]

    @property
    def index(self) -> Path | None:
        """The report page."""
        return self.folder / "index.html"

    def _page_link(self) -> str:
        """The notebook view's link to the page, when the page is there."""
        page = self.index
        if page is None or not page.is_file():
            return ""
        return f'<p><a href="{html.escape(page.as_posix())}" target="_blank">open the page</a></p>'

    @staticmethod
    def _embedded(path: Path, mime: str, alt: str, style: str = "") -> str:
        """An <img> carrying the picture file ``path`` as a data URI (a notebook keeps no files); "" when missing."""
        if not path.is_file():
            return ""
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        style = f' style="{style}"' if style else ""
        return f'<img src="data:{mime};base64,{data}"{style} alt="{html.escape(alt)}">'
