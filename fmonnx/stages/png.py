"""Palette PNGs (and the ``.npy`` arrays) that fmonnx writes, with their file names and title bars.

Pictures are palette PNGs encoded here rather than by Pillow: each row is
filtered "Sub", then deflated by the ``isal`` package (Intel ISA-L, a
dependency) at level 1. Where isal is missing, zlib's run-length strategy at
level 1, with a row that repeats the one above filtered "Up" (run-length
matching cannot see a repeated row; isal's LZ77 does, so there the check is
skipped). ``benchmarks/png_bench.py`` measured the alternatives on a
ResNet-50's layer pictures and page atlases: isal level 0 is 1.3x the bytes,
levels 2-3 no smaller; Paeth or a per-row adaptive filter save 3-5 % of the
bytes for 3-5x the time; zlib's default strategy at level 6 saves 1 % for 10x.
"""

from __future__ import annotations

import re
import struct
import threading
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .colormap import BACKGROUND, INK, palette

__all__ = [
    "write_picture",
    "encode_png",
    "deflate_backend",
    "write_array",
    "file_stem",
    "image_folders",
    "titled",
    "title_strip",
    "TITLE_HEIGHT",
]


TITLE_HEIGHT = 20
_PNG_COMPRESS_LEVEL = 1  # zlib's run-length strategy gains nothing from higher levels
try:
    from isal import isal_zlib as _isal  # a dependency; zlib stays the fallback where no wheel exists
except ImportError:
    _isal = None
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_SUB, _FILTER_UP = 1, 2


def file_stem(index: int, name: str) -> str:
    """A file-system-safe, order-preserving stem for the layer ``name``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "layer"
    return f"{index:03d}_{safe[:80]}"


def image_folders(paths) -> list[str]:
    """One sub-folder per image, named ``file_stem(index, image stem)`` (made unique); no sub-folder
    for a single image."""
    if len(paths) == 1:
        return [""]
    folders, seen = [], set()
    for index, path in enumerate(paths):
        stem = file_stem(index, Path(path).stem)
        folders.append(stem if stem not in seen else f"{stem}_{index}")
        seen.add(folders[-1])
    return folders


@lru_cache(maxsize=4)
def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


_TEXT_LOCK = threading.Lock()  # one FreeType face is shared by the writer threads


@lru_cache(maxsize=1024)
def title_strip(title: str) -> np.ndarray:
    """The title bar of ``title`` as wide as its text (cached: every image of a render repeats the same
    titles, and drawing text is the slow part, ~1 ms a title)."""
    with _TEXT_LOCK:
        font = _font()
        bar = Image.new("P", (int(font.getlength(title)) + 8, TITLE_HEIGHT), BACKGROUND)
        ImageDraw.Draw(bar).text((4, 3), title, fill=INK, font=font)
    result = np.asarray(bar, dtype=np.uint8).copy()
    result.flags.writeable = False
    return result


def titled(picture: np.ndarray, title: str) -> np.ndarray:
    """Put a title bar (BACKGROUND, INK text) above a palette-index picture."""
    bar = title_strip(title)
    width = max(bar.shape[1], picture.shape[1])
    result = np.full((picture.shape[0] + TITLE_HEIGHT, width), BACKGROUND, dtype=np.uint8)
    result[:TITLE_HEIGHT, : bar.shape[1]] = bar
    result[TITLE_HEIGHT:, : picture.shape[1]] = picture
    return result


def _chunk(kind: bytes, data: bytes) -> list[bytes]:
    # parts, not one bytes: the image data is copied once, when the whole file is joined
    return [struct.pack(">I", len(data)), kind, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))]


def _text_chunk(key: str, text: str) -> list[bytes]:
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + text.encode("latin-1"))
    except UnicodeEncodeError:  # PNG tEXt is Latin-1; iTXt carries UTF-8
        return _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8"))


def _filtered_rows(indices: np.ndarray, up_rows: bool = True) -> np.ndarray:
    """(H, W) uint8 -> (H, 1 + W) PNG scanlines: a filter byte, then the filtered row.

    Every row "Sub" (each byte minus its left neighbour), which zeroes the runs of a
    flat or upscaled map; with ``up_rows`` a row equal to the one above becomes "Up" (all zeros).
    """
    height, width = indices.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = _FILTER_SUB
    if width:
        rows[:, 1] = indices[:, 0]
        np.subtract(indices[:, 1:], indices[:, :-1], out=rows[:, 2:])
    if up_rows and height > 1:
        repeated = np.flatnonzero((indices[1:] == indices[:-1]).all(axis=1)) + 1
        rows[repeated, 0] = _FILTER_UP
        rows[repeated, 1:] = 0
    return rows


def _deflate(rows: np.ndarray) -> bytes:
    """zlib-format deflate of PNG scanlines; both libraries release the GIL while they work."""
    if _isal is not None:
        return _isal.compress(rows, 1)
    compressor = zlib.compressobj(_PNG_COMPRESS_LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return compressor.compress(rows) + compressor.flush()


def deflate_backend() -> str:
    """Which deflate encodes the PNGs: ``isal`` or ``zlib``."""
    return "isal" if _isal is not None else "zlib"


def encode_png(indices: np.ndarray, palette_bytes: bytes, title: str | None = None) -> bytes:
    """A 2-D uint8 array of palette indices -> the bytes of an 8-bit palette PNG."""
    height, width = indices.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)  # 8 bits, palette, deflate, adaptive, none
    data = _deflate(_filtered_rows(indices, up_rows=_isal is None))
    parts = [_PNG_SIGNATURE, *_chunk(b"IHDR", header), *_chunk(b"PLTE", palette_bytes)]
    if title:
        parts += _text_chunk("Title", title)
    parts += [*_chunk(b"IDAT", data), *_chunk(b"IEND", b"")]
    return b"".join(parts)


def write_picture(path: Path, indices: np.ndarray, cmap: str, title: str | None = None) -> None:
    """Write a 2-D array of palette indices as a palette PNG (the colormap as its palette)."""
    Path(path).write_bytes(encode_png(indices, palette(cmap), title))


def write_array(path: Path, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array))

