"""The CAM formulas against the papers written differently (explicit loops, torch) and against pytorch-grad-cam."""

from __future__ import annotations

import numpy as np
import pytest

from fmonnx.stages import cam

RNG = np.random.default_rng(15)


def _pair(channels=4, height=5, width=6):
    activation = np.maximum(RNG.normal(size=(channels, height, width)), 0).astype(np.float32)
    gradient = RNG.normal(size=(channels, height, width)).astype(np.float32)
    return activation, gradient


def _loop_map(activation, weights):
    channels, height, width = activation.shape
    out = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            out[i, j] = max(0.0, sum(float(weights[c]) * float(activation[c, i, j]) for c in range(channels)))
    return out


def test_gradcam_xgradcam_gradcampp_by_loops():
    activation, gradient = _pair()
    channels, height, width = activation.shape
    for method in ("gradcam", "xgradcam", "gradcam++"):
        expected = np.zeros(channels)
        for c in range(channels):
            total_a = sum(float(x) for x in activation[c].ravel())
            acc = 0.0
            for i in range(height):
                for j in range(width):
                    g, a = float(gradient[c, i, j]), float(activation[c, i, j])
                    if method == "gradcam":
                        acc += g / (height * width)
                    elif method == "xgradcam":
                        acc += g * a / (total_a + 1e-7)
                    elif g != 0:
                        alpha = g**2 / (2 * g**2 + total_a * g**3 + 1e-6)
                        acc += alpha * max(g, 0.0)
            expected[c] = acc
        weights, raw = cam.gradient_map(method, activation, gradient)
        np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-7, err_msg=method)
        np.testing.assert_allclose(raw, _loop_map(activation, expected), rtol=1e-5, atol=1e-6, err_msg=method)


def test_hirescam_layercam_elementwise():
    activation, gradient = _pair()
    channels, height, width = activation.shape
    for method in ("hirescam", "layercam"):
        expected = np.zeros((height, width))
        for i in range(height):
            for j in range(width):
                total = 0.0
                for c in range(channels):
                    g = float(gradient[c, i, j])
                    total += (g if method == "hirescam" else max(g, 0.0)) * float(activation[c, i, j])
                expected[i, j] = max(total, 0.0)
        weights, raw = cam.gradient_map(method, activation, gradient)
        np.testing.assert_allclose(raw, expected, rtol=1e-5, atol=1e-6)
        # the ranking weights sum (times H*W) to the map before its ReLU
        pre = (gradient * activation if method == "hirescam" else np.maximum(gradient, 0) * activation).sum(0)
        assert np.isclose(weights.sum() * height * width, pre.sum(), rtol=1e-4)


def test_dead_layer_and_flat_maps_give_zeros():
    activation = np.zeros((3, 4, 4), np.float32)
    gradient = np.ones((3, 4, 4), np.float32)
    for method in cam.GRADIENT_METHODS:
        weights, raw = cam.gradient_map(method, activation, gradient)
        assert np.all(np.isfinite(weights)) and not raw.any()
        image = cam.to_image(raw, (16, 16))
        assert image.shape == (16, 16) and image.dtype == np.float32 and not image.any()
    assert not cam.to_image(np.full((3, 3), 7.5, np.float32), (9, 9)).any()
    weights, raw = cam.eigen_map(np.ones((3, 4, 4), np.float32))
    assert not raw.any() and not weights.any()
    masks = cam.score_cam_masks(np.stack([np.ones((4, 4)), np.arange(16.0).reshape(4, 4)]), (8, 8))
    assert not masks[0].any() and masks[1].min() == 0 and masks[1].max() == 1


def test_combine_and_to_image_against_torch():
    torch = pytest.importorskip("torch")
    activation, _ = _pair(3, 4, 5)
    weights = np.array([0.5, -1.0, 2.0], np.float32)
    raw = cam.combine(activation, weights)
    np.testing.assert_allclose(raw, _loop_map(activation, weights), rtol=1e-5, atol=1e-6)
    image = cam.to_image(raw, (13, 11))
    up = torch.nn.functional.interpolate(torch.tensor(raw, dtype=torch.float64)[None, None], size=(13, 11),
                                         mode="bilinear", align_corners=False)[0, 0].numpy()
    up = (up - up.min()) / (up.max() - up.min())
    np.testing.assert_allclose(image, up, atol=1e-6)
    assert image.min() == 0 and image.max() == 1
    # Score-CAM's masks: per channel, corners aligned (pytorch-grad-cam's UpsamplingBilinear2d)
    masks = cam.score_cam_masks(activation, (9, 7))
    ups = torch.nn.functional.interpolate(torch.tensor(activation, dtype=torch.float64)[None], size=(9, 7),
                                          mode="bilinear", align_corners=True)[0].numpy()
    low, high = ups.min(axis=(1, 2), keepdims=True), ups.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(masks, (ups - low) / (high - low), atol=1e-6)


def test_eigen_map_is_the_first_principal_component_with_a_fixed_sign():
    activation, _ = _pair(5, 4, 4)
    activation[:, :2, :2] += 3  # a hot corner every channel sees
    weights, raw = cam.eigen_map(activation)
    points = activation.reshape(5, -1).T.astype(np.float64)
    centred = points - points.mean(axis=0)
    # the first eigenvector of the covariance, by power iteration rather than an SVD
    vector = np.ones(5)
    for _ in range(500):
        vector = centred.T @ centred @ vector
        vector /= np.linalg.norm(vector)
    projection = centred @ vector
    if np.corrcoef(projection, points.mean(axis=1))[0, 1] < 0:
        projection, vector = -projection, -vector
    np.testing.assert_allclose(weights, vector, atol=1e-5)
    np.testing.assert_allclose(raw, np.maximum(projection, 0).reshape(4, 4), atol=1e-4)
    assert raw[:2, :2].min() > 0  # the hot corner is highlighted, not its complement


def test_score_and_ablation_weights():
    scores = np.array([1.0, 3.0, -2.0])
    expected = np.exp(scores) / np.exp(scores).sum()
    np.testing.assert_allclose(cam.score_cam_weights(scores), expected, rtol=1e-6)
    assert np.all(np.isfinite(cam.score_cam_weights([1000.0, 0.0])))
    np.testing.assert_allclose(cam.ablation_weights(4.0, [3.0, 5.0, 4.0]), [0.25, -0.25, 0.0])
    zero = cam.ablation_weights(0.0, [1.0, -1.0])
    assert np.all(np.isfinite(zero)) and zero[0] < 0 < zero[1]


def test_saliency_is_abs_gradient_times_input_summed_over_channels():
    image, gradient = _pair(3, 4, 4)
    image = image - 0.5
    expected = np.zeros((4, 4))
    for c in range(3):
        expected += np.abs(gradient[c] * image[c])
    np.testing.assert_allclose(cam.saliency_map(image, gradient), expected, rtol=1e-6)


def test_unknown_method_is_refused():
    activation, gradient = _pair()
    with pytest.raises(ValueError, match="gradcam"):
        cam.gradient_map("nope", activation, gradient)
    assert cam.DEFAULT_METHOD in cam.METHODS and "saliency" in cam.METHODS


def _tiny_torch_cnn(torch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 5),
    ).eval()
    return model, model[3]


@pytest.mark.parametrize("name, method", [
    ("GradCAM", "gradcam"), ("GradCAMPlusPlus", "gradcam++"), ("XGradCAM", "xgradcam"),
    ("HiResCAM", "hirescam"), ("LayerCAM", "layercam"), ("EigenCAM", "eigencam"),
])
def test_against_pytorch_grad_cam(name, method):
    torch = pytest.importorskip("torch")
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, layer = _tiny_torch_cnn(torch)
    image = torch.rand(1, 3, 8, 8)
    target_class = 2
    # our side: the layer's activation and gradient by plain autograd
    seen = {}
    handle = layer.register_forward_hook(lambda module, args, out: seen.update(a=out))
    score = model(image)[0, target_class]
    handle.remove()
    gradient = torch.autograd.grad(score, seen["a"])[0][0].detach().numpy()
    activation = seen["a"][0].detach().numpy()
    if method == "eigencam":
        _, raw = cam.eigen_map(activation)
    else:
        _, raw = cam.gradient_map(method, activation, gradient)
    ours = cam.to_image(raw, (8, 8))  # the layer is 8x8, as the input: no resize on either side

    theirs = getattr(grad_cam, name)(model=model, target_layers=[layer])(
        input_tensor=image, targets=[ClassifierOutputTarget(target_class)])[0]
    if method == "eigencam":
        # pytorch-grad-cam leaves the component's sign arbitrary; ours correlates with the mean activation
        flipped = getattr(grad_cam, name)(model=model, target_layers=[layer])
        flipped_map = -flipped.get_cam_image(image, layer, None, activation[None], None, False)[0]
        alt = np.maximum(flipped_map, 0)
        alt = (alt - alt.min()) / (alt.max() - alt.min() + 1e-7)
        if np.abs(theirs - ours).max() > np.abs(alt - ours).max():
            theirs = alt
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
