"""Everything that touches the output folder: PNGs, arrays, the manifest.

A render is written into a hidden staging folder beside the target and moved
into place at the end, so a failure leaves nothing half-written. An existing
target is replaced only when it is an earlier fmonnx output holding nothing
but the files its manifest lists; a user's other files are never deleted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .colormap import BACKGROUND, INK, palette
from .errors import OutputError

__all__ = ["staged_output", "write_picture", "write_array", "write_manifest", "file_stem", "titled", "MANIFEST"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TITLE_HEIGHT = 20
_PNG_COMPRESS_LEVEL = 1  # palette PNGs are small already; level 1 encodes several times faster than 6


def file_stem(index: int, name: str) -> str:
    """A file-system-safe, order-preserving stem for the layer ``name``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "layer"
    return f"{index:03d}_{safe[:80]}"


@lru_cache(maxsize=4)
def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def titled(picture: np.ndarray, title: str) -> np.ndarray:
    """Put a title bar (BACKGROUND, INK text) above a palette-index picture."""
    font = _font()
    width = max(picture.shape[1], int(font.getlength(title)) + 8)
    canvas = Image.new("P", (width, picture.shape[0] + TITLE_HEIGHT), BACKGROUND)
    ImageDraw.Draw(canvas).text((4, 3), title, fill=INK, font=font)
    result = np.asarray(canvas, dtype=np.uint8).copy()
    result[TITLE_HEIGHT:, : picture.shape[1]] = picture
    return result


def write_picture(path: Path, indices: np.ndarray, cmap: str, title: str | None = None) -> None:
    """Write a 2-D array of palette indices as a palette PNG."""
    image = Image.fromarray(indices, "P")
    image.putpalette(palette(cmap))
    info = None
    if title:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Title", title)
    image.save(path, format="PNG", compress_level=_PNG_COMPRESS_LEVEL, pnginfo=info)


def write_array(path: Path, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array))


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, allow_nan=False) + "\n")


def _replaceable(target: Path) -> None:
    """Raise OutputError unless ``target`` may be replaced by a new render."""
    entries = [p for p in target.rglob("*") if p.is_file() or p.is_symlink()]
    if not entries:
        return
    manifest_path = target / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        listed = set(manifest["files"]) | {MANIFEST}
        ok = "fmonnx_version" in manifest
    except (OSError, ValueError, KeyError, TypeError):
        ok, listed = False, set()
    foreign = [p for p in entries if p.relative_to(target).as_posix() not in listed]
    if not ok or foreign:
        example = (foreign or entries)[0].relative_to(target)
        raise OutputError(
            f"output folder {target} already holds files fmonnx did not write (e.g. {example}); "
            "choose another folder with -o, or empty it"
        )


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def staged_output(target: str | os.PathLike):
    """Yield a staging folder; on success it becomes ``target`` (replacing an
    earlier fmonnx output there), on error it is removed."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputError(f"output path {target} is a file; pass a folder with -o")
    if target.is_dir():
        _replaceable(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.fmonnx-", dir=target.parent))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; the result is an ordinary folder
    except OSError as exc:
        raise OutputError(
            f"cannot write to {target.parent} ({exc.strerror or exc}); choose a writable folder with -o"
        ) from None
    try:
        yield staging
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "previous")
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
