"""fmonnx.explain on PyTorch models against torch autograd: every layer's gradient of the same score,
with respect to the module output of the same values, from both exporters.

Relative L2 errors, not maxima: where a ReLU's input is zero in one runtime and barely positive in the
other, single elements of the gradient flip.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import fmonnx  # noqa: E402
from torch_models import Block, inception, residual, seeded  # noqa: E402

from fmonnx.stages.names import call_name  # noqa: E402

TOLERANCE = 1e-2


class TinyResNet(nn.Module):
    """A ResNet's stem (stride-2 Conv, BatchNorm, ReLU, 3x3 stride-2 MaxPool: overlapping windows), a
    BasicBlock, global average pooling and a Linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = Block(8)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layer1(x)), 1))


def _no_inplace(module: nn.Module) -> nn.Module:
    """In-place ReLUs would overwrite the outputs whose gradients the reference keeps."""
    for child in module.modules():
        if hasattr(child, "inplace"):
            child.inplace = False
    return module


def torch_gradients(module: nn.Module, array: np.ndarray, score) -> tuple[float, dict[str, np.ndarray],
                                                                           dict[str, np.ndarray]]:
    """(score, {call name: module output}, {call name: d score / d output}) by autograd."""
    module = _no_inplace(module)
    outputs: dict[str, list] = {}
    handles = [
        child.register_forward_hook(lambda _m, _i, out, path=path: outputs.setdefault(path, []).append(out))
        for path, child in module.named_modules() if path
    ]
    try:
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        result = module(x)
    finally:
        for handle in handles:
            handle.remove()
    calls = {call_name(path, i + 1): out for path, outs in outputs.items() for i, out in enumerate(outs)
             if isinstance(out, torch.Tensor) and out.dim() == 4}
    value = score(result)
    grads = torch.autograd.grad(value, list(calls.values()), allow_unused=True)
    gradients = {name: (g.numpy() if g is not None else np.zeros(tuple(t.shape), np.float32))
                 for (name, t), g in zip(calls.items(), grads)}
    return float(value.detach()), {name: t.detach().numpy() for name, t in calls.items()}, gradients


def photo(folder, side: int, seed: int = 0):
    """A random RGB photo of side x side pixels (fed at its own size: the models are exported at it)."""
    from PIL import Image

    path = folder / "photo.png"
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _export(module, example, exporter: str, folder) -> str:
    path = folder / f"{exporter}.onnx"
    if exporter == "dynamo":
        fmonnx.convert(module, example).save(path)
    else:
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17)
    return str(path)


def _check_layers(ex, activations, gradients, least: int) -> None:
    checked = 0
    for layer in ex.layers:
        names = [n for n in (layer.name, *layer.also_output_of) if n in gradients]
        if not names or layer.folded_batchnorm:  # a folded Conv holds its BatchNorm's output
            continue
        reference = gradients[names[0]][0]
        assert layer.gradient.shape == reference.shape, layer.name
        # the same values: the layer is the module output whose gradient is compared
        assert relative(layer.activation, activations[names[0]][0]) < 1e-4, layer.name
        assert relative(layer.gradient, reference) < TOLERANCE, (layer.name, relative(layer.gradient, reference))
        checked += 1
    assert checked >= least, [layer.name for layer in ex.layers]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("build", [lambda: seeded(TinyResNet(), 4), residual], ids=["tinyresnet", "residual"])
def test_classifier_gradients_equal_autograd(tmp_path, exporter, build):
    module = build().eval()
    example = torch.rand(1, 3, 32, 32)
    path = _export(module, example, exporter, tmp_path)
    image = photo(tmp_path, 32)
    ex = fmonnx.explain(path, image, layers="all")
    assert ex.target["kind"] == "class"
    (index,) = ex.target["index"]
    score, activations, gradients = torch_gradients(build().eval(), ex.input, lambda out: out[tuple(index)])
    np.testing.assert_allclose(ex.target["score"], score, rtol=1e-4, atol=1e-5)
    # the default target is the top-1 class, scored before any softmax
    logits = build().eval()(torch.from_numpy(ex.input)).detach().numpy()
    assert index == [0, int(np.argmax(logits[0]))]
    _check_layers(ex, activations, gradients, least=3)


def test_segmentation_mask_target_equals_autograd(tmp_path):
    """An output (1, classes, H, W): the default target is the most frequent class other than 0, scored as
    the sum of its logits where it wins (pytorch-grad-cam's SemanticSegmentationTarget)."""
    module = inception().eval()
    path = _export(module, torch.rand(1, 3, 16, 16), "dynamo", tmp_path)
    image = photo(tmp_path, 16)
    ex = fmonnx.explain(path, image, layers="all")
    target = ex.target
    assert target["kind"] == "mask"
    logits = inception().eval()(torch.from_numpy(ex.input)).detach().numpy()[0]
    winners = logits.argmax(0)
    counts = np.bincount(winners.ravel(), minlength=logits.shape[0])
    counts[0] = 0
    assert target["class"] == int(np.argmax(counts))
    mask = torch.from_numpy(winners == target["class"])
    np.testing.assert_array_equal(target["mask"], mask.numpy())
    score, activations, gradients = torch_gradients(
        inception().eval(), ex.input, lambda out: (out[0, target["class"]] * mask).sum())
    np.testing.assert_allclose(target["score"], score, rtol=1e-4, atol=1e-4)
    _check_layers(ex, activations, gradients, least=5)


def test_class_target_and_default_layer(tmp_path):
    module = seeded(TinyResNet(), 5).eval()
    path = _export(module, torch.rand(1, 3, 32, 32), "dynamo", tmp_path)
    image = photo(tmp_path, 32)
    ex = fmonnx.explain(path, image, target=3)
    assert ex.target["index"] == [[0, 3]]
    # the default layer: the last layer with H and W above 1 that the score depends on
    assert [layer.name for layer in ex.layers] == ["layer1.relu#2"]
    layer = ex.layer("layer1")  # the block's own name holds the same tensor
    score, activations, gradients = torch_gradients(seeded(TinyResNet(), 5).eval(), ex.input,
                                                    lambda out: out[0, 3])
    assert relative(layer.gradient, gradients["layer1.relu#2"][0]) < TOLERANCE
    # Grad-CAM by its paper's formula on torch's own activation and gradient
    activation, gradient = activations["layer1.relu#2"][0], gradients["layer1.relu#2"][0]
    raw = np.maximum((gradient.mean(axis=(1, 2))[:, None, None] * activation).sum(0), 0)
    assert relative(layer.raw, raw) < TOLERANCE
    assert layer.cam.shape == (32, 32) and 0 <= layer.cam.min() and layer.cam.max() <= 1


def test_vit_token_maps_gradients_equal_autograd(tmp_path):
    """Token layers are drawn as maps (tokens.py): their gradient is the same map of d score / d tokens."""
    from test_token_maps import DIM, PATCH, _photo, _vit

    module, path = _vit(tmp_path, dynamic=False)
    ex = fmonnx.explain(path, _photo(tmp_path, 64, 64), layers="all")
    (index,) = ex.target["index"]
    captured = {}
    hooks = [module.blocks[i].register_forward_hook(lambda m, i_, o, name=f"blocks.{i}": captured.__setitem__(name, o))
             for i in range(2)]
    logits = module(torch.from_numpy(ex.input))
    for hook in hooks:
        hook.remove()
    grads = torch.autograd.grad(logits[tuple(index)], [captured["blocks.0"], captured["blocks.1"]])
    grid = (64 // PATCH, 64 // PATCH)
    for name, gradient in zip(("blocks.0", "blocks.1"), grads):
        reference = gradient[0, 1:].reshape(*grid, DIM).permute(2, 0, 1).numpy()  # class token dropped
        layer = ex.layer(name)
        assert layer.gradient.shape == (DIM, *grid)
        assert relative(layer.gradient, reference) < TOLERANCE, (name, relative(layer.gradient, reference))


def test_pt2_file_and_module_are_explained_like_their_export(tmp_path):
    from test_torch_source import save_pt2

    import torch_models

    module = residual()
    pt2 = save_pt2(torch_models, module, tmp_path / "residual.pt2")
    image = photo(tmp_path, 32)
    from_file = fmonnx.explain(pt2, image, target=2)
    from_module = fmonnx.explain(module, image, target=2)
    (name,) = [layer.name for layer in from_file.layers]
    assert name == from_module.layers[0].name
    _, _, gradients = torch_gradients(residual().eval(), from_file.input, lambda out: out[0, 2])
    for ex in (from_file, from_module):
        assert relative(ex.layers[0].gradient, gradients[name][0]) < TOLERANCE
