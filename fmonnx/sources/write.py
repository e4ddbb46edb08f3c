"""Write a converted ONNX model to disk atomically, refusing to overwrite by accident.

Shared by the Keras and PyTorch converters.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import onnx

from fmonnx.errors import OutputError

__all__ = ["write_model"]


def write_model(model: onnx.ModelProto, out_path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``model`` to ``out_path`` atomically: a temporary file beside it, then a rename.

    Refuses to replace an existing file unless ``force``. Raises OutputError
    when the path is a folder, its folder is missing, or writing fails; a
    failed write leaves nothing behind. Returns the path written.
    """
    out = Path(out_path)
    if out.is_dir():
        raise OutputError(f"{out} is a folder; pass a file path ending in .onnx")
    if out.exists() and not force:
        raise OutputError(
            f"{out} already exists; pass --force (force=True) to overwrite it, or choose another path with -o"
        )
    folder = out.parent
    if not folder.is_dir():
        raise OutputError(f"folder {folder} does not exist; create it or choose another path with -o")
    temporary = folder / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temporary, "xb") as handle:
            onnx.save_model(model, handle)
        os.replace(temporary, out)
    except (OSError, ValueError) as exc:
        temporary.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OutputError(f"cannot write {out} ({reason}); check the folder's permissions and free space") from exc
    return out
