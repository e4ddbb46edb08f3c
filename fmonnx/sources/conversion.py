"""What every source's converter returns: the checked ONNX model and how it was made.

``Conversion`` is the protocol every command reads (convert, render, compare, scan, explain);
``ConvertedModel`` is the one implementation the sources build. ``source`` says where the model
came from (``framework`` and what the source adds: ``file``, ``module``, ``loader``,
``keras_version``...); ``layers`` is the ``fmonnx.layers`` list (also in the model's metadata);
``check`` is None when the check was skipped; ``seconds`` the wall time of the whole conversion.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import onnx

from ..contract import LAYERS_KEY, SOURCE_KEY
from ..errors import ConversionError
from .write import write_model

__all__ = ["Conversion", "ConvertedModel", "stamp"]


@runtime_checkable
class Conversion(Protocol):
    model: onnx.ModelProto
    layers: list[dict]
    source: dict
    check: object | None  # sources.check.CheckReport
    seconds: float

    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path: ...


@dataclass
class ConvertedModel:
    """A converted model (see the module docstring); ``details`` holds what one source alone records."""

    model: onnx.ModelProto
    layers: list[dict]
    source: dict
    check: object | None
    seconds: float
    details: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path:
        """Write the ONNX model to ``path`` (atomically; an existing file only with ``force``)."""
        return write_model(self.model, path, force=force)


def stamp(model: onnx.ModelProto, layers: list[dict], source: dict, name: str, label: str) -> None:
    """Write the metadata contract into a converted ``model`` (its ``fmonnx.layers`` and ``fmonnx.source``,
    replacing earlier ones), name its graph, and validate it with onnx's checker (ConversionError)."""
    props = {LAYERS_KEY: layers, SOURCE_KEY: source}
    kept = [prop for prop in model.metadata_props if prop.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    model.graph.name = name
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(
            f"the ONNX model converted from {label} is invalid: {str(exc).splitlines()[0]}; try another --opset"
        ) from exc
