"""The README's examples, shell and Python, run as tests (Sybil), so the documentation cannot drift.

Each fenced block is one test, run in a fresh folder that holds the README's placeholder
files made from the shipped models: ``model.onnx`` (the demo's tutorial CNN), ``model_int8.onnx``
(its int8 QDQ version, when a block names it), ``photo.jpg``
(the demo photo), ``photos/`` (two images), and, when a block names them, ``cnn.h5`` /
``cnn.keras`` (a small seeded Keras CNN, with the keras extra) and ``net.pt2`` (a small
``torch.export`` file, with the torch extra). ``bash`` blocks run line by line in bash with
``set -e``; install and test-runner lines (pip, apt-get, pytest, ruff) are what ``.ci/run``
itself runs, so they are not run again. A block marked ``<!-- skip: next -->`` is not run
(the README says why beside it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

ROOT = Path(__file__).parent
_RUN_BY_CI = ("pip ", "apt-get ", "python -m pytest", "ruff ")
_TIMEOUT = 900

_KERAS_SCRIPT = """
import sys, numpy as np, keras
keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((64, 64, 3)),
    keras.layers.Conv2D(8, 3, activation="relu", name="conv2d"),
    keras.layers.MaxPooling2D(2, name="max_pooling2d"),
    keras.layers.Conv2D(16, 3, activation="relu", name="conv2d_1"),
    keras.layers.Flatten(), keras.layers.Dense(3, name="dense"),
])
for path in sys.argv[1:]:
    model.save(path)
"""

_INT8_SCRIPT = """
import sys, numpy as np, onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
source, target = sys.argv[1:]
name = onnx.load(source).graph.input[0].name
rng = np.random.default_rng(0)

class Photos(CalibrationDataReader):
    def __init__(self):
        self.batches = iter([{name: rng.random((1, 150, 150, 3), dtype=np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)

quantize_static(source, target, Photos(), quant_format=QuantFormat.QDQ)
"""

_TORCH_SCRIPT = """
import sys, torch
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(8, 16, 3), torch.nn.ReLU(),
).eval()
torch.export.save(torch.export.export(model, (torch.rand(1, 3, 64, 64),)), sys.argv[1])
"""


def _placeholders(folder: Path) -> None:
    from fmonnx.stages.plan import demo_paths

    model, photo = demo_paths()
    shutil.copy(model, folder / "model.onnx")
    shutil.copy(photo, folder / "photo.jpg")
    (folder / "photos").mkdir()
    shutil.copy(photo, folder / "photos" / "hopper.jpg")
    from PIL import Image

    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "photos" / "mirrored.png")


def _made_on_demand(source: str, folder: Path, cache: Path) -> None:
    """Build the framework files a block names, once per session, skipping when the extra is missing."""
    if "import torch" in source:
        pytest.importorskip("torch", reason="the example needs the torch extra: pip install -e '.[torch]'")
    if "model_int8.onnx" in source:
        if not (cache / "model_int8.onnx").exists():
            subprocess.run(
                [sys.executable, "-c", _INT8_SCRIPT, str(folder / "model.onnx"), str(cache / "model_int8.onnx")],
                check=True, capture_output=True, timeout=600,
            )
        shutil.copy(cache / "model_int8.onnx", folder / "model_int8.onnx")
    wanted = {name for name in ("cnn.h5", "cnn.keras", "net.pt2") if name in source}
    for name in sorted(wanted):
        if not (cache / name).exists():
            module = "torch" if name.endswith(".pt2") else "keras"
            try:
                __import__(module)
            except ImportError:
                pytest.skip(f"the example needs {name}: install the {module} extra")
            script = _TORCH_SCRIPT if module == "torch" else _KERAS_SCRIPT
            targets = [str(cache / name)] if module == "torch" else [str(cache / "cnn.h5"), str(cache / "cnn.keras")]
            subprocess.run([sys.executable, "-c", script, *targets], check=True, capture_output=True, timeout=600)
        shutil.copy(cache / name, folder / name)


def _environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the fmonnx script
    env["MPLBACKEND"] = "Agg"
    return env


def _run_bash(example) -> str | None:
    folder = example.namespace["readme_folder"]
    _made_on_demand(example.parsed, folder, example.namespace["readme_cache"])
    lines = [line for line in example.parsed.splitlines() if not line.strip().startswith(_RUN_BY_CI)]
    if not any(line.strip() and not line.strip().startswith("#") for line in lines):
        return None
    script = "set -euo pipefail\n" + "\n".join(lines)
    done = subprocess.run(
        ["bash", "-c", script], cwd=folder, env=_environment(), capture_output=True, text=True, timeout=_TIMEOUT
    )
    if done.returncode != 0:
        return f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return None


class _PythonInFolder(PythonCodeBlockParser):
    """Python blocks run in the example's folder, with the framework files they name made first."""

    def __call__(self, document):
        for region in super().__call__(document):
            evaluate = region.evaluator

            def in_folder(example, evaluate=evaluate):
                _made_on_demand(example.parsed, example.namespace["readme_folder"], example.namespace["readme_cache"])
                return evaluate(example)

            region.evaluator = in_folder
            yield region


@pytest.fixture(scope="session")
def readme_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme-models")


@pytest.fixture
def readme_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    _placeholders(folder)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return folder


pytest_collect_file = Sybil(
    parsers=[CodeBlockParser("bash", evaluator=_run_bash), _PythonInFolder(), SkipParser()],
    patterns=["README.md"],
    fixtures=["readme_folder", "readme_cache"],
    name="readme",
).pytest()
