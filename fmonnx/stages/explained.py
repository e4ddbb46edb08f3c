"""What an explanation holds, as plain data: the stages compute it, the report and the API read it.

Shapes: activations and gradients (C, H, W) float32, channels first, exactly the tensor render
shows under the layer's name; ``raw`` (H, W) at the layer's resolution, ReLU applied, not
rescaled; ``cam`` (image height, image width) in 0..1, the size of the model input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["TARGET_KINDS", "ExplainedLayer", "ImageExplanation", "TargetChoice"]

TARGET_KINDS = ("class", "box", "mask", "element")


@dataclass
class ExplainedLayer:
    """One layer's map for one target."""

    name: str  # render's name of the layer
    tensor: str  # its ONNX tensor
    method: str
    activation: np.ndarray  # (C, H, W) float32
    gradient: np.ndarray | None  # (C, H, W) float32, d score / d activation; None for gradient-free methods
    weights: np.ndarray  # (C,) float32: each channel's weight (hirescam, layercam: the spatial mean, for ranking)
    raw: np.ndarray  # (H, W) float32, ReLU applied, not rescaled
    cam: np.ndarray  # (input H, input W) float32 in 0..1
    depends: bool = True  # False: the score does not depend on this layer (its gradient is zero)
    op: str = ""
    also_output_of: tuple[str, ...] = ()
    folded_batchnorm: bool = False  # a TorchScript export's Conv + BatchNorm, named after the Conv

    def top_channels(self, count: int = 8) -> list[tuple[int, float]]:
        """The channels of largest weight, largest first: ``[(channel, weight), ...]``."""
        order = np.argsort(-self.weights, kind="stable")[:count]
        return [(int(channel), float(self.weights[channel])) for channel in order]


@dataclass
class TargetChoice:
    """A target the page's picker offers: its description (as ``Explanation.target``) and the chosen
    layer's map for it."""

    target: dict
    cam: np.ndarray  # (input H, input W) float32 in 0..1, the chosen layer's map for this target


@dataclass
class ImageExplanation:
    """Everything explained about one image.

    ``photo``: the input as the model saw it, (H, W, 3) uint8, H x W the model's input size.
    ``target``: output, index (list of index lists), score, kind, label; for "mask" also
    ``class`` and ``mask`` ((H, W) bool at the output's size); for "box" also ``box``
    ([x1, y1, x2, y2] in input pixels). ``layers``: in graph order; ``chosen``: the name of the
    layer the page details (its channels ranked by weight). ``choices``: the picker's targets,
    the explained one first. ``boxes``: a detector's decoded detections (box, score, class, label).
    """

    image: Path
    input: np.ndarray  # the exact tensor fed to the model
    photo: np.ndarray
    target: dict
    layers: list[ExplainedLayer]
    chosen: str | None
    choices: list[TargetChoice] = field(default_factory=list)
    boxes: list[dict] = field(default_factory=list)
    preprocess: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def layer(self, name: str) -> ExplainedLayer:
        for layer in self.layers:
            if name in (layer.name, layer.tensor, *layer.also_output_of):
                return layer
        raise KeyError(f"no explained layer {name!r}; explained: {', '.join(x.name for x in self.layers)}")
