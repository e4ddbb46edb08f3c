"""scan decodes a huge image reduced to near the size it feeds, as render does, from files and from bytes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmonnx.stages.collection import ImageRef, decode_bytes, read_pixels

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "models" / "tutorial_cnn.onnx"  # fed at 150 x 150
FED = (150, 150)
SIDE = 6000  # 40x the fed size: reduced by 6000 // (2 * 150) = 20, to 300 x 300


def gradient(height: int, width: int) -> np.ndarray:
    """A smooth RGB gradient, so a block-average reduction and a bilinear resize differ only by rounding."""
    y = np.linspace(0, 255, height)[:, None]
    x = np.linspace(0, 255, width)[None, :]
    return np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                     (x + y) / 2], axis=-1).round().astype(np.uint8)


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.fromarray(gradient(SIDE, SIDE)).save(path, compress_level=1)
    return path


def test_scan_cli_reads_a_huge_image(huge_png, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "fmonnx", "scan", str(TUTORIAL), str(huge_png), "-o", str(out), "--top", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "scan.json").read_text())
    assert record["skipped"] == []


def test_file_decoded_reduced_close_to_full_decode_resized(huge_png):
    ref = ImageRef(0, str(huge_png), path=str(huge_png))
    reduced = read_pixels(ref, 3, target=FED)
    assert reduced.shape == (300, 300, 3)
    full = read_pixels(ref, 3)
    assert full.shape == (SIDE, SIDE, 3)
    resized = np.asarray(Image.fromarray(full).resize((300, 300), Image.Resampling.BILINEAR))
    # block averages vs. Pillow's antialiased bilinear over the same smooth gradient: rounding apart, 2 levels of 255
    assert np.abs(reduced.astype(int) - resized.astype(int)).max() <= 2


def test_bytes_decoded_reduced_as_the_file(huge_png):
    data = huge_png.read_bytes()
    from_file = read_pixels(ImageRef(0, str(huge_png), path=str(huge_png)), 3, target=FED)
    np.testing.assert_array_equal(decode_bytes(data, "huge.parquet#0", 3, FED), from_file)
    parquet_ref = ImageRef(0, "huge.parquet#0", parquet=("huge.parquet", 0, "image"))
    np.testing.assert_array_equal(read_pixels(parquet_ref, 3, data, FED), from_file)


@pytest.mark.parametrize("side", [150, 599, 1000])
def test_images_under_4x_give_the_same_pixels(tmp_path, side):
    # 1000 x 599: over 4x on one side only, so not reduced either
    pixels = gradient(side, 599)
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    ref = ImageRef(0, str(path), path=str(path))
    np.testing.assert_array_equal(read_pixels(ref, 3, target=FED), pixels)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    np.testing.assert_array_equal(decode_bytes(buffer.getvalue(), "row", 3, FED), pixels)
