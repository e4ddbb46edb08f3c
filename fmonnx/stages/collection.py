"""An image collection: what DATA names, as a list of images with stable ids, and reading one of them.

DATA is any mix of: an image file; a folder (searched recursively, files with an image suffix); a
text file (``.txt``, ``.lst``, ``.csv`` of one column) listing one path a line, relative to the
list's folder, ``#`` comments and blank lines skipped; a Parquet file (``.parquet``) with a column of
image bytes (binary, or a struct with a ``bytes`` field as Hugging Face datasets write) or of paths.
Image ids are positions in that list: folders sorted by path, lists and Parquet rows in their order,
so the same DATA gives the same ids on every engine and every run (what the top-k's tie break and
``--resume`` rely on).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError, MissingDependencyError
from .preprocess import IMAGE_SUFFIXES, _to_8bit, load_image

__all__ = ["ImageRef", "Collection", "list_collection", "read_pixels", "decode_bytes", "LIST_SUFFIXES"]

log = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".lst", ".csv")
_PATH_COLUMNS = ("path", "image_path", "file", "filename", "file_name")


@dataclass(frozen=True)
class ImageRef:
    """One image: its id, a label (its path, or ``file.parquet#row``), and where its bytes are:
    ``path`` (a file), or ``parquet`` (file, row, column) for bytes inside a Parquet file."""

    id: int
    label: str
    path: str | None = None
    parquet: tuple[str, int, str] | None = None


@dataclass(frozen=True)
class Collection:
    images: list[ImageRef]

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self) -> str:
        """A digest of the labels in order: a checkpoint is only resumed on the same collection."""
        digest = hashlib.sha256()
        for ref in self.images:
            digest.update(ref.label.encode("utf-8", "surrogateescape") + b"\n")
        return digest.hexdigest()[:16]


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _list_file(path: Path) -> list[Path]:
    paths = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entry = Path(line.split(",")[0].strip()) if path.suffix.lower() == ".csv" else Path(line)
            paths.append(entry if entry.is_absolute() else path.parent / entry)
    return paths


def parquet_column(path: Path) -> tuple[str, str]:
    """The column of ``path`` holding images: ``(name, "bytes" | "struct" | "path")``."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError(f"{path} is Parquet, which needs pyarrow: pip install pyarrow") from None
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow's ArrowInvalid and friends
        raise ImageError(f"{path} is not a readable Parquet file ({exc}); check the file") from None
    for column in schema:
        kind = column.type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return column.name, "bytes"
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            return column.name, "struct"
    for column in schema:
        if column.name.lower() in _PATH_COLUMNS and (pa.types.is_string(column.type)
                                                    or pa.types.is_large_string(column.type)):
            return column.name, "path"
    names = ", ".join(schema.names)
    raise ImageError(
        f"{path} has no column of image bytes or paths (it has: {names}); "
        f"store the images as a binary column or their paths in a column named 'path'"
    )


def _parquet_refs(path: Path, start: int) -> list[ImageRef]:
    import pyarrow.parquet as pq

    column, kind = parquet_column(path)
    if kind == "path":
        values = pq.read_table(path, columns=[column]).column(column).to_pylist()
        refs = []
        for value in values:
            entry = Path(value)
            entry = entry if entry.is_absolute() else path.parent / entry
            refs.append(ImageRef(start + len(refs), str(entry), path=str(entry)))
        return refs
    rows = pq.ParquetFile(path).metadata.num_rows
    return [ImageRef(start + row, f"{path}#{row}", parquet=(str(path), row, column)) for row in range(rows)]


def list_collection(data: list[str | os.PathLike]) -> Collection:
    """The images DATA names (see the module docstring), with ids 0, 1, ... in that order."""
    refs: list[ImageRef] = []
    for raw in data:
        path = Path(raw)
        if not path.exists():
            raise ImageError(f"{path} does not exist; pass image files, folders, a list of paths or a Parquet file")
        if path.is_dir():
            found = _folder_images(path)
            if not found:
                raise ImageError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}), even in subfolders")
            paths = found
        elif path.suffix.lower() == ".parquet":
            refs.extend(_parquet_refs(path, len(refs)))
            continue
        elif path.suffix.lower() in LIST_SUFFIXES:
            paths = _list_file(path)
        else:
            paths = [path]
        start = len(refs)
        refs.extend([ImageRef(start + i, str(p), path=str(p)) for i, p in enumerate(paths)])
    if not refs:
        raise ImageError("DATA names no images; pass image files, folders, a list of paths or a Parquet file")
    return Collection(refs)


def decode_bytes(data: bytes, label: str, channels: int = 3) -> np.ndarray:
    """uint8 (H, W, channels) pixels of an encoded image, converted as ``preprocess.load_image`` does."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except Image.DecompressionBombError:
        raise ImageError(f"{label} is too large to decode safely; downscale it first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label} is not an image Pillow can read; use a JPEG, PNG, BMP or WebP file") from None
    except (OSError, SyntaxError, ValueError) as exc:  # as preprocess.load_image says it, for the same files
        raise ImageError(f"{label} could not be read ({exc}); the file may be truncated, re-save it") from None
    image = _to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    array = np.asarray(image.convert({1: "L", 3: "RGB", 4: "RGBA"}[channels]), dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


class _RowGroups:
    """The last row group read from each Parquet file, so reading rows in order reads each group once."""

    def __init__(self):
        self.files: dict[tuple[str, str], tuple] = {}

    def rows(self, path: str, rows: list[int], column: str) -> dict[int, bytes | None]:
        import pyarrow.parquet as pq

        key = (path, column)
        if key not in self.files:
            parquet = pq.ParquetFile(path)
            counts = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
            self.files[key] = (parquet, np.cumsum([0, *counts]), None, None)
        parquet, starts, group, values = self.files[key]
        found = {}
        for row in rows:
            wanted = int(np.searchsorted(starts, row, side="right")) - 1
            if wanted != group:
                group, values = wanted, parquet.read_row_group(wanted, columns=[column]).column(column)
                self.files[key] = (parquet, starts, group, values)
            value = values[row - int(starts[group])].as_py()
            found[row] = value.get("bytes") if isinstance(value, dict) else value
        return found


_groups = _RowGroups()


def read_parquet_bytes(path: str, rows: list[int], column: str) -> dict[int, bytes | None]:
    """The bytes of ``rows`` of one Parquet file (a struct column's ``bytes`` field)."""
    return _groups.rows(path, rows, column)


def read_pixels(ref: ImageRef, channels: int = 3, data: bytes | None = None) -> np.ndarray:
    """uint8 (H, W, channels) pixels of ``ref``; ``data``: its bytes when already read (Parquet rows).
    Raises ImageError when the image cannot be read."""
    if ref.path is not None:
        return load_image(ref.path, channels)
    if data is None:
        file, row, column = ref.parquet
        data = read_parquet_bytes(file, [row], column)[row]
    if data is None:
        raise ImageError(f"{ref.label} holds no image bytes (null)")
    return decode_bytes(data, ref.label, channels)
