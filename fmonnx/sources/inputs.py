"""Keras files given to ``render``, ``layers`` or ``stats``: converted on the fly.

A Keras ``.h5``/``.keras`` file is converted (checked, Lambda layers refused)
into an ONNX file in a temporary folder that lives as long as the process, so
every later stage reads an ordinary ONNX file by path. A file is converted once
per process; a changed file (size or modification time) is converted again.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .keras.file import is_keras_file

__all__ = ["onnx_path_for", "conversion_record"]

log = logging.getLogger(__name__)

_converted: dict[tuple, tuple[Path, dict]] = {}
_folder: list[Path] = []


def _temporary_folder() -> Path:
    if not _folder:
        folder = Path(tempfile.mkdtemp(prefix="fmonnx-converted-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _folder.append(folder)
    return _folder[0]


def _key(path: Path) -> tuple:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def onnx_path_for(path: str | os.PathLike) -> Path:
    """``path`` itself for an ONNX file; for a Keras file, the path of its checked ONNX conversion."""
    path = Path(path)
    if not path.is_file() or not is_keras_file(path):
        return path
    key = _key(path)
    if key not in _converted:
        from .keras.convert import convert_keras, write_model

        result = convert_keras(path)
        target = _temporary_folder() / f"{len(_converted)}_{path.stem}.onnx"
        write_model(result.model, target, force=True)
        record = {
            "converted_from": str(path),
            "loader": result.loader,
            "keras_version": result.keras_version,
            "check": result.check.summary() if result.check is not None else None,
            "seconds": round(result.seconds, 3),
        }
        _converted[key] = (target, record)
        log.info("converted %s with %s in %.1f s", path, result.loader, result.seconds)
    return _converted[key][0]


def conversion_record(path: str | os.PathLike) -> dict | None:
    """What the on-the-fly conversion of ``path`` did (loader, check), or None for an ONNX file."""
    path = Path(path)
    if not path.is_file() or not is_keras_file(path):
        return None
    entry = _converted.get(_key(path))
    return entry[1] if entry else None
