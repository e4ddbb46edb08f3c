"""Every choice the CLI offers and its default, defined once: the stages and the CLI both read them.

Plain values only, so ``fmonnx --help`` imports nothing heavy to list them.
"""

from __future__ import annotations

__all__ = [
    "PRESETS", "DEFAULT_PRESET", "PROVIDERS", "DEFAULT_PROVIDER", "OPTIMIZATIONS", "DEFAULT_OPTIMIZATION",
    "NORMALIZATIONS", "DEFAULT_NORMALIZATION", "LAYOUTS", "DEFAULT_LAYOUT", "INPUT_LAYOUTS", "DEFAULT_CMAP",
    "GRADIENT_METHODS", "FREE_METHODS", "EXPLAIN_METHODS", "DEFAULT_EXPLAIN_METHOD", "ENGINES", "DEFAULT_ENGINE",
    "SCAN_TOP", "COMPARE_CHANNELS",
]

PRESETS = ("unit", "imagenet", "caffe", "tf", "raw")  # pixel arithmetic: stages/preprocess.py
DEFAULT_PRESET = "unit"
PROVIDERS = ("auto", "cpu", "cuda")  # onnxruntime execution providers: stages/run.py
DEFAULT_PROVIDER = "auto"
OPTIMIZATIONS = ("disable", "basic", "extended", "all")  # onnxruntime's graph optimization levels
DEFAULT_OPTIMIZATION = "extended"  # why not "all": stages/run.py
NORMALIZATIONS = ("standardize", "minmax", "layer")  # stages/normalize.py
DEFAULT_NORMALIZATION = "standardize"
LAYOUTS = ("grid", "belt")  # stages/tile.py
DEFAULT_LAYOUT = "grid"
INPUT_LAYOUTS = ("NCHW", "NHWC")  # stages/layout.py
DEFAULT_CMAP = "viridis"
GRADIENT_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "xgradcam")  # stages/cam.py
FREE_METHODS = ("eigencam", "scorecam", "ablationcam")
EXPLAIN_METHODS = (*GRADIENT_METHODS, *FREE_METHODS, "saliency")
DEFAULT_EXPLAIN_METHOD = "gradcam"
ENGINES = ("local", "ray")  # scan's engines: frontends/scan.py
DEFAULT_ENGINE = "local"
SCAN_TOP = 9  # top images kept per channel by scan
COMPARE_CHANNELS = 8  # worst channels drawn per layer by compare
