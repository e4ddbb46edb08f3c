"""Lay a layer's channel images out as one picture: a grid or the tutorial's belt.

channels: (C, H, W) uint8 palette indices, channels first. Tiles are
upscaled by a whole factor when small (a 7x7 map is unreadable at 7 pixels)
and subsampled when the picture would be huge; the factor is recorded so a
pixel can be traced back to its channel and position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["LAYOUTS", "DEFAULT_LAYOUT", "Grid", "tile"]

LAYOUTS = ("grid", "belt")
DEFAULT_LAYOUT = "grid"
MIN_TILE = 32  # smaller maps are upscaled to at least this many pixels
MAX_SIDE = 8192  # pictures are kept below this many pixels a side


@dataclass(frozen=True)
class Grid:
    """A tiled picture; channel k sits at row k // columns, column k % columns.

    ``scale`` > 1 means each activation is a scale x scale block; < 1 means
    every (1/scale)-th activation is shown.
    """

    image: np.ndarray
    columns: int
    rows: int
    tile_height: int
    tile_width: int
    scale: float
    padding: int

    def describe(self) -> dict:
        return {
            "columns": self.columns,
            "rows": self.rows,
            "tile": [self.tile_height, self.tile_width],
            "scale": self.scale,
            "padding": self.padding,
        }


def _columns(count: int, height: int, width: int, layout: str) -> int:
    if layout == "belt":
        return count
    # near-square picture: columns * width ~ rows * height
    return max(1, min(count, math.ceil(math.sqrt(count * height / width))))


def tile(
    channels: np.ndarray,
    layout: str = DEFAULT_LAYOUT,
    padding: int = 1,
    pad_value: int = 0,
    min_tile: int = MIN_TILE,
    max_side: int = MAX_SIDE,
) -> Grid:
    """Tile (C, H, W) uint8 images into one (rows, columns) picture with ``padding`` between tiles."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    count, height, width = channels.shape
    columns = _columns(count, height, width, layout)
    rows = math.ceil(count / columns)

    scale: float = 1
    if max(height, width) < min_tile:
        scale = math.ceil(min_tile / max(height, width))
    longest = max(columns * (width * scale + padding), rows * (height * scale + padding))
    if longest > max_side:
        step = math.ceil(longest / max_side)
        if scale > 1:
            scale = max(1, scale // step)
        else:
            channels = channels[:, ::step, ::step]
            scale = 1 / step
    if scale > 1:
        channels = channels.repeat(int(scale), axis=1).repeat(int(scale), axis=2)
    count, tile_height, tile_width = channels.shape

    picture = np.full(
        (rows * (tile_height + padding) - padding, columns * (tile_width + padding) - padding),
        pad_value,
        dtype=np.uint8,
    )
    if count:
        filled = np.full((rows * columns, tile_height + padding, tile_width + padding), pad_value, dtype=np.uint8)
        filled[:count, :tile_height, :tile_width] = channels
        blocks = filled.reshape(rows, columns, tile_height + padding, tile_width + padding)
        stitched = blocks.transpose(0, 2, 1, 3).reshape(
            rows * (tile_height + padding), columns * (tile_width + padding)
        )
        picture[:, :] = stitched[: picture.shape[0], : picture.shape[1]]
    return Grid(picture, columns, rows, tile_height, tile_width, scale, padding)
