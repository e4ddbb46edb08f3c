"""Which channels of a layer to draw when a layer has too many to look at.

``--max-channels N`` keeps the first N channels, in their order; ``--top N``
keeps the N channels with the highest mean activation, highest first (ties
go to the lower channel index). Statistics, saved arrays and the report still
cover every channel; the manifest lists the channels drawn, in tile order, and
how many were left out.
"""

from __future__ import annotations

import numpy as np

from ..errors import FmonnxError
from .normalize import ChannelStats

__all__ = ["check_selection", "select_channels", "describe_selection"]


def check_selection(max_channels: int | None, top: int | None) -> None:
    """Raise FmonnxError for a selection that cannot be drawn."""
    if max_channels is not None and top is not None:
        raise FmonnxError("--max-channels and --top both limit the channels drawn; give only one of them")
    for flag, value in (("--max-channels", max_channels), ("--top", top)):
        if value is not None and value < 1:
            raise FmonnxError(f"{flag} must be at least 1 (got {value}); leave it out to draw every channel")


def select_channels(stats: ChannelStats, max_channels: int | None = None, top: int | None = None) -> np.ndarray | None:
    """Indices of the channels to draw, in tile order; None when every channel is drawn."""
    count = stats.mean.size
    if top is not None and top < count:
        # stable sort of the negated means: highest mean first, ties by channel index
        return np.argsort(-stats.mean, kind="stable")[:top]
    if max_channels is not None and max_channels < count:
        return np.arange(max_channels)
    return None


def describe_selection(shown: np.ndarray | None, count: int, max_channels: int | None, top: int | None) -> dict | None:
    """The manifest's record of a selection: method, N, channels drawn (tile order) and how many were left out."""
    if shown is None:
        return None
    method = {"method": "top", "n": top, "by": "mean activation"} if top is not None else {
        "method": "first", "n": max_channels}
    return {**method, "channels": shown.tolist(), "left_out": int(count - shown.size)}
