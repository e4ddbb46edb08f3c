"""The naming stage's public names, kept where importers expect them; the rules live in stages/naming/,
one module per producer."""

from __future__ import annotations

from .metadata import LAYERS_KEY, SOURCE_KEY, read_layer_metadata
from .naming import (
    NAMED_BY,
    NamedTensor,
    call_name,
    name_tensors,
    naming_notes,
    source_layer_name,
    split_call_name,
)

__all__ = [
    "NamedTensor",
    "NAMED_BY",
    "read_layer_metadata",
    "source_layer_name",
    "name_tensors",
    "call_name",
    "split_call_name",
    "naming_notes",
    "LAYERS_KEY",  # defined in metadata.py, with their schema; the converters import them from here
    "SOURCE_KEY",
]
