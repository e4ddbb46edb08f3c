"""An image collection: what DATA names, as a list of images with stable ids, and reading one of them.

DATA is any mix of: an image file; a folder (searched recursively, files with an image suffix); a
text file (``.txt``, ``.lst``, ``.csv``: its first column, or the one a ``path`` header names) listing
one image file a line, relative to the list's folder, ``#`` comments and blank lines skipped, in UTF-8
or any UTF with a byte order mark; a Parquet file (``.parquet``) with a column of image bytes (binary,
or a struct with a ``bytes`` field as Hugging Face datasets write) or of paths (strings, relative to
the file's folder). What cannot name an image at all (a list that is not text, a line naming a folder,
a list or Parquet file of nothing, a column of the wrong type) is an ImageError naming the file and
line or row; a null or empty row is read as an unreadable image, which a scan skips and counts.
Image ids are positions in that list: folders sorted by path, lists and Parquet rows in their order,
so the same DATA gives the same ids on every engine and every run (what the top-k's tie break and
``--resume`` rely on).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError, MissingDependencyError
from .preprocess import IMAGE_SUFFIXES, Target, _decode, _to_8bit, load_image

__all__ = [
    "ImageRef", "Collection", "list_collection", "read_pixels", "decode_bytes", "row_bytes", "LIST_SUFFIXES",
]


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


# a byte order mark names the encoding (UTF-32's before UTF-16's: FF FE 00 00 starts with FF FE)
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


def _list_text(path: Path) -> str:
    """The text of a list: UTF-8, or any UTF with a byte order mark (Windows tools write UTF-16 so)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read the list {path} ({exc.strerror or exc}); check its permissions") from None
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].decode(encoding, "replace").count("\n") + 1
        raise ImageError(
            f"{path} line {line} is not {encoding.upper().removesuffix('-SIG')} text ({exc.reason}); "
            "save the list as UTF-8"
        ) from None
    if "\0" in text:  # UTF-16 saved without its byte order mark reads as UTF-8 with a NUL every other byte
        line = text[: text.index("\0")].count("\n") + 1
        raise ImageError(f"{path} line {line} holds a NUL character (UTF-16 without a byte order mark?); "
                         "save the list as UTF-8")
    return text


def _list_entries(path: Path, text: str):
    """(line number, path text) of each entry of a list: ``#`` comments and blank lines skipped; of a
    CSV the first column, or the one a header names (``path``, ``file``, ...), quoted fields read as CSV does."""
    if path.suffix.lower() != ".csv":
        for number, line in enumerate(text.split("\n"), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                yield number, line
        return
    reader = csv.reader(io.StringIO(text, newline=""))
    column, first = 0, True
    try:
        for row in reader:
            if not any(field.strip() for field in row) or row[0].lstrip().startswith("#"):
                continue
            names = [field.strip().lower() for field in row]
            if first and any(name in _PATH_COLUMNS for name in names):  # a header
                column = next(index for index, name in enumerate(names) if name in _PATH_COLUMNS)
                first = False
                continue
            first = False
            value = row[column].strip() if column < len(row) else ""
            if not value:
                raise ImageError(f"{path} line {reader.line_num} has no path in column {column + 1}; "
                                 "fill it in or remove the line")
            yield reader.line_num, value
    except csv.Error as exc:
        raise ImageError(f"{path} line {reader.line_num} is not valid CSV ({exc}); fix the line") from None


def _is_folder(entry: Path, where: str) -> bool:
    """Whether a path a list or a Parquet row names is a folder: one stat; a name the system cannot look
    up (too long, say, which ``is_dir`` lets through) is an ImageError naming ``where``."""
    try:
        return entry.is_dir()
    except OSError as exc:
        raise ImageError(f"{where} names a path the system cannot look up ({exc.strerror}); fix it") from None


def _list_file(path: Path) -> list[Path]:
    """The images a list names, each relative to the list's folder unless absolute."""
    paths = []
    for number, line in _list_entries(path, _list_text(path)):
        entry = Path(line)
        entry = entry if entry.is_absolute() else path.parent / entry
        if _is_folder(entry, f"{path} line {number}"):  # a folder here would be read as one unreadable image
            raise ImageError(f"{path} line {number} names a folder ({entry}); a list names image files, "
                             "one a line: list the folder's images, or pass the folder itself as DATA")
        paths.append(entry)
    if not paths:
        raise ImageError(f"{path} lists no images (only blank lines and # comments); write one image path a line")
    return paths


def _is_text(kind) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    string_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or string_view(kind)


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
    named = [column for column in schema if column.name.lower() in _PATH_COLUMNS]
    for column in named:
        if _is_text(column.type):
            return column.name, "path"
    if named:
        raise ImageError(
            f"{path} column {named[0].name!r} holds {named[0].type}, not image paths; "
            "store the paths as strings, or the images' bytes in a binary column"
        )
    names = ", ".join(schema.names)
    raise ImageError(
        f"{path} has no column of image bytes or paths (it has: {names}); "
        f"store the images as a binary column or their paths in a column named 'path'"
    )


def _parquet_refs(path: Path, start: int) -> list[ImageRef]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    column, kind = parquet_column(path)
    try:
        if kind == "path":
            values = pq.read_table(path, columns=[column]).column(column).to_pylist()
            rows = len(values)
        else:
            rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ImageError(f"{path} is not a readable Parquet file ({exc}); check the file") from None
    if not rows:
        raise ImageError(f"{path} has no rows; pass a Parquet file holding images")
    if kind != "path":
        return [ImageRef(start + row, f"{path}#{row}", parquet=(str(path), row, column)) for row in range(rows)]
    refs = []
    for row, value in enumerate(values):
        if not value or not value.strip():
            # nothing to read, like a missing file: the row is skipped when read (read_pixels), and counted
            refs.append(ImageRef(start + row, f"{path}#{row}", parquet=(str(path), row, column)))
            continue
        entry = Path(value)
        entry = entry if entry.is_absolute() else path.parent / entry
        if _is_folder(entry, f"{path} row {row}, column {column!r},"):
            raise ImageError(f"{path} row {row}, column {column!r}, names a folder ({entry}); "
                             "name one image file a row")
        refs.append(ImageRef(start + row, str(entry), path=str(entry)))
    return refs


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


def decode_bytes(data: bytes, label: str, channels: int = 3, target: Target | None = None) -> np.ndarray:
    """uint8 (H, W, channels) pixels of an encoded image, converted as ``preprocess.load_image`` does.

    ``target``: the H x W the pixels will be resized to; an image over 4x larger on both sides is
    decoded reduced, as ``load_image`` does (see ``preprocess``)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = _decode(opened, label, target, None)
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


def row_bytes(value, label: str) -> bytes:
    """The image bytes of a Parquet row's value (a struct's ``bytes`` field already taken out), for both
    engines; ImageError when it holds none: a null, or an empty path in a column of paths (the only
    rows of such a column ``_parquet_refs`` sends to be read as bytes)."""
    if value is None:
        raise ImageError(f"{label} holds no image bytes (null)")
    if isinstance(value, str):
        raise ImageError(f"{label} holds no image path (empty)")
    return bytes(value)


def read_pixels(
    ref: ImageRef, channels: int = 3, data: bytes | None = None, target: Target | None = None
) -> np.ndarray:
    """uint8 (H, W, channels) pixels of ``ref``; ``data``: its bytes when already read (Parquet rows).
    ``target``: the H x W they will be resized to (the scanner's input size): an image over 4x larger
    on both sides is decoded reduced; None decodes in full (crops cut from the original).
    Raises ImageError when the image cannot be read."""
    if ref.path is not None:
        return load_image(ref.path, channels, target)
    if data is None:
        file, row, column = ref.parquet
        data = read_parquet_bytes(file, [row], column)[row]
    return decode_bytes(row_bytes(data, ref.label), ref.label, channels, target)
