"""Write an explanation's files: pictures, arrays, ``explain.json`` and the page.

``write_explanation`` takes the plain data of ``stages/explained.py`` and writes, under a staging folder
(the caller commits it atomically with ``output_folder.staged_output(out, record=EXPLAIN_JSON)``: explain.json's
``files`` and ``fmonnx_version`` (from the header) tell it an earlier explanation may be replaced), per image
(in a sub-folder per image when there are several, named as render names them)::

    input.png                       the photo as the model saw it
    overlays/<stem>.png             each layer's map for the target, heat on the photo
    channels/<stem>_c<k>.png        each layer's top channels (by weight), their activation maps
    choices/<nn>.png                the picker's targets, the chosen layer's map on the photo
    boxes.png                       a detector's boxes, the explained one thicker
    mask.png, choices/<nn>_mask.png a segmentation target's mask (white inside)
    arrays/input.npy, arrays/<stem>_raw.npy, arrays/<stem>_cam.npy   with save_arrays

``<stem>`` is ``png.file_stem(layer index, layer name)``. Every layer's top channels are written
(not only the chosen layer's), so the page can rank the channels of whichever layer is clicked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from ..stages.explained import ExplainedLayer, ImageExplanation
from ..stages.json_out import json_pieces
from ..stages.overlay import channel_picture, draw_boxes, heat_overlay
from ..stages.png import file_stem, image_folders
from .explain_page import write_explain_page

__all__ = ["EXPLAIN_JSON", "MAX_INDEX_ENTRIES", "write_explanation", "explain_json_text", "json_data", "target_record"]


EXPLAIN_JSON = "explain.json"
BOXES_DRAWN = 10  # detections drawn on the boxes picture (all of them are in explain.json)
MAX_INDEX_ENTRIES = 64  # a mask target's index lists beyond this are replaced by their count
_CHANNEL_SIDES = (96, 192)  # a channel picture's longer side: small maps enlarged to 96 px, large ones cut to 192


def json_data(value):
    """``value`` as strict-JSON data: arrays to lists, numpy scalars to Python, NaN and infinity to None."""
    if isinstance(value, dict):
        return {str(key): json_data(inner) for key, inner in value.items()}
    if isinstance(value, list | tuple):
        return [json_data(inner) for inner in value]
    if isinstance(value, np.ndarray):
        return json_data(value.tolist())
    if isinstance(value, np.generic):
        return json_data(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def explain_json_text(record: dict) -> str:
    """The text of explain.json: ``record`` (already plain, so strict JSON) as every fmonnx JSON file is
    laid out (``json_out.json_pieces``: its top-level ``files`` on one line, which ``staged_output`` reads
    to know what an earlier output holds before replacing it)."""
    return "".join(json_pieces(record, indent=1)) + "\n"


class _Files:
    """Writes under one image's folder; remembers every file, relative to the root."""

    def __init__(self, root: Path, folder: str):
        self.root = root
        self.folder = folder
        self.written: list[str] = []

    def path(self, name: str) -> str:
        relative = f"{self.folder}/{name}" if self.folder else name
        (self.root / relative).parent.mkdir(parents=True, exist_ok=True)
        self.written.append(relative)
        return relative

    def png(self, name: str, picture: np.ndarray) -> str:
        relative = self.path(name)
        mode = "L" if picture.ndim == 2 else "RGB"
        Image.fromarray(np.ascontiguousarray(picture), mode).save(self.root / relative, compress_level=1)
        return relative

    def npy(self, name: str, array: np.ndarray) -> str:
        relative = self.path(name)
        np.save(self.root / relative, np.ascontiguousarray(array))
        return relative


def target_record(target: dict) -> dict:
    """A target as JSON holds it: plain values, without its mask array, a long index list as its count."""
    plain = json_data({key: value for key, value in target.items() if key != "mask"})
    index = plain.get("index")
    if isinstance(index, list) and len(index) > MAX_INDEX_ENTRIES:
        plain["index"] = None
        plain["index_count"] = len(index)
    return plain


def _target(target: dict, files: _Files, mask_name: str) -> dict:
    """A target as explain.json holds it: a mask as a PNG path, a long index list as its count."""
    plain = target_record(target)
    mask = target.get("mask")
    if mask is not None:
        plain["mask"] = files.png(mask_name, np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8))
    return plain


def _same_box(left, right) -> bool:
    left, right = np.asarray(left, dtype=np.float64), np.asarray(right, dtype=np.float64)
    return left.shape == right.shape and bool(np.allclose(left, right, atol=1e-3))


def _box_index(target: dict, boxes: list[dict]) -> int | None:
    """Which of ``boxes`` the target is (matched by its box), or None."""
    if target.get("box") is None:
        return None
    return next((index for index, box in enumerate(boxes) if _same_box(box.get("box"), target["box"])), None)


def _choice_picture(photo: np.ndarray, cam: np.ndarray, target: dict) -> np.ndarray:
    picture = heat_overlay(photo, cam)
    if target.get("box") is not None:  # a detection choice shows its box on its map
        picture = draw_boxes(picture, [{"box": target["box"], "score": target.get("score"),
                                        "label": target.get("label")}], 0)
    return picture


def _channel_side(shape) -> int | None:
    """The longer side of a channel's picture for maps of ``shape`` (H, W); None: as it is."""
    longest = max(shape, default=0)
    if longest < _CHANNEL_SIDES[0]:
        return _CHANNEL_SIDES[0]
    return _CHANNEL_SIDES[1] if longest > _CHANNEL_SIDES[1] else None


def _raw_max(layer: ExplainedLayer):
    raw = np.asarray(layer.raw)
    if raw.size == 0:
        return None
    peak = float(np.nanmax(raw)) if np.isfinite(raw).any() else float("nan")
    return peak if math.isfinite(peak) else None


def _layer(layer: ExplainedLayer, index: int, photo: np.ndarray, files: _Files, save_arrays: bool, top: int) -> dict:
    stem = file_stem(index, layer.name)
    entry = {
        "name": layer.name,
        "tensor": layer.tensor,
        "op": layer.op,
        "method": layer.method,
        "shape": [int(size) for size in np.shape(layer.activation)],
        "depends": bool(layer.depends),
        "raw_max": _raw_max(layer),
        "overlay": files.png(f"overlays/{stem}.png", heat_overlay(photo, layer.cam)),
        "top_channels": [],
    }
    if layer.also_output_of:
        entry["also_output_of"] = list(layer.also_output_of)
    activation = np.asarray(layer.activation)
    for channel, weight in layer.top_channels(top):
        if channel >= activation.shape[0]:
            continue
        picture = channel_picture(activation[channel], _channel_side(activation.shape[1:]))
        entry["top_channels"].append(
            {"channel": channel, "weight": json_data(weight), "picture": files.png(f"channels/{stem}_c{channel}.png",
                                                                                picture)}
        )
    if save_arrays:
        entry["array"] = {
            "raw": files.npy(f"arrays/{stem}_raw.npy", np.asarray(layer.raw, dtype=np.float32)),
            "cam": files.npy(f"arrays/{stem}_cam.npy", np.asarray(layer.cam, dtype=np.float32)),
        }
    return entry


def _image(explained: ImageExplanation, files: _Files, save_arrays: bool, top: int) -> dict:
    photo = np.asarray(explained.photo, dtype=np.uint8)
    record = {
        "image": str(explained.image),
        "folder": files.folder,
        "input_shape": [int(size) for size in np.shape(explained.input)],
        "preprocess": json_data(explained.preprocess),
        "photo": files.png("input.png", photo),
        "target": _target(explained.target, files, "mask.png"),
        "chosen": explained.chosen,
    }
    if save_arrays:
        record["array"] = files.npy("arrays/input.npy", np.asarray(explained.input))
    record["layers"] = [
        _layer(layer, index, photo, files, save_arrays, top) for index, layer in enumerate(explained.layers)
    ]
    record["choices"] = [
        {
            "target": _target(choice.target, files, f"choices/{number:02d}_mask.png"),
            "overlay": files.png(f"choices/{number:02d}.png", _choice_picture(photo, choice.cam, choice.target)),
        }
        for number, choice in enumerate(explained.choices)
    ]
    record["boxes"] = json_data(explained.boxes)
    if explained.boxes:
        highlight = _box_index(explained.target, explained.boxes)
        # the best boxes only: an untrained detector keeps dozens, ranked whatever their confidence
        shown = explained.boxes[: max(BOXES_DRAWN, (highlight or 0) + 1)]
        record["boxes_picture"] = files.png("boxes.png", draw_boxes(photo, shown, highlight))
        record["boxes_drawn"] = len(shown)
    record["problems"] = list(explained.problems)
    record["seconds"] = json_data(explained.seconds)
    return record


def write_explanation(
    root: Path,
    images: Iterable[ImageExplanation],
    header: dict,
    save_arrays: bool = False,
    report: bool = True,
    top_channels: int = 8,
    paths: list[Path] | None = None,
) -> dict:
    """Write every picture of ``images`` under ``root``, then explain.json and (``report``) index.html.

    ``header``: model, provider, method, fmonnx_version, source... (copied to explain.json's top level).
    ``images`` may be a generator, consumed one image at a time (only one image's arrays held) when
    ``paths`` (the images' files, in order) names the folders in advance.
    Returns explain.json's dict: the header's keys, ``images`` (one record per image) and ``files``
    (every file written, relative to ``root``, explain.json and index.html included).
    """
    root = Path(root)
    if paths is None:
        images = list(images)
        paths = [Path(explained.image) for explained in images]
    written: list[str] = []
    records = []
    for folder, explained in zip(image_folders(paths), images):
        files = _Files(root, folder)
        records.append(_image(explained, files, save_arrays, top_channels))
        written.extend(files.written)
        del explained  # the next image's arrays replace this one's
    record = {**json_data(header), "images": records}
    if report:
        written.append(write_explain_page(root, record))
    written.append(EXPLAIN_JSON)
    record["files"] = written
    (root / EXPLAIN_JSON).write_text(explain_json_text(record), encoding="utf-8")
    return record
