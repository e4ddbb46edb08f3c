"""fmonnx: see what a convolutional network sees.

    import fmonnx
    fmonnx.list_layers("model.onnx")                          # what can be shown
    maps = fmonnx.activations("model.onnx", "photo.jpg")      # {name: (C, H, W) float32}
    result = fmonnx.render("model.onnx", ["photo.jpg"], out="maps")  # maps/index.html, maps/manifest.json
    result.manifest                                           # the manifest.json dict
    result.plot_layer("conv2d")                               # one layer as a matplotlib figure
    converted = fmonnx.convert(module, example_input)         # nn.Module, .pt2 or Keras file -> checked ONNX
    converted.save("model.onnx")
    fmonnx.render(module, ["photo.jpg"])                      # a module is converted (and checked) on the fly
    ex = fmonnx.explain("model.onnx", "photo.jpg")            # Grad-CAM of the top class, gradients in the graph
    ex.target, ex.layers[-1].cam, ex.layer("conv2d").weights
"""

from __future__ import annotations

import importlib

from ._version import __version__

__all__ = [
    "__version__",
    "render",
    "activations",
    "list_layers",
    "layer_stats",
    "convert",
    "compare",
    "scan",
    "explain",
    "RenderOptions",
    "FmonnxError",
]

# Public name -> the module that defines it. Modules load on first use, so `import fmonnx`
# stays instant (no numpy, onnx or onnxruntime). No module is named like a public function,
# so importing one never replaces the function on this package.
_PUBLIC = {
    "render": "fmonnx.frontends.render",
    "activations": "fmonnx.frontends.layers",
    "list_layers": "fmonnx.frontends.layers",
    "layer_stats": "fmonnx.frontends.stats",
    "convert": "fmonnx.sources.dispatch",
    "compare": "fmonnx.frontends.compare",
    "scan": "fmonnx.frontends.scan",
    "explain": "fmonnx.frontends.explain",
    "RenderOptions": "fmonnx.options",
    "FmonnxError": "fmonnx.errors",
}


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'fmonnx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
