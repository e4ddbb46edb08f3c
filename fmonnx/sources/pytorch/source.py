"""The torch.export (.pt2) source's entry in the registry (sources/registry.py)."""

from __future__ import annotations

from ..registry import Source
from .pt2_file import PT2_SUFFIX, is_pt2_file

__all__ = ["SOURCE"]


def _convert(path, **options):
    from .convert import convert_pt2

    return convert_pt2(path, **options)


def _summary(result) -> str:
    spatial = "any height and width" if result.dynamic else f"fixed size {list(result.example_shape)[2:]}"
    return (f"Loaded with torch {result.source['torch_version']}; {len(result.layers)} module calls with 4-D "
            f"outputs; {spatial}; opset {result.source['opset']}")


SOURCE = Source("pt2", "a torch.export file (.pt2)", (PT2_SUFFIX,), is_pt2_file, _convert, _summary)
