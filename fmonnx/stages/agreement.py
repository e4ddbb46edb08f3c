"""How far B's activations are from A's (the reference): per-tensor figures, over one or several images.

``Agreement`` accumulates sums over every image it is given (so figures
aggregate over images without keeping any array), then ``figures()`` gives:

- ``max_abs``, ``mean_abs``, ``rmse``: of ``d = b - a``;
- ``rel_l2``: ``||d|| / ||a||``;
- ``cosine``: ``<a, b> / (||a|| ||b||)`` (1 when both are all zero);
- ``sqnr_db``: ``10 log10(||a||^2 / ||d||^2)``, infinite when ``d`` is all zero;
- ``nonfinite_a``, ``nonfinite_b``: counts of inf/NaN on each side (the figures
  above are over the positions finite on both sides);
- ``ref_rms``, ``ref_max_abs``: the reference's own scale.

``Tolerance`` says whether figures are acceptable: SQNR at least ``min_sqnr``
dB, or (with ``rtol``/``atol``) every value within ``atol + rtol * |a|``
(numpy's allclose, counted while accumulating); a side with non-finite values
the other does not have is never within tolerance.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_MIN_SQNR", "Tolerance", "Agreement"]

log = logging.getLogger(__name__)

DEFAULT_MIN_SQNR = 30.0  # dB: the error's energy at most 1/1000 of the signal's
_BLOCK = 1 << 22  # values per float64 block: bounds the temporaries of a huge layer


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

    def accepts(self, figures: dict) -> bool:
        if figures["nonfinite_a"] != figures["nonfinite_b"]:
            return False
        bound = self.sqnr_bound
        if bound is not None and not figures["sqnr_db"] >= bound:
            return False
        return not (self.elementwise and figures.get("outside_tolerance", 0) > 0)


class Agreement:
    """Running sums of one tensor pair over images: ``add(a, b)`` per image, ``figures()`` at the end.

    ``a``, ``b``: arrays of one shape, any float type; for (C, H, W) layers the per-channel error
    energy is kept too (``channel_error``), to pick the worst channels.
    """

    def __init__(self, tolerance: Tolerance | None = None):
        self.tolerance = tolerance or Tolerance()
        self.count = 0
        self.ref_energy = 0.0  # sum a^2
        self.test_energy = 0.0  # sum b^2
        self.cross = 0.0  # sum a*b
        self.error_energy = 0.0  # sum d^2
        self.abs_error = 0.0  # sum |d|
        self.max_abs = 0.0
        self.ref_max_abs = 0.0
        self.nonfinite_a = 0
        self.nonfinite_b = 0
        self.outside = 0
        self.channel_error: np.ndarray | None = None
        self.images = 0
        self.shape: tuple[int, ...] = ()  # of the arrays added

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        if a.shape != b.shape:
            raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
        self.images += 1
        self.shape = tuple(a.shape)
        channels = a.shape[0] if a.ndim == 3 else 0
        if channels:
            if self.channel_error is None:
                self.channel_error = np.zeros(channels, np.float64)
            per_channel = max(1, int(np.prod(a.shape[1:])))
            step = max(1, _BLOCK // per_channel)
            for start in range(0, channels, step):
                block = slice(start, start + step)
                self.channel_error[block] += self._block(a[block], b[block])
        else:
            flat_a, flat_b = a.reshape(-1), b.reshape(-1)
            for start in range(0, flat_a.size, _BLOCK):
                self._block(flat_a[start : start + _BLOCK, None], flat_b[start : start + _BLOCK, None])

    def _block(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Add one block (first axis: channels) to the sums; its per-row error energy."""
        a = np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        finite_a, finite_b = np.isfinite(a), np.isfinite(b)
        self.nonfinite_a += int(a.size - np.count_nonzero(finite_a))
        self.nonfinite_b += int(b.size - np.count_nonzero(finite_b))
        both = finite_a & finite_b
        if not both.all():
            a = np.where(both, a, 0.0)
            b = np.where(both, b, 0.0)
        self.count += int(np.count_nonzero(both))
        difference = b - a
        rows = a.reshape(a.shape[0], -1)
        squared = np.square(difference).reshape(a.shape[0], -1).sum(axis=1)
        self.error_energy += float(squared.sum())
        self.ref_energy += float(np.einsum("ij,ij->", rows, rows))
        flat_b = b.reshape(b.shape[0], -1)
        self.test_energy += float(np.einsum("ij,ij->", flat_b, flat_b))
        self.cross += float(np.einsum("ij,ij->", rows, flat_b))
        magnitude = np.abs(difference)
        self.abs_error += float(magnitude.sum())
        if magnitude.size:
            self.max_abs = max(self.max_abs, float(magnitude.max()))
            reference = np.abs(a)
            self.ref_max_abs = max(self.ref_max_abs, float(reference.max()))
            if self.tolerance.elementwise:
                bound = (self.tolerance.atol or 0.0) + (self.tolerance.rtol or 0.0) * reference
                self.outside += int(np.count_nonzero(magnitude > bound))
        return squared

    def figures(self) -> dict:
        """The figures of the module docstring, plus ``within_tolerance`` (and ``outside_tolerance``,
        the count of values past ``atol + rtol * |a|``, when rtol/atol are set)."""
        count = max(self.count, 1)
        if self.error_energy == 0.0:
            sqnr = math.inf
        elif self.ref_energy == 0.0:
            sqnr = -math.inf
        else:
            sqnr = 10.0 * math.log10(self.ref_energy / self.error_energy)
        if self.ref_energy == 0.0 and self.test_energy == 0.0:
            cosine = 1.0
        elif self.ref_energy == 0.0 or self.test_energy == 0.0:
            cosine = 0.0
        else:
            cosine = self.cross / math.sqrt(self.ref_energy * self.test_energy)
        figures = {
            "max_abs": self.max_abs,
            "mean_abs": self.abs_error / count,
            "rmse": math.sqrt(self.error_energy / count),
            "rel_l2": math.sqrt(self.error_energy / self.ref_energy) if self.ref_energy else (
                0.0 if self.error_energy == 0.0 else math.inf
            ),
            "cosine": max(-1.0, min(1.0, cosine)),
            "sqnr_db": sqnr,
            "nonfinite_a": self.nonfinite_a,
            "nonfinite_b": self.nonfinite_b,
            "ref_rms": math.sqrt(self.ref_energy / count),
            "ref_max_abs": self.ref_max_abs,
        }
        if self.tolerance.elementwise:
            figures["outside_tolerance"] = self.outside
        figures["within_tolerance"] = self.tolerance.accepts(figures)
        return figures

    def worst_channels(self, count: int) -> list[int]:
        """The ``count`` channels with the most error energy, worst first (ties: lower index first)."""
        if self.channel_error is None:
            return []
        order = np.argsort(-self.channel_error, kind="stable")
        return [int(channel) for channel in order[:count]]
