"""Colormaps as 256-entry lookup tables, and the palette of the PNGs.

Common maps are shipped in ``data/colormaps.npz`` (made by
``scripts/make_colormaps.py`` from matplotlib) so the render path never
imports matplotlib; any other matplotlib name is looked up lazily.

Palette layout: indices 0..253 are the colormap sampled evenly, 254 is the
background (separators, title bar) and 255 the ink of the titles.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import choices
from ..errors import FmonnxError

__all__ = ["DEFAULT_CMAP", "lookup_table", "palette", "to_palette_indices", "BACKGROUND", "INK", "DATA_LEVELS"]

DEFAULT_CMAP = choices.DEFAULT_CMAP
DATA_LEVELS = 254
BACKGROUND = 254
INK = 255
_BACKGROUND_RGB = (255, 255, 255)
_INK_RGB = (30, 30, 30)
_SHIPPED = Path(__file__).parent.parent / "data" / "colormaps.npz"


@lru_cache(maxsize=None)
def lookup_table(name: str = DEFAULT_CMAP, levels: int = 256) -> np.ndarray:
    """(levels, 3) uint8 RGB samples of the colormap ``name``."""
    if levels == 256 and _SHIPPED.exists():
        with np.load(_SHIPPED) as shipped:
            if name in shipped.files:
                return shipped[name]
    try:
        import matplotlib

        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise FmonnxError(f"unknown colormap {name!r}; use a matplotlib name such as viridis, gray, magma") from None
    samples = cmap(np.linspace(0.0, 1.0, levels))[:, :3]
    return np.round(samples * 255).astype(np.uint8)


@lru_cache(maxsize=None)
def palette(name: str = DEFAULT_CMAP) -> bytes:
    """768 bytes for ``PIL.Image.putpalette``: colormap, then background and ink."""
    table = _resample(lookup_table(name), DATA_LEVELS)
    return table.tobytes() + bytes(_BACKGROUND_RGB) + bytes(_INK_RGB)


def _resample(table: np.ndarray, levels: int) -> np.ndarray:
    positions = np.round(np.linspace(0, len(table) - 1, levels)).astype(int)
    return table[positions]


_INDEX_OF_VALUE = np.round(np.arange(256) * (DATA_LEVELS - 1) / 255).astype(np.uint8)


def to_palette_indices(values: np.ndarray) -> np.ndarray:
    """Map uint8 normalized values (0..255) to palette indices (0..253)."""
    return _INDEX_OF_VALUE[values]
