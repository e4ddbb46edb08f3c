"""fmonnx.explain on real zoo models (torchvision, timm; random weights) against torch autograd, and its
methods against pytorch-grad-cam on the same model. ``bash scripts/setup_zoo.sh`` installs the zoos beside
torch; without them these tests skip.

A hooked module output that the module's own code later changes in place (torchvision's BasicBlock does
``out += identity`` on its bn2 output) no longer holds that layer's values: such layers are left out of
the comparison and counted, and most layers must be compared.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision", reason="the zoo is not installed: bash scripts/setup_zoo.sh")

import fmonnx  # noqa: E402
from test_explain_torch import photo, relative, torch_gradients  # noqa: E402
from torch_models import seeded  # noqa: E402

TOLERANCE = 1e-2
SIDE = 64


def _compare(ex, module, least_fraction: float) -> int:
    (index,) = ex.target["index"]
    _, activations, gradients = torch_gradients(module, ex.input, lambda out: out[tuple(index)])
    compared = considered = 0
    for layer in ex.layers:
        names = [n for n in (layer.name, *layer.also_output_of) if n in gradients]
        if not names or layer.folded_batchnorm:
            continue
        considered += 1
        if relative(layer.activation, activations[names[0]][0]) > 1e-4:
            continue  # changed in place after its hook (see the module docstring)
        assert relative(layer.gradient, gradients[names[0]][0]) < TOLERANCE, layer.name
        compared += 1
    assert compared >= least_fraction * considered and compared >= 8, (compared, considered)
    return compared


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_torchvision_resnet18_gradients_equal_autograd(tmp_path, exporter):
    module = seeded(torchvision.models.resnet18(weights=None), 5).eval()
    path = tmp_path / "resnet18.onnx"
    example = torch.rand(1, 3, SIDE, SIDE)
    if exporter == "dynamo":
        fmonnx.convert(module, example).save(path)
    else:
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17)
    ex = fmonnx.explain(path, photo(tmp_path, SIDE), layers="all")
    assert ex.target["kind"] == "class"
    _compare(ex, seeded(torchvision.models.resnet18(weights=None), 5).eval(), 0.7)


def test_timm_convnext_gradients_equal_autograd(tmp_path):
    timm = pytest.importorskip("timm", reason="the zoo is not installed: bash scripts/setup_zoo.sh")
    module = seeded(timm.create_model("convnext_atto", pretrained=False), 6).eval()
    path = tmp_path / "convnext.onnx"
    fmonnx.convert(module, torch.rand(1, 3, SIDE, SIDE)).save(path)
    ex = fmonnx.explain(path, photo(tmp_path, SIDE), layers="all")
    _compare(ex, seeded(timm.create_model("convnext_atto", pretrained=False), 6).eval(), 0.9)


@pytest.mark.parametrize("name, method", [
    ("GradCAM", "gradcam"), ("GradCAMPlusPlus", "gradcam++"), ("XGradCAM", "xgradcam"), ("HiResCAM", "hirescam"),
    ("LayerCAM", "layercam"), ("ScoreCAM", "scorecam"), ("AblationCAM", "ablationcam"),
])
def test_methods_equal_pytorch_grad_cam_on_resnet18(tmp_path, name, method):
    """The whole pipeline (ONNX export, gradients in the graph, the method, the upsampled map) against
    pytorch-grad-cam on the torch module, for its last block (layer4's output, 2x2 at this size)."""
    grad_cam = pytest.importorskip("pytorch_grad_cam", reason="the zoo is not installed: bash scripts/setup_zoo.sh")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = seeded(torchvision.models.resnet18(weights=None), 7).eval()
    path = tmp_path / "resnet18.onnx"
    fmonnx.convert(module, torch.rand(1, 3, SIDE, SIDE)).save(path)
    ex = fmonnx.explain(path, photo(tmp_path, SIDE), target=3, layers=["layer4"], method=method)
    ours = ex.layers[0].cam
    explainer = getattr(grad_cam, name)(model=module, target_layers=[module.layer4])
    if method == "scorecam":
        explainer.batch_size = 16
    theirs = explainer(input_tensor=torch.from_numpy(ex.input), targets=[ClassifierOutputTarget(3)])[0]
    assert ours.shape == theirs.shape == (SIDE, SIDE)
    # pytorch-grad-cam rescales before its resize, fmonnx after: the maps agree within a few percent
    assert relative(ours, theirs) < 0.05, relative(ours, theirs)
