"""The mergeable state of a scan: per channel statistics and top-k lists, updated per batch, merged exactly.

Per layer, per channel (C of them), arrays only, so memory does not grow with the collection:

- ``count``, ``mean``, ``m2``: values seen, their mean and sum of squared deviations, combined with
  Chan et al.'s pairwise update (``n = na + nb``, ``d = mb - ma``, ``mean = ma + d * nb / n``,
  ``m2 = m2a + m2b + d * d * na * nb / n``); ``std = sqrt(m2 / count)``.
- ``minimum``, ``maximum``; ``zeros`` (values equal to 0); ``fires`` (images where the channel's
  maximum is above 0); dead: never above zero (``maximum <= 0``).
- ``top_value``, ``top_image``, ``top_y``, ``top_x``: (C, k), the k images with the highest spatial
  maximum, best first, ties broken by the smaller image id, with where the maximum is in the
  tensor's grid (its first occurrence in row-major order). One entry per image and channel, and a
  total order on (value, image id): the top-k of a union does not depend on how it was split or in
  which order the parts are merged.

The scan-wide part: ``done`` (a flag per image id, so a resumed or distributed scan knows what is
scanned), ``skipped`` ({image id: reason}). Everything is exact and order-independent except the
floating-point rounding of ``mean``/``m2``, which differs between merge orders in the last bits
(relative 1e-15); scan.json reports them to 7 significant digits, the precision of the float32 maps.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, fields

import numpy as np

__all__ = ["ChannelNumbers", "LayerTally", "LayerDelta", "ScanTally", "ScanDelta", "layer_delta", "NO_IMAGE"]


NO_IMAGE = np.iinfo(np.int64).max  # an empty top-k slot sorts after every image


@dataclass
class ChannelNumbers:
    """A layer's per-channel numbers (see the module docstring): moments and extremes (arrays of C),
    top-k lists (C, k) and the map's size; what a LayerTally holds and a LayerDelta adds to one."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    zeros: np.ndarray
    fires: np.ndarray
    top_value: np.ndarray
    top_image: np.ndarray
    top_y: np.ndarray
    top_x: np.ndarray
    height: int = 0  # the map's size, once seen
    width: int = 0


@dataclass
class LayerTally(ChannelNumbers):
    """One layer's per-channel state (see the module docstring); arrays of C rows."""

    @classmethod
    def empty(cls, channels: int, k: int) -> LayerTally:
        return cls(
            np.zeros(channels), np.zeros(channels), np.zeros(channels),
            np.full(channels, np.inf), np.full(channels, -np.inf), np.zeros(channels),
            np.zeros(channels, np.int64),
            np.full((channels, k), -np.inf), np.full((channels, k), NO_IMAGE, np.int64),
            np.zeros((channels, k), np.int32), np.zeros((channels, k), np.int32),
        )

    @property
    def channels(self) -> int:
        return self.mean.shape[0]

    @property
    def k(self) -> int:
        return self.top_value.shape[1]

    def _combine_moments(self, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.count + count
        safe = np.where(total > 0, total, 1.0)
        # huge or infinite activations give inf/NaN moments: data for scan.json, not a warning on stderr
        with np.errstate(over="ignore", invalid="ignore"):
            delta = mean - self.mean
            self.mean = np.where(total > 0, self.mean + delta * count / safe, 0.0)
            self.m2 = self.m2 + m2 + delta * delta * self.count * count / safe
        self.count = total

    def _combine_top(self, value: np.ndarray, image: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
        """Merge candidate columns (C, m) into the top-k, only on rows where one can enter."""
        value = np.where(np.isnan(value), -np.inf, value)
        kth_value, kth_image = self.top_value[:, -1:], self.top_image[:, -1:]
        enters = (value > kth_value) | ((value == kth_value) & (image < kth_image))
        rows = np.flatnonzero(enters.any(axis=1))
        if rows.size == 0:
            return
        values = np.concatenate([self.top_value[rows], value[rows]], axis=1)
        images = np.concatenate([self.top_image[rows], image[rows]], axis=1)
        ys = np.concatenate([self.top_y[rows], y[rows]], axis=1)
        xs = np.concatenate([self.top_x[rows], x[rows]], axis=1)
        order = np.lexsort((images, -values), axis=1)[:, : self.k]
        self.top_value[rows] = np.take_along_axis(values, order, 1)
        self.top_image[rows] = np.take_along_axis(images, order, 1)
        self.top_y[rows] = np.take_along_axis(ys, order, 1)
        self.top_x[rows] = np.take_along_axis(xs, order, 1)

    def _add(self, numbers: ChannelNumbers) -> None:
        """Fold in ``numbers`` (a batch's delta or another state: the same sums either way)."""
        self._combine_moments(numbers.count, numbers.mean, numbers.m2)
        self.minimum = np.minimum(self.minimum, numbers.minimum)
        self.maximum = np.maximum(self.maximum, numbers.maximum)
        self.zeros = self.zeros + numbers.zeros
        self.fires = self.fires + numbers.fires
        self._combine_top(numbers.top_value, numbers.top_image, numbers.top_y, numbers.top_x)

    def update(self, ids: np.ndarray, stats: dict[str, np.ndarray], height: int, width: int) -> None:
        """Add one batch: ``ids`` (N,) image ids; ``stats``: reduce.STATISTICS -> (N, C) arrays of a map of
        ``height`` x ``width``."""
        self.apply(layer_delta(ids, stats, height, width))

    def apply(self, delta: LayerDelta) -> None:
        """Add a batch's numbers (``layer_delta``), or what another state sent (``filtered``)."""
        self.height, self.width = delta.height, delta.width
        self._add(delta)

    def filtered(self, delta: LayerDelta) -> LayerDelta:
        """Apply ``delta`` here and return it with only the top-k candidates that entered this state's
        lists: the others cannot enter any merge of states containing this one (a Ray actor sends
        this, so the top-k part of what leaves it shrinks to almost nothing once its lists fill)."""
        self.apply(delta)
        kth_value, kth_image = self.top_value[:, -1:], self.top_image[:, -1:]
        value = np.where(np.isnan(delta.top_value), -np.inf, delta.top_value)
        entered = (value > kth_value) | ((value == kth_value) & (delta.top_image <= kth_image))
        rows = np.flatnonzero(entered.any(axis=1))
        width = int(entered[rows].sum(axis=1).max()) if rows.size else 0
        order = np.argsort(~entered[rows], axis=1, kind="stable")[:, :width]  # entered columns first

        def keep(array: np.ndarray, empty) -> np.ndarray:
            kept = np.full((self.channels, width), empty, array.dtype)
            taken = np.take_along_axis(array[rows], order, 1)
            mask = np.take_along_axis(entered[rows], order, 1)
            kept[rows] = np.where(mask, taken, empty)
            return kept

        return LayerDelta(
            delta.count, delta.mean, delta.m2, delta.minimum, delta.maximum, delta.zeros, delta.fires,
            keep(delta.top_value, -np.inf), keep(delta.top_image, NO_IMAGE), keep(delta.top_y, 0),
            keep(delta.top_x, 0), delta.height, delta.width,
        )

    def merge(self, other: LayerTally) -> None:
        """Add ``other`` (the same layer, disjoint images) into this one."""
        self.height, self.width = self.height or other.height, self.width or other.width
        self._add(other)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.m2, 0.0) / np.where(self.count > 0, self.count, 1.0))

    @property
    def dead(self) -> np.ndarray:
        return ~(self.maximum > 0)

    @property
    def zero_fraction(self) -> np.ndarray:
        return self.zeros / np.where(self.count > 0, self.count, 1.0)


@dataclass
class LayerDelta(ChannelNumbers):
    """One batch's numbers for a layer, ready to be applied to a LayerTally: its moments and extremes
    (arrays of C) and top-k candidates (C, m)."""


def layer_delta(ids: np.ndarray, stats: dict[str, np.ndarray], height: int, width: int) -> LayerDelta:
    """A batch's LayerDelta from the reductions' (N, C) arrays (reduce.STATISTICS) of maps of height x width."""
    n = float(height * width)
    mean = stats["mean"].astype(np.float64).reshape(stats["max"].shape)  # reduce.py's mean is (N, C, 1)
    batch_mean = mean.mean(axis=0)
    batch_m2 = stats["m2"].astype(np.float64).sum(axis=0) + n * ((mean - batch_mean) ** 2).sum(axis=0)
    maxima = stats["max"].astype(np.float64)
    flat = stats["argmax"].astype(np.int64)
    images = np.broadcast_to(ids.astype(np.int64)[:, None], maxima.shape)
    return LayerDelta(
        np.full(maxima.shape[1], n * len(ids)), batch_mean, batch_m2,
        stats["min"].astype(np.float64).min(axis=0), maxima.max(axis=0),
        stats["zeros"].astype(np.float64).sum(axis=0), (maxima > 0).sum(axis=0),
        np.ascontiguousarray(maxima.T), np.ascontiguousarray(images.T),
        (flat // width).T.astype(np.int32), (flat % width).T.astype(np.int32), height, width,
    )


@dataclass
class ScanDelta:
    """What one batch adds to a scan: a LayerDelta per layer, the ids it covered, those it skipped."""

    layers: list[LayerDelta]
    ids: np.ndarray
    skipped: dict[int, str]


# what a checkpoint stores per layer: every per-channel array (the map's size goes in the meta)
_ARRAYS = tuple(item.name for item in fields(ChannelNumbers) if item.name not in ("height", "width"))


@dataclass
class ScanTally:
    """The whole scan's state: a LayerTally per layer, which image ids are done, which were skipped."""

    layers: list[LayerTally]
    done: np.ndarray  # bool, one per image id of the collection
    skipped: dict[int, str] = field(default_factory=dict)

    @classmethod
    def empty(cls, channels: list[int], k: int, images: int) -> ScanTally:
        return cls([LayerTally.empty(c, k) for c in channels], np.zeros(images, bool))

    @property
    def scanned(self) -> int:
        """Images whose numbers are in the state (done and not skipped)."""
        return int(self.done.sum()) - len(self.skipped)

    def apply(self, delta: ScanDelta) -> None:
        """Add one batch (``ScanDelta``): its layers' numbers (when any image of it was read), ids and skips."""
        if delta.layers:
            for layer, part in zip(self.layers, delta.layers):
                layer.apply(part)
        self.done[delta.ids] = True
        self.skipped.update(delta.skipped)

    def merge(self, other: ScanTally) -> None:
        """Add ``other`` (disjoint images of the same collection and layers) into this state."""
        for mine, theirs in zip(self.layers, other.layers):
            mine.merge(theirs)
        self.done |= other.done
        self.skipped.update(other.skipped)

    def to_bytes(self, meta: dict) -> bytes:
        """The state and ``meta`` (what it was made from) as .npz bytes, for a checkpoint."""
        arrays = {"done": self.done, "meta": np.array(json.dumps({
            **meta, "skipped": {str(key): value for key, value in self.skipped.items()},
            "sizes": [[layer.height, layer.width] for layer in self.layers],
        }))}
        for index, layer in enumerate(self.layers):
            for name in _ARRAYS:
                arrays[f"{index}/{name}"] = getattr(layer, name)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[ScanTally, dict]:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            layers = []
            for index, (height, width) in enumerate(meta["sizes"]):
                arrays = {name: stored[f"{index}/{name}"] for name in _ARRAYS}
                layers.append(LayerTally(**arrays, height=height, width=width))
            state = cls(layers, stored["done"].copy(), {int(key): value for key, value in meta["skipped"].items()})
        return state, meta
