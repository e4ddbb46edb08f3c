"""Crafted .pt2 archives on which Python's zipfile and torch's reader could disagree are refused.

Each case rewrites a real ``torch.export.save`` file so that the entry fmonnx would vet looks clean while
another copy, which torch could read instead, stores a pickle that creates a marker file when unpickled.
The first test shows the attack is real: loaded without vetting (``--unsafe``), the marker appears.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch

CONFIG = "data/weights/model_weights_config.json"


class _Marker:
    """Unpickling it creates the file ``path``: stands for any code a pickle can run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    path = tmp_path_factory.mktemp("pt2") / "good.pt2"
    torch.export.save(torch.export.export(module, (torch.rand(1, 3, 16, 16),)), str(path))
    return path


def _entries(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _write(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    import warnings

    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names these tests mean to write
        for name, data in entries:
            archive.writestr(name, data)
    return path


def _evil(entries, marker: Path) -> tuple[bytes, bytes]:
    """A weights config whose first weight is pickled, and that pickle (which creates ``marker``)."""
    import io

    import torch

    root = entries[0][0].split("/", 1)[0]
    config = json.loads(dict(entries)[f"{root}/{CONFIG}"])
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    buffer = io.BytesIO()
    torch.save(_Marker(str(marker)), buffer)
    return json.dumps(config).encode(), buffer.getvalue(), first["path_name"]


def _crafted(exported: Path, tmp_path: Path, trick: str) -> tuple[Path, Path]:
    marker = tmp_path / "marker"
    entries = _entries(exported)
    root = entries[0][0].split("/", 1)[0]
    evil_config, pickle_bytes, payload = _evil(entries, marker)
    config_name = f"{root}/{CONFIG}"
    out: list[tuple[str, bytes]] = []
    for name, data in entries:
        if name == f"{root}/data/weights/{payload}":
            data = pickle_bytes  # what the evil config points at; the clean config reads it as raw bytes
        if name != config_name:
            out.append((name, data))
        elif trick == "duplicate, evil first":
            out += [(name, evil_config), (name, data)]
        elif trick == "duplicate, evil last":
            out += [(name, data), (name, evil_config)]
        elif trick == "case-folded twin":
            out += [(name.replace("model_weights", "MODEL_weights"), evil_config), (name, data)]
        elif trick == "dot-dot twin":
            out += [(name, data), (f"{root}/data/../{CONFIG}", evil_config)]
        elif trick == "absolute twin":
            out += [(name, data), (f"/{config_name}", evil_config)]
        elif trick == "second top folder":
            out += [(name, data), (f"other/{CONFIG}", evil_config)]
        elif trick == "program not named .json":
            out += [(name, data), (f"{root}/models/model_json", b"{}")]
        else:  # unvetted: the evil config in place of the clean one
            out.append((name, evil_config))
    return _write(tmp_path / "crafted.pt2", out), marker


def _fmonnx(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmonnx", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_the_crafted_pickle_runs_when_loaded_unvetted(exported, tmp_path):
    """Proof that the marker pickle is live: loading with --unsafe (no vetting) creates the marker."""
    crafted, marker = _crafted(exported, tmp_path, "replaced")
    done = _fmonnx("convert", crafted, "--unsafe", "-o", tmp_path / "out.onnx", cwd=tmp_path)
    assert marker.exists(), done.stderr[-2000:]
    vetted = _fmonnx("convert", crafted, "-o", tmp_path / "vetted.onnx", cwd=tmp_path)
    assert vetted.returncode == 1 and "as a pickled Python object" in vetted.stderr


@pytest.mark.parametrize("trick, message", [
    ("duplicate, evil first", "twice"),
    ("duplicate, evil last", "twice"),
    ("case-folded twin", "differing only in case"),
    ("dot-dot twin", "has an entry named"),
    ("absolute twin", "has an entry named"),
    ("second top folder", "several top folders"),
    ("program not named .json", "among its programs"),
])
@pytest.mark.parametrize("command", ["convert", "render"])
def test_archives_the_two_readers_could_read_differently_are_refused(exported, tmp_path, trick, message, command):
    crafted, marker = _crafted(exported, tmp_path, trick)
    out = tmp_path / "out"
    args = ("convert", crafted, "-o", out) if command == "convert" else ("render", crafted, "-o", out)
    done = _fmonnx(*args, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], done.stderr[-2000:]
    assert "no code stored in the file runs" in lines[0]
    assert not marker.exists()
    assert not out.exists()


def test_the_untouched_export_still_converts(exported, tmp_path):
    done = _fmonnx("convert", exported, "-o", tmp_path / "good.onnx", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "good.onnx").is_file()
