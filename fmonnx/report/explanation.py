"""What ``fmonnx.explain`` returns: one image's explanation, with a notebook view.

``ex.input`` is the exact tensor fed to the model; ``ex.target`` a mapping (output, index,
score, kind, label; for "mask" also class and mask; for "box" also box); ``ex.layers`` the
explained layers in graph order (ExplainedLayer: name, tensor, activation, gradient,
weights, raw, cam); ``ex.layer(name)`` finds one by render's name, an ``also_output_of``
name or its ONNX tensor. In Jupyter it shows the heatmap of each layer on the image.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from ..stages.explained import ExplainedLayer, ImageExplanation

__all__ = ["Explanation"]

_SHOWN_LAYERS = 12  # heatmaps in the notebook view


class Explanation:
    """One image's explanation (see the module docstring)."""

    def __init__(self, explained: ImageExplanation, provider: str | None = None):
        self.explained = explained
        self.provider = provider

    @property
    def input(self) -> np.ndarray:
        return self.explained.input

    @property
    def target(self) -> dict:
        return self.explained.target

    @property
    def layers(self) -> list[ExplainedLayer]:
        return self.explained.layers

    @property
    def image(self):
        return self.explained.image

    @property
    def boxes(self) -> list[dict]:
        return self.explained.boxes

    def layer(self, name: str) -> ExplainedLayer:
        return self.explained.layer(name)

    def __repr__(self) -> str:
        target = self.target
        return (f"Explanation({self.explained.image.name}: {target.get('kind')} {target.get('label')!r}, "
                f"score {target.get('score', float('nan')):.4g}, {len(self.layers)} layer(s), "
                f"method {self.layers[0].method if self.layers else '?'})")

    def _repr_html_(self) -> str:
        from PIL import Image

        from ..stages.overlay import heat_overlay

        target = self.target
        cells = []
        for layer in self.layers[-_SHOWN_LAYERS:]:
            picture = Image.fromarray(heat_overlay(self.explained.photo, layer.cam))
            picture.thumbnail((192, 192))
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            data = base64.b64encode(buffer.getvalue()).decode("ascii")
            note = "" if layer.depends else " (the score does not depend on it)"
            cells.append(f'<figure style="display:inline-block;margin:4px"><img src="data:image/png;base64,{data}">'
                         f'<figcaption style="font:12px monospace">{html.escape(layer.name)}{note}</figcaption>'
                         "</figure>")
        head = (f"<b>{html.escape(str(self.explained.image.name))}</b>: {html.escape(str(target.get('kind')))} "
                f"<b>{html.escape(str(target.get('label')))}</b>, score {target.get('score', float('nan')):.4g}")
        return f"<div>{head}<br>{''.join(cells)}</div>"
