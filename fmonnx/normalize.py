"""Per-channel statistics and the mapping of activations to uint8.

activations: (C, H, W) float, channels first. Methods:

- ``standardize`` (default): the Keras tutorial's arithmetic per channel,
  ``x -= mean; x /= std; x *= 64; x += 128; clip 0..255; astype uint8``.
- ``minmax``: each channel stretched over 0..255.
- ``layer``: one min/max for the whole layer, so channels can be compared.

A constant channel (max == min, e.g. a dead ReLU) never divides by zero: it
becomes a flat tile (128 for standardize, 0 otherwise) and is counted dead.
Non-finite values are drawn as 0 and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["METHODS", "DEFAULT_METHOD", "ChannelStats", "channel_stats", "normalize"]

METHODS = ("standardize", "minmax", "layer")
DEFAULT_METHOD = "standardize"


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel float64 statistics, each of shape (C,); ``dead`` is max == min."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    zero_fraction: np.ndarray
    nonfinite: int

    @property
    def dead(self) -> np.ndarray:
        return self.max == self.min

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


def channel_stats(activations: np.ndarray) -> ChannelStats:
    """Statistics of each channel of a (C, H, W) array (non-finite values count as 0)."""
    values, nonfinite = _finite(activations)
    flat = values.reshape(values.shape[0], -1)
    return ChannelStats(
        mean=flat.mean(axis=1, dtype=np.float64),
        std=flat.std(axis=1, dtype=np.float64),
        min=flat.min(axis=1).astype(np.float64),
        max=flat.max(axis=1).astype(np.float64),
        zero_fraction=(flat == 0).mean(axis=1),
        nonfinite=nonfinite,
    )


def normalize(activations: np.ndarray, method: str = DEFAULT_METHOD, stats: ChannelStats | None = None) -> np.ndarray:
    """Map (C, H, W) activations to uint8 (C, H, W) by ``method`` (see module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown normalization {method!r}; choose one of {METHODS}")
    values, _ = _finite(activations)
    stats = stats or channel_stats(values)
    dead = stats.dead
    if method == "standardize":
        mean = stats.mean.astype(np.float32)[:, None, None]
        std = np.where(dead, 1.0, stats.std).astype(np.float32)[:, None, None]
        scaled = (values - mean) / std * np.float32(64) + np.float32(128)
        flat_value = 128
    else:
        if method == "minmax":
            low = stats.min[:, None, None]
            span = (stats.max - stats.min)[:, None, None]
        else:
            low = np.float64(stats.min.min()) if stats.min.size else 0.0
            span = np.float64(stats.max.max() - low) if stats.max.size else 0.0
            dead = np.full(values.shape[0], span == 0)
        span = np.where(span == 0, 1.0, span)
        scaled = (values - np.float32(low)) / np.float32(span) * np.float32(255)
        flat_value = 0
    result = np.clip(scaled, 0, 255).astype(np.uint8)
    if dead.any():
        result[dead] = flat_value
    return result
