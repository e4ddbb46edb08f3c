"""The report: ``index.html``, one offline page over a render, and the data beside it.

The page changes colormap, normalization, channel order and dead-channel
hiding in the browser, so each layer's maps are written once, as data, not
as every variant:

- ``quantize``: (C, H, W) float32 activations, channels first -> (C, H, W)
  uint8, each channel stretched over 0..255 between its own min and max (a
  dead channel is all 0). With the channel's min, max, mean and std (in the
  manifest) the page rebuilds any of the three normalizations from it.
- ``layer_atlas``: those channels tiled without gaps into one picture
  (channel k at row k // columns, column k % columns); the data script: that
  atlas as a gray PNG, base64 inside a one-line script
  ``fmonnxData("<file>", "<png>")``. A page opened from disk
  may not fetch() files or read pixels of a PNG loaded by path, but it may
  load a script and read a data: URL image.
- ``write_photo``: an input photo at the size the model was fed (written
  while rendering); ``write_report``: ``index.html`` (the page's HTML, CSS and
  JS from ``report/assets/`` with the render's numbers inlined).

Everything the page loads sits under ``report/`` beside ``index.html``;
nothing comes from the network.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FmonnxError
from ..stages.colormap import DEFAULT_CMAP, lookup_table
from ..stages.json_out import json_pieces
from ..stages.normalize import ChannelStats
from ..stages.png import encode_png
from ..stages.tile import MAX_SIDE, tile
from .template import INDEX

__all__ = [
    "INDEX",
    "REPORT_DIR",
    "PAGE_CMAPS",
    "quantize",
    "dequantize",
    "layer_atlas",
    "data_file",
    "write_data_script",
    "write_layer_data",
    "write_layer_levels",
    "levels_atlas",
    "read_layer_data",
    "page_data",
    "write_photo",
    "write_report",
]

log = logging.getLogger(__name__)

REPORT_DIR = "report"
PAGE_CMAPS = ("viridis", "magma", "inferno", "plasma", "cividis", "gray", "turbo", "coolwarm", "RdBu_r", "jet")
ENCODING = "uint8 per-channel min-max, grayscale PNG atlas, base64 in a script"
_ASSETS = Path(__file__).parent / "assets"
_CHUNK = 1 << 22  # values quantized at a time: bounds the float temporaries of a huge layer
_GRAY_RAMP = bytes(np.repeat(np.arange(256, dtype=np.uint8), 3))
_PHOTO_SIDE = 512  # input pictures larger than this are shown downscaled
_DATA_CALL = re.compile(r'^fmonnxData\("([^"]*)","([A-Za-z0-9+/=]*)"\);\s*$')


def quantize(values: np.ndarray, stats: ChannelStats) -> np.ndarray:
    """(C, H, W) float -> (C, H, W) uint8: ``round((x - min_c) / (max_c - min_c) * 255)`` per channel.

    ``stats``: ``channel_stats(values)``. Non-finite values count as 0 (as in ChannelStats); a
    constant channel becomes all 0.
    """
    count = values.shape[0]
    low = stats.min.astype(np.float32)
    span = (stats.max - stats.min).astype(np.float32)
    with np.errstate(over="ignore"):
        factor = np.where(span > 0, np.float32(255) / np.where(span > 0, span, 1), 0).astype(np.float32)
    # 255 / a subnormal span overflows; the largest float32 still maps the span to at most 255
    np.minimum(factor, np.finfo(np.float32).max, out=factor)
    result = np.empty(values.shape, dtype=np.uint8)
    per_channel = max(1, int(np.prod(values.shape[1:])))
    step = max(1, _CHUNK // per_channel)
    for start in range(0, count, step):
        block = np.asarray(values[start : start + step], dtype=np.float32)
        if stats.nonfinite and not np.isfinite(block).all():
            block = np.where(np.isfinite(block), block, np.float32(0))
        scaled = np.subtract(block, low[start : start + step, None, None])
        scaled *= factor[start : start + step, None, None]
        scaled += np.float32(0.5)
        # min <= x <= max, so 0.5 <= scaled <= 255.5 (a rounding above it stays below 256): no clip
        result[start : start + step] = scaled
    return result


def dequantize(levels: np.ndarray, minimum, maximum) -> np.ndarray:
    """(C, H, W) uint8 from ``quantize`` -> float32 activations, within (max - min) / 510 of the originals."""
    low = np.asarray(minimum, dtype=np.float32)[:, None, None]
    span = (np.asarray(maximum, dtype=np.float32) - np.asarray(minimum, dtype=np.float32))[:, None, None]
    return low + levels.astype(np.float32) * (span / np.float32(255))


def data_file(folder: str, stem: str) -> str:
    """Where a layer's data goes, relative to the output folder; ``folder`` is the image's subfolder or ''."""
    return "/".join(part for part in (REPORT_DIR, folder, f"{stem}.js") if part)


def layer_atlas(values: np.ndarray, stats: ChannelStats) -> tuple[np.ndarray, dict]:
    """(C, H, W) activations -> the (rows * h, columns * w) uint8 atlas of their levels, and its geometry.

    Geometry: ``{"encoding", "channels", "columns", "rows", "tile": [h, w], "scale"}``; ``scale`` < 1
    when the atlas would pass MAX_SIDE pixels a side and every (1/scale)-th value is kept.
    """
    return levels_atlas(quantize(values, stats))


def levels_atlas(levels: np.ndarray) -> tuple[np.ndarray, dict]:
    """``layer_atlas`` of levels already quantized (in the graph, see stages/ingraph.py)."""
    grid = tile(levels, "grid", padding=0, pad_value=0, min_tile=0, max_side=MAX_SIDE)
    geometry = {
        "encoding": ENCODING,
        "channels": int(levels.shape[0]),
        "columns": grid.columns,
        "rows": grid.rows,
        "tile": [grid.tile_height, grid.tile_width],
        "scale": grid.scale,
    }
    return grid.image, geometry


def _data_script_parts(file: str, atlas: np.ndarray) -> list[bytes]:
    """The one-line script the page loads for ``file``: the atlas as a palette PNG whose palette
    is the gray ramp (a browser draws level q as RGB (q, q, q)), base64.

    In parts: the base64 text (most of a layer's data) is written as it is, never copied.
    """
    encoded = base64.b64encode(encode_png(atlas, _GRAY_RAMP))
    return [b"fmonnxData(", json.dumps(file).encode("ascii"), b',"', encoded, b'");\n']


def write_data_script(root: Path, file: str, atlas: np.ndarray) -> None:
    """Write the data script of ``atlas`` to ``root / file`` (safe to run on a worker thread)."""
    path = root / file
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as script:
        script.writelines(_data_script_parts(file, atlas))


def write_layer_data(root: Path, file: str, values: np.ndarray, stats: ChannelStats) -> dict:
    """Write one layer's data script under ``root`` (render calls it on a writer thread);
    returns its geometry (``layer_atlas``'s, with ``file``)."""
    return write_layer_levels(root, file, quantize(values, stats))


def write_layer_levels(root: Path, file: str, levels: np.ndarray) -> dict:
    """``write_layer_data`` of levels already quantized."""
    atlas, geometry = levels_atlas(levels)
    write_data_script(root, file, atlas)
    return {"file": file, **geometry}


def read_layer_data(root: str | Path, geometry: dict) -> np.ndarray:
    """The (C, H, W) uint8 levels back from a layer's data script (``quantize``'s output, subsampled
    when the geometry's ``scale`` < 1)."""
    path = Path(root) / geometry["file"]
    match = _DATA_CALL.match(path.read_text(encoding="ascii"))
    if match is None:
        raise FmonnxError(f"{path} is not a layer data file fmonnx wrote; render the model again")
    with Image.open(io.BytesIO(base64.b64decode(match.group(2)))) as image:
        atlas = np.asarray(image if image.mode in ("P", "L") else image.convert("L"), dtype=np.uint8)  # P: index = q
    rows, columns = geometry["rows"], geometry["columns"]
    height, width = geometry["tile"]
    blocks = atlas.reshape(rows, height, columns, width).transpose(0, 2, 1, 3)
    return blocks.reshape(rows * columns, height, width)[: geometry["channels"]]


def _photo(path: str, size: list[int] | None) -> Image.Image | None:
    """The input photo at the size fed to the model (RGB, so the page can show it as it is)."""
    from ..stages.preprocess import load_image

    try:
        pixels = load_image(path, 3, tuple(size) if size else None)  # a huge image is decoded reduced
    except FmonnxError as exc:
        log.warning("input picture left out of the report: %s", exc)
        return None
    image = Image.fromarray(pixels, "RGB")
    if size and (image.height, image.width) != tuple(size):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    if max(image.size) > _PHOTO_SIDE:
        image.thumbnail((_PHOTO_SIDE, _PHOTO_SIDE), Image.Resampling.BILINEAR)
    return image


def _colormaps(default: str) -> dict[str, str]:
    names = list(PAGE_CMAPS)
    if default not in names:
        names.insert(0, default)
    return {name: base64.b64encode(lookup_table(name).tobytes()).decode("ascii") for name in names}


def _layer_note(entry: dict) -> str:
    """What the name of a layer cannot promise, shown beside it on the page ("" when nothing)."""
    notes = []
    if entry.get("folded_batchnorm"):
        notes.append("Conv + BatchNorm folded in by the exporter")
    if entry.get("layout_certain") is False:
        notes.append("channel axis not proven by the graph")
    if entry.get("also_output_of"):
        notes.append("also the output of " + ", ".join(entry["also_output_of"]))
    return "; ".join(notes)


def page_data(manifest: dict, pictures: list[str | None]) -> dict:
    """The numbers the page needs, from the manifest: layers in graph order, and per image the
    per-channel stats and data geometry of each layer (by name); ``pictures[i]`` is image i's photo."""
    order: list[dict] = []
    known: set[str] = set()
    images = []
    for image, picture in zip(manifest["images"], pictures):
        layers = {}
        for entry in image["layers"]:
            if entry["name"] not in known:
                known.add(entry["name"])
                order.append({key: entry.get(key) for key in ("name", "op", "tensor", "source_layer", "shape")})
                order[-1]["note"] = _layer_note(entry)
            layers[entry["name"]] = {
                "shape": entry["shape"],
                "stats": entry.get("stats"),
                "channels": entry.get("channels"),
                "data": entry.get("report_data"),
                "png": entry.get("png"),
                "display_scale": (entry.get("grid") or {}).get("display_scale", 1),  # how much to magnify small maps
                "class_weights": entry.get("class_weights"),  # render --class-weights: the page's third order
            }
        images.append(
            {
                "image": image["image"],
                "name": Path(image["image"]).name,
                "picture": picture,
                "input_shape": image.get("input_shape"),
                "preprocess": image.get("preprocess"),
                "problems": image.get("problems", []),
                "class_target": image.get("class_target"),
                "layers": layers,
            }
        )
    options = manifest.get("options", {})
    return {
        "model": manifest["model"],
        "model_name": Path(manifest["model"]).name,
        "source": manifest.get("source"),
        "provider": manifest.get("provider"),
        "fmonnx_version": manifest.get("fmonnx_version"),
        "options": options,
        "input": manifest.get("input"),
        "seconds": manifest.get("seconds"),
        "colormaps": _colormaps(options.get("cmap") or DEFAULT_CMAP),
        "layers": order,
        "images": images,
        "class_weights": any(image.get("class_target") is not None for image in manifest["images"]),
    }


def _page_pieces(data: dict):
    """index.html in pieces: the template with its CSS, JS and ``data`` inlined (one file, nothing
    fetched); ``data``'s spilled per-channel lists are read one at a time."""
    template = (_ASSETS / "page.html").read_text(encoding="utf-8")
    parts = {
        "{{TITLE}}": lambda: [html.escape(f"fmonnx: {data['model_name']}")],
        "{{STYLE}}": lambda: [(_ASSETS / "page.css").read_text(encoding="utf-8")],
        "{{SCRIPT}}": lambda: [(_ASSETS / "page.js").read_text(encoding="utf-8")],
        # "<" escaped keeps any name (even "</script>") from closing the data block
        "{{DATA}}": lambda: (piece.replace("<", "\\u003c") for piece in json_pieces(data, indent=None, compact=True)),
    }
    at = 0
    for match in re.finditer("|".join(map(re.escape, parts)), template):
        yield template[at : match.start()]
        yield from parts[match.group(0)]()
        at = match.end()
    yield template[at:]


def write_photo(root: Path, index: int, image: str | Path, size: list[int] | None) -> str | None:
    """Write image ``index``'s input picture, at the size fed to the model, for the page (safe on a
    worker thread); its path relative to ``root``, or None when it cannot be read."""
    photo = _photo(str(image), size)
    if photo is None:
        return None
    relative = f"{REPORT_DIR}/input_{index:03d}.jpg"
    (root / REPORT_DIR).mkdir(exist_ok=True)
    photo.save(root / relative, format="JPEG", quality=90)
    return relative


def write_report(root: Path, manifest: dict, pictures: list[str | None] | None = None) -> list[str]:
    """Write the input pictures and index.html under ``root`` (the render's staging folder).

    Layers' data scripts are written while rendering (``write_layer_data``, their geometry in
    the manifest as ``report_data``); so may the pictures be (``write_photo``, their paths in
    ``pictures``). Returns the files written here, relative to ``root``.
    """
    if pictures is None:
        pictures = [
            write_photo(root, index, image["image"], (image.get("preprocess") or {}).get("resize"))
            for index, image in enumerate(manifest["images"])
        ]
    written = [picture for picture in pictures if picture is not None]
    with open(root / INDEX, "w", encoding="utf-8") as page:
        page.writelines(_page_pieces(page_data(manifest, pictures)))
    written.append(INDEX)
    return written
