"""fmonnx.convert where the traced run and the eager run of a module differ.

An eager ``nn.Dropout`` (and ``nn.Identity``) in eval mode returns its input,
so the tap counts it as another name of the tensor it was given; under
torch.export, torch 2.13 traces it as a new tensor (an ONNX Identity). The
exported graph's outputs follow the traced run, the check's values the eager
one: the conversion must map both to one layer, with the Dropout's name kept
as an ``also_output_of``, and check every layer against PyTorch for real.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import fmonnx  # noqa: E402
from fmonnx.sources.check import compare  # noqa: E402
from tests.torch_models import reference, seeded  # noqa: E402


class Mlp(nn.Module):
    """timm's Mlp shape: 1x1 Conv, GELU, Dropout(0), 1x1 Conv, Dropout(0)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels * 2, 1)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(0.0)
        self.fc2 = nn.Conv2d(channels * 2, channels, 1)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mlp = Mlp(8)
        self.skip = nn.Identity()
        self.head = nn.Conv2d(8, 4, 3, stride=2)

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.skip(self.mlp(x)) + x)


def test_dropout_and_identity_are_one_layer_checked_against_pytorch():
    module = seeded(Net())
    example = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    converted = fmonnx.convert(module, example)
    layers = {record["layer"]: record for record in converted.layers}
    assert list(layers) == ["stem", "mlp.fc1", "mlp.act", "mlp.fc2", "head"]
    assert "mlp.drop1" in layers["mlp.act"]["also_output_of"]
    assert {"mlp.drop2", "mlp", "skip"} <= set(layers["mlp.fc2"]["also_output_of"])
    assert converted.check is not None and converted.check.passed
    assert all(np.isfinite(layer.abs_error) for layer in converted.check.layers)
    # the graph outputs are one per layer (the last is the model's own output): no leftover Dropout copies
    assert [o.name for o in converted.model.graph.output] == ["head", "stem", "mlp.fc1", "mlp.act", "mlp.fc2"]

    import onnxruntime

    session = onnxruntime.InferenceSession(converted.model.SerializeToString(), providers=["CPUExecutionProvider"])
    array = example.numpy()
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: array})))
    want = reference(module, array)
    for name, record in layers.items():
        np.testing.assert_allclose(got[record["output"]], want[name], rtol=1e-4, atol=1e-5)


def test_a_layer_missing_from_the_eager_run_fails_the_check():
    """The sentinel for a layer that did not run must fail, not pass on an infinite tolerance."""
    report = compare({"gone": np.full(1, np.inf)}, {"gone": np.zeros((1, 2, 3, 3))}, {}, rtol=1e-4, atol=1e-5)
    assert not report.passed
    report = compare({"same": np.array([np.inf, 1.0])}, {"same": np.array([np.inf, 1.0])}, {}, rtol=1e-4, atol=1e-5)
    assert report.passed


class ChannelsLastBlock(nn.Module):
    """Hugging Face ConvNext's layer: depthwise Conv, permute to N,H,W,C, then LayerNorm, Linear, an
    activation module and Linear on channels-last 4-D tensors, permuted back."""

    def __init__(self, channels: int):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * channels, channels)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class HeadNorm(nn.Module):
    """A ViT attention's q_norm: a LayerNorm over head dims of a (N, heads, tokens, dim) tensor."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_norm = nn.LayerNorm(channels // heads)

    def forward(self, x):
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2).reshape(n, h * w, self.heads, c // self.heads).transpose(1, 2)
        return self.q_norm(tokens)


class Hybrid(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.block = ChannelsLastBlock(16)
        self.attn = HeadNorm(16, 2)

    def forward(self, x):
        x = self.block(self.stem(x))
        return x, self.attn(x)


def test_convert_proves_each_layout_from_the_graph(tmp_path, write_image):
    """Channels-last module outputs are recorded NHWC and drawn on that axis; a head-split tensor's layout is
    unproven: recorded without one, drawn marked uncertain, with one summary line for all such layers."""
    import json
    import subprocess
    import sys

    module = seeded(Hybrid())
    converted = fmonnx.convert(module, torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    layouts = {record["layer"]: record.get("layout") for record in converted.layers}
    assert layouts["stem"] == "NCHW" and layouts["block.dwconv"] == "NCHW" and layouts["block"] == "NCHW"
    for name in ("block.norm", "block.pwconv1", "block.act", "block.pwconv2"):
        assert layouts[name] == "NHWC", name
    assert layouts["attn.q_norm"] is None
    path = tmp_path / "hybrid.onnx"
    converted.save(path)

    image = write_image(np.random.default_rng(5).integers(0, 255, (32, 32, 3)), "photo.png")
    out = tmp_path / "maps"
    done = subprocess.run(
        [sys.executable, "-m", "fmonnx", "render", str(path), str(image), "-o", str(out), "--save-arrays"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    shown = manifest["images"][0]
    fed = np.load(out / shown["input_array"])
    want = reference(module, fed)
    by_name = {layer["name"]: layer for layer in shown["layers"]}
    act = np.load(out / by_name["block.act"]["array"])
    assert act.shape == (64, 8, 8)  # channels are the 64 features, not the 8 rows
    np.testing.assert_allclose(act, want["block.act"][0].transpose(2, 0, 1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.load(out / by_name["stem"]["array"]), want["stem"][0], rtol=1e-4, atol=1e-5)

    certain = {layer["name"]: layer["layout_certain"] for layer in shown["layers"]}
    assert certain["block.act"] is True and certain["stem"] is True
    unproven_lines = [line for line in done.stderr.splitlines() if "does not prove" in line]
    if "attn.q_norm" in certain:  # shown: marked, and said once
        assert certain["attn.q_norm"] is False
        assert len(unproven_lines) == 1 and "attn.q_norm" in unproven_lines[0]
    else:  # set aside as not a feature map: nothing drawn on a guessed axis
        assert not unproven_lines


class PicksBoxes(nn.Module):
    """A detector's post-processing in miniature: how many values pass a threshold decides the output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        kept = torch.nonzero(y.flatten() > 0)
        if kept.shape[0] > 10:
            return y * 2
        return y


def test_a_module_with_data_dependent_shapes_gets_one_short_line():
    from fmonnx.errors import ConversionError

    with pytest.raises(ConversionError) as caught:
        fmonnx.convert(seeded(PicksBoxes()), torch.rand(1, 3, 16, 16))
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300, message
    assert "data-dependent" in message and "PicksBoxes" in message
    assert "u0" not in message  # torch's unbacked symbols and guards mean nothing to the user
    assert "dynamo=False" in message  # what to do instead


class Head(nn.Module):
    """A detection head in miniature: per level, the box and class maps concatenated; the module returns the
    list, so no module call returns the concatenation."""

    def __init__(self):
        super().__init__()
        self.box = nn.Conv2d(8, 4, 1)
        self.cls = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return [torch.cat((self.box(x), self.cls(x)), 1)]


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = Head()

    def forward(self, x):
        return self.head(self.stem(x))


def test_converted_model_names_no_unrecorded_tensor_as_a_module_output(tmp_path):
    """fmonnx.convert records every module call's 4-D output; under --all-spatial, any other tensor is inside a
    module (``head/Concat``), never the module's output, whatever the name scopes suggest."""
    converted = fmonnx.convert(seeded(Detector()), torch.rand(1, 3, 16, 16))
    path = tmp_path / "detector.onnx"
    converted.save(path)
    rows = fmonnx.list_layers(path, fmonnx.RenderOptions(all_spatial=True))
    recorded = {record["layer"] for record in converted.layers}
    assert recorded == {"stem", "head.box", "head.cls"}
    for row in rows:
        if row["name"] not in recorded:
            assert row["layer_output"] is False and "/" in row["name"], row
    assert any(row["name"] == "head/Concat" for row in rows)
