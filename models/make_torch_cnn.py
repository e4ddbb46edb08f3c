"""Build torch_cnn.onnx: a tiny ResNet-style PyTorch CNN with torchvision's module names.

The module tree mirrors torchvision's ResNet (conv1, bn1, relu, maxpool,
layer1.0, layer2.0 with a downsample shortcut, avgpool, fc) at toy size, so
the exported node names look like those of a real ResNet
(``/layer1/layer1.0/conv1/Conv``). No weights are downloaded: conv1 gets
hand-made edge/colour filters (see first_layer_filters.py) rewritten for
ImageNet-normalised input, every other weight and BatchNorm statistic is drawn
from a seeded generator, so re-running gives identical weights.

Run with the PyTorch venv (torch, onnx, onnxruntime)::

    /work/venv-torch/bin/python models/make_torch_cnn.py

Exported with the TorchScript exporter (``dynamo=False``) at opset 17 with
dynamic batch, height and width, then checked against onnxruntime at 64x64
and 150x200.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from first_layer_filters import first_layer_filters, to_normalized_input

SEED = 20240601
OPSET = 17
NUM_CLASSES = 10
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUT_PATH = Path(__file__).resolve().parent / "torch_cnn.onnx"


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3x3 convs plus a shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def conv1_filters(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """16 stem filters: the 8 hand-made ones, then 8 seeded random ones.

    Returns weights for ImageNet-normalised input and the bias each filter
    needs (conv1 has no bias; bn1 supplies it, see set_bn1).
    """
    weights, biases = first_layer_filters()
    weights, biases = to_normalized_input(weights, biases, IMAGENET_MEAN, IMAGENET_STD)
    extra = he_normal(rng, (8, 3, 3, 3))
    return np.concatenate([weights, extra]), np.concatenate([biases, np.zeros(8, np.float32)])


def he_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """He-normal draw: keeps ReLU activations from shrinking or blowing up."""
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def random_bn(bn: nn.BatchNorm2d, rng: np.random.Generator) -> None:
    """Plausible trained-looking BatchNorm statistics and affine parameters."""
    n = bn.num_features
    bn.running_mean.copy_(torch.from_numpy(rng.normal(0.0, 0.2, n).astype(np.float32)))
    bn.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, n).astype(np.float32)))
    bn.weight.copy_(torch.from_numpy(rng.uniform(0.7, 1.3, n).astype(np.float32)))
    bn.bias.copy_(torch.from_numpy(rng.normal(0.05, 0.1, n).astype(np.float32)))


def set_bn1(bn: nn.BatchNorm2d, biases: np.ndarray, rng: np.random.Generator) -> None:
    """Non-trivial running stats for bn1 that still leave the stem filters intact.

    With gamma = sqrt(var + eps) the BN scale is 1, and beta = bias + mean makes
    the BN output conv1(x) + bias: exactly the hand-made filter's response.
    """
    random_bn(bn, rng)
    scale_one = torch.sqrt(bn.running_var + bn.eps)
    bn.weight.copy_(scale_one)
    bn.bias.copy_(torch.from_numpy(biases) + bn.running_mean)


@torch.no_grad()
def build_model() -> TinyResNet:
    # The generator seeds the weights; torch's own seed only makes the default
    # initialisation (all overwritten below) reproducible too.
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = TinyResNet()
    stem_weights, stem_biases = conv1_filters(rng)
    model.conv1.weight.copy_(torch.from_numpy(stem_weights))
    set_bn1(model.bn1, stem_biases, rng)
    for name, module in model.named_modules():
        if name in ("conv1", "bn1"):
            continue
        if isinstance(module, nn.Conv2d):
            module.weight.copy_(torch.from_numpy(he_normal(rng, tuple(module.weight.shape))))
        elif isinstance(module, nn.BatchNorm2d):
            random_bn(module, rng)
    model.fc.weight.copy_(torch.from_numpy(he_normal(rng, (NUM_CLASSES, 32)) / 2))
    model.fc.bias.zero_()
    return model.eval()


def export(model: TinyResNet, path: Path) -> None:
    dummy = torch.zeros(1, 3, 64, 64)
    # dynamo=False is deliberate (see the module docstring); silence the
    # warning that the TorchScript exporter is legacy.
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,  # the TorchScript exporter names nodes /layer1/layer1.0/conv1/Conv
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
    )


def check_against_onnxruntime(model: TinyResNet, path: Path) -> None:
    """Compare torch and onnxruntime outputs and print the max abs error."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(SEED + 1)
    for shape in ((1, 3, 64, 64), (1, 3, 150, 200), (2, 3, 97, 61)):
        pixels = torch.rand(shape, generator=gen)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        batch = (pixels - mean) / std
        with torch.no_grad():
            expected = model(batch).numpy()
        got = session.run(None, {"input": batch.numpy()})[0]
        err = float(np.max(np.abs(expected - got)))
        print(f"{tuple(shape)}: max abs error torch vs onnxruntime = {err:.3g}")
        if err > 1e-4:
            raise SystemExit(f"{shape}: outputs differ by {err}")


def main() -> None:
    model = build_model()
    export(model, OUT_PATH)
    print(f"wrote {OUT_PATH} ({OUT_PATH.stat().st_size} bytes)")
    check_against_onnxruntime(model, OUT_PATH)


if __name__ == "__main__":
    main()
