"""What ``scan`` returns: scan.json's dict and its folder, with a per-channel table and a notebook view.

``ScanResult.record`` is the dict written to ``scan.json``; ``table()`` is one row per channel of
every layer (layer, channel, mean, std, min, max, zero_fraction, fire_fraction, dead),
``top(layer, channel)`` its top-k list. In Jupyter it shows itself (``_repr_html_``): the counts,
each layer's dead channels and the crops of its first channels, and a link to index.html.
"""

from __future__ import annotations

import html
from pathlib import Path

from ..errors import FmonnxError
from ..stages.json_out import json_pieces
from .folder_result import FolderResult

__all__ = ["RECORD", "ScanResult", "record_json", "TABLE_COLUMNS"]

RECORD = "scan.json"
TABLE_COLUMNS = ("layer", "channel", "mean", "std", "min", "max", "zero_fraction", "fire_fraction", "dead")
_VIEW_LAYERS = 4  # layers whose crops the notebook view shows
_VIEW_CHANNELS = 8  # their first channels' rows of crops


def record_json(record: dict) -> str:
    """scan.json's text: indented, each list of plain values on one line ("files" too, which staged_output reads)."""
    return "".join(json_pieces(record, indent=1)) + "\n"


class ScanResult(FolderResult):
    """A finished scan: ``record`` (scan.json's dict) and ``folder`` (where it was written)."""

    RECORD = RECORD
    COMMAND = "scan"

    @property
    def layers(self) -> list[dict]:
        return self.record["layers"]

    def layer(self, name: str | int) -> dict:
        """One layer's entry, by name or position."""
        if isinstance(name, int):
            return self.layers[name]
        for entry in self.layers:
            if entry["name"] == name:
                return entry
        names = ", ".join(entry["name"] for entry in self.layers[:12])
        raise FmonnxError(f"no layer named {name!r}; the layers are: {names}")

    def table(self) -> list[dict]:
        """One row per channel of every layer, TABLE_COLUMNS (``pandas.DataFrame(result.table())``)."""
        rows = []
        for entry in self.layers:
            for channel in entry["channels"]:
                rows.append({"layer": entry["name"], **{key: channel[key] for key in TABLE_COLUMNS[1:]}})
        return rows

    def top(self, layer: str | int, channel: int) -> list[dict]:
        """The channel's top-k: image (path), image_id, value, y, x (in the tensor's grid), box [x0, y0, x1, y1]."""
        return self.layer(layer)["channels"][channel]["top"]

    def __repr__(self) -> str:
        record = self.record
        return (
            f"<ScanResult {Path(record['model']).name}: {len(record['layers'])} layers over {record['images']} "
            f"images ({len(record['skipped'])} skipped) in {self.folder}>"
        )

    def _repr_html_(self) -> str:
        record = self.record
        rows = []
        for entry in self.layers:
            c, h, w = entry["shape"]
            rows.append(
                f"<tr><td>{html.escape(entry['name'])}</td><td>{c}x{h}x{w}</td>"
                f"<td>{entry['dead_channels']}</td>"
                f"<td>{(entry['receptive_field'] or {}).get('size', 'whole image')}</td></tr>"
            )
        pictures = []
        for entry in self.layers[:_VIEW_LAYERS]:
            picture = self._embedded(self.folder / entry["crops"], "image/jpeg", entry["name"])
            if picture:
                grid = entry["crops_grid"]
                shown = min(_VIEW_CHANNELS, grid["rows"])
                pictures.append(
                    f"<p>{html.escape(entry['name'])}: top {record['top']} per channel, channels 0 to {shown - 1}</p>"
                    f"<div style=\"height:{grid['step'] * shown + grid['padding']}px;width:{grid['group_step']}px;"
                    f"overflow:hidden\">{picture}</div>"
                )
        link = self._page_link()
        return (
            f"<div><p><b>{html.escape(Path(record['model']).name)}</b>: {record['images']} images scanned, "
            f"{len(record['skipped'])} skipped, top {record['top']} per channel.</p>"
            "<table><tr><th>layer</th><th>C x H x W</th><th>dead</th><th>receptive field</th></tr>"
            f"{''.join(rows)}</table>{''.join(pictures)}{link}</div>"
        )
