"""Models as every command takes them: an ONNX file, a framework file or an nn.Module, planned.

``plan_for`` is where a model meets the sources (sources/inputs.py converts a framework model
once per process, through the source registry) and the stages (stages/plan.py plans the ONNX
file); the stages never import the sources.
"""

from __future__ import annotations

from ..options import RenderOptions
from ..sources.inputs import conversion_record, onnx_path_for
from ..stages.plan import ModelPlan, plan_model

__all__ = ["plan_for"]


def plan_for(model, options: RenderOptions | None = None) -> ModelPlan:
    """The plan of ``model`` (a path of any source, an nn.Module or a conversion result), its conversion
    recorded in the plan's ``source``."""
    return plan_model(onnx_path_for(model), options, conversion_record(model))
