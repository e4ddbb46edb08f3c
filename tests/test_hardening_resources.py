"""Issue 13, resources: memory bounds that cannot be held, huge images, absurd input shapes, scan's
memory check and a read-only output folder. Each gives one ``Error:`` line and leaves nothing behind.

Models are built here (onnx.helper); the CLI runs in a subprocess, as a user runs it.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

from conftest import copy_model_nchw, copy_weights, make_model, save
from fmonnx.errors import ModelError
from fmonnx.stages.layout import Layout
from fmonnx.stages.preprocess import InputSpec, load_image, prepare_input, read_input


def fmonnx(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fmonnx", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def one_error_line(outcome) -> str:
    assert outcome.returncode == 1, outcome.stdout + outcome.stderr
    assert "Traceback" not in outcome.stderr, outcome.stderr
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, outcome.stderr
    return errors[0]


def dynamic_copy_model():
    """input (1,3,h,w) -> Conv(copy) -> Relu."""
    return make_model(
        [helper.make_node("Conv", ["input", "w"], ["conv_out"], name="conv"),
         helper.make_node("Relu", ["conv_out"], ["output"], name="relu")],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, "h", "w"])],
        [("w", copy_weights())],
    )


def smooth_image(height, width):
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    pixels = np.stack([np.broadcast_to(y, (height, width)), np.broadcast_to(x, (height, width)),
                       (y + x) / 2 % 256], axis=-1)
    return pixels.astype(np.uint8)


# --- 1. a bound below what the process itself takes ------------------------------------------------------


def test_a_bound_that_cannot_be_held_is_refused_with_the_least_one(tmp_path, write_image):
    model = save(dynamic_copy_model(), tmp_path, "m.onnx")
    image = write_image(smooth_image(16, 16), "small.png")
    refused = fmonnx("render", model, image, "-o", tmp_path / "out", "--max-memory", "1M")
    line = one_error_line(refused)
    assert "--max-memory 1M cannot be held" in line and "give --max-memory" in line
    assert not (tmp_path / "out").exists()
    least = line.split("give --max-memory ")[1].split()[0]
    held = fmonnx("render", model, image, "-o", tmp_path / "out", "--max-memory", least)
    assert held.returncode == 0, held.stderr


# --- 2. huge images are decoded reduced ---------------------------------------------------------------------


SPEC = InputSpec("input", TensorProto.FLOAT, (1, 3, 32, 48))
NCHW = Layout(1, True)


@pytest.mark.parametrize("size", [(32, 48), (60, 90), (127, 191), (20, 30)])
def test_images_under_4x_the_input_give_the_same_tensor(write_image, size):
    path = write_image(smooth_image(*size), "normal.png")
    expected, record = prepare_input(load_image(path), SPEC, NCHW)
    tensor, got = read_input(path, SPEC, NCHW)
    assert np.array_equal(tensor, expected) and got == record


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_huge_image_is_decoded_reduced_and_close_to_the_full_decode(tmp_path, suffix):
    path = tmp_path / f"huge{suffix}"
    Image.fromarray(smooth_image(1600, 2400)).save(path, quality=95)
    full, _ = prepare_input(load_image(path), SPEC, NCHW)
    tensor, record = read_input(path, SPEC, NCHW)
    assert record["source_size"] == [1600, 2400] and record["resize"] == [32, 48]
    assert record["decoded_size"][0] < 1600 and record["decoded_size"][0] >= 2 * 32
    # reduced then resized against resized from the full decode: within 2 of 255 everywhere (a smooth image)
    assert np.abs(tensor - full).max() <= 2 / 255 + 1e-6


def test_a_decoded_image_larger_than_the_bound_is_an_error(tmp_path):
    model = save(copy_model_nchw(size=(8, 8)), tmp_path, "m.onnx")
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((6000, 6000), np.uint8), "L").save(path)  # 36 MB decoded, 35 KB on disk
    line = one_error_line(fmonnx("render", model, path, "-o", tmp_path / "out", "--max-memory", "20M"))
    assert "decodes to 6000 x 6000 pixels" in line and "--max-memory" in line
    assert not (tmp_path / "out").exists()


# --- 3. absurd input shapes ---------------------------------------------------------------------------------


def test_an_absurd_static_input_dim_is_an_error_naming_it(tmp_path, write_image):
    model = copy_model_nchw()
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 4611686018427387904
    path = tmp_path / "absurd.onnx"
    path.write_bytes(model.SerializeToString())
    line = one_error_line(fmonnx("render", path, write_image(smooth_image(8, 8)), "-o", tmp_path / "out"))
    assert "'input'" in line and "4611686018427387904 on axis 3" in line and "--size" in line
    with pytest.raises(ModelError, match="alone needs"):
        InputSpec("input", TensorProto.FLOAT, (1, 3, 60000, 60000))


# --- 4. scan checks memory before it starts ---------------------------------------------------------------


def test_scan_refuses_a_batch_that_cannot_fit_before_running(tmp_path, write_image):
    """A Resize by 2000 makes 64000 x 64000 maps from a 32 x 32 input: 49 GB, more than a test machine has."""
    model = make_model(
        [helper.make_node("Resize", ["input", "", "scales"], ["big"], name="up", mode="nearest"),
         helper.make_node("Conv", ["big", "w"], ["conv_out"], name="conv")],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, [1, 2, 64000, 64000])],
        [("w", copy_weights()), ("scales", [1, 1, 2000, 2000])],
    )
    path = save(model, tmp_path, "up.onnx")
    (tmp_path / "images").mkdir()
    write_image(smooth_image(32, 32), "images/a.png")
    line = one_error_line(fmonnx("scan", path, tmp_path / "images", "-o", tmp_path / "scan", "--batch", "1"))
    assert "needs about" in line and "MB are available" in line
    assert not (tmp_path / "scan").exists()


# --- 5. scan into a read-only folder --------------------------------------------------------------------------


def test_scan_into_a_read_only_folder_is_one_error_and_nothing_written(tmp_path, write_image):
    """A folder made read-only; as root (CI), who writes anywhere, /proc: a file system nobody writes to."""
    model = save(copy_model_nchw(size=(8, 8)), tmp_path, "m.onnx")
    (tmp_path / "images").mkdir()
    write_image(smooth_image(8, 8), "images/a.png")
    locked = Path("/proc") if os.geteuid() == 0 else tmp_path / "locked"
    if locked != Path("/proc"):
        locked.mkdir()
        locked.chmod(0o555)
    before = set(locked.iterdir())
    try:
        line = one_error_line(fmonnx("scan", model, tmp_path / "images", "-o", locked / "fmonnx-scan"))
        assert str(locked) in line and "-o" in line
        assert not (locked / "fmonnx-scan").exists()
        assert {entry for entry in locked.iterdir() if entry.name.startswith(".fmonnx")} == \
            {entry for entry in before if entry.name.startswith(".fmonnx")}
    finally:
        if locked != Path("/proc"):
            locked.chmod(0o755)
