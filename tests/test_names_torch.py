"""PyTorch names held against the module itself: every named entry equals the output of the module
call it names (forward hooks, every call), under both exporters of ``torch.onnx.export``."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # the dynamo exporter's dependency

from torch import nn  # noqa: E402

import fmonnx  # noqa: E402
from tests.torch_models import hooked_calls  # noqa: E402

EXPORTERS = ("torchscript", "dynamo")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: the module's output is after its activation child."""

    def __init__(self, channels):
        super().__init__(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(super().forward(x))


class ConvBnAct(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = BatchNormAct(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class SharedRelu(nn.Module):
    """torchvision's BasicBlock: one ``relu`` module called twice."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.conv2(y) + x)


class Mixed(nn.Module):
    """Inception's Mixed_6a: branches and a functional MaxPool, the block's output a later Concat."""

    def __init__(self, channels):
        super().__init__()
        self.branch3x3 = nn.Conv2d(channels, 4, 3, stride=2)
        self.branch_dbl = nn.Sequential(nn.Conv2d(channels, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2))

    def forward(self, x):
        pool = nn.functional.max_pool2d(x, 3, stride=2)
        return torch.cat([self.branch3x3(x), self.branch_dbl(x), pool], 1)


class PreAct(nn.Module):
    """A functional MaxPool, then a Conv whose BatchNorm is outside the module (timm's resnet-d stem).
    (Not a Relu: after the block's Relu the dynamo exporter's optimizer would drop one of the two.)"""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return self.conv(nn.functional.max_pool2d(x, 3, stride=1, padding=1))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ConvBnAct(3, 6)
        self.block = SharedRelu(6)
        self.preact = PreAct(6)
        self.preact_bn = nn.BatchNorm2d(6)
        self.mixed = Mixed(6)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.mixed(self.preact_bn(self.preact(self.block(self.stem(x))))))


def tiny_model() -> nn.Module:
    """Random weights, and BatchNorm statistics and affine parameters far from identity,
    so a Conv's output never passes for its BatchNorm's or its activation's."""
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size))
                module.running_var.copy_(torch.rand(size) * 2 + 0.5)
                module.weight.copy_(torch.rand(size) + 0.5)
                module.bias.copy_(torch.randn(size))
    return model.eval()


def same(actual: np.ndarray, expected: np.ndarray) -> bool:
    return actual.shape == expected.shape[1:] and np.allclose(actual, expected[0], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module", params=EXPORTERS)
def rendered(request, tmp_path_factory):
    """(exporter, manifest image entry, {name: array}, input fed, hooked calls) for Tiny exported one way."""
    from PIL import Image

    folder = tmp_path_factory.mktemp(request.param)
    model = tiny_model()
    path = folder / "tiny.onnx"
    example = (torch.zeros(1, 3, 32, 32),)
    torch.onnx.export(model, example, str(path), dynamo=request.param == "dynamo", **(
        {} if request.param == "dynamo" else {"opset_version": 17}
    ))
    image = folder / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    out = folder / "maps"
    fmonnx.render(path, [image], out, fmonnx.RenderOptions(save_arrays=True, report=False, preprocess="imagenet"))
    entry = json.loads((out / "manifest.json").read_text())["images"][0]
    fed = np.load(out / entry["input_array"])
    arrays = {layer["name"]: np.load(out / layer["array"]) for layer in entry["layers"]}
    return request.param, entry, arrays, fed, hooked_calls(model, fed)


def by_name(entry) -> dict[str, dict]:
    return {layer["name"]: layer for layer in entry["layers"]}


def test_every_module_name_is_that_calls_output(rendered):
    exporter, entry, arrays, _, calls = rendered
    for layer in entry["layers"]:
        if layer.get("layer_output") is not True:
            continue
        if layer.get("folded_batchnorm"):
            continue  # a Conv + BatchNorm named after the Conv: test_folded_batchnorm
        assert layer["name"] in calls, (exporter, layer["name"])
        assert layer["named_by"] == f"{exporter} {'name scopes' if exporter == 'dynamo' else 'scopes'}"
        assert same(arrays[layer["name"]], calls[layer["name"]]), (exporter, layer["name"])
        for outer in layer.get("also_output_of", []):
            assert same(arrays[layer["name"]], calls[outer]), (exporter, layer["name"], outer)


def test_block_output_made_by_a_later_concat(rendered):
    """The MaxPool inside ``mixed`` is not ``mixed``'s output (its Concat is): ``mixed/MaxPool``."""
    exporter, entry, arrays, _, calls = rendered
    layers = by_name(entry)
    assert "mixed" not in layers
    pool = layers["mixed/MaxPool"]
    assert pool["layer_output"] is False and pool["op"] == "MaxPool"
    pooled = nn.functional.max_pool2d(torch.from_numpy(calls["preact_bn"]), 3, stride=2).numpy()
    assert same(arrays["mixed/MaxPool"], pooled)
    assert same(arrays["mixed.branch_dbl.2"], calls["mixed.branch_dbl"])
    assert layers["mixed.branch_dbl.2"]["also_output_of"] == ["mixed.branch_dbl"]


def test_activation_child_names_the_output(rendered):
    """``stem.bn``'s output is after its ``act`` child: the Relu is ``stem.bn.act``, also ``stem.bn`` and ``stem``;
    the normalized values before it never take the bare name ``stem.bn``."""
    exporter, entry, arrays, _, calls = rendered
    layers = by_name(entry)
    act = layers["stem.bn.act"]
    assert act["layer_output"] is True and act["also_output_of"] == ["stem.bn", "stem"]
    assert "stem.bn" not in layers
    if exporter == "dynamo":  # the BatchNorm is fused into the Conv and carries the BatchNorm's scope
        assert layers["stem.bn/Conv"]["layer_output"] is False
    else:
        assert layers["stem.conv"]["folded_batchnorm"] is True


def test_shared_module_calls_are_numbered(rendered):
    exporter, entry, arrays, _, calls = rendered
    layers = by_name(entry)
    assert layers["block.relu"]["op"] == layers["block.relu#2"]["op"] == "Relu"
    assert same(arrays["block.relu"], calls["block.relu"])
    assert same(arrays["block.relu#2"], calls["block.relu#2"])
    assert layers["block.relu#2"]["also_output_of"] == ["block"]
    assert not any(name.startswith("block.relu_") for name in layers)


def test_folded_batchnorm(rendered):
    """TorchScript folds each BatchNorm into the Conv before it and names it after the Conv: flagged, and the
    values are the BatchNorm's. The dynamo exporter names the fused Conv after the BatchNorm: not flagged."""
    exporter, entry, arrays, _, calls = rendered
    layers = by_name(entry)
    flagged = sorted(name for name, layer in layers.items() if layer.get("folded_batchnorm"))
    assert any("BatchNorm" in problem for problem in entry["problems"]) == (exporter == "torchscript")
    if exporter == "torchscript":
        assert flagged == ["block.conv1", "preact.conv", "stem.conv"]
        assert same(arrays["block.conv1"], calls["block.bn1"])
        assert not same(arrays["block.conv1"], calls["block.conv1"])
        assert "folded_batchnorm" not in layers["block.conv2"]  # no BatchNorm after it: its own weights
        assert same(arrays["block.conv2"], calls["block.conv2"])
    else:
        assert flagged == []
        assert same(arrays["block.bn1"], calls["block.bn1"])
        assert "block.conv1" not in layers


def test_conv_fused_with_a_later_batchnorm(rendered):
    """``preact``'s MaxPool is not its output although the Conv after it was fused with ``preact_bn``
    (outside ``preact``): the dynamo exporter gives the fused Conv the BatchNorm's scope."""
    exporter, entry, arrays, _, calls = rendered
    layers = by_name(entry)
    assert layers["preact/MaxPool"]["layer_output"] is False
    assert "preact" not in layers
    if exporter == "dynamo":
        assert same(arrays["preact_bn"], calls["preact_bn"])
    else:
        assert same(arrays["preact.conv"], calls["preact_bn"]) and layers["preact.conv"]["folded_batchnorm"]


def test_list_layers_carries_the_flags(tmp_path):
    model = tiny_model()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17)
    rows = {row["name"]: row for row in fmonnx.list_layers(path)}
    assert rows["stem.conv"]["folded_batchnorm"] is True
    assert rows["stem.bn.act"]["also_output_of"] == ["stem.bn", "stem"]
    assert rows["mixed/MaxPool"]["layer_output"] is False


def test_folded_batchnorm_behind_a_merged_constant(tmp_path):
    """Fresh BatchNorms fold to equal biases; the TorchScript exporter keeps one and feeds the other Conv
    through an Identity of it. Both Convs hold a BatchNorm, and both are flagged."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))

    path = tmp_path / "twice.onnx"
    torch.onnx.export(Twice().eval(), (torch.rand(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17)
    graph = onnx.load(path).graph
    assert any(node.op_type == "Identity" for node in graph.node)  # the merged bias this test is about
    rows = {row["name"]: row for row in fmonnx.list_layers(path)}
    assert rows["conv1"]["folded_batchnorm"] is True
    assert rows["conv2"]["folded_batchnorm"] is True
