"""Every choice of a render, as one frozen dataclass; None means the default written beside each field.

compare and scan take the same options for the stages they share (ops, preprocessing, provider, memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import choices

__all__ = ["RenderOptions", "check_choices"]


@dataclass(frozen=True)
class RenderOptions:
    """Every render choice; None means the default written beside each field."""

    ops: tuple[str, ...] | None = None  # DEFAULT_OPS, or the converter's layers when recorded
    all_spatial: bool = False
    preprocess: str | None = None  # DEFAULT_PRESET ("raw" for integer inputs)
    provider: str = choices.DEFAULT_PROVIDER
    optimization: str | None = None  # onnxruntime's graph optimization level: run.DEFAULT_OPTIMIZATION (extended)
    normalization: str = choices.DEFAULT_NORMALIZATION
    layout: str = choices.DEFAULT_LAYOUT
    cmap: str = choices.DEFAULT_CMAP
    save_arrays: bool = False
    report: bool = True  # index.html and its data (report/) beside the pictures
    size: tuple[int, int] | None = None  # the model's H x W, or the image's own when dynamic
    max_size: int | None = None
    input_layout: str | None = None  # detected from the input shape
    max_channels: int | None = None  # draw only each layer's first N channels (all)
    top: int | None = None  # draw only each layer's N channels of highest mean activation (all)
    max_memory: int | None = None  # bytes; passes.memory_bound(model, largest tensor) when None
    threads: int | None = None  # onnxruntime's intra-op threads (its default: the physical cores)
    jobs: int | None = None  # PNG encoding threads (the cores, at most 4)
    class_weights: bool = False  # also each layer's Grad-CAM weights for the top class (a backward pass per image)
    # statistics, normalization and palette computed by onnxruntime in the model's graph (stages/ingraph.py);
    # False draws with numpy, the reference path (and what passes and non-finite maps always use)
    draw_in_graph: bool = True


def check_choices(options: RenderOptions) -> None:
    """Options the CLI restricts with choices, checked for library callers before any work."""
    from .choices import LAYOUTS, OPTIMIZATIONS, PRESETS, PROVIDERS
    from .choices import NORMALIZATIONS as METHODS
    from .errors import FmonnxError

    for value, allowed, what in (
        (options.normalization, METHODS, "normalization"),
        (options.layout, LAYOUTS, "layout"),
        (options.provider, PROVIDERS, "provider"),
    ):
        if value not in allowed:
            raise FmonnxError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")
    if options.optimization is not None and options.optimization not in OPTIMIZATIONS:
        raise FmonnxError(
            f"unknown optimization level {options.optimization!r}; choose one of: {', '.join(OPTIMIZATIONS)}"
        )
    if options.preprocess is not None and options.preprocess not in PRESETS:
        raise FmonnxError(f"unknown preprocessing {options.preprocess!r}; choose one of: {', '.join(PRESETS)}")

