"""Tiny PyTorch models for the PyTorch source's tests, with seeded weights and randomized BatchNorm statistics.

Every BatchNorm gets random running mean and variance, weight and bias, so that
a BatchNorm is never an identity and a label one layer off cannot match. The
reference activations come from forward hooks written here, independently of
fmonnx's own tapping: ``{call name: (1, C, H, W) array}``, with the call names
``path`` then ``path#2``, ``path#3``... for repeated calls.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """``module`` in eval mode with seeded random weights and BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 2 - 1)
            elif name.endswith("weight") and tensor.dim() == 1:  # a norm's scale
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.4)
    return module.eval()


def plain() -> nn.Module:
    """conv -> bn -> relu -> maxpool -> conv -> relu, as a Sequential (layers ``0`` to ``5``)."""
    return seeded(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
    ))


class Block(nn.Module):
    """A ResNet BasicBlock: one ``relu`` module called twice, the second time after the skip Add."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = Block(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def residual() -> nn.Module:
    return seeded(Residual(), 1)


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: the normalization in the module's own forward, then ``drop`` and ``act`` children,
    so the module's output is its ``act`` child's output, not the BatchNorm arithmetic's."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return self.act(self.drop(x))


class ConvBnAct(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = BatchNormAct2d(5)
        self.head = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)))


def conv_bn_act() -> nn.Module:
    return seeded(ConvBnAct(), 2)


class Inception(nn.Module):
    """Three branches joined by a Concat in the block's own forward: the block's output is the Concat."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch1 = nn.Conv2d(channels, 2, 1)
        self.branch3 = nn.Sequential(nn.Conv2d(channels, 2, 1), nn.ReLU(), nn.Conv2d(2, 3, 3, padding=1))
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.pool_proj = nn.Conv2d(channels, 2, 1)

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch3(x), self.pool_proj(self.pool(x))], 1)


class InceptionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.mixed = Inception(4)
        self.out = nn.Conv2d(7, 3, 1)

    def forward(self, x):
        return self.out(self.mixed(self.stem(x)))


def inception() -> nn.Module:
    return seeded(InceptionNet(), 3)


BUILDERS = {"plain": plain, "residual": residual, "conv_bn_act": conv_bn_act, "inception": inception}

# The recorded layers of each model, in call order.
EXPECTED_LAYERS = {
    "plain": ["0", "1", "2", "3", "4", "5"],
    "residual": ["stem", "block.conv1", "block.bn1", "block.relu", "block.conv2", "block.bn2", "block.relu#2", "pool"],
    "conv_bn_act": ["conv", "bn.drop", "bn.act", "head"],
    "inception": [
        "stem.0", "stem.1", "stem.2", "mixed.branch1", "mixed.branch3.0", "mixed.branch3.1", "mixed.branch3.2",
        "mixed.pool", "mixed.pool_proj", "mixed", "out",
    ],
}


def reference(module: nn.Module, array: np.ndarray) -> dict[str, np.ndarray]:
    """Every module call's 4-D output on ``array`` (1, C, H, W), by call name, copied when the hook fires."""
    outputs: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def hook(path):
        def record(_module, _args, output):
            counts[path] = counts.get(path, 0) + 1
            name = path if counts[path] == 1 else f"{path}#{counts[path]}"
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                outputs[name] = output.detach().numpy().copy()

        return record

    handles = [m.register_forward_hook(hook(path)) for path, m in module.named_modules() if path]
    try:
        with torch.no_grad():
            module(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def hooked_calls(model: nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    """``{call name: output}`` for every call of every submodule (``block.relu#2`` for the second call)."""
    from fmonnx.stages.names import call_name

    outputs: dict[str, list[np.ndarray]] = {}
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, path=path: outputs.setdefault(path, []).append(out.detach().numpy().copy())
        )
        for path, module in model.named_modules() if path
    ]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for handle in handles:
        handle.remove()
    return {call_name(path, index + 1): out for path, calls in outputs.items() for index, out in enumerate(calls)}
