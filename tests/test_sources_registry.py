"""The source registry: every command takes every model source, found by one table (sources/registry.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fmonnx.sources import registry


def test_the_table_names_each_source_once_with_its_suffixes():
    names = [source.name for source in registry.sources()]
    assert names == ["pt2", "tflite", "keras"]  # Keras last: it claims any HDF5 or zip file
    assert set(registry.model_suffixes()) >= {".onnx", ".pt2", ".tflite", ".keras", ".h5"}
    for source in registry.sources():
        assert source.label and source.suffixes and callable(source.detect) and callable(source.convert)


def test_detection_reads_headers_and_imports_no_framework(tmp_path):
    import zipfile

    pt2 = tmp_path / "model.pt2"
    with zipfile.ZipFile(pt2, "w") as archive:  # a zip, as a .keras is too: the .pt2 wins by its suffix
        archive.writestr("archive/version", "1")
    tflite = tmp_path / "model.bin"
    tflite.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))  # the identifier, whatever the suffix
    keras = tmp_path / "model.h5"
    keras.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    script = (
        "import sys, json\n"
        "from fmonnx.sources.registry import source_for\n"
        f"found = [getattr(source_for(p), 'name', None) for p in {[str(pt2), str(tflite), str(keras)]!r}]\n"
        f"found.append(source_for({str(tmp_path / 'photo.png')!r}))\n"
        "print(json.dumps([found, 'torch' in sys.modules, 'tensorflow' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [["pt2", "tflite", "keras", None], False, False]


def test_unknown_file_is_one_line_naming_every_source(tmp_path):
    import fmonnx

    path = tmp_path / "model.xyz"
    path.write_bytes(b"nothing")
    with pytest.raises(fmonnx.FmonnxError, match=r"TFLite file \(\.tflite\).*nn\.Module"):
        fmonnx.convert(path)


@pytest.fixture(scope="module")
def pt2_and_onnx(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    import torch_models
    from test_torch_source import save_pt2

    import fmonnx

    folder = tmp_path_factory.mktemp("sources")
    module = torch_models.residual()
    pt2 = save_pt2(torch_models, module, folder / "residual.pt2")
    onnx_path = folder / "residual.onnx"
    fmonnx.convert(module, np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)).save(onnx_path)
    from PIL import Image

    photo = folder / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photo)
    return pt2, onnx_path, photo


@pytest.mark.parametrize("command", [
    ["layers", "{pt2}"], ["stats", "{pt2}", "{photo}"], ["render", "{pt2}", "{photo}", "-o", "{out}"],
    ["explain", "{pt2}", "{photo}", "-o", "{out}"], ["scan", "{pt2}", "{photo}", "-o", "{out}"],
    ["compare", "{onnx}", "{pt2}", "{photo}", "-o", "{out}"], ["compare", "{pt2}", "{onnx}", "{photo}", "-o", "{out}"],
])
def test_every_command_takes_a_pt2_file(pt2_and_onnx, tmp_path, command):
    """compare took B.pt2 for an image before the registry ("b.pt2 is not an image Pillow can read")."""
    pt2, onnx_path, photo = pt2_and_onnx
    args = [part.format(pt2=pt2, onnx=onnx_path, photo=photo, out=tmp_path / "out") for part in command]
    done = subprocess.run([sys.executable, "-m", "fmonnx", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    if command[0] == "compare":
        record = json.loads((tmp_path / "out" / "compare.json").read_text())
        models = {Path(record[side]["model"]).name for side in ("a", "b")}
        assert models == {"residual.pt2", "residual.onnx"} and record["layers"]
