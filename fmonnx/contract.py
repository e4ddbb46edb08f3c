"""The metadata contract: what ``fmonnx convert`` writes into a model, read by every command.

Two ``metadata_props`` keys, each a JSON text, written by the converters (sources/*/convert.py)
and checked when a model file is read (stages/metadata.py):

- ``fmonnx.layers`` (LAYERS_KEY): a list, one object per framework layer or module call::

      {"layer": "backbone/conv1",            str, required: the framework's name (a repeated
                                             module call is call_name(path, n): "layer1.0.relu#2")
       "output": "backbone/conv1",           str, required: the tensor holding its output
       "class": "Conv2D",                    str: the layer's class or op
       "inner": ["backbone/conv1/Conv"],     list of str: its other tensors (Keras)
       "layout": "NHWC",                     "NHWC" | "NCHW": the layout of "output", when proven
       "also_output_of": ["layer1.0"]}       list of str: containers returning the same tensor (PyTorch)

  Optional fields may be absent or null; other keys are ignored.
- ``fmonnx.source`` (SOURCE_KEY): an object of short values (text, numbers, booleans, null, or a
  short list of those): ``{"framework": "keras", "keras_version": "3.9", ...}``.

``SCHEMA`` is the version of the JSON files fmonnx writes (manifest.json, compare.json,
scan.json, explain.json): readers and folder replacement check it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "LAYERS_KEY", "SOURCE_KEY", "RECORD_LAYOUTS", "SCHEMA", "LayerRecord", "call_name", "split_call_name",
    "check_schema",
]

LAYERS_KEY = "fmonnx.layers"
SOURCE_KEY = "fmonnx.source"
RECORD_LAYOUTS = ("NHWC", "NCHW")
SCHEMA = 1  # the "schema" of every JSON file fmonnx writes

_CALL_NAME = re.compile(r"^(.+)#(\d+)$")


@dataclass(frozen=True)
class LayerRecord:
    """One checked ``fmonnx.layers`` entry (see the module docstring); ``class_name`` is its ``class``."""

    layer: str
    output: str
    class_name: str | None = None
    inner: tuple[str, ...] = ()
    layout: str | None = None
    also_output_of: tuple[str, ...] = ()


def check_schema(record: dict, path) -> None:
    """Raise FmonnxError when a JSON file fmonnx reads back was written by a newer fmonnx (a higher
    ``schema``); files without the field come from before it and are read as schema 1."""
    from .errors import FmonnxError

    schema = record.get("schema", 1) if isinstance(record, dict) else None
    if not isinstance(schema, int) or schema > SCHEMA:
        raise FmonnxError(f"{path} has schema {schema!r}, which this fmonnx (schema {SCHEMA}) cannot read; "
                          "update fmonnx, or write the folder again with this one")


def call_name(path: str, call: int = 1) -> str:
    """The name of a module call: ``layer1.0.relu`` for the first call (``call=1``),
    ``layer1.0.relu#2`` for the second, ``#3`` for the third..."""
    return path if call == 1 else f"{path}#{call}"


def split_call_name(name: str) -> tuple[str, int]:
    """``call_name`` reversed: ``layer1.0.relu#2`` is ``("layer1.0.relu", 2)``."""
    match = _CALL_NAME.match(name)
    return (match.group(1), int(match.group(2))) if match else (name, 1)
