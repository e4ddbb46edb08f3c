"""Per-channel statistics and the mapping of activations to uint8.

activations: (C, H, W) float, channels first. Methods:

- ``standardize`` (default): the Keras tutorial's arithmetic per channel,
  ``x -= mean; x /= std; x *= 64; x += 128; clip 0..255; astype uint8``.
- ``minmax``: each channel stretched over 0..255.
- ``layer``: one min/max for the whole layer, so channels can be compared.

A constant channel (max == min, e.g. a dead ReLU) never divides by zero: it
becomes a flat tile (128 for standardize, 0 otherwise) and is counted dead.
So is a *flat* channel, constant up to float32 rounding (``flat_spread``: e.g.
1000 +- 1e-5, an interpolation's residue): stretched, its rounding noise would
fill 0..255. The one decision serves every method, the manifest and the page.
Non-finite values are drawn as 0 and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import choices

__all__ = [
    "METHODS", "DEFAULT_METHOD", "CHUNK_VALUES", "FLAT_TOLERANCE", "ChannelStats", "channel_stats", "flat_spread",
    "normalize",
]

METHODS, DEFAULT_METHOD = choices.NORMALIZATIONS, choices.DEFAULT_NORMALIZATION

# float32 resolves 2**-23 ~ 1.2e-7 of a value's magnitude: a spread under ~8 of those steps
# is rounding left by the arithmetic, not signal (real variation, e.g. 1e-3 +- 1e-4, is 1e-1)
FLAT_TOLERANCE = 1e-6


def flat_spread(low, high) -> np.ndarray:
    """True where ``high - low`` (a channel's max - min) is at most FLAT_TOLERANCE of its magnitude.

    The magnitude is ``max(|low|, |high|)``, so an exactly constant channel (all-zero included) is
    flat too. max - min rather than std: it is the larger spread, so no channel with one real
    outlier is flattened, and it gives each channel one answer whatever the method.
    """
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return high - low <= FLAT_TOLERANCE * np.maximum(np.abs(low), np.abs(high))


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel float64 statistics, each of shape (C,).

    ``dead``: drawn as a flat tile, max == min or within float32 rounding of it (``flat_spread``);
    ``flat``: the dead channels that are so only by that rounding (max != min).
    """

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    zero_fraction: np.ndarray
    nonfinite: int

    @property
    def dead(self) -> np.ndarray:
        return flat_spread(self.min, self.max)

    @property
    def flat(self) -> np.ndarray:
        return self.dead & (self.max != self.min)

    def summary(self) -> dict:
        """Layer-level numbers for the manifest."""
        return {
            "min": float(self.min.min()) if self.min.size else 0.0,
            "max": float(self.max.max()) if self.max.size else 0.0,
            "mean": float(self.mean.mean()) if self.mean.size else 0.0,
            "zero_fraction": float(self.zero_fraction.mean()) if self.zero_fraction.size else 0.0,
            "dead_channels": int(self.dead.sum()),
            "nonfinite_values": self.nonfinite,
        }


def _finite(activations: np.ndarray) -> tuple[np.ndarray, int]:
    values = np.asarray(activations, dtype=np.float32)
    finite = np.isfinite(values)
    if finite.all():
        return values, 0
    return np.where(finite, values, np.float32(0)), int(values.size - finite.sum())


CHUNK_VALUES = 1 << 22  # values worked on at a time: a 2048 x 2048 input's layers need no full-size temporaries


def _chunks(count: int, per_channel: int) -> list[slice]:
    step = max(1, CHUNK_VALUES // max(per_channel, 1))
    return [slice(start, start + step) for start in range(0, count, step)] or [slice(0, 0)]


def _chunk_stats(activations: np.ndarray) -> tuple[np.ndarray, ...]:
    values = np.asarray(activations, dtype=np.float32)
    flat = values.reshape(values.shape[0], -1)
    # numpy sums float32 rows pairwise: within 1e-7 of a float64 sum, at half the time
    mean = flat.mean(axis=1).astype(np.float64)
    nonfinite = 0
    if not np.isfinite(mean).all():  # a finite sum proves every value finite; an overflow lands here too
        values, nonfinite = _finite(values)
        flat = values.reshape(values.shape[0], -1)
        mean = flat.mean(axis=1, dtype=np.float64)
    return (
        mean,
        _std(flat, mean),
        flat.min(axis=1).astype(np.float64),
        flat.max(axis=1).astype(np.float64),
        (flat == 0).mean(axis=1),
        nonfinite,
    )


def channel_stats(activations: np.ndarray) -> ChannelStats:
    """Statistics of each channel of a (C, H, W) array (non-finite values count as 0)."""
    per_channel = int(np.prod(activations.shape[1:]))
    parts = [_chunk_stats(activations[part]) for part in _chunks(activations.shape[0], per_channel)]
    columns = [np.concatenate([part[index] for part in parts]) for index in range(5)]
    return ChannelStats(*columns, nonfinite=sum(part[5] for part in parts))


def _std(flat: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Per-row standard deviation (float64) given the row means.

    Squares of the centred values are float32 and summed in float64: within
    1e-8 of numpy's all-float64 ``std`` at half its time and memory. A row
    whose values differ from its mean by more than ~1.8e19 overflows float32
    when squared (or centred, near float32's limit): only such rows are done
    again in float64, where the same values are finite.
    """
    if flat.shape[1] == 0:
        return np.full(flat.shape[0], np.nan)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught below, by its result
        squares = np.subtract(flat, mean.astype(np.float32)[:, None])
        squares *= squares
        std = np.sqrt(squares.sum(axis=1, dtype=np.float64) / flat.shape[1])
    overflowed = ~np.isfinite(std)
    if overflowed.any():
        centred = np.subtract(flat[overflowed], mean[overflowed][:, None], dtype=np.float64)
        std[overflowed] = np.sqrt((centred * centred).sum(axis=1) / flat.shape[1])
    return std


def normalize(
    activations: np.ndarray,
    method: str = DEFAULT_METHOD,
    stats: ChannelStats | None = None,
    channels: np.ndarray | slice | None = None,
) -> np.ndarray:
    """Map (C, H, W) activations to uint8 (C, H, W) by ``method`` (see module docstring).

    ``channels`` (indices or a slice) maps only those channels, in that order:
    the result is (len(channels), H, W). ``stats`` and the ``layer`` scale are
    still those of the whole layer.
    """
    if method not in METHODS:
        raise ValueError(f"unknown normalization {method!r}; choose one of {METHODS}")
    stats = stats or channel_stats(activations)
    picked = np.arange(activations.shape[0])[slice(None) if channels is None else channels]
    result = np.empty((picked.size, *activations.shape[1:]), dtype=np.uint8)
    for part in _chunks(picked.size, int(np.prod(activations.shape[1:]))):
        result[part] = _normalize_chunk(activations, method, stats, picked[part])
    return result


def _normalize_chunk(activations: np.ndarray, method: str, stats: ChannelStats, picked: np.ndarray) -> np.ndarray:
    if picked.size and np.array_equal(picked, np.arange(picked[0], picked[-1] + 1)):
        values = np.asarray(activations[picked[0] : picked[-1] + 1], dtype=np.float32)  # a view: no copy
    else:
        values = np.asarray(activations[picked], dtype=np.float32)
    if stats.nonfinite:
        values, _ = _finite(values)
    dead = stats.dead[picked]
    # the tutorial's arithmetic in its order, in place on one float32 buffer
    if method == "standardize":
        mean = stats.mean[picked].astype(np.float32)[:, None, None]
        std = np.where(dead, 1.0, stats.std[picked]).astype(np.float32)[:, None, None]
        scaled = np.subtract(values, mean)
        scaled /= std
        scaled *= np.float32(64)
        scaled += np.float32(128)
        flat_value = 128
    else:
        if method == "minmax":
            low = stats.min[picked][:, None, None]
            span = (stats.max - stats.min)[picked][:, None, None]
        else:
            low = np.float64(stats.min.min()) if stats.min.size else 0.0
            high = np.float64(stats.max.max()) if stats.max.size else 0.0
            span = high - low
            dead = np.full(values.shape[0], bool(flat_spread(low, high)))  # the whole layer, as one channel
        span = np.where(span == 0, 1.0, span)
        scaled = np.subtract(values, np.float32(low) if np.ndim(low) == 0 else low.astype(np.float32))
        scaled /= np.float32(span) if np.ndim(span) == 0 else span.astype(np.float32)
        scaled *= np.float32(255)
        flat_value = 0
    np.clip(scaled, 0, 255, out=scaled)
    result = scaled.astype(np.uint8)
    if dead.any():
        result[dead] = flat_value
    return result
