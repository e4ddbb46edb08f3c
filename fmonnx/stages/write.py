"""Everything that touches the output folder: PNGs, arrays, the manifest.

A render is written into a hidden staging folder beside the target and moved
into place at the end, so a failure leaves nothing half-written. An existing
target is replaced only when it is an earlier fmonnx output holding nothing
but the files its manifest lists; a user's other files are never deleted.

Pictures are palette PNGs encoded here rather than by Pillow: each row is
filtered "Up" when it repeats the row above (upscaled small maps) and "Sub"
otherwise, then deflated with zlib's run-length strategy. That is ~1.7x faster
than Pillow's level-1 encoder on a ResNet-50's maps and the files are smaller.
With the ``isal`` package (Intel ISA-L, a dependency) its deflate is
used instead: 3.7x faster again, files of the same size.
``PictureWriter`` encodes on worker threads (zlib releases the GIL), so
encoding overlaps drawing and the next image's inference.

Per-channel numbers are JSON text put aside in a ``Spill`` (a scratch file in
the staging folder) while rendering and read back one list at a time when
the manifest and the page are written (``json_pieces``), so they do not pile
up in memory image after image (a ResNet-50: 2.7 MB of text an image, 12 MB
as Python lists of floats).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import tempfile
import threading
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import OutputError
from .colormap import BACKGROUND, INK, palette
from .decimals import nonfinite_json

__all__ = [
    "staged_output",
    "write_picture",
    "encode_png",
    "deflate_backend",
    "PictureWriter",
    "default_jobs",
    "write_array",
    "write_manifest",
    "manifest_json",
    "json_pieces",
    "json_text",
    "Spill",
    "Spilled",
    "file_stem",
    "titled",
    "MANIFEST",
]


MANIFEST = "manifest.json"
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


@lru_cache(maxsize=4)
def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


_TEXT_LOCK = threading.Lock()  # one FreeType face is shared by the writer threads


@lru_cache(maxsize=1024)
def _title_bar(title: str, min_width: int) -> np.ndarray:
    # every image of a render repeats the same titles; drawing text is the slow part
    with _TEXT_LOCK:
        font = _font()
        width = max(min_width, int(font.getlength(title)) + 8)
        bar = Image.new("P", (width, TITLE_HEIGHT), BACKGROUND)
        ImageDraw.Draw(bar).text((4, 3), title, fill=INK, font=font)
    result = np.asarray(bar, dtype=np.uint8).copy()
    result.flags.writeable = False
    return result


def titled(picture: np.ndarray, title: str) -> np.ndarray:
    """Put a title bar (BACKGROUND, INK text) above a palette-index picture."""
    bar = _title_bar(title, picture.shape[1])
    width = bar.shape[1]
    result = np.empty((picture.shape[0] + TITLE_HEIGHT, width), dtype=np.uint8)
    result[:TITLE_HEIGHT] = bar
    result[TITLE_HEIGHT:, : picture.shape[1]] = picture
    result[TITLE_HEIGHT:, picture.shape[1] :] = BACKGROUND
    return result


def _chunk(kind: bytes, data: bytes) -> list[bytes]:
    # parts, not one bytes: the image data is copied once, when the whole file is joined
    return [struct.pack(">I", len(data)), kind, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))]


def _text_chunk(key: str, text: str) -> list[bytes]:
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + text.encode("latin-1"))
    except UnicodeEncodeError:  # PNG tEXt is Latin-1; iTXt carries UTF-8
        return _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8"))


def _filtered_rows(indices: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, 1 + W) PNG scanlines: a filter byte, then the filtered row.

    A row equal to the one above becomes "Up" (all zeros); any other row "Sub"
    (each byte minus its left neighbour), which zeroes the runs of an upscaled map.
    """
    height, width = indices.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = _FILTER_SUB
    if width:
        rows[:, 1] = indices[:, 0]
        np.subtract(indices[:, 1:], indices[:, :-1], out=rows[:, 2:])
    if height > 1:
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
    data = _deflate(_filtered_rows(indices))
    parts = [_PNG_SIGNATURE, *_chunk(b"IHDR", header), *_chunk(b"PLTE", palette_bytes)]
    if title:
        parts += _text_chunk("Title", title)
    parts += [*_chunk(b"IDAT", data), *_chunk(b"IEND", b"")]
    return b"".join(parts)


def write_picture(path: Path, indices: np.ndarray, cmap: str, title: str | None = None) -> None:
    """Write a 2-D array of palette indices as a palette PNG (the colormap as its palette)."""
    Path(path).write_bytes(encode_png(indices, palette(cmap), title))


def default_jobs(jobs: int | None = None) -> int:
    """Threads that draw and encode: ``jobs``, else the cores, at most 4."""
    return jobs or min(4, os.cpu_count() or 1)


def _succeeded(future: Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


class PictureWriter:
    """Write palette PNGs on ``jobs`` threads; ``write`` returns at once.

    At most ``backlog`` bytes of pictures wait to be encoded (``write`` blocks
    beyond that), so a fast producer cannot fill memory. ``close`` waits for
    every picture and re-raises the first error. Use as a context manager.
    """

    def __init__(self, jobs: int | None = None, backlog: int = 128 * 2**20):
        self.jobs = default_jobs(jobs)
        self._pool = ThreadPoolExecutor(self.jobs, thread_name_prefix="fmonnx-png")
        self._backlog = backlog
        self._pending = 0
        self._ready = threading.Condition()
        self._futures: deque[Future] = deque()

    def submit(self, size: int, function, *args) -> Future:
        """Run ``function(*args)`` on a worker, counting ``size`` bytes against the backlog until it ends."""
        with self._ready:
            self._ready.wait_for(lambda: self._pending == 0 or self._pending + size <= self._backlog)
            self._pending += size
        future = self._pool.submit(function, *args)
        future.add_done_callback(lambda _: self._release(size))
        # a finished future holds its result (a layer's overview row, its manifest entry): drop those
        # that succeeded, oldest first, or every image's would stay in memory until close
        while self._futures and _succeeded(self._futures[0]):
            self._futures.popleft()
        self._futures.append(future)
        return future

    def write(self, path: Path, indices: np.ndarray, cmap: str, title: str | None = None) -> Future:
        """``write_picture`` on a worker thread."""
        return self.submit(indices.nbytes, write_picture, path, indices, cmap, title)

    def _release(self, size: int) -> None:
        with self._ready:
            self._pending -= size
            self._ready.notify_all()

    def drain(self) -> None:
        """Wait until everything submitted so far is written; re-raise the first error."""
        for future in list(self._futures):
            future.result()

    def close(self) -> None:
        try:
            for future in self._futures:
                future.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._futures.clear()

    def __enter__(self) -> PictureWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:  # an error is already on its way: stop the rest without masking it
            self._pool.shutdown(wait=True, cancel_futures=True)


def write_array(path: Path, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array))


class Spill:
    """An append-only scratch file of JSON texts: ``put`` stores some and returns their ``Spilled`` handles.

    Safe to ``put`` from several threads. ``close`` deletes the file; use as a context manager.
    """

    NAME = ".fmonnx-spill"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.NAME
        self._file = open(self.path, "w+b")  # noqa: SIM115 (closed by close())
        self._lock = threading.Lock()
        self._size = 0

    def put(self, texts: list[str]) -> list[Spilled]:
        """Store ``texts`` (in one write); their handles, in order."""
        data = [text.encode("utf-8") for text in texts]
        with self._lock:
            offset = self._size
            self._file.write(b"".join(data))
            self._size += sum(map(len, data))
        handles = []
        for item in data:
            handles.append(Spilled(self, offset, len(item)))
            offset += len(item)
        return handles

    def read(self, spilled: Spilled) -> str:
        with self._lock:
            self._file.flush()
            data = os.pread(self._file.fileno(), spilled.length, spilled.offset)
        return data.decode("utf-8")

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Spilled:
    """A JSON array of numbers or booleans kept in a ``Spill``; ``json_pieces`` writes it in place."""

    spill: Spill
    offset: int
    length: int

    def text(self) -> str:
        return self.spill.read(self)


def _is_flat_list(value) -> bool:
    # the first item decides: manifests hold lists of records or lists of plain values, not mixtures
    return isinstance(value, list) and bool(value) and not isinstance(value[0], (dict, list))


def _flat_json(values: list, separators) -> str:
    """A list of plain values as JSON; non-finite floats as ``decimals.nonfinite_json`` writes them."""
    try:
        return json.dumps(values, separators=separators, allow_nan=False)
    except ValueError:  # rare: only then is each value looked at
        gap = separators[0] if separators else ", "
        return "[" + gap.join(
            nonfinite_json(item) if isinstance(item, float) and not math.isfinite(item) else json.dumps(item)
            for item in values
        ) + "]"


def json_pieces(value, indent: int | None = 1, compact: bool = False):
    """The JSON text of ``value``, in pieces to write one after the other (an iterator of str).

    Every fmonnx JSON file is written here: infinity as ``1e999`` (``json`` and a browser's
    ``JSON.parse`` read it back as infinity), NaN as ``null`` (decimals.nonfinite_json).
    ``Spilled`` values are read back one at a time, so the whole text is never in memory.
    With ``indent``, the structure is indented and each list of plain values is on one line:
    a ResNet-50's per-channel lists hold 250,000 numbers, one per line they make 300,000
    lines, and json's indenting encoder (pure Python) takes 0.5 s on them; flat lists go
    through the C encoder instead. ``compact``: no spaces at all (``separators=(",", ":")``).
    """
    parts: list = []
    marker = f"@fmonnx-part-{os.getpid()}-{id(parts)}-"

    def swap(item):
        if isinstance(item, Spilled) or (indent is not None and _is_flat_list(item)):
            parts.append(item)
            return f"{marker}{len(parts) - 1}@"
        if isinstance(item, float) and not math.isfinite(item):
            parts.append(nonfinite_json(item))  # text, written as it is
            return f"{marker}{len(parts) - 1}@"
        if isinstance(item, dict):
            return {key: swap(inner) for key, inner in item.items()}
        if isinstance(item, list | tuple):
            return [swap(inner) for inner in item]
        return item

    separators = (",", ":") if compact else None
    swapped = swap(value)
    if indent is None:  # the C encoder, in one piece
        chunks = [json.dumps(swapped, separators=separators, allow_nan=False)]
    else:  # the indenting encoder is Python's anyway: its chunks are written as they come, not joined
        chunks = json.JSONEncoder(indent=indent, separators=separators, allow_nan=False).iterencode(swapped)
    pattern = re.compile(f'"{re.escape(marker)}(\\d+)@"')
    batch: list[str] = []
    for chunk in chunks:
        if marker not in chunk:
            batch.append(chunk)
            if len(batch) >= 4096:
                yield "".join(batch)
                batch.clear()
            continue
        at = 0
        for match in pattern.finditer(chunk):
            batch.append(chunk[at : match.start()])
            yield "".join(batch)
            batch.clear()
            part = parts[int(match.group(1))]
            if isinstance(part, Spilled):
                # numbers and booleans only: every ", " in it is json.dumps's separator
                yield part.text().replace(", ", ",") if compact else part.text()
            elif isinstance(part, str):
                yield part
            else:
                yield _flat_json(part, separators)
            at = match.end()
        batch.append(chunk[at:])
    yield "".join(batch)


def json_text(value, indent: int | None = 1) -> str:
    """``value`` as JSON text, the way fmonnx writes every file (``json_pieces``): each list of plain
    values on one line, infinity as ``1e999``, NaN as ``null``."""
    return "".join(json_pieces(value, indent=indent))


def manifest_json(manifest: dict) -> str:
    """The manifest as JSON: indented structure, each list of plain values on one line (``json_pieces``)."""
    return json_text(manifest)


def write_manifest(folder: Path, manifest: dict) -> None:
    with open(folder / MANIFEST, "w", encoding="utf-8") as file:
        file.writelines(json_pieces(manifest, indent=1))
        file.write("\n")


_TOP_LEVEL = re.compile(r'^ "(files|schema|fmonnx_version)": (.*?),?$')


def _manifest_files(path: Path) -> tuple[bool, list]:
    """Whether ``path`` is a manifest fmonnx wrote, and the files it lists.

    ``write_manifest`` puts each top-level key on a line of its own, indented by one space (a list
    of file names on one line), so those two lines are read without parsing every image's
    per-channel numbers (hundreds of MB for many images); any other layout is parsed whole.
    """
    found = {}
    with open(path, encoding="utf-8") as file:
        if file.readline().rstrip("\n") == "{":
            for line in file:
                match = _TOP_LEVEL.match(line)
                if match:
                    found[match.group(1)] = json.loads(match.group(2))
    if "files" not in found:
        found = json.loads(path.read_text(encoding="utf-8"))
    return written_by_fmonnx(found), found["files"]


def written_by_fmonnx(record: dict) -> bool:
    """Whether a JSON record is one fmonnx wrote: its ``schema`` (contract.SCHEMA), or the
    ``fmonnx_version`` that outputs made before the schema field carry."""
    return isinstance(record.get("schema"), int) or "fmonnx_version" in record


def _fmonnx_entries(record: str, files) -> tuple[set[str], set[str]]:
    """The files and folders (relative POSIX paths) an output whose record lists ``files`` consists of:
    the listed names and the record, and the folders above them (fmonnx makes no others)."""
    if not isinstance(files, list):
        raise TypeError("files is not a list")
    names = {name for name in files if isinstance(name, str)} | {record}
    folders = set(names)  # a listed name may be a folder
    for name in names:
        folders.update(parent.as_posix() for parent in Path(name).parents)
    return names, folders


def _walk(target: Path) -> tuple[list[tuple[str, str]], str | None]:
    """Everything under ``target``: (relative POSIX path, "folder" | "file" | "other") with a symlink
    "other", never followed; and the first folder that could not be listed (its contents unknown), if any.
    DirEntry's types come with the listing, so a large output costs no stat per file."""
    found: list[tuple[str, str]] = []
    pending = [("", target)]
    while pending:
        base, folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    relative = f"{base}{entry.name}"
                    if entry.is_dir(follow_symlinks=False):
                        found.append((relative, "folder"))
                        pending.append((f"{relative}/", Path(entry.path)))
                    else:
                        found.append((relative, "file" if entry.is_file(follow_symlinks=False) else "other"))
        except OSError as exc:
            return found, f"{base.rstrip('/') or 'the folder itself'}, which cannot be listed ({exc.strerror or exc})"
    return found, None


def _foreign_entry(target: Path, record: str = MANIFEST) -> str | None:
    """The first thing in folder ``target`` that fmonnx did not write, as a path relative to it; None
    when it is empty or all fmonnx's. Folders count (an empty one too) and so do symlinks, which are
    never fmonnx's: replacing ``target`` deletes all of it, so everything in it must be accounted for."""
    entries, unreadable = _walk(target)
    if unreadable is not None:
        return unreadable
    if not entries:
        return None
    if (record, "file") not in entries:  # missing, or a link or FIFO, which is neither fmonnx's nor safe to open
        return next((relative for relative, _ in entries if relative != record), record)
    try:
        ok, files = _manifest_files(target / record)
        names, folders = _fmonnx_entries(record, files)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # no record, or not one fmonnx wrote
        ok = False
    if not ok:
        return next((relative for relative, _ in entries if relative != record), record)
    for relative, kind in entries:
        if relative not in (folders if kind == "folder" else names) or kind == "other":
            return relative
    return None


def _foreign_message(target: Path, example: str) -> str:
    return (
        f"output folder {target} already holds files fmonnx did not write (e.g. {example}); "
        "choose another folder with -o, or empty it"
    )


def _replaceable(target: Path, record: str = MANIFEST) -> None:
    """Raise OutputError unless ``target`` may be replaced by a new output (``record``: the JSON file
    listing an earlier output's ``files``: manifest.json, compare.json for compare, scan.json for scan)."""
    example = _foreign_entry(target, record)
    if example is not None:
        raise OutputError(_foreign_message(target, example))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _make_parents(folder: Path) -> list[Path]:
    """``folder.mkdir(parents=True)``; the folders it made, deepest first (for ``_remove_made``)."""
    missing = [parent for parent in [folder, *folder.parents] if not parent.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_made(made: list[Path]) -> None:
    for folder in made:  # deepest first; rmdir leaves one that something else has put a file in since
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def staged_output(target: str | os.PathLike, record: str = MANIFEST):
    """Yield a staging folder; on success it becomes ``target`` (replacing an earlier fmonnx
    output there, whose ``record`` lists its files), on error it is removed and ``target`` is as it was
    (folders made above it are removed too)."""
    target = Path(target).resolve()
    if target.exists() and not target.is_dir():
        raise OutputError(f"output path {target} is a file; pass a folder with -o")
    if target.is_dir():
        _replaceable(target, record)
        if Path.cwd().resolve().is_relative_to(target):
            raise OutputError(f"{target} holds the current folder and cannot be replaced; choose another -o")
    made: list[Path] = []
    try:
        made = _make_parents(target.parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.fmonnx-", dir=target.parent))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; the result is an ordinary folder
    except OSError as exc:
        _remove_made(made)
        raise OutputError(
            f"cannot write to {target.parent} ({exc.strerror or exc}); choose a writable folder with -o"
        ) from None
    try:
        try:
            yield staging
        except OSError as exc:  # disk full, file too large, permissions changed under us
            raise OutputError(
                f"cannot write into {target} ({exc.strerror or exc}); check free space and permissions"
            ) from None
        _swap_into_place(staging, target, record)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_made(made)
        raise


def _swap_into_place(staging: Path, target: Path, record: str = MANIFEST) -> None:
    """Move ``staging`` to ``target``. An earlier output there is moved aside first and checked again
    (``record`` lists its files): what a user put into it while fmonnx was writing (a scan takes hours)
    is never deleted; it is put back, as on any failure."""
    old = None
    try:
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "previous")
            # checked where no one writes by path any more; before the move a file could still appear
            example = _foreign_entry(old / "previous", record)
            if example is not None:
                os.replace(old / "previous", target)
                old.rmdir()
                raise OutputError(_foreign_message(target, example))
        os.replace(staging, target)
    except OSError as exc:
        if old is not None and (old / "previous").exists() and not target.exists():
            os.replace(old / "previous", target)
        if old is not None and not (old / "previous").exists():  # never delete the earlier output itself
            shutil.rmtree(old, ignore_errors=True)
        raise OutputError(f"cannot move the new output into {target} ({exc.strerror or exc})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
