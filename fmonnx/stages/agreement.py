"""How far B's activations are from A's (the reference): running sums over one or several images.

``Agreement`` accumulates sums over every image it is given (so figures aggregate over images
without keeping any array), then ``figures()`` finishes them through the metric table
(``stages.metrics``: what each figure means, and why only running sums fit). For (C, H, W) layers
it keeps each channel's error and reference energy too: ``worst_channels`` over all images.
``Tolerance`` and ``DEFAULT_MIN_SQNR`` live in ``stages.metrics``; re-exported here.
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import DEFAULT_MIN_SQNR, Figures, Tolerance

__all__ = ["DEFAULT_MIN_SQNR", "Tolerance", "Agreement", "Figures"]

_BLOCK = 1 << 22  # values per float64 block: bounds the temporaries of a huge layer


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
        self.channel_error: np.ndarray | None = None  # per channel sum d^2
        self.channel_ref: np.ndarray | None = None  # per channel sum a^2
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
                self.channel_ref = np.zeros(channels, np.float64)
            per_channel = max(1, int(np.prod(a.shape[1:])))
            step = max(1, _BLOCK // per_channel)
            for start in range(0, channels, step):
                block = slice(start, start + step)
                error, reference = self._block(a[block], b[block])
                self.channel_error[block] += error
                self.channel_ref[block] += reference
        else:
            flat_a, flat_b = a.reshape(-1), b.reshape(-1)
            for start in range(0, flat_a.size, _BLOCK):
                self._block(flat_a[start : start + _BLOCK, None], flat_b[start : start + _BLOCK, None])

    def _block(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add one block (first axis: channels) to the sums; its per-row error and reference energy."""
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
        reference_rows = np.einsum("ij,ij->i", rows, rows)
        self.ref_energy += float(reference_rows.sum())
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
        return squared, reference_rows

    def figures(self) -> Figures:
        """The metric table's figures (``stages.metrics``), plus ``within_tolerance`` (and
        ``outside_tolerance``, the count of values past ``atol + rtol * |a|``, when rtol/atol are set)."""
        return Figures.finish(self, self.tolerance)

    def worst_channels(self, count: int) -> list[int]:
        """The ``count`` channels with the most error energy, worst first (ties: lower index first)."""
        if self.channel_error is None:
            return []
        order = np.argsort(-self.channel_error, kind="stable")
        return [int(channel) for channel in order[:count]]

    def channel_record(self, count: int) -> list[dict]:
        """The ``count`` worst channels over every image added (most error energy first, those with
        any error), each with its own ``rel_l2`` (``||d_c|| / ||a_c||``, the layer's on that channel alone)."""
        records = []
        for channel in self.worst_channels(count):
            error, reference = float(self.channel_error[channel]), float(self.channel_ref[channel])
            if error == 0.0:  # the rest agree exactly: not worth naming
                break
            if reference:
                rel = math.sqrt(error / reference)
            else:
                rel = 0.0 if error == 0.0 else math.inf
            records.append({"channel": channel, "rel_l2": rel})
        return records
