"""What a channel saw in one of its top images: the crop of its receptive field, or its map over the image.

Boxes are ``[x0, y0, x1, y1]`` in the original image's pixels (x1, y1 exclusive): the receptive field
of the maximum's position (``receptive.field_box``, in model-input pixels, clamped to the input)
scaled from the model's input size back to the image's own size. Where the field covers most of the
input (``covers_most``) or is unknown, a crop would be the whole image and say nothing: the channel's
map, upsampled over the image, is shown instead (``activation_thumbnail``). Thumbnails are square,
``size`` pixels, the crop fitted inside on a dark background; a layer's thumbnails tile into one
near-square picture, a row of k per channel (``sheet``).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .receptive import Field, field_box

__all__ = [
    "image_box", "covers_most", "crop_thumbnail", "fitted_image", "activation_thumbnail", "sheet", "PADDING",
    "BACKGROUND",
]


PADDING = 2
BACKGROUND = (24, 24, 28)
_MOST = 0.75  # a field this large a fraction of the input's height and width is shown as a map


def covers_most(field: Field | None, input_hw: tuple[int, int]) -> bool:
    """Whether a crop of ``field`` would be (nearly) the whole input, so the map over the image says more."""
    if field is None:
        return True
    return field.size[0] >= _MOST * input_hw[0] and field.size[1] >= _MOST * input_hw[1]


def image_box(field: Field | None, y: int, x: int, input_hw: tuple[int, int], image_hw: tuple[int, int]) -> list[int]:
    """``[x0, y0, x1, y1]`` in the image's pixels that position (y, x) of a tensor with ``field`` sees."""
    top, left, bottom, right = field_box(field, y, x, input_hw)
    scale_y, scale_x = image_hw[0] / input_hw[0], image_hw[1] / input_hw[1]
    x0, y0 = math.floor(left * scale_x), math.floor(top * scale_y)
    x1, y1 = math.ceil(right * scale_x), math.ceil(bottom * scale_y)
    return [max(0, x0), max(0, y0), min(image_hw[1], max(x1, x0 + 1)), min(image_hw[0], max(y1, y0 + 1))]


def _fit(image: Image.Image, size: int) -> np.ndarray:
    scale = size / max(image.width, image.height)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resample = Image.Resampling.NEAREST if scale >= 4 else Image.Resampling.BILINEAR
    fitted = image.resize((width, height), resample)
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    canvas.paste(fitted, ((size - width) // 2, (size - height) // 2))
    return np.asarray(canvas, np.uint8)


def crop_thumbnail(pixels: np.ndarray, box: list[int], size: int) -> np.ndarray:
    """uint8 (size, size, 3): the ``box`` of uint8 RGB ``pixels`` (H, W, 3), fitted in a square."""
    x0, y0, x1, y1 = box
    return _fit(Image.fromarray(pixels[y0:y1, x0:x1]), size)


def fitted_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size, 3): the whole image fitted in a square, the base of its ``activation_thumbnail``s."""
    return _fit(Image.fromarray(pixels), size)


def activation_thumbnail(base: np.ndarray, image_hw: tuple[int, int], values: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size, 3): ``base`` (``fitted_image`` of an image of ``image_hw``) dimmed where the
    channel's map ``values`` (h, w) is low.

    The map is scaled by its own maximum (negatives as 0), upsampled bilinearly over the image;
    brightness is 0.2 + 0.8 x activation, so the bright regions are what the channel responds to.
    """
    top = float(np.max(values)) if values.size else 0.0
    weights = np.clip(values.astype(np.float32), 0, None) / max(top, 1e-12)
    scale = size / max(image_hw)
    width, height = max(1, round(image_hw[1] * scale)), max(1, round(image_hw[0] * scale))
    upsampled = np.asarray(Image.fromarray(weights).resize((width, height), Image.Resampling.BILINEAR))
    mask = np.zeros((size, size), np.float32)
    mask[(size - height) // 2 : (size - height) // 2 + height, (size - width) // 2 : (size - width) // 2 + width] = (
        upsampled
    )
    shaded = base.astype(np.float32) * (0.2 + 0.8 * mask[..., None])
    return np.clip(shaded + 0.5, 0, 255).astype(np.uint8)


def sheet(thumbnails: np.ndarray) -> tuple[np.ndarray, dict]:
    """uint8 RGB picture of (C, k, s, s, 3) thumbnails, near square, and where each cell is.

    Channels run down ``rows`` rows, then continue in the next group of k columns: channel c, rank r
    has its top-left corner at x = PADDING + (c // rows) * group_step + r * step,
    y = PADDING + (c % rows) * step (``step = s + PADDING``; groups are one cell apart).
    """
    channels, k, size = thumbnails.shape[:3]
    step = size + PADDING
    groups = max(1, round(math.sqrt(channels / max(k, 1))))
    rows = -(-channels // groups)
    groups = -(-channels // rows)
    group_step = k * step + step // 2
    picture = np.empty((rows * step + PADDING, groups * group_step - step // 2 + PADDING, 3), np.uint8)
    picture[...] = BACKGROUND
    for channel in range(channels):
        top = PADDING + (channel % rows) * step
        left = PADDING + (channel // rows) * group_step
        for rank in range(k):
            picture[top : top + size, left + rank * step : left + rank * step + size] = thumbnails[channel, rank]
    return picture, {"cell": size, "step": step, "rows": rows, "group_step": group_step, "padding": PADDING}
