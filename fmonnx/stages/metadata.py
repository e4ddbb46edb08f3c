"""The check of the metadata contract (fmonnx/contract.py) when a model file is read.

A model file is untrusted: ``read_layer_metadata`` and ``read_source_metadata`` check
every field of ``fmonnx.layers`` and ``fmonnx.source``, once, and raise ModelError naming the
entry, the field and the fix; everything past them reads typed, checked values.
"""

from __future__ import annotations

import json
import math

import onnx

from ..contract import LAYERS_KEY, RECORD_LAYOUTS, SOURCE_KEY, LayerRecord
from ..errors import ModelError

__all__ = [
    "LAYERS_KEY",
    "SOURCE_KEY",
    "LAYOUTS",
    "LayerRecord",
    "read_layer_metadata",
    "read_source_metadata",
]


LAYOUTS = RECORD_LAYOUTS
_MAX_TEXT = 4096  # characters of one fmonnx.source value (a file path is the longest written)
_MAX_ITEMS = 64  # values in one fmonnx.source list (example_input has 4)
_SHOWN = 60  # characters of a wrong value quoted in an error
_MISSING = object()


def _text(key: str, model: onnx.ModelProto) -> str | None:
    """The value of metadata ``key`` (the first, when a model repeats it), or None."""
    for prop in model.metadata_props:
        if prop.key == key:
            return prop.value
    return None


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "a JSON object"


def _shown(value) -> str:
    text = json.dumps(value, allow_nan=True)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _fix(key: str) -> str:
    return (
        f"re-convert the model with `fmonnx convert`, or remove the {key} entry from its metadata_props "
        "with onnx (fmonnx then works from the graph alone)"
    )


def _parsed(key: str, text: str, label: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than json can read
        raise ModelError(
            f"{label}: its {key} metadata is not JSON ({str(exc)[:80] or type(exc).__name__}); {_fix(key)}"
        ) from None


def _record(index: int, entry, label: str) -> LayerRecord:
    where = f"entry {index}"
    if isinstance(entry, dict) and isinstance(entry.get("layer"), str):
        where += f" (layer {entry['layer']!r})"

    def wrong(field: str, expected: str, value) -> ModelError:
        got = "missing" if value is _MISSING else f"{_kind(value)} ({_shown(value)})"
        return ModelError(
            f"{label}: in {where} of its {LAYERS_KEY} metadata, \"{field}\" is {got}, "
            f"where the converters write {expected}; {_fix(LAYERS_KEY)}"
        )

    if not isinstance(entry, dict):
        raise ModelError(
            f"{label}: {where} of its {LAYERS_KEY} metadata is {_kind(entry)} ({_shown(entry)}), "
            f"where the converters write an object with \"layer\" and \"output\"; {_fix(LAYERS_KEY)}"
        )
    fields = {}
    for field in ("layer", "output"):
        value = entry.get(field, _MISSING)
        if not isinstance(value, str) or not value:
            raise wrong(field, "a non-empty string", value)
        fields[field] = value
    value = entry.get("class")
    if value is not None and not isinstance(value, str):
        raise wrong("class", "a string (the layer's class)", value)
    fields["class_name"] = value
    for field in ("inner", "also_output_of"):
        value = entry.get(field)
        if value is not None and not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            raise wrong(field, "a list of strings", value)
        fields[field] = tuple(value or ())
    value = entry.get("layout")
    if value is not None and value not in LAYOUTS:
        raise wrong("layout", " or ".join(f'"{layout}"' for layout in LAYOUTS), value)
    fields["layout"] = value
    return LayerRecord(**fields)


def read_layer_metadata(model: onnx.ModelProto, label: str = "the model") -> list[LayerRecord]:
    """The checked ``fmonnx.layers`` records of ``model``, in the converter's order (``[]`` when absent).

    ``label`` names the model in errors (its file name). Raises ModelError when the metadata
    breaks the schema in the module docstring.
    """
    text = _text(LAYERS_KEY, model)
    if text is None:
        return []
    records = _parsed(LAYERS_KEY, text, label)
    if not isinstance(records, list):
        raise ModelError(
            f"{label}: its {LAYERS_KEY} metadata is {_kind(records)} ({_shown(records)}), where the converters "
            f"write a list of layer objects; {_fix(LAYERS_KEY)}"
        )
    return [_record(index, entry, label) for index, entry in enumerate(records)]


def _short_scalar(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= _MAX_TEXT
    return value is None or isinstance(value, bool | int)


def read_source_metadata(model: onnx.ModelProto, label: str = "the model") -> dict | None:
    """The checked ``fmonnx.source`` object of ``model`` (None when absent).

    Raises ModelError unless it is an object whose values are short: text (at most 4096
    characters), finite numbers, booleans, null, or a list of at most 64 of those.
    """
    text = _text(SOURCE_KEY, model)
    if text is None:
        return None
    source = _parsed(SOURCE_KEY, text, label)
    if not isinstance(source, dict):
        raise ModelError(
            f"{label}: its {SOURCE_KEY} metadata is {_kind(source)} ({_shown(source)}), where the converters "
            f"write a JSON object; {_fix(SOURCE_KEY)}"
        )
    for key, value in source.items():
        items = value if isinstance(value, list) and len(value) <= _MAX_ITEMS else [value]
        if not all(_short_scalar(item) for item in items):
            raise ModelError(
                f"{label}: in its {SOURCE_KEY} metadata, \"{key}\" is {_kind(value)} ({_shown(value)}), where the "
                f"converters write text, a finite number, a boolean, null or a short list of those; {_fix(SOURCE_KEY)}"
            )
    return source
