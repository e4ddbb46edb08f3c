"""``fmonnx.list_layers`` and ``fmonnx.activations``: what a model shows, and the numbers behind it."""

from __future__ import annotations

import os

import numpy as np

from ..options import RenderOptions
from ..stages.activations import compute_activations
from ..stages.plan import layer_rows
from .models import plan_for

__all__ = ["list_layers", "activations"]


def list_layers(model, options: RenderOptions | None = None) -> list[dict]:
    """Each tensor that would be shown: name, op, tensor, C x H x W (stages/plan.py's ``layer_rows``)."""
    return layer_rows(plan_for(model, options), options)


def activations(model, image: str | os.PathLike, options: RenderOptions | None = None) -> dict[str, np.ndarray]:
    """``{display name: (C, H, W) float32}`` for one image: the numbers behind the pictures."""
    plan = plan_for(model, options)
    result = next(compute_activations(plan, [image], options))
    return {layer.named.name: layer.values for layer in result.layers}
