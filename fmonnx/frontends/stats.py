"""The stats front-end: run a model on one image and return every shown layer's numbers (nothing is written)."""

from __future__ import annotations

import os

from ..options import RenderOptions
from ..stages.activations import compute_activations
from ..stages.normalize import channel_stats
from ..stages.runner import Runner
from ..stages.stats import channel_records, layer_summary
from .models import plan_for

__all__ = ["layer_stats"]


def layer_stats(model_path: str | os.PathLike, image: str | os.PathLike, options=None) -> dict:
    """Run ``model_path`` on ``image``; per shown layer its summary and per-channel records.

    Returns ``{"model", "image", "provider", "layers": [{"name", "op", "tensor", "shape",
    "stats": layer_summary, "channels": channel_records}], "problems": [...]}``.
    """
    options = options or RenderOptions()
    plan = plan_for(model_path, options)
    runner = Runner(plan, options)  # opens the session only if one run fits the memory bound
    result = next(compute_activations(plan, [image], options, runner))
    layers = []
    for layer in result.layers:
        stats = channel_stats(layer.values)
        layers.append(
            {
                "name": layer.named.name,
                "op": layer.named.candidate.op,
                "tensor": layer.named.candidate.tensor,
                "shape": list(layer.values.shape),
                "stats": layer_summary(stats),
                "channels": channel_records(stats),
            }
        )
    return {
        "model": str(model_path),
        "image": str(result.image),
        "provider": runner.provider,
        "preprocess": result.preprocess,
        "layers": layers,
        "problems": result.problems,
    }
