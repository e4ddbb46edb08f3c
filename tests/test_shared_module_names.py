"""A module instance reachable by several paths is named by the path each call went through.

Ultralytics shares one ``nn.SiLU`` among all its Conv blocks (``Conv.default_act``);
the calls must be ``blocks.0.act``, ``blocks.1.act``, ... and ``head.0.act``, not
``blocks.0.act#2``, ``#3``... Each named array is held against a forward hook on
the shared module itself, call by call.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from torch import nn  # noqa: E402

import fmonnx  # noqa: E402

pytestmark = pytest.mark.torch
RTOL, ATOL = 1e-4, 1e-5


class Conv(nn.Module):
    """Ultralytics' Conv: every instance uses the one class-level activation."""

    default_act = nn.SiLU()

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.act = self.default_act

    def forward(self, x):
        return self.act(self.conv(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Conv(3, 4), Conv(4, 4), Conv(4, 4)])
        self.head = nn.Sequential(Conv(4, 2))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class Twice(nn.Module):
    """One Conv block instance at two paths, called through both; its children follow the path."""

    def __init__(self) -> None:
        super().__init__()
        block = Conv(3, 3)
        self.first = nn.Sequential(block)
        self.second = nn.Sequential(block)

    def forward(self, x):
        return self.second(self.first(x))


ACTS = ["blocks.0.act", "blocks.1.act", "blocks.2.act", "head.0.act"]
EXPECTED = [name for act in ACTS for name in (act.replace(".act", ".conv"), act)]


def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def shared_calls(module: nn.Module, shared: nn.Module, array: np.ndarray) -> list[np.ndarray]:
    """The outputs of every call of ``shared`` on ``array``, in call order."""
    outputs = []
    handle = shared.register_forward_hook(lambda _m, _a, out: outputs.append(out.detach().numpy().copy()))
    try:
        with torch.no_grad():
            module(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
    finally:
        handle.remove()
    return outputs


def close(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and float(np.max(np.abs(got - want))) <= ATOL + RTOL * float(np.max(np.abs(want)))


@pytest.fixture
def photo(write_image):
    return write_image(np.random.default_rng(3).integers(0, 255, (40, 48, 3)), "photo.png")


def test_shared_activation_calls_are_named_by_their_path(tmp_path, photo):
    module = net()
    converted = fmonnx.convert(module, np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
    records = {record["layer"]: record for record in converted.layers}
    assert [record["layer"] for record in converted.layers] == EXPECTED
    assert not any("#" in name for name in records)
    assert all(records[act]["class"] == "SiLU" for act in ACTS)
    # the module's own name (its first path, numbered among all its calls) is kept beside the block's
    assert records["blocks.0.act"]["also_output_of"] == ["blocks.0"]
    assert records["blocks.1.act"]["also_output_of"] == ["blocks.0.act#2", "blocks.1"]
    assert records["blocks.2.act"]["also_output_of"] == ["blocks.0.act#3", "blocks.2"]
    assert records["head.0.act"]["also_output_of"] == ["blocks.0.act#4", "head.0", "head"]
    assert "also_output_of" not in records["blocks.1.conv"]
    assert converted.check.passed

    out = tmp_path / "maps"
    fmonnx.render(module, [photo], out=out, options=fmonnx.RenderOptions(save_arrays=True, report=False))
    image = json.loads((out / "manifest.json").read_text())["images"][0]
    assert [layer["name"] for layer in image["layers"]] == EXPECTED
    fed = np.load(out / image["input_array"])
    calls = shared_calls(module, Conv.default_act, fed)
    assert len(calls) == len(ACTS)
    arrays = {layer["name"]: np.load(out / layer["array"]) for layer in image["layers"]}
    maps = fmonnx.activations(module, photo)
    assert list(maps) == EXPECTED
    for act, want in zip(ACTS, calls):
        assert close(arrays[act], want[0]), act
        assert close(maps[act], want[0]), act
    assert not close(maps["blocks.1.act"], calls[0][0][:4])  # each call its own values, not the first one's


def test_a_shared_block_names_its_children_by_the_path_it_was_called_through(tmp_path, photo):
    torch.manual_seed(0)
    module = Twice().eval()
    example = np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32)
    converted = fmonnx.convert(module, example)
    names = [record["layer"] for record in converted.layers]
    assert names == ["first.0.conv", "first.0.act", "second.0.conv", "second.0.act"]
    records = {record["layer"]: record for record in converted.layers}
    assert records["second.0.conv"]["also_output_of"] == ["first.0.conv#2"]
    assert records["second.0.act"]["also_output_of"] == ["first.0.act#2", "second.0", "first.0#2", "second"]

    out = tmp_path / "maps"
    fmonnx.render(module, [photo], out=out, options=fmonnx.RenderOptions(save_arrays=True, report=False))
    image = json.loads((out / "manifest.json").read_text())["images"][0]
    assert [layer["name"] for layer in image["layers"]] == names
    arrays = {layer["name"]: np.load(out / layer["array"]) for layer in image["layers"]}
    fed = np.load(out / image["input_array"])
    convs = shared_calls(module, module.first[0].conv, fed)
    acts = shared_calls(module, module.first[0].act, fed)
    assert close(arrays["first.0.conv"], convs[0][0]) and close(arrays["second.0.conv"], convs[1][0])
    assert close(arrays["first.0.act"], acts[0][0]) and close(arrays["second.0.act"], acts[1][0])
