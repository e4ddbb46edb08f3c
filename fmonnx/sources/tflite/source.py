"""The TFLite source's entry in the registry (sources/registry.py)."""

from __future__ import annotations

from ..registry import Source
from .file import TFLITE_SUFFIXES, is_tflite_file

__all__ = ["SOURCE"]


def _convert(path, **options):
    from .convert import convert_tflite

    return convert_tflite(path, **options)


def _summary(result) -> str:
    return (f"Loaded with TensorFlow {result.source.get('tensorflow_version', '?')}'s TFLite reader; "
            f"{len(result.layers)} tensors with 4-D outputs")


SOURCE = Source("tflite", "a TFLite file (.tflite)", tuple(TFLITE_SUFFIXES), is_tflite_file, _convert, _summary)
