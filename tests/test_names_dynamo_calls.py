"""Dynamo-exported names held against the module itself (forward hooks): a module called again right after
itself gets its call number (YOLO's SPPF pools ``m`` three times), and a tensor is named after a module only
when that call returned it (YOLO's attention, whose reshaped qkv feeds a Split the optimizer made)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # the dynamo exporter's dependency

from torch import nn  # noqa: E402

import fmonnx  # noqa: E402
from tests.torch_models import hooked_calls  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


class ConvAct(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.conv(x))


class SPPF(nn.Module):
    """Ultralytics' SPPF: one MaxPool called three times in a row, every output concatenated."""

    def __init__(self, channels):
        super().__init__()
        self.cv1 = ConvAct(channels, 4)
        self.m = nn.MaxPool2d(5, 1, 2)
        self.cv2 = ConvAct(16, channels)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Acts(nn.Module):
    """A two-node module (SiLU: Sigmoid, Mul) called twice in a row, both outputs used."""

    def __init__(self):
        super().__init__()
        self.act = nn.SiLU()

    def forward(self, x):
        first = self.act(x)
        return torch.cat([first, self.act(first)], 1)


class Attention(nn.Module):
    """Ultralytics' Attention: a qkv Conv viewed and split, the MatMul result viewed back, then projected."""

    def __init__(self, channels):
        super().__init__()
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(x).view(batch, 1, channels * 3, height * width).split([channels] * 3, dim=2)
        attn = ((q.transpose(-2, -1) @ k) * channels ** -0.5).softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(batch, channels, height, width)
        return self.proj(x)


class C2PSA(nn.Module):
    """Ultralytics' C2PSA: a Conv whose output is chunked; one half through attention, then concatenated."""

    def __init__(self, channels):
        super().__init__()
        self.cv1 = ConvAct(channels, channels * 2)
        self.attn = Attention(channels)
        self.cv2 = ConvAct(channels * 2, channels)

    def forward(self, x):
        a, b = self.cv1(x).chunk(2, 1)
        return self.cv2(torch.cat([a, self.attn(b) + b], 1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ConvAct(3, 4)
        self.sppf = SPPF(4)
        self.acts = Acts()
        self.psa = C2PSA(8)

    def forward(self, x):
        return self.psa(self.acts(self.sppf(self.stem(x))))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(rows of ``fmonnx.list_layers``, {name: value}, hooked calls) for Net exported by dynamo."""
    torch.manual_seed(0)
    model = Net().eval()
    path = tmp_path_factory.mktemp("dynamo") / "net.onnx"
    torch.onnx.export(model, (torch.rand(1, 3, 16, 16),), str(path), dynamo=True)
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    rows = fmonnx.list_layers(path, fmonnx.RenderOptions(all_spatial=True))
    return rows, tensor_values(path, rows, x), hooked_calls(model, x)


def tensor_values(path, rows: list[dict], x: np.ndarray) -> dict[str, np.ndarray]:
    """``{row name: value}``: onnxruntime on the exported model with each row's tensor made an output."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(path)
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(row["tensor"]) for row in rows)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run([row["tensor"] for row in rows], {session.get_inputs()[0].name: x})
    return {row["name"]: value for row, value in zip(rows, values)}


def test_a_module_called_again_right_after_itself_is_numbered(exported):
    rows, arrays, calls = exported
    named = {row["name"]: row for row in rows}
    for name in ("sppf.m", "sppf.m#2", "sppf.m#3", "acts.act", "acts.act#2"):
        assert named[name]["layer_output"] is True, name
        assert np.allclose(arrays[name], calls[name], rtol=1e-4, atol=1e-5), name
    assert not any(row["name"].startswith(("sppf.m_", "acts.act_")) for row in rows)


def test_module_names_only_for_what_the_call_returned(exported):
    rows, arrays, calls = exported
    named = {row["name"]: row for row in rows}
    assert "psa.attn" not in named  # its reshaped qkv feeds the optimizer's Split, used only inside it
    assert named["psa.attn.proj"]["also_output_of"] == ["psa.attn"]
    assert named["psa.cv1.act"]["also_output_of"] == ["psa.cv1"]  # not psa's: chunked and used inside psa
    for row in rows:
        if row.get("layer_output") is not True:
            assert "/" in row["name"] or row.get("layer_output") is None, row
            continue
        for name in (row["name"], *row.get("also_output_of", [])):
            assert name in calls, (row["name"], name)
            assert np.allclose(arrays[row["name"]], calls[name], rtol=1e-4, atol=1e-5), (row["name"], name)
