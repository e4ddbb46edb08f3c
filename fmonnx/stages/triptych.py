"""Draw a compared layer: its worst channels as A | B | |A - B|, one row per channel.

Pure: (C, H, W) float32 arrays in, one palette-index picture out (written by
``png.encode_png`` with ``PALETTE``). A and B share one scale per channel,
A's own min..max (B's values past it saturate), so a difference of level shows;
``|A - B|`` is drawn with a sequential colormap from 0 (black) to A's range
for that channel: the reference's scale, so a layer that agrees looks dark.

Palette: indices 0..126 the values' colormap (viridis), 127..253 the
difference's (magma), 254 background, 255 ink (as ``colormap.BACKGROUND``/``INK``).
"""

from __future__ import annotations

import numpy as np

from .colormap import BACKGROUND, INK, lookup_table
from .png import titled

__all__ = ["VALUE_CMAP", "DIFFERENCE_CMAP", "PALETTE", "draw_triptych"]

VALUE_CMAP = "viridis"
DIFFERENCE_CMAP = "magma"
_LEVELS = 127
_DIFFERENCE_BASE = _LEVELS
_MIN_TILE = 48  # smaller maps are upscaled to at least this many pixels a side
_MAX_TILE = 256  # larger maps keep every n-th value
_GAP = 6  # pixels between the three panels
_ROW_GAP = 3


def _palette() -> bytes:
    def sampled(name: str) -> np.ndarray:
        table = lookup_table(name)
        return table[np.round(np.linspace(0, len(table) - 1, _LEVELS)).astype(int)]

    rgb = np.concatenate([sampled(VALUE_CMAP), sampled(DIFFERENCE_CMAP)]).astype(np.uint8)
    assert len(rgb) == BACKGROUND and INK == BACKGROUND + 1
    return rgb.tobytes() + bytes((255, 255, 255)) + bytes((30, 30, 30))


PALETTE = _palette()


def _levels(values: np.ndarray, low: float, span: float, base: int) -> np.ndarray:
    scaled = np.nan_to_num((values.astype(np.float32) - np.float32(low)) / np.float32(span), nan=1.0, posinf=1.0,
                           neginf=0.0)
    return (np.clip(scaled, 0.0, 1.0) * (_LEVELS - 1) + 0.5).astype(np.uint8) + np.uint8(base)


def _resized(tile: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = (np.arange(height) * tile.shape[0] // height).clip(0, tile.shape[0] - 1)
    columns = (np.arange(width) * tile.shape[1] // width).clip(0, tile.shape[1] - 1)
    return tile[rows][:, columns]


def _tile_size(height: int, width: int) -> tuple[int, int]:
    longest = max(height, width, 1)
    if longest < _MIN_TILE:
        factor = -(-_MIN_TILE // longest)
        return height * factor, width * factor
    if longest > _MAX_TILE:
        step = -(-longest // _MAX_TILE)
        return -(-height // step), -(-width // step)
    return height, width


def draw_triptych(a: np.ndarray, b: np.ndarray, channels: list[int], title: str | None = None) -> np.ndarray:
    """(C, H, W) ``a`` (reference) and ``b`` -> a palette-index picture: one row per channel of
    ``channels`` (worst first), each ``A | B | |A - B|`` (see the module docstring)."""
    _, height, width = a.shape
    tile_height, tile_width = _tile_size(height, width)
    row_width = 3 * tile_width + 2 * _GAP
    rows = []
    for channel in channels:
        reference = a[channel]
        finite = reference[np.isfinite(reference)]
        low = float(finite.min()) if finite.size else 0.0
        high = float(finite.max()) if finite.size else 0.0
        span = high - low if high > low else (abs(high) or 1.0)  # a flat channel: its value, or 1
        difference = np.abs(b[channel].astype(np.float32) - reference.astype(np.float32))
        panels = [
            _levels(reference, low, span, 0),
            _levels(b[channel], low, span, 0),
            _levels(difference, 0.0, span, _DIFFERENCE_BASE),
        ]
        row = np.full((tile_height + _ROW_GAP, row_width), BACKGROUND, np.uint8)
        for index, panel in enumerate(panels):
            left = index * (tile_width + _GAP)
            row[:tile_height, left : left + tile_width] = _resized(panel, tile_height, tile_width)
        rows.append(row)
    body = np.concatenate(rows, axis=0) if rows else np.full((1, row_width), BACKGROUND, np.uint8)
    picture = titled(body, "A  |  B  |  |A - B|    one row per channel, worst first")
    return titled(picture, title) if title else picture
