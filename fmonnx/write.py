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
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import tempfile
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .colormap import BACKGROUND, INK, palette
from .errors import OutputError

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
    "file_stem",
    "titled",
    "MANIFEST",
]

log = logging.getLogger(__name__)

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


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _text_chunk(key: str, text: str) -> bytes:
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
    parts = [_PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"PLTE", palette_bytes)]
    if title:
        parts.append(_text_chunk("Title", title))
    parts += [_chunk(b"IDAT", data), _chunk(b"IEND", b"")]
    return b"".join(parts)


def write_picture(path: Path, indices: np.ndarray, cmap: str, title: str | None = None) -> None:
    """Write a 2-D array of palette indices as a palette PNG (the colormap as its palette)."""
    Path(path).write_bytes(encode_png(indices, palette(cmap), title))


def default_jobs(jobs: int | None = None) -> int:
    """Threads that draw and encode: ``jobs``, else the cores, at most 4."""
    return jobs or min(4, os.cpu_count() or 1)


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
        self._futures: list[Future] = []

    def submit(self, size: int, function, *args) -> Future:
        """Run ``function(*args)`` on a worker, counting ``size`` bytes against the backlog until it ends."""
        with self._ready:
            self._ready.wait_for(lambda: self._pending == 0 or self._pending + size <= self._backlog)
            self._pending += size
        future = self._pool.submit(function, *args)
        future.add_done_callback(lambda _: self._release(size))
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


def _is_flat_list(value) -> bool:
    # the first item decides: manifests hold lists of records or lists of plain values, not mixtures
    return isinstance(value, list) and bool(value) and not isinstance(value[0], (dict, list))


def manifest_json(manifest: dict) -> str:
    """The manifest as JSON: indented structure, each list of plain values on one line.

    A ResNet-50's per-channel lists hold 250,000 numbers: one per line they make
    300,000 lines, and json's indenting encoder (pure Python) takes 0.5 s on them.
    Flat lists go through the C encoder instead, each on one line.
    """
    lists: list[str] = []
    marker = f"@fmonnx-list-{os.getpid()}-{id(lists)}-"

    def swap(value):
        if _is_flat_list(value):
            lists.append(json.dumps(value, allow_nan=False))
            return f"{marker}{len(lists) - 1}@"
        if isinstance(value, dict):
            return {key: swap(item) for key, item in value.items()}
        if isinstance(value, list):
            return [swap(item) for item in value]
        return value

    text = json.dumps(swap(manifest), indent=1, allow_nan=False)
    return re.sub(f'"{re.escape(marker)}(\\d+)@"', lambda match: lists[int(match.group(1))], text)


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(manifest_json(manifest) + "\n")


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
