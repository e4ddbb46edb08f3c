"""Explanation pictures: heat on the photo, the heat alone, detector boxes, a ranked channel's map.

Pure numpy + Pillow; every function returns a new (H, W, 3) uint8 RGB array and never touches the disk.
The heat colormap is matplotlib's ``jet`` from our shipped tables (``colormap.lookup_table``): blue for
0, red for 1, the convention of Grad-CAM's figures. On the photo each pixel's heat is mixed in by
``alpha * cam``, so where the map is cold the photo shows as it is and only evidence is coloured.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .colormap import DEFAULT_CMAP, lookup_table

__all__ = ["HEAT_CMAP", "heat_overlay", "heat_picture", "draw_boxes", "channel_picture", "MID_GREY"]

HEAT_CMAP = "jet"
MID_GREY = 128
_BOX_COLOUR = (255, 214, 0)  # yellow: stands out on jet's blue and on most photos
_HIGHLIGHT_COLOUR = (255, 0, 160)
_EPSILON = 1e-12


def _unit(cam: np.ndarray) -> np.ndarray:
    """``cam`` as float32 in 0..1; non-finite values count as 0."""
    cam = np.asarray(cam, dtype=np.float32)
    return np.clip(np.nan_to_num(cam, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def _fit(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cam`` at (height, width): the caller's maps are at the input size already; resized only if not."""
    if cam.shape == (height, width):
        return cam
    resized = Image.fromarray(cam, "F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def heat_picture(cam: np.ndarray) -> np.ndarray:
    """(H, W) map in 0..1 -> (H, W, 3) uint8 through ``jet``."""
    levels = np.round(_unit(cam) * 255).astype(np.uint8)
    return lookup_table(HEAT_CMAP)[levels]


def heat_overlay(photo: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 photo and (H, W) map in 0..1 -> (H, W, 3) uint8: ``photo * (1 - a) + jet(cam) * a``
    with ``a = alpha * cam`` per pixel (a map of another size is resized to the photo's first)."""
    photo = np.asarray(photo, dtype=np.uint8)
    cam = _fit(_unit(cam), photo.shape[0], photo.shape[1])
    weight = (np.float32(alpha) * cam)[..., None]
    mixed = photo.astype(np.float32) * (1 - weight) + heat_picture(cam).astype(np.float32) * weight
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def _label(box: dict) -> str:
    label = box.get("label") if box.get("label") not in (None, "") else box.get("class")
    score = box.get("score")
    parts = [str(label)] if label not in (None, "") else []
    if score is not None and np.isfinite(score):
        parts.append(f"{float(score):.2f}")
    return " ".join(parts)


def draw_boxes(photo: np.ndarray, boxes: list[dict], highlight: int | None = None) -> np.ndarray:
    """The photo with each ``box`` ([x1, y1, x2, y2] in input pixels) outlined and labelled (label, score).

    ``highlight``: the index in ``boxes`` of the explained one, drawn thicker and in another colour (last, on top).
    """
    image = Image.fromarray(np.asarray(photo, dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    width, height = image.size
    thin = max(1, round(max(width, height) / 200))
    order = [index for index in range(len(boxes)) if index != highlight]
    if highlight is not None and 0 <= highlight < len(boxes):
        order.append(highlight)
    for index in order:
        x1, y1, x2, y2 = (float(value) for value in boxes[index]["box"])
        if not all(np.isfinite([x1, y1, x2, y2])):
            continue
        x1, x2 = sorted((min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)))
        y1, y2 = sorted((min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)))
        chosen = index == highlight
        colour = _HIGHLIGHT_COLOUR if chosen else _BOX_COLOUR
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=thin * 3 if chosen else thin)
        text = _label(boxes[index])
        if text:  # above the box where there is room, so the label hides none of what the box holds
            _, top, _, bottom = draw.textbbox((0, 0), text)
            at = (x1 + 2, y1 - (bottom - top) - 3 if y1 - (bottom - top) - 3 >= 0 else y1 + 2)
            left, top, right, bottom = draw.textbbox(at, text)
            draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=colour)
            draw.text(at, text, fill=(0, 0, 0))
    return np.asarray(image, dtype=np.uint8).copy()


def channel_picture(
    activation: np.ndarray, size: int | tuple[int, int] | None = None, cmap: str = DEFAULT_CMAP
) -> np.ndarray:
    """One channel (H, W) -> (h, w, 3) uint8: stretched between its own min and max, through ``cmap``.

    A flat channel (max == min, or nothing finite) is mid grey whatever the colormap, so it reads as
    "no contrast", not as a level. ``size``: (height, width), or the longer side as an int; None keeps
    (H, W). Enlarged with nearest neighbours so each activation stays a visible block.
    """
    values = np.asarray(activation, dtype=np.float32)
    finite = np.isfinite(values)
    values = np.where(finite, values, np.float32(0))
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if high - low <= _EPSILON * max(1.0, abs(high), abs(low)):
        picture = np.full((*values.shape, 3), MID_GREY, dtype=np.uint8)
    else:
        levels = np.round((values - low) / (high - low) * 255).astype(np.uint8)
        picture = lookup_table(cmap)[levels]
    if size is None:
        return picture
    if isinstance(size, int):
        scale = size / max(values.shape[0], values.shape[1], 1)
        size = (max(1, round(values.shape[0] * scale)), max(1, round(values.shape[1] * scale)))
    if tuple(size) == picture.shape[:2]:
        return picture
    resized = Image.fromarray(picture, "RGB").resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(resized, dtype=np.uint8).copy()
