"""fmonnx: see what a convolutional network sees.

    import fmonnx
    fmonnx.list_layers("model.onnx")                          # what can be shown
    maps = fmonnx.activations("model.onnx", "photo.jpg")      # {name: (C, H, W) float32}
    result = fmonnx.render("model.onnx", ["photo.jpg"], out="maps")  # maps/index.html, maps/manifest.json
    result.manifest                                           # the manifest.json dict
    result.plot_layer("conv2d")                               # one layer as a matplotlib figure
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__", "render", "activations", "list_layers", "RenderOptions", "FmonnxError"]


def __getattr__(name: str):
    # numpy, onnx and onnxruntime load on first use, so `import fmonnx` stays instant
    if name in ("render", "activations", "list_layers", "RenderOptions"):
        from . import render as _render

        return getattr(_render, name)
    if name == "FmonnxError":
        from .errors import FmonnxError

        return FmonnxError
    raise AttributeError(f"module 'fmonnx' has no attribute {name!r}")
