"""The class activation map formulas, in numpy: from a layer's activations (and gradients) to its map.

Shapes: ``activation`` and ``gradient`` (C, H, W) float32, channels first, the tensor render shows
under the layer's name and d score / d that tensor; ``weights`` (C,) each channel's weight;
``raw`` (H, W) at the layer's resolution, ReLU applied, not rescaled; ``cam`` (image H, image W)
in 0..1. The definitions follow the papers as pytorch-grad-cam (``grad-cam`` 1.5.7) implements them,
so that its maps and ours can be compared number for number; each function says where it differs.

Bilinear resizing here is the half-pixel convention (``align_corners=False``) of ONNX Resize, torch's
``interpolate`` and OpenCV's ``resize``, with edge replication and no antialiasing.
"""

from __future__ import annotations

import numpy as np

from fmonnx.stages.normalize import flat_spread

from .. import choices

__all__ = [
    "GRADIENT_METHODS", "FREE_METHODS", "METHODS", "DEFAULT_METHOD", "gradient_map", "eigen_map",
    "score_cam_weights", "score_cam_masks", "ablation_weights", "combine", "to_image", "saliency_map", "resize",
]

GRADIENT_METHODS, FREE_METHODS = choices.GRADIENT_METHODS, choices.FREE_METHODS
METHODS, DEFAULT_METHOD = choices.EXPLAIN_METHODS, choices.DEFAULT_EXPLAIN_METHOD

# pytorch-grad-cam's epsilons, kept so its maps are reproduced to float32 rounding.
_PLUSPLUS_EPS = 1e-6
_XGRAD_EPS = 1e-7


def _chw(array, what: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"{what} must be (C, H, W), got shape {array.shape}")
    return array


def combine(activation, weights) -> np.ndarray:
    """``relu(sum_c w_c A_c)``: the map of channel weights (Grad-CAM, Selvaraju et al. 2017, eq. 2)."""
    activation = _chw(activation, "activation")
    weights = np.asarray(weights, dtype=np.float32).reshape(-1)
    if weights.shape[0] != activation.shape[0]:
        raise ValueError(f"{weights.shape[0]} weights for {activation.shape[0]} channels")
    return np.maximum(np.tensordot(weights, activation, axes=(0, 0)), 0).astype(np.float32)


def gradient_map(method: str, activation, gradient) -> tuple[np.ndarray, np.ndarray]:
    """A gradient method's ``(weights (C,), raw (H, W))`` from the layer's activation and gradient.

    - ``gradcam``: Selvaraju et al. 2017, eq. 1: w_c = mean over (i, j) of dY/dA_c[i, j]; raw = eq. 2.
    - ``gradcam++``: Chattopadhyay et al. 2018, eq. 19 with exponentials' higher derivatives written as
      powers of the first (their eq. 10), pytorch-grad-cam's closed form:
      alpha = g^2 / (2 g^2 + sum_ij(A_c) g^3 + 1e-6) where g != 0, else 0; w_c = sum_ij alpha relu(g).
    - ``xgradcam``: Fu et al. 2020, eq. 8: w_c = sum_ij(g A_c) / (sum_ij(A_c) + 1e-7).
    - ``hirescam``: Draelos & Carin 2020, eq. 4: raw = relu(sum_c g * A_c), elementwise; its ``weights``
      only rank the channels: the spatial mean of g * A_c (the channel's share of the map's sum).
    - ``layercam``: Jiang et al. 2021, eq. 5-6: raw = relu(sum_c relu(g) * A_c); ranking ``weights``:
      the spatial mean of relu(g) * A_c.
    """
    activation = _chw(activation, "activation")
    gradient = _chw(gradient, "gradient")
    if activation.shape != gradient.shape:
        raise ValueError(f"activation {activation.shape} and gradient {gradient.shape} differ")
    # float64 inside: gradcam++'s cubes of small gradients underflow in float32.
    a, g = activation.astype(np.float64), gradient.astype(np.float64)
    if method == "gradcam":
        weights = g.mean(axis=(1, 2))
    elif method == "gradcam++":
        g2 = g * g
        sum_a = a.sum(axis=(1, 2), keepdims=True)
        alpha = np.where(g != 0, g2 / (2 * g2 + sum_a * g2 * g + _PLUSPLUS_EPS), 0.0)
        weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    elif method == "xgradcam":
        weights = (g * a).sum(axis=(1, 2)) / (a.sum(axis=(1, 2)) + _XGRAD_EPS)
    elif method in ("hirescam", "layercam"):
        elementwise = g * a if method == "hirescam" else np.maximum(g, 0) * a
        raw = np.maximum(elementwise.sum(axis=0), 0)
        return elementwise.mean(axis=(1, 2)).astype(np.float32), raw.astype(np.float32)
    else:
        raise ValueError(f"unknown gradient method {method!r}; known: {', '.join(GRADIENT_METHODS)}")
    return weights.astype(np.float32), combine(activation, weights)


def eigen_map(activation) -> tuple[np.ndarray, np.ndarray]:
    """EigenCAM (Muhammad & Yeasin 2020): the activations' first principal component, ``(weights, raw)``.

    As pytorch-grad-cam: activations as (HW, C), each channel centred, SVD, the projection of every
    position on the first right singular vector. An SVD's sign is arbitrary and pytorch-grad-cam leaves it
    so; here it is fixed so that the projection correlates positively with the channel-mean activation,
    so the map highlights what the layer responds to rather than its complement. ``weights``: that
    vector's loadings, with the same sign. ``raw``: the projection, ReLU applied (as BaseCAM does).
    """
    activation = _chw(activation, "activation")
    channels, height, width = activation.shape
    points = activation.reshape(channels, -1).T.astype(np.float64)
    points = np.nan_to_num(points - points.mean(axis=0))
    if not points.any():
        return np.zeros(channels, np.float32), np.zeros((height, width), np.float32)
    _, _, vt = np.linalg.svd(points, full_matrices=False)
    loadings = vt[0]
    projection = points @ loadings
    mean_map = activation.reshape(channels, -1).mean(axis=0).astype(np.float64)
    if np.dot(projection, mean_map - mean_map.mean()) < 0:
        loadings, projection = -loadings, -projection
    raw = np.maximum(projection, 0).reshape(height, width)
    return loadings.astype(np.float32), raw.astype(np.float32)


def score_cam_masks(activation, input_hw) -> np.ndarray:
    """Score-CAM's masks (Wang et al. 2020, eq. 3-4): each channel upsampled bilinearly to the input's
    (H, W) and min-max normalised to 0..1; a flat channel gives zeros. (C, H, W) float32.

    The upsampling aligns corners, as pytorch-grad-cam's (``UpsamplingBilinear2d``): from a small layer
    the masks differ much from half-pixel ones, and the softmax over channels magnifies that.
    pytorch-grad-cam divides a constant channel by zero (NaN); here it masks the whole input out.
    """
    upsampled = resize(_chw(activation, "activation"), input_hw, align_corners=True).astype(np.float64)
    low = upsampled.min(axis=(1, 2), keepdims=True)
    high = upsampled.max(axis=(1, 2), keepdims=True)
    flat = flat_spread(low, high)
    span = np.where(flat, 1.0, high - low)
    return np.where(flat, 0.0, (upsampled - low) / span).astype(np.float32)


def score_cam_weights(scores) -> np.ndarray:
    """Score-CAM's weights: the softmax over channels of the target's score on each masked input
    (pytorch-grad-cam's ScoreCAM; the paper's eq. 5 uses the score's increase, which softmax makes the same
    up to a constant factor). (C,) float32."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    shifted = np.exp(scores - scores.max())
    return (shifted / shifted.sum()).astype(np.float32)


def ablation_weights(score: float, ablated_scores) -> np.ndarray:
    """Ablation-CAM's weights (Desai & Ramaswamy 2020, eq. 4): ``(score - ablated_c) / score``, the
    relative drop of the score when channel c is zeroed (pytorch-grad-cam's AblationCAM). A zero score
    divides by 1e-7 instead (the drops keep their sign and order). (C,) float32."""
    ablated = np.asarray(ablated_scores, dtype=np.float64).reshape(-1)
    score = float(score)
    denominator = score if score != 0 else 1e-7
    return ((score - ablated) / denominator).astype(np.float32)


def saliency_map(input_chw, gradient_chw) -> np.ndarray:
    """Gradient x input (Shrikumar et al. 2016; Simonyan et al. 2013 take |gradient| alone):
    ``sum_c |gradient_c * input_c|``, the magnitude per pixel summed over the colour channels. (H, W)."""
    image = _chw(input_chw, "input").astype(np.float64)
    gradient = _chw(gradient_chw, "gradient").astype(np.float64)
    if image.shape != gradient.shape:
        raise ValueError(f"input {image.shape} and gradient {gradient.shape} differ")
    return np.abs(gradient * image).sum(axis=0).astype(np.float32)


def to_image(raw, size) -> np.ndarray:
    """The map at the image's size: bilinear upsampling of ``raw`` (H, W) to ``size`` (height, width),
    then min-max to 0..1; a flat map (a dead layer) gives zeros. float32.

    pytorch-grad-cam normalises first and resizes after; bilinear interpolation commutes with an affine
    rescale, so the two differ only where resizing moves the extremes (downsizing)."""
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 2:
        raise ValueError(f"raw must be (H, W), got shape {raw.shape}")
    image = resize(raw[None], size)[0].astype(np.float64)
    image = np.nan_to_num(image)
    low, high = image.min(), image.max()
    if flat_spread(low, high):
        return np.zeros(image.shape, np.float32)
    return ((image - low) / (high - low)).astype(np.float32)


def _axis_weights(size_in: int, size_out: int, align_corners: bool = False) -> np.ndarray:
    """(size_out, size_in) matrix of bilinear weights: half-pixel centres with edge replication, or
    ``align_corners`` (the first and last samples on the first and last pixels)."""
    if align_corners:
        position = np.arange(size_out) * ((size_in - 1) / (size_out - 1) if size_out > 1 else 0.0)
    else:
        position = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    position = np.clip(position, 0, size_in - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    fraction = position - low
    matrix = np.zeros((size_out, size_in))
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, low), 1 - fraction)
    np.add.at(matrix, (rows, high), fraction)
    return matrix


def resize(maps, size, align_corners: bool = False) -> np.ndarray:
    """Bilinear resize of (C, H, W) to (C, height, width), half-pixel centres unless ``align_corners``."""
    maps = np.asarray(maps)
    height, width = (int(x) for x in size)
    if maps.shape[1:] == (height, width):
        return maps.astype(np.float32)
    rows = _axis_weights(maps.shape[1], height, align_corners)
    cols = _axis_weights(maps.shape[2], width, align_corners)
    # two matrix products (BLAS), not one einsum: numpy's unoptimized einsum loops over all five axes
    return (rows @ maps.astype(np.float64) @ cols.T).astype(np.float32)
