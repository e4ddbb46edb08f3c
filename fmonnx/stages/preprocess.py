"""Turn image files into the exact tensor a model's input expects.

Stages: ``load_image`` (any file Pillow reads, to an 8-bit RGB/L/RGBA array,
EXIF rotation applied), ``target_size`` (the input's H x W, or the image's
own size capped when H and W are dynamic) and ``prepare_input`` (resize,
preset arithmetic, layout, dtype, batch axis when the input has one); ``read_input`` is the three together.

An image far larger than what it is resized to is decoded reduced: a 150 KB PNG
can hold 12000 x 12000 pixels (432 MB as RGB, 1.6 GB through the conversions
before the resize) that a 224 x 224 input needs none of. It is reduced by an
integer factor (a JPEG while it decodes, ``Image.draft``; others by block
averages, ``Image.reduce``, before any conversion) to no less than twice the
size fed, then resized as any image. Images under 4x the size fed are not
reduced: their tensors are as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .. import choices
from ..errors import ImageError, ModelError
from .layout import Layout

__all__ = [
    "PRESETS",
    "DEFAULT_PRESET",
    "DEFAULT_MAX_SIZE",
    "IMAGE_SUFFIXES",
    "MAX_SIDE",
    "InputSpec",
    "load_image",
    "target_size",
    "prepare_input",
    "read_input",
    "expand_image_paths",
]


DEFAULT_PRESET = choices.DEFAULT_PRESET
DEFAULT_MAX_SIZE = 1024  # longest side when the model accepts any size
MAX_SIDE = 2**16  # the most pixels a model input's H or W may have; more is a broken export, not an image
REDUCE_MARGIN = 2  # a reduced decode keeps at least this many pixels per pixel fed, on each side
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
_ITEM_BYTES = {1: 4, 10: 2, 11: 8, 2: 1, 3: 1}
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "LA": 2, "PA": 2,
               "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBX": 4, "CMYK": 4}
_REDUCIBLE = ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "YCbCr")  # modes Image.reduce takes
_SWAPPED = (5, 6, 7, 8)  # EXIF orientations that turn the image a quarter: stored W x H is shown H x W


@dataclass(frozen=True)
class InputSpec:
    """The model's image input: name, element type and shape (dims may be symbolic).

    The shape is read from the model file, so it is checked here: a static dim over MAX_SIDE,
    or a tensor larger than the memory there is, is a ModelError (numpy would overflow on it).
    """

    name: str
    elem_type: int
    shape: tuple

    def __post_init__(self):
        fix = "re-export the model with its real input size, or with a dynamic H and W fed with --size"
        for axis, dim in enumerate(self.shape):
            if isinstance(dim, int) and dim > MAX_SIDE:
                raise ModelError(
                    f"the input {self.name!r} {list(self.shape)} has {dim} on axis {axis}, over {MAX_SIDE}: "
                    f"no image is that large; {fix}"
                )
        static = [dim for dim in self.shape if isinstance(dim, int) and dim > 0]
        needed = int(np.prod(static, dtype=np.float64)) * _ITEM_BYTES.get(self.elem_type, 4)
        from .pieces import available_bytes  # not at import: pieces imports onnx's helpers

        available = available_bytes()
        if available is not None and needed > available:
            raise ModelError(
                f"the input {self.name!r} {list(self.shape)} alone needs {needed / 2**30:.1f} GB and "
                f"{available / 2**30:.1f} GB are available; {fix}"
            )


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


Target = tuple[int, int] | Callable[[tuple[int, int]], tuple[int, int]]


def _reduction(image_hw: tuple[int, int], fed_hw: tuple[int, int]) -> int:
    """The integer factor an image of ``image_hw`` may be reduced by and still have REDUCE_MARGIN x ``fed_hw``."""
    return max(1, min(image_hw[0] // (REDUCE_MARGIN * fed_hw[0]), image_hw[1] // (REDUCE_MARGIN * fed_hw[1])))


def _decode(opened: Image.Image, path: Path, target: Target | None, max_bytes: int | None) -> Image.Image:
    """Decode ``opened``, reduced when ``target`` (the H x W it will be fed at) is far smaller (see the module
    docstring); EXIF orientation applied. ImageError when what is decoded would pass ``max_bytes``."""
    width, height = opened.size
    swapped = opened.getexif().get(0x0112) in _SWAPPED
    shown_hw = (width, height) if swapped else (height, width)
    factor = 1
    if target is not None:
        fed_hw = target(shown_hw) if callable(target) else target
        factor = _reduction(shown_hw, fed_hw)
        if factor > 1:  # a JPEG decodes at 1/2, 1/4 or 1/8 (no more than asked); others ignore it
            opened.draft(opened.mode, (-(-width // factor), -(-height // factor)))
    decoded = opened.size[0] * opened.size[1] * _MODE_BYTES.get(opened.mode, 4)
    if max_bytes is not None and decoded > max_bytes:
        raise ImageError(
            f"{path} decodes to {opened.size[0]} x {opened.size[1]} pixels ({decoded // 2**20} MB), more than "
            f"the memory bound leaves ({max_bytes // 2**20} MB); downscale it first or raise --max-memory"
        )
    opened.load()
    image = opened
    if factor > 1:  # what the draft left (all of it for a PNG), by block averages before any conversion
        width, height = image.size
        rest = _reduction((width, height) if swapped else (height, width), fed_hw)
        if rest > 1:
            image = _to_8bit(image) if image.mode not in _REDUCIBLE else image
            if image.mode not in _REDUCIBLE:  # palette, 1-bit
                image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
            image = image.reduce(rest)
    return ImageOps.exif_transpose(image)


def load_image(
    path: str | os.PathLike, channels: int = 3, target: Target | None = None, max_bytes: int | None = None
) -> np.ndarray:
    """Read an image as uint8 (H, W, channels): channels 3 is RGB, 1 grayscale, 4 RGBA.

    EXIF orientation is applied; palette, CMYK, 16-bit and alpha images are converted. ``target``:
    the H x W the pixels will be resized to (or a function of the image's H x W giving it): an
    image over 4x larger is decoded reduced (see the module docstring). ``max_bytes``: the most
    the decoded pixels may take; more is an ImageError.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image {path} does not exist; check the path")
    try:
        with Image.open(path) as opened:
            image = _decode(opened, path, target, max_bytes)
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
    h_axis, w_axis = layout.hw_axes
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
    """Build the model's input tensor (batch of one) from uint8 (H, W, C) pixels; an input without
    a batch axis (``layout.rank`` 3) gets the image alone, (C, H, W) or (H, W, C).

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
    if layout.channels_first:
        values = values.transpose(2, 0, 1)
    dtype = _NUMPY_TYPES.get(spec.elem_type)
    if dtype is None:
        raise ImageError(
            f"the model input {spec.name!r} has element type {spec.elem_type} "
            "(not float or uint8); fmonnx cannot feed an image to it"
        )
    unbatched = layout.rank == 3
    tensor = np.ascontiguousarray((values if unbatched else values[None]).astype(dtype))
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
    if unbatched:
        record["unbatched"] = True  # the model takes one image with no batch axis
    return tensor, record


def read_input(
    path: str | os.PathLike,
    spec: InputSpec,
    layout: Layout,
    preset: str = DEFAULT_PRESET,
    size: tuple[int, int] | None = None,
    max_size: int | None = None,
    channels: int = 3,
    max_bytes: int | None = None,
) -> tuple[np.ndarray, dict]:
    """``prepare_input`` of ``load_image``: the input tensor and its record. A large image is decoded
    reduced (see the module docstring), fed at the size its full decode would be; the record's
    ``source_size`` is the file's, ``decoded_size`` says what was decoded when it differs."""
    seen: dict = {}

    def fed(image_hw: tuple[int, int]) -> tuple[int, int]:
        seen["source"] = tuple(image_hw)
        seen["fed"] = size or target_size(spec.shape, layout, image_hw, max_size)
        return seen["fed"]

    pixels = load_image(path, channels, fed, max_bytes)
    tensor, record = prepare_input(pixels, spec, layout, preset, seen.get("fed", size), max_size)
    if seen and tuple(pixels.shape[:2]) != seen["source"]:
        record["decoded_size"] = record["source_size"]
        record["source_size"] = list(seen["source"])
    return tensor, record
