"""What ``compare`` returns: compare.json's figures and its folder, with a notebook view.

``CompareResult.record`` is the dict written to ``compare.json``; the most
used parts are properties (``first_divergence``, ``within_tolerance``,
``layers``, ``outputs``, ``unpaired``). In Jupyter it shows itself
(``_repr_html_``): the verdict, the final outputs, the layers ranked by the
metric table's ``RANK_BY`` (SQNR) with the worst ones' pictures and the table's
shown columns (``stages.metrics``), and a link to index.html.

Infinite SQNR (identical tensors) is written as ``1e999`` (stages.json_out.json_pieces): valid
JSON that Python's json and JavaScript's JSON.parse read back as infinity.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from ..stages.json_out import json_text
from ..stages.metrics import RANK_BY, Figures, metric_table
from .folder_result import FolderResult

__all__ = ["RECORD", "CompareResult", "record_json", "format_db", "format_figure"]

RECORD = "compare.json"
_VIEW_PICTURES = 3  # layers whose pictures the notebook view shows, worst first
_VIEW_ROWS = 12
_SUMMARY_OUTPUTS = 3  # final outputs named in the one-line summary


def record_json(record: dict) -> str:
    """compare.json's text: indented, infinities as ``1e999``/``-1e999``, NaN as null (as every fmonnx JSON file)."""
    # json_text keeps each list of plain values on one line ("files" too, which staged_output reads)
    return json_text(record) + "\n"


def format_db(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.1f}"


def format_figure(value, style: str) -> str:
    """A figure as the page shows it, by its metric's ``style``."""
    if value is None:
        return "-"
    if style == "db":
        return format_db(value)
    if style == "cosine":
        return f"{value:.6f}"
    if style == "count":
        return str(value)
    return f"{value:.3g}"


class CompareResult(FolderResult):
    """A finished compare: ``record`` (compare.json's dict) and ``folder`` (where it was written)."""

    RECORD = RECORD
    COMMAND = "compare"

    @property
    def first_divergence(self) -> str | None:
        """The first layer in A's graph order past the tolerance, or None."""
        return self.record["first_divergence"]

    @property
    def within_tolerance(self) -> bool:
        """Every paired layer and every final output within the tolerance."""
        return self.record["within_tolerance"]

    @property
    def layers(self) -> list[dict]:
        return self.record["layers"]

    @property
    def outputs(self) -> list[dict]:
        return self.record["outputs"]

    @property
    def unpaired(self) -> list[dict]:
        return self.record["unpaired"]

    def layer(self, name: str) -> dict:
        for entry in self.layers:
            if entry["name"] == name:
                return entry
        raise KeyError(name)

    def summary(self) -> str:
        """One line: the verdict, the first diverging layer and the final outputs' agreement."""
        record = self.record
        finals = record["outputs"]
        outputs = ", ".join(
            f"{entry['name']} {format_db(Figures(entry).sqnr_db)} dB" for entry in finals[:_SUMMARY_OUTPUTS]
        )
        if len(finals) > _SUMMARY_OUTPUTS:  # a detector's heads, not hundreds of names on one line
            outputs += f" and {len(finals) - _SUMMARY_OUTPUTS} more"
        outputs = f"; final outputs: {outputs}" if outputs else ""
        count = len(record["layers"])
        if record["first_divergence"] is not None:
            figures = Figures(self.layer(record["first_divergence"]))  # compare.json's entry, read typed
            return (
                f"first diverging layer: {record['first_divergence']} (SQNR {format_db(figures.sqnr_db)} dB, max abs "
                f"{figures.max_abs:.3g}, {figures.nonfinite_b} non-finite in B) of {count} compared{outputs}"
            )
        if not record["within_tolerance"]:
            return f"all {count} layers within tolerance, but a final output is not{outputs}"
        return f"all {count} layers and the final outputs within tolerance{outputs}"

    def __repr__(self) -> str:
        return f"<CompareResult {Path(self.record['a']['model']).name} vs {Path(self.record['b']['model']).name}: " \
               f"{self.summary()}>"

    def _repr_html_(self) -> str:
        record = self.record
        verdict = "within tolerance" if record["within_tolerance"] else "NOT within tolerance"
        rows = []
        # the rows compare.json was written with (its "metrics"), as the page reads them
        shown = [row for row in record.get("metrics") or metric_table() if row["column"]]
        ranked = sorted(record["layers"], key=lambda entry: entry[RANK_BY])
        for entry in ranked[:_VIEW_ROWS]:
            style = "" if entry["within_tolerance"] else ' style="color:#b00020"'
            cells = "".join(f"<td>{format_figure(entry.get(row['name']), row['style'])}</td>" for row in shown)
            rows.append(f"<tr{style}><td>{html.escape(entry['name'])}</td>{cells}</tr>")
        titles = "".join(f"<th>{html.escape(row['column'])}</th>" for row in shown)
        pictures = []
        for entry in ranked[:_VIEW_PICTURES]:
            if entry.get("png"):
                path = self.folder / entry["png"]
                pictures.append(self._embedded(path, "image/png", entry["name"], "max-width:100%"))
        link = self._page_link()
        return (
            f"<div><p><b>{html.escape(Path(record['a']['model']).name)}</b> vs "
            f"<b>{html.escape(Path(record['b']['model']).name)}</b>: {verdict}. "
            f"{html.escape(self.summary())}. {len(record['unpaired'])} unpaired.</p>"
            f"<table><tr><th>layer (worst first)</th>{titles}"
            f"</tr>{''.join(rows)}</table>{''.join(pictures)}{link}</div>"
        )
