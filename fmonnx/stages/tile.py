"""Lay a layer's channel images out as one picture: a grid or the tutorial's belt.

channels: (C, H, W) uint8 palette indices, channels first. A small map
(a 7x7 map is unreadable at 7 pixels) needs a whole magnification: with
``upscale=False`` the picture keeps its stored pixels and ``display_scale``
tells a viewer the factor (the page draws it ``image-rendering: pixelated``);
with ``upscale=True`` that factor is baked into the picture. Pictures that
would be huge are subsampled; the factors are recorded so a pixel can be
traced back to its channel and position. A belt that would pass
``max_side`` wraps into several rows rather than shrinking its tiles to
nothing. Tiles are written straight into the picture through a strided view:
no upscaled copy of the layer is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import choices

__all__ = ["LAYOUTS", "DEFAULT_LAYOUT", "Grid", "GridPlan", "plan_grid", "tile"]

LAYOUTS, DEFAULT_LAYOUT = choices.LAYOUTS, choices.DEFAULT_LAYOUT
MIN_TILE = 24  # smaller maps are magnified to at least this many pixels (7x7 and 14x14 maps to 28)
MAX_SIDE = 8192  # pictures are kept below this many pixels a side


@dataclass(frozen=True)
class Grid:
    """A tiled picture; channel k sits at row k // columns, column k % columns.

    ``scale`` > 1 means each activation is a scale x scale block; < 1 means
    every (1/scale)-th activation is shown. ``display_scale`` (>= 1) is the whole
    magnification a viewer should apply to the stored pixels (nearest neighbour)
    so a tile is at least ``MIN_TILE`` pixels; 1 when the picture is upscaled.
    """

    image: np.ndarray
    columns: int
    rows: int
    tile_height: int
    tile_width: int
    scale: float
    padding: int
    display_scale: int = 1

    def describe(self) -> dict:
        """The manifest's ``grid``: stored geometry (``tile``, ``scale``) and the viewing ``display_scale``."""
        return {
            "columns": self.columns,
            "rows": self.rows,
            "tile": [self.tile_height, self.tile_width],
            "scale": self.scale,
            "padding": self.padding,
            "display_scale": self.display_scale,
        }


def _columns(count: int, height: int, width: int, layout: str) -> int:
    if layout == "belt":
        return count
    # near-square picture: columns * width ~ rows * height
    return max(1, min(count, math.ceil(math.sqrt(count * height / width))))


def _upscale(height: int, width: int, min_tile: int) -> int:
    return math.ceil(min_tile / max(height, width)) if max(height, width) < min_tile else 1


@dataclass(frozen=True)
class GridPlan:
    """How C maps of H x W will be laid out: ``factor`` > 1 upscales, ``step`` > 1 keeps every step-th value,
    ``display_scale`` > 1 asks a viewer to magnify the stored (not upscaled) pixels."""

    columns: int
    rows: int
    factor: int
    step: int
    display_scale: int = 1

    def sample(self, channels: np.ndarray) -> np.ndarray:
        """(C, H, W) -> the (C, H', W') view the grid shows (every step-th value)."""
        return channels[:, :: self.step, :: self.step] if self.step > 1 else channels


def plan_grid(
    count: int,
    height: int,
    width: int,
    layout: str = DEFAULT_LAYOUT,
    padding: int = 1,
    min_tile: int = MIN_TILE,
    max_side: int = MAX_SIDE,
    upscale: bool = True,
) -> GridPlan:
    """The layout of ``count`` maps of ``height`` x ``width``, decided before any pixel is touched,
    so a huge layer can be subsampled before it is normalized.

    The magnification of a small map is the same either way (columns and rows do not change);
    ``upscale`` decides whether it goes into the picture (``factor``) or is left to the viewer
    (``display_scale``, the picture at its stored size)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    scale = _upscale(height, width, min_tile)
    if layout == "belt":
        columns = max(count, 1)
        if columns * (width * scale + padding) > max_side:  # wrap the belt: its rows read left to right
            columns = max(1, max_side // (width * scale + padding))
    else:
        columns = _columns(count, height, width, layout)
    rows = max(1, math.ceil(count / columns))
    step = 1
    longest = max(columns * (width * scale + padding), rows * (height * scale + padding))
    if longest > max_side:
        shrink = math.ceil(longest / max_side)
        if scale > 1:
            scale = max(1, scale // shrink)
        if scale == 1:  # even unmagnified too big: keep every step-th value
            longest = max(columns * (width + padding), rows * (height + padding))
            step = max(1, math.ceil(longest / max_side))
    if upscale:
        return GridPlan(columns, rows, scale, step)
    return GridPlan(columns, rows, 1, step, display_scale=scale)


def tile(
    channels: np.ndarray,
    layout: str = DEFAULT_LAYOUT,
    padding: int = 1,
    pad_value: int = 0,
    min_tile: int = MIN_TILE,
    max_side: int = MAX_SIDE,
    plan: GridPlan | None = None,
    upscale: bool = True,
) -> Grid:
    """Tile (C, H, W) uint8 images into one (rows, columns) picture with ``padding`` between tiles.

    With ``plan`` (from ``plan_grid`` for the full-size maps) the channels are
    taken as already sampled by it (``plan.sample``); without, it is planned here
    (``upscale`` as in ``plan_grid``).
    """
    if plan is None:
        plan = plan_grid(*channels.shape, layout, padding, min_tile, max_side, upscale)
        channels = plan.sample(channels)
    columns, rows, factor = plan.columns, plan.rows, plan.factor
    count, height, width = channels.shape
    tile_height, tile_width = height * factor, width * factor

    picture = np.full(
        (rows * (tile_height + padding) - padding, columns * (tile_width + padding) - padding),
        pad_value,
        dtype=np.uint8,
    )
    if count:
        if factor > 1:  # widen first, so the copies below move whole tile rows
            channels = channels.repeat(factor, axis=2)
        line = picture.strides[0]
        # (row, y, y-repeat, column, x) -> the picture's bytes; the y-repeat upscales
        cells = as_strided(
            picture,
            shape=(rows, height, factor, columns, tile_width),
            strides=((tile_height + padding) * line, factor * line, line, tile_width + padding, 1),
        )
        full, rest = divmod(count, columns)
        if full:
            blocks = channels[: full * columns].reshape(full, columns, height, tile_width).transpose(0, 2, 1, 3)
            cells[:full] = blocks[:, :, None]
        if rest:
            cells[full, :, :, :rest] = channels[full * columns :].transpose(1, 0, 2)[:, None]
    scale: float = factor if plan.step == 1 else 1 / plan.step
    return Grid(picture, columns, rows, tile_height, tile_width, scale, padding, plan.display_scale)
