"""Hand-made 3x3 RGB filters for the first conv layer of the sample models.

Random first-layer filters give feature maps that look like noise, which makes
a poor demonstration of a feature-map viewer. These eight filters are the
classic things a trained CNN's first layer learns anyway (oriented edges,
blobs, colour opponents, brightness), so the maps on a photo are readable.

The filters are defined for pixels scaled to [0, 1] and each is scaled so its
strongest response is about 1. ``to_normalized_input`` rewrites them for a model
whose input is normalised per channel (``(pixel - mean) / std``), so that the
same filter sees the same picture. Only numpy is needed, so both the
TensorFlow and the PyTorch script can import this module.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FILTER_NAMES", "first_layer_filters", "to_normalized_input"]

FILTER_NAMES = (
    "sobel_x",
    "sobel_y",
    "diagonal",
    "anti_diagonal",
    "centre_surround",
    "red_minus_green",
    "blue_minus_yellow",
    "brightness",
)

# ITU-R BT.601 luma weights: edge filters should respond to brightness, not hue.
_LUMA = np.array([0.299, 0.587, 0.114])

_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 4.0
_DIAGONAL = np.array([[0, 1, 2], [-1, 0, 1], [-2, -1, 0]]) / 4.0
_LAPLACIAN = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]) / 8.0
_GAUSSIAN = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16.0
_BOX = np.full((3, 3), 1.0 / 9.0)

# Negative biases act as thresholds: with inputs in [0, 1] they keep ReLU from
# passing the faint responses that sensor noise and JPEG blocks produce, so
# the edge maps show edges. The colour and brightness maps need no threshold.
_BIASES = np.array([-0.02, -0.02, -0.02, -0.02, -0.01, 0.0, 0.0, 0.0])


def _on_luma(kernel: np.ndarray) -> np.ndarray:
    """Spread a 3x3 kernel over RGB so that it filters the luma channel."""
    return _LUMA[:, None, None] * kernel[None, :, :]


def _colour_opponent(weights: tuple[float, float, float]) -> np.ndarray:
    """A 3x3-averaged colour difference, e.g. (1, -1, 0) for red minus green."""
    return np.array(weights)[:, None, None] * _BOX[None, :, :]


def first_layer_filters() -> tuple[np.ndarray, np.ndarray]:
    """Return (weights, biases) for inputs in [0, 1].

    weights has shape (8, 3, 3, 3) laid out (out, in, kh, kw) in RGB order,
    the PyTorch/ONNX layout; both ONNX and the frameworks compute
    cross-correlation, so no kernel flip is needed. biases has shape (8,).
    """
    weights = np.stack(
        [
            _on_luma(_SOBEL_X),  # vertical edges, dark-to-bright left to right
            _on_luma(_SOBEL_X.T),  # horizontal edges, dark-to-bright downwards
            _on_luma(_DIAGONAL),  # edges rising to the right
            _on_luma(np.fliplr(_DIAGONAL)),  # edges falling to the right
            _on_luma(_LAPLACIAN),  # spots and thin lines brighter than around
            _colour_opponent((1.0, -1.0, 0.0)),  # red minus green
            _colour_opponent((-0.5, -0.5, 1.0)),  # blue minus yellow
            _on_luma(_GAUSSIAN),  # blurred brightness
        ]
    )
    return weights.astype(np.float32), _BIASES.astype(np.float32)


def to_normalized_input(
    weights: np.ndarray,
    biases: np.ndarray,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite [0, 1]-pixel filters for input ``(pixel - mean) / std``.

    pixel = x * std + mean, so w . pixel + b = (w * std) . x + (b + w . mean).
    The zero padding of the conv then stands for a mean-coloured border
    instead of a black one, which only changes the outermost ring.
    """
    mean_arr = np.asarray(mean, dtype=np.float64)[None, :, None, None]
    std_arr = np.asarray(std, dtype=np.float64)[None, :, None, None]
    new_weights = weights * std_arr
    new_biases = biases + (weights * mean_arr).sum(axis=(1, 2, 3))
    return new_weights.astype(np.float32), new_biases.astype(np.float32)
