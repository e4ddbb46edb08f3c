"""Draw activations: (C, H, W) float32 -> titled palette picture of tiled channels, and the overview.

Pure: arrays in, arrays out; writing is png.py's job.
"""

from __future__ import annotations

import numpy as np

from ..options import RenderOptions
from .colormap import BACKGROUND, to_palette_indices
from .normalize import ChannelStats, channel_stats, normalize
from .png import titled
from .tile import Grid, GridPlan, plan_grid, tile

__all__ = ["draw_layer", "draw_indices", "draw_overview", "OVERVIEW_CHANNELS"]


def draw_layer(
    values: np.ndarray,
    options: RenderOptions | None = None,
    title: str | None = None,
    stats: ChannelStats | None = None,
    shown: np.ndarray | None = None,
) -> tuple[np.ndarray, Grid, ChannelStats]:
    """(C, H, W) activations -> palette-index picture (titled), its grid geometry and channel stats.

    ``shown``: the channels to draw, in tile order (``select.select_channels``); None draws all.
    """
    options = options or RenderOptions()
    stats = stats if stats is not None else channel_stats(values)
    plan = _plan(values.shape, options, shown)
    # a picture too big to show whole keeps every step-th value: sample before normalizing, not after
    indices = to_palette_indices(normalize(plan.sample(values), options.normalization, stats, shown))
    picture, grid = _tiled(indices, options, title, plan)
    return picture, grid, stats


def draw_indices(
    indices: np.ndarray, options: RenderOptions | None = None, title: str | None = None,
    shown: np.ndarray | None = None,
) -> tuple[np.ndarray, Grid]:
    """(C, H, W) palette indices (drawn in the graph, ingraph.py) -> the picture ``draw_layer`` makes of
    the same layer, and its grid geometry."""
    options = options or RenderOptions()
    plan = _plan(indices.shape, options, shown)
    sampled = plan.sample(indices)
    return _tiled(sampled[shown] if shown is not None else sampled, options, title, plan)


def _plan(shape: tuple[int, ...], options: RenderOptions, shown: np.ndarray | None) -> GridPlan:
    count = shape[0] if shown is None else len(shown)
    # small maps stay at their stored size: grid.display_scale tells a viewer (the page) how much to magnify
    return plan_grid(count, shape[1], shape[2], options.layout, padding=1, upscale=False)


def _tiled(indices: np.ndarray, options: RenderOptions, title: str | None, plan: GridPlan) -> tuple[np.ndarray, Grid]:
    grid = tile(indices, options.layout, padding=1, pad_value=BACKGROUND, plan=plan)
    return (titled(grid.image, title) if title else grid.image), grid


OVERVIEW_CHANNELS = 16


def draw_overview(
    pictures: list[tuple[str, int, np.ndarray]], per_row: int = OVERVIEW_CHANNELS, size: int = 48
) -> np.ndarray:
    """One picture of the network: a row per layer, its first drawn channels at a common size.

    pictures: (title, the layer's channel count, (C', H, W) palette indices of its first drawn channels).
    """
    rows = []
    for title, count, channels in pictures:
        _, height, width = channels.shape
        picks = channels[:per_row]
        ys = (np.arange(size) * height // size).clip(0, height - 1)
        xs = (np.arange(size) * width // size).clip(0, width - 1)
        small = picks[:, ys][:, :, xs]
        grid = tile(small, "belt", padding=2, pad_value=BACKGROUND, min_tile=0)
        shown = f", first {len(picks)} shown" if len(picks) < count else ""
        label = f"{title}  ({count}x{height}x{width}{shown})"
        rows.append(titled(grid.image, label))
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 4), (0, width - row.shape[1])), constant_values=BACKGROUND) for row in rows]
    return np.concatenate(padded, axis=0)


