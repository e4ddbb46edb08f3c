"""Turn image files into the exact tensor a model's input expects.

Stages: ``load_image`` (any file Pillow reads, to an 8-bit RGB/L/RGBA array,
EXIF rotation applied), ``target_size`` (the input's H x W, or the image's
own size capped when H and W are dynamic) and ``prepare_input`` (resize,
preset arithmetic, layout, dtype, batch axis).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from .layout import Layout

__all__ = [
    "PRESETS",
    "DEFAULT_PRESET",
    "DEFAULT_MAX_SIZE",
    "IMAGE_SUFFIXES",
    "load_image",
    "target_size",
    "prepare_input",
    "expand_image_paths",
]

log = logging.getLogger(__name__)

DEFAULT_PRESET = "unit"
DEFAULT_MAX_SIZE = 1024  # longest side when the model accepts any size
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

PRESETS = {
    "unit": "pixels / 255, RGB (Keras tutorial)",
    "imagenet": "(pixels / 255 - mean) / std with ImageNet mean/std, RGB (torchvision)",
    "caffe": "BGR, minus ImageNet channel means in 0..255 (Keras ResNet50/VGG)",
    "tf": "pixels / 127.5 - 1, RGB (Keras MobileNet/Inception)",
    "raw": "pixels 0..255 as they are, RGB",
}

_NUMPY_TYPES = {
    1: np.float32, 10: np.float16, 11: np.float64, 2: np.uint8, 3: np.int8,
}


@dataclass(frozen=True)
class InputSpec:
    """The model's image input: name, element type and shape (dims may be symbolic)."""

    name: str
    elem_type: int
    shape: tuple


def expand_image_paths(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted by name)."""
    images: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ImageError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); pass image files")
            images.extend(found)
        else:
            images.append(path)
    return images


def _to_8bit(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / max(high - low, 1e-12) * 255.0
        return Image.fromarray(scaled.astype(np.uint8), "L")
    return image


def load_image(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """Read an image as uint8 (H, W, channels): channels 3 is RGB, 1 grayscale, 4 RGBA.

    EXIF orientation is applied; palette, CMYK, 16-bit and alpha images are converted.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image {path} does not exist; check the path")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image Pillow can read; use a JPEG, PNG, BMP or WebP file") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path} is too large to decode safely (over ~179 megapixels); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path} could not be read ({exc}); the file may be truncated, re-save it") from None
    image = _to_8bit(image)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    image = image.convert(mode)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def target_size(spec_shape: tuple, layout: Layout, image_hw: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    """The H, W to feed: the model's when fixed, else the image's own, its longest side capped at ``max_size``."""
    h_axis, w_axis = (2, 3) if layout.channel_axis == 1 else (1, 2)
    height, width = spec_shape[h_axis], spec_shape[w_axis]
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return height, width
    image_h, image_w = image_hw
    cap = max_size or DEFAULT_MAX_SIZE
    scale = min(1.0, cap / max(image_h, image_w))
    own_h, own_w = max(1, round(image_h * scale)), max(1, round(image_w * scale))
    return (height if isinstance(height, int) and height > 0 else own_h,
            width if isinstance(width, int) and width > 0 else own_w)


def _apply_preset(pixels: np.ndarray, preset: str) -> np.ndarray:
    x = pixels.astype(np.float32)
    rgb = x.shape[-1] == 3
    if preset == "unit":
        return x / 255.0
    if preset == "tf":
        return x / 127.5 - 1.0
    if preset == "raw":
        return x
    if preset == "imagenet":
        if not rgb:
            return (x / 255.0 - float(np.mean(_IMAGENET_MEAN))) / float(np.mean(_IMAGENET_STD))
        return (x / 255.0 - np.array(_IMAGENET_MEAN, np.float32)) / np.array(_IMAGENET_STD, np.float32)
    if preset == "caffe":
        if not rgb:
            return x - float(np.mean(_CAFFE_MEAN_BGR))
        return x[..., ::-1] - np.array(_CAFFE_MEAN_BGR, np.float32)
    raise ImageError(f"unknown preprocessing {preset!r}; choose one of: {', '.join(PRESETS)}")


def prepare_input(
    pixels: np.ndarray,
    spec: InputSpec,
    layout: Layout,
    preset: str = DEFAULT_PRESET,
    size: tuple[int, int] | None = None,
    max_size: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Build the model's input tensor (batch of one) from uint8 (H, W, C) pixels.

    Returns the tensor and a record of what was applied, for the manifest.
    """
    height, width = size or target_size(spec.shape, layout, pixels.shape[:2], max_size)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[pixels.shape[-1]]
    image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
    if (image.height, image.width) != (height, width):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    resized = np.asarray(image, dtype=np.uint8)
    resized = resized[:, :, None] if resized.ndim == 2 else resized
    values = _apply_preset(resized, preset)
    if layout.channel_axis == 1:
        values = values.transpose(2, 0, 1)
    dtype = _NUMPY_TYPES.get(spec.elem_type)
    if dtype is None:
        raise ImageError(
            f"the model input {spec.name!r} has element type {spec.elem_type} "
            "(not float or uint8); fmonnx cannot feed an image to it"
        )
    tensor = np.ascontiguousarray(values[None].astype(dtype))
    record = {
        "preset": preset,
        "description": PRESETS[preset],
        "resize": [height, width],
        "resample": "bilinear",
        "source_size": [int(pixels.shape[0]), int(pixels.shape[1])],
        "channel_order": "BGR" if preset == "caffe" and pixels.shape[-1] == 3 else mode,
        "dtype": np.dtype(dtype).name,
        "value_range": [float(tensor.min()), float(tensor.max())],
    }
    return tensor, record
