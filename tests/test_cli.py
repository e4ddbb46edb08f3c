"""The command line, through click's CliRunner and real subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import make_model, save
from onnx import TensorProto, helper

from fmonnx.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_clean_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def photo(write_image, gradient_rgb):
    return write_image(gradient_rgb, "photo.png")


def test_every_command_has_help():
    for name, command in cli.commands.items():
        assert command.help, f"command {name} has no help"
        result = invoke(name, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


def test_demo_renders_offline(tmp_path):
    out = tmp_path / "demo"
    result = invoke("render", "-o", out)
    assert result.exit_code == 0, result.output
    assert f"to {out}/" in result.output and " s (" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    names = [layer["name"] for layer in manifest["images"][0]["layers"]]
    assert names[:3] == ["conv2d/Conv", "conv2d", "max_pooling2d"]
    assert manifest["images"][0]["image"].endswith("grace_hopper.jpg")
    assert (out / "overview.png").exists()


def test_render_and_layers_on_a_model(copy_model_path, photo, tmp_path):
    result = invoke("render", copy_model_path, photo, "-o", tmp_path / "out", "--layout", "belt", "--cmap", "gray")
    assert result.exit_code == 0, result.output
    assert "Wrote 3 layer pictures for 1 image" in result.output
    table = invoke("layers", copy_model_path)
    assert table.exit_code == 0 and "relu" in table.output and "2x4x6" in table.output
    rows = json.loads(invoke("layers", copy_model_path, "--json").output)
    assert [row["name"] for row in rows] == ["conv", "relu", "pool"]


def test_ops_option_selects_ops(copy_model_path):
    rows = json.loads(invoke("layers", copy_model_path, "--json", "--ops", "MaxPool").output)
    assert [row["op"] for row in rows] == ["MaxPool"]


def test_missing_model(tmp_path, photo):
    assert_clean_error(invoke("render", tmp_path / "nope.onnx", photo, "-o", tmp_path / "o"), "does not exist")
    assert not (tmp_path / "o").exists()


def test_not_onnx_and_truncated(tmp_path, photo, copy_model_path):
    text = tmp_path / "model.onnx"
    text.write_text("hello, I am not a model\n" * 20)
    assert_clean_error(invoke("render", text, photo, "-o", tmp_path / "o"), "not a readable ONNX model")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(copy_model_path.read_bytes()[:-40])
    assert_clean_error(invoke("layers", cut), "cut.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_clean_error(invoke("layers", empty), "empty")
    assert not (tmp_path / "o").exists()


def test_bad_images(tmp_path, copy_model_path, write_image):
    text = tmp_path / "photo.jpg"
    text.write_text("not an image")
    assert_clean_error(invoke("render", copy_model_path, text, "-o", tmp_path / "o"), "not an image")
    full = write_image(np.random.default_rng(1).integers(0, 255, (64, 64, 3)), "full.jpg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:400])
    assert_clean_error(invoke("render", copy_model_path, cut, "-o", tmp_path / "o"), "truncated")
    assert_clean_error(invoke("render", copy_model_path, tmp_path / "gone.png", "-o", tmp_path / "o"), "does not exist")
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_model_without_spatial_tensors(tmp_path, photo):
    model = make_model(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Softmax", ["flat"], ["output"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 72])],
    )
    path = save(model, tmp_path, "dense.onnx")
    assert_clean_error(invoke("render", path, photo, "-o", tmp_path / "o"), "Flatten, Softmax", "--all-spatial")


def test_model_with_two_inputs(tmp_path, photo):
    model = make_model(
        [helper.make_node("Add", ["a", "b"], ["output"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 4, 6]) for n in ("a", "b")],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 6])],
    )
    assert_clean_error(invoke("layers", save(model, tmp_path, "two.onnx")), "2 inputs (a, b)")


def test_input_with_non_image_channels(tmp_path):
    model = make_model(
        [helper.make_node("Relu", ["input"], ["output"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 16, 16])],
    )
    path = save(model, tmp_path, "eight.onnx")
    assert_clean_error(invoke("layers", path), "1, 3 or 4")
    assert_clean_error(invoke("layers", path, "--input-layout", "NCHW"), "8 channels")


def test_unwritable_output_folder(tmp_path, copy_model_path, photo):
    """A folder made read-only; as root (CI), who writes anywhere, /proc: a file system nobody writes to."""
    if os.geteuid() == 0:
        locked = Path("/proc")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
    assert_clean_error(invoke("render", copy_model_path, photo, "-o", locked / "fmonnx-out"), "cannot write")
    assert not (locked / "fmonnx-out").exists()


def test_output_path_that_is_a_file_or_foreign_folder(tmp_path, copy_model_path, photo):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    assert_clean_error(invoke("render", copy_model_path, photo, "-o", target), "is a file")
    assert target.read_text() == "keep me"
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep me too")
    assert_clean_error(invoke("render", copy_model_path, photo, "-o", folder), "did not write")
    assert (folder / "thesis.tex").read_text() == "keep me too"
    assert leftovers(tmp_path) == []


def test_output_under_a_read_only_parent_is_a_clean_error(tmp_path, copy_model_path, photo):
    parent = tmp_path / "blocker"
    parent.write_text("a file where a folder should be")
    assert_clean_error(invoke("render", copy_model_path, photo, "-o", parent / "out"), "cannot write")


def test_bad_option_values(copy_model_path, photo, tmp_path):
    result = invoke("render", copy_model_path, photo, "--size", "big", "-o", tmp_path / "o")
    assert result.exit_code == 2 and "HxW" in result.output
    assert_clean_error(invoke("render", copy_model_path, photo, "--cmap", "nope", "-o", tmp_path / "o"), "colormap")


def test_cuda_asked_for_without_it_is_an_error(copy_model_path, photo, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    assert_clean_error(invoke("render", copy_model_path, photo, "--provider", "cuda", "-o", tmp_path / "o"),
                       "onnxruntime-gpu", "--provider cpu")


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_help_and_render_never_import_tensorflow(copy_model_path, photo, tmp_path):
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from fmonnx.cli import cli\n"
        "CliRunner().invoke(cli, ['--help'])\n"
        "heavy = ('onnxruntime', 'onnx', 'numpy', 'matplotlib', 'tensorflow')\n"
        "heavy_after_help = [m for m in heavy if m in sys.modules]\n"
        f"args = ['render', {str(copy_model_path)!r}, {str(photo)!r}, '-o', {str(tmp_path / 'o')!r}]\n"
        "CliRunner().invoke(cli, args)\n"
        "print(heavy_after_help, [m for m in ('tensorflow', 'matplotlib', 'tf2onnx') if m in sys.modules])\n"
    )
    assert run_python(code).strip() == "[] []"


def test_python_dash_m_works(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fmonnx", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "fmonnx" in result.stdout


def test_original_model_file_is_untouched(copy_model_path, photo, tmp_path):
    before = copy_model_path.read_bytes()
    invoke("render", copy_model_path, photo, "-o", tmp_path / "o")
    assert copy_model_path.read_bytes() == before
    assert onnx.load(str(copy_model_path)).graph.output[0].name == "output"


def test_forced_input_layout_on_a_non_image_input(tmp_path):
    model = make_model(
        [helper.make_node("Relu", ["input"], ["output"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8])],
    )
    assert_clean_error(invoke("layers", save(model, tmp_path, "flat.onnx"), "--input-layout", "NHWC"), "rank 4")


def test_image_too_large_to_decode(tmp_path, copy_model_path, write_image, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses past twice this
    photo = write_image(np.zeros((30, 30, 3)), "big.png")
    assert_clean_error(invoke("render", copy_model_path, photo, "-o", tmp_path / "o"), "too large")


def test_rendering_into_the_current_folder_is_refused(tmp_path, copy_model_path, photo, monkeypatch):
    out = tmp_path / "maps"
    assert invoke("render", copy_model_path, photo, "-o", out).exit_code == 0
    before = sorted(p.name for p in out.iterdir())
    monkeypatch.chdir(out)
    assert_clean_error(invoke("render", copy_model_path, photo, "-o", "."), "current folder")
    assert sorted(p.name for p in out.iterdir()) == before and leftovers(tmp_path) == []


def test_library_options_are_checked_before_any_work(copy_model_path, photo, tmp_path):
    from fmonnx import RenderOptions, render
    from fmonnx.errors import FmonnxError

    for options in (RenderOptions(normalization="zscore"), RenderOptions(layout="spiral"),
                    RenderOptions(preprocess="bgr")):
        with pytest.raises(FmonnxError, match="choose one of"):
            render(copy_model_path, [photo], tmp_path / "o", options)
    assert not (tmp_path / "o").exists()
