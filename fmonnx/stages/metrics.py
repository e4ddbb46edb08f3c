"""compare's metrics as one table: each row says how a figure is finished from the running sums.

Only metrics built from running sums fit the streaming design: images stream through and nothing is
kept per image or per value, so a metric must be a function of sums that ``Agreement.add`` keeps
(energies, cross products, counts, maxima). A median or a percentile does not fit.

A row (``Metric``): its name (the key in compare.json), what it means, how it is finished from the
sums, whether the noise floor (``--repeat``) reports it, and how the page and the notebook show it
(``column``: a title, None for not shown; ``style``: ``db``, ``num``, ``cosine`` or ``count``).
``Figures`` is the typed result: one attribute per row (``figures.sqnr_db``), ``as_record()`` for
JSON, and read as a mapping too (``figures["sqnr_db"]``). compare.json lists the rows it was
written with (``metrics``), which the page reads: a new metric is one row here.

``Tolerance`` says whether figures are acceptable: SQNR at least ``min_sqnr`` dB, or (with
``rtol``/``atol``) every value within ``atol + rtol * |a|`` (numpy's allclose, counted while
accumulating); a side with non-finite values the other does not have is never within tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_MIN_SQNR", "Metric", "METRICS", "RANK_BY", "Figures", "Tolerance", "metric_table"]

DEFAULT_MIN_SQNR = 30.0  # dB: the error's energy at most 1/1000 of the signal's
RANK_BY = "sqnr_db"  # the figure layers are ranked by, worst (lowest) first


@dataclass(frozen=True)
class Tolerance:
    """``min_sqnr`` None: DEFAULT_MIN_SQNR unless ``rtol`` or ``atol`` is given (then allclose alone)."""

    min_sqnr: float | None = None
    rtol: float | None = None
    atol: float | None = None

    @property
    def sqnr_bound(self) -> float | None:
        if self.min_sqnr is not None:
            return self.min_sqnr
        return DEFAULT_MIN_SQNR if self.rtol is None and self.atol is None else None

    @property
    def elementwise(self) -> bool:
        return self.rtol is not None or self.atol is not None

    def describe(self) -> dict:
        return {"min_sqnr": self.sqnr_bound, "rtol": self.rtol, "atol": self.atol}

    def accepts(self, figures: Figures | Mapping) -> bool:
        if not isinstance(figures, Figures):  # a compare.json entry read back
            figures = Figures(dict(figures))
        if figures.nonfinite_a != figures.nonfinite_b:
            return False
        bound = self.sqnr_bound
        if bound is not None and not figures.sqnr_db >= bound:
            return False
        return not (self.elementwise and (figures.get("outside_tolerance") or 0) > 0)


@dataclass(frozen=True)
class Metric:
    """One figure: ``finish(sums)`` from an ``Agreement``'s running sums; ``applies(tolerance)`` False
    leaves it out (``outside_tolerance`` exists only with rtol/atol)."""

    name: str
    doc: str
    finish: Callable[[Any], float | int]
    column: str | None = None
    style: str = "num"
    noise: bool = False
    applies: Callable[[Tolerance], bool] | None = None

    def value(self, sums) -> float | int:
        value = self.finish(sums)
        return int(value) if self.style == "count" else float(value)


def _count(sums) -> int:
    return max(sums.count, 1)


def _rel_l2(sums) -> float:
    if sums.ref_energy:
        return math.sqrt(sums.error_energy / sums.ref_energy)
    return 0.0 if sums.error_energy == 0.0 else math.inf


def _cosine(sums) -> float:
    if sums.ref_energy == 0.0 and sums.test_energy == 0.0:
        return 1.0
    if sums.ref_energy == 0.0 or sums.test_energy == 0.0:
        return 0.0
    return max(-1.0, min(1.0, sums.cross / math.sqrt(sums.ref_energy * sums.test_energy)))


def _sqnr(sums) -> float:
    if sums.error_energy == 0.0:
        return math.inf
    if sums.ref_energy == 0.0:
        return -math.inf
    return 10.0 * math.log10(sums.ref_energy / sums.error_energy)


# d = b - a, over the positions finite on both sides; the order is compare.json's
METRICS: list[Metric] = [
    Metric("max_abs", "max |d|", lambda s: s.max_abs, "max abs", noise=True),
    Metric("mean_abs", "mean |d|", lambda s: s.abs_error / _count(s), "mean abs"),
    Metric("rmse", "sqrt(mean d^2)", lambda s: math.sqrt(s.error_energy / _count(s)), "RMSE"),
    Metric("rel_l2", "||d|| / ||a||", _rel_l2, "rel L2"),
    Metric("cosine", "<a, b> / (||a|| ||b||), 1 when both are all zero", _cosine, "cosine", "cosine"),
    Metric("sqnr_db", "10 log10(||a||^2 / ||d||^2), infinite when d is all zero", _sqnr, "SQNR dB", "db", True),
    Metric("nonfinite_a", "count of non-finite values in A", lambda s: s.nonfinite_a, "non-finite A", "count"),
    Metric("nonfinite_b", "count of non-finite values in B", lambda s: s.nonfinite_b, "non-finite B", "count"),
    Metric("ref_rms", "A's own RMS", lambda s: math.sqrt(s.ref_energy / _count(s)), "A's RMS"),
    Metric("ref_max_abs", "A's own max |a|", lambda s: s.ref_max_abs),
    Metric("outside_tolerance", "count of values past atol + rtol |a|", lambda s: s.outside, None, "count",
           applies=lambda tolerance: tolerance.elementwise),
]


def metric_table(metrics: list[Metric] | None = None) -> list[dict]:
    """The rows as compare.json lists them, for the page: name, doc, column title, style."""
    return [{"name": m.name, "doc": m.doc, "column": m.column, "style": m.style} for m in metrics or METRICS]


class Figures(Mapping):
    """The finished figures of one tensor pair: ``figures.sqnr_db`` (typed below for the built-in rows),
    ``figures["sqnr_db"]``, ``as_record()`` (compare.json's entry, in the table's order) and
    ``within_tolerance``."""

    max_abs: float
    mean_abs: float
    rmse: float
    rel_l2: float
    cosine: float
    sqnr_db: float
    nonfinite_a: int
    nonfinite_b: int
    ref_rms: float
    ref_max_abs: float
    within_tolerance: bool

    def __init__(self, values: dict):
        self.__dict__["_values"] = values

    @classmethod
    def finish(cls, sums, tolerance: Tolerance, metrics: list[Metric] | None = None) -> Figures:
        values = {m.name: m.value(sums) for m in metrics or METRICS if m.applies is None or m.applies(tolerance)}
        figures = cls(values)
        values["within_tolerance"] = tolerance.accepts(figures)
        return figures

    def __getattr__(self, name: str):
        if name == "_values":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError("Figures are read-only")

    def __getitem__(self, name: str):
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Figures({self._values!r})"

    def as_record(self) -> dict:
        return dict(self._values)

    def noise_record(self, metrics: list[Metric] | None = None) -> dict:
        """The figures a noise floor reports (the rows marked ``noise``)."""
        return {m.name: self._values[m.name] for m in metrics or METRICS if m.noise}
