"""The model sources fmonnx converts to ONNX, in one table every command reads.

A source is a ``Source``: its name, the suffixes users know it by, a detector that reads the
file's header (cheap: no framework is imported), the converter, and the one line the CLI says
about a conversion. Each lives in its package's ``source.py``; adding a source is one package
under ``sources/`` and one line in ``SOURCE_MODULES``. An ``.onnx`` file is no source: it is read
as it is. Modules (``nn.Module`` objects) are converted by ``dispatch``, not found by path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Source", "SOURCE_MODULES", "sources", "source_for", "source_by_suffix", "model_suffixes", "described",
]

# tried in this order: Keras last, since it claims any HDF5 or zip file, and a .pt2 is a zip
SOURCE_MODULES = (
    "fmonnx.sources.pytorch.source",
    "fmonnx.sources.tflite.source",
    "fmonnx.sources.keras.source",
)


@dataclass(frozen=True)
class Source:
    name: str  # short, stable: "keras", "pt2", "tflite"
    label: str  # how users call it: "a Keras file (.keras, .h5)"
    suffixes: tuple[str, ...]  # lower case, with the dot
    detect: Callable[[Path], bool]  # reads the header only
    convert: Callable[..., object]  # (path, *, opset, check, rtol, atol, unsafe) -> conversion.Conversion
    summary: Callable[[object], str]  # one line on what was loaded, for the CLI


def sources() -> list[Source]:
    """Every registered source (their modules are light: converters import frameworks when called)."""
    return [importlib.import_module(module).SOURCE for module in SOURCE_MODULES]


def source_for(path: str | Path) -> Source | None:
    """The source whose detector recognises the file at ``path``; None for anything else (an ONNX file,
    an image, a file that is not there)."""
    path = Path(path)
    if not path.is_file():
        return None
    return next((source for source in sources() if source.detect(path)), None)


def source_by_suffix(path: str | Path) -> Source | None:
    """The source a path's suffix names, whether or not the file is there (its converter then says what
    is wrong with it)."""
    suffix = Path(path).suffix.lower()
    return next((source for source in sources() if suffix in source.suffixes), None)


def model_suffixes() -> tuple[str, ...]:
    """The suffixes of every model file fmonnx reads: ``.onnx`` and each source's."""
    return (".onnx", *(suffix for source in sources() for suffix in source.suffixes))


def described() -> str:
    """The sources in words, for error messages: "a Keras file (.keras, .h5), a torch.export file (.pt2), ..."."""
    return ", ".join(source.label for source in sources())
