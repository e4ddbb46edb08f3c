"""The Keras source's entry in the registry (sources/registry.py)."""

from __future__ import annotations

from ..registry import Source
from .file import KERAS_SUFFIXES, is_keras_file

__all__ = ["SOURCE"]


def _convert(path, **options):
    from .convert import convert_keras

    return convert_keras(path, **options)


def _summary(result) -> str:
    return (f"Loaded with {result.loader} (saved by Keras {result.keras_version}); {len(result.layers)} layers with "
            "4-D outputs")


SOURCE = Source("keras", "a Keras file (.keras, .h5)", tuple(KERAS_SUFFIXES), is_keras_file, _convert, _summary)
