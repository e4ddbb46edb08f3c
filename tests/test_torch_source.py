"""The PyTorch source: nn.Module objects and torch.export files (.pt2) to checked ONNX, end to end.

Tiny models from torch_models.py (seeded weights, random BatchNorm statistics)
are converted with real exports and onnxruntime sessions; every recorded
layer's rendered array is compared with forward-hook outputs on the exact
input render fed (input.npy). The first tests need no torch: that fmonnx
never imports it unless a PyTorch model is given.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fmonnx.cli import cli
from fmonnx.errors import ModelError

RTOL, ATOL = 1e-4, 1e-5


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def fresh(code: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={"MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def close(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and float(np.max(np.abs(got - want))) <= ATOL + RTOL * float(np.max(np.abs(want)))


@pytest.fixture
def photo(write_image):
    return write_image(np.random.default_rng(3).integers(0, 255, (40, 48, 3)), "photo.png")


# --- no torch needed -------------------------------------------------------------------------------------------


def test_fmonnx_help_and_onnx_render_do_not_import_torch(tmp_path, copy_model_path, write_image, gradient_rgb):
    image = write_image(gradient_rgb, "image.png")
    out = fresh(
        "import sys, json, fmonnx\n"
        "from click.testing import CliRunner\n"
        "from fmonnx.cli import cli\n"
        "after_import = 'torch' in sys.modules\n"
        "fmonnx.convert  # resolving the public name imports no framework\n"
        "helped = CliRunner().invoke(cli, ['--help']).exit_code\n"
        f"rendered = CliRunner().invoke(cli, ['render', {str(copy_model_path)!r}, {str(image)!r}, '-o', 'maps'])\n"
        "print(json.dumps([after_import, helped, rendered.exit_code, 'torch' in sys.modules,"
        " type(fmonnx.convert).__name__]))\n",
        tmp_path,
    )
    assert json.loads(out) == [False, 0, 0, False, "function"]


def test_missing_torch_extra_is_one_line(tmp_path):
    (tmp_path / "model.pt2").write_bytes(b"x")
    out = fresh(
        "import sys\n"
        "sys.modules['torch'] = None  # as if the [torch] extra were not installed\n"
        "from click.testing import CliRunner\n"
        "from fmonnx.cli import cli\n"
        "result = CliRunner().invoke(cli, ['convert', 'model.pt2'])\n"
        "print(result.exit_code); print(result.output)\n",
        tmp_path,
    )
    code, message = out.split("\n", 1)
    assert code == "1"
    assert message.strip() == "Error: PyTorch is not installed; run: pip install -e '.[torch]'"
    assert not (tmp_path / "model.onnx").exists()


def test_pickle_checkpoint_is_refused_with_how_to_export(tmp_path, photo):
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"\x80\x04not read")
    result = invoke("render", checkpoint, photo, "-o", tmp_path / "maps")
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "torch.export.save" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "maps").exists()


@pytest.mark.parametrize(
    "text, safe",
    [
        ("Add(Symbol('s16', positive=True, integer=True), Integer(-2))", True),
        ("Max(Integer(1), FloorDiv(Symbol('s3', integer=True), Integer(2)))", True),
        ("__import__('os').system('true')", False),
        ("Symbol('s1').__class__", False),
        ("eval(chr(49))", False),
    ],
)
def test_shape_expressions_are_vetted(text, safe):
    from fmonnx.sources.pytorch.pt2_file import _safe_sympy

    assert _safe_sympy(text) is safe


@pytest.mark.parametrize(
    "text, safe",
    [
        ("L['x'].size()[2] >= 3", True),
        ("(4 % (((-8) + 4*L['x'].size()[2])*((-2) + L['x'].size()[3]))) != 0", True),
        ("__import__('os').system('true')", False),
        ("L['x'].__class__", False),
        ("torch.load('x')", False),
    ],
)
def test_guards_are_vetted(text, safe):
    from fmonnx.sources.pytorch.pt2_file import _safe_guard

    assert _safe_guard(text) is safe


# --- with torch --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    import torch_models

    return torch_models


def save_pt2(models, module, path: Path, dynamic: bool = True) -> Path:
    import torch

    example = (torch.rand(1, 3, 32, 32),)
    shapes = ({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO},) if dynamic else None
    torch.export.save(torch.export.export(module, example, dynamic_shapes=shapes), str(path))
    return path


@pytest.mark.torch
@pytest.mark.parametrize("name", ["plain", "residual", "conv_bn_act", "inception"])
def test_module_layers_render_and_activations_match_forward_hooks(models, tmp_path, photo, name):
    import fmonnx

    module = models.BUILDERS[name]()
    expected_names = models.EXPECTED_LAYERS[name]

    converted = fmonnx.convert(module, np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
    assert [record["layer"] for record in converted.layers] == expected_names
    assert converted.check.passed and converted.check.max_rel < 1e-5
    assert converted.source["framework"] == "pytorch" and converted.source["spatial"] == "dynamic"
    stored = {p.key: json.loads(p.value) for p in converted.model.metadata_props}
    assert stored["fmonnx.layers"] == converted.layers
    outputs = {value.name for value in converted.model.graph.output}
    assert all(record["output"] in outputs for record in converted.layers)
    batchnorms = sum(type(m).__name__ in ("BatchNorm2d", "BatchNormAct2d") for m in module.modules())
    assert sum(node.op_type == "BatchNormalization" for node in converted.model.graph.node) == batchnorms

    out = tmp_path / "maps"
    fmonnx.render(module, [photo], out=out, options=fmonnx.RenderOptions(save_arrays=True, report=False))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["framework"] == "pytorch"
    assert manifest["source"]["check"].startswith("check passed")
    image = manifest["images"][0]
    assert [layer["name"] for layer in image["layers"]] == expected_names
    fed = np.load(out / image["input_array"])
    assert fed.shape == (1, 3, 40, 48)  # a module with open height and width renders at the image's size
    hooks = models.reference(module, fed)
    by_layer = {record["layer"]: record for record in converted.layers}
    for layer in image["layers"]:
        got = np.load(out / layer["array"])
        want = hooks[layer["name"]][0]
        assert close(got, want), layer["name"]
        for outer in by_layer[layer["name"]].get("also_output_of", []):  # e.g. bn, whose output is bn.act's
            assert close(got, hooks[outer][0]), outer

    maps = fmonnx.activations(module, photo)
    assert list(maps) == expected_names
    for layer, values in maps.items():
        assert close(values, hooks[layer][0]), layer
    assert [row["name"] for row in fmonnx.list_layers(module)] == expected_names


@pytest.mark.torch
def test_module_modes_are_restored_and_changed_weights_convert_again(models, photo):
    import torch

    import fmonnx

    module = models.plain().train()
    statistics = module[1].running_mean.clone()
    before = fmonnx.activations(module, photo)
    assert module.training and all(child.training for child in module.modules())
    assert torch.equal(module[1].running_mean, statistics)  # run in eval mode: the statistics are untouched
    module[0].weight.data.mul_(-1)  # through .data: no version bump
    after = fmonnx.activations(module, photo)
    assert np.allclose(after["0"], -before["0"] + 2 * module[0].bias.detach().numpy()[:, None, None], atol=1e-5)


@pytest.mark.torch
def test_bn_act_module_is_named_after_its_act_child(models):
    """timm's BatchNormAct2d: ``bn`` returns its ``act`` child's output; the pre-activation values are ``bn.drop``."""
    import fmonnx

    converted = fmonnx.convert(models.conv_bn_act(), np.zeros((1, 3, 16, 16), np.float32))
    records = {record["layer"]: record for record in converted.layers}
    assert records["bn.act"]["class"] == "SiLU" and records["bn.act"]["also_output_of"] == ["bn"]
    assert records["bn.drop"]["class"] == "Identity"
    assert "bn" not in records  # a tensor takes a module's bare name only as that module's own output


@pytest.mark.torch
def test_pt2_convert_and_render_through_the_cli(models, tmp_path, photo):
    module = models.residual()
    path = save_pt2(models, module, tmp_path / "residual.pt2")

    result = invoke("convert", path)
    assert result.exit_code == 0, result.output
    assert "check passed" in result.output and "any height and width" in result.output
    written = tmp_path / "residual.onnx"
    onnx.checker.check_model(onnx.load(str(written)))
    rows = json.loads(invoke("layers", written, "--json").output)
    assert [row["name"] for row in rows] == models.EXPECTED_LAYERS["residual"]
    assert invoke("convert", path).exit_code == 1  # exists: --force needed
    assert invoke("convert", path, "--force", "--rtol", "1e-3").exit_code == 0

    out = tmp_path / "maps"
    result = invoke("render", path, photo, "-o", out, "--save-arrays", "--no-report")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == str(path) and manifest["source"]["file"] == "residual.pt2"
    image = manifest["images"][0]
    assert [layer["name"] for layer in image["layers"]] == models.EXPECTED_LAYERS["residual"]
    hooks = models.reference(module, np.load(out / image["input_array"]))
    for layer in image["layers"]:
        assert close(np.load(out / layer["array"]), hooks[layer["name"]][0]), layer["name"]


@pytest.mark.torch
def test_pt2_from_python_and_a_fixed_size_model(models, tmp_path, photo, caplog):
    """fmonnx.convert dispatches on the file; a Linear after a Flatten pins the size, and fmonnx says so."""
    import torch

    import fmonnx

    fixed = models.seeded(torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 32 * 32, 3),
    ))
    path = save_pt2(models, fixed, tmp_path / "fixed.pt2", dynamic=False)
    converted = fmonnx.convert(path)
    assert [record["layer"] for record in converted.layers] == ["0", "1"]
    assert converted.source["spatial"] == "fixed" and not converted.dynamic
    assert "fixed size [32, 32]" in caplog.text
    target = converted.save(tmp_path / "fixed.onnx")
    dims = onnx.load(str(target)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 32, 32]

    maps = fmonnx.activations(converted, photo)  # a conversion result renders as it is: the image is resized
    assert {name: values.shape for name, values in maps.items()} == {"0": (4, 32, 32), "1": (4, 32, 32)}


def tampered(source: Path, target: Path, change) -> Path:
    """A copy of the .pt2 archive ``source`` with ``change(name, data) -> data`` applied to each entry."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for info in archive.infolist():
            out.writestr(info.filename, change(info.filename, archive.read(info.filename)))
    return target


def _pickled_weights(name, data):
    if not name.endswith("model_weights_config.json"):
        return data
    config = json.loads(data)
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    return json.dumps(config).encode()


def _os_target(name, data):
    return data.replace(b"torch.ops.aten.relu.default", b"torch.os.system") if name.endswith("model.json") else data


def _evil_guard(name, data):
    if not name.endswith("models/model.json"):
        return data
    program = json.loads(data)
    program["guards_code"] = ["__import__('os').system('true') or True"]
    return json.dumps(program).encode()


def _unsafe_sample_inputs(name, data):
    if "sample_inputs" not in name:
        return data
    import argparse

    import torch

    buffer = io.BytesIO()
    torch.save(argparse.Namespace(hello=1), buffer)  # weights_only=True refuses it; torch would retry unpickling
    return buffer.getvalue()


def _legacy_fallback(name, data):
    return data  # the entries are added by the test


@pytest.mark.torch
@pytest.mark.parametrize(
    "change, message",
    [
        (_pickled_weights, "as a pickled Python object"),
        (_os_target, "calls 'torch.os.system'"),
        (_evil_guard, "input guard that is not plain arithmetic"),
        (_unsafe_sample_inputs, "example inputs that are not plain tensors"),
        (_legacy_fallback, "holds a pickle or legacy entry (version)"),
    ],
)
def test_pt2_that_would_run_stored_code_is_refused(models, tmp_path, change, message):
    good = save_pt2(models, models.plain(), tmp_path / "good.pt2")
    bad = tampered(good, tmp_path / "bad.pt2", change)
    if change is _legacy_fallback:  # what torch reads with its legacy reader if the pt2 reader fails
        with zipfile.ZipFile(bad, "a") as archive:
            archive.writestr("version", "8.0")
            archive.writestr("serialized_state_dict.pt", b"pickle")
    result = invoke("convert", bad)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output, result.output
    assert "no code stored in the file runs" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.torch
def test_bad_files_and_modules_get_one_line_errors(models, tmp_path, photo):
    import torch

    import fmonnx

    not_export = tmp_path / "notes.pt2"
    with zipfile.ZipFile(not_export, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(save_pt2(models, models.plain(), tmp_path / "whole.pt2").read_bytes()[:3000])
    text = tmp_path / "text.pt2"
    text.write_text("not a model")
    no_maps = save_pt2(models, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2)),
                       tmp_path / "flat.pt2")
    cases = [
        (not_export, "is not a torch.export file"),
        (truncated, "torch.export file"),
        (text, "is not a torch.export file"),
        (no_maps, "has no module with a 4-D (image-like) output (it has: Flatten, Linear)"),
    ]
    for path, message in cases:
        for args in (("convert", path), ("render", path, photo, "-o", tmp_path / "maps")):
            result = invoke(*args)
            assert result.exit_code == 1, (path, result.output)
            assert result.output.startswith("Error: ") and message in result.output, result.output
            assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
        assert not path.with_suffix(".onnx").exists()
    assert not (tmp_path / "maps").exists()

    with pytest.raises(ModelError, match=r"fails on an example input of shape \[1, 2, 16, 16\].*example_input"):
        fmonnx.convert(models.plain(), torch.rand(1, 3, 16, 16)[:, :2])
    with pytest.raises(ModelError, match=r"pass a float tensor of shape \(1, C, H, W\)"):
        fmonnx.convert(models.plain(), torch.rand(3, 16, 16))
    with pytest.raises(ModelError, match="already an ONNX model"):
        fmonnx.convert(tmp_path / "model.onnx")


@pytest.mark.torch
def test_failed_check_writes_nothing(models, tmp_path):
    path = save_pt2(models, models.plain(), tmp_path / "plain.pt2")
    result = invoke("convert", path, "--rtol", "0", "--atol", "0")
    assert result.exit_code == 1
    assert "differs from PyTorch: check FAILED" in result.output and "nothing was written" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "plain.onnx").exists()


def test_containers_that_return_a_childs_tensor_are_listed_beside_it():
    """A Sequential inside a Sequential returns its last child's tensor: the child names it, the container is
    in ``also_output_of`` of the manifest rows (read from the converter's metadata)."""
    torch = pytest.importorskip("torch")
    import fmonnx

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    model = torch.nn.Sequential(block, torch.nn.Conv2d(4, 4, 3))
    rows = {row["name"]: row for row in fmonnx.list_layers(model.eval())}
    assert list(rows) == ["0.0", "0.1", "1"]
    assert rows["0.1"]["also_output_of"] == ["0"]
    assert "also_output_of" not in rows["0.0"] and "also_output_of" not in rows["1"]
