import warnings

import numpy as np
import pytest

from fmonnx.stages.normalize import channel_stats, normalize


def tutorial(channel: np.ndarray) -> np.ndarray:
    """The Keras tutorial's arithmetic, verbatim, for one channel."""
    x = channel.astype(np.float32).copy()
    x -= x.mean()
    x /= x.std()
    x *= 64
    x += 128
    return np.clip(x, 0, 255).astype("uint8")


def test_standardize_is_the_tutorial_arithmetic():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, size=(5, 9, 7)).astype(np.float32)
    result = normalize(values, "standardize")
    assert result.dtype == np.uint8 and result.shape == values.shape
    for channel in range(5):
        expected = tutorial(values[channel])
        assert np.abs(result[channel].astype(int) - expected.astype(int)).max() <= 1
        assert (result[channel] == expected).mean() > 0.98


def test_standardize_known_values():
    channel = np.array([[[0.0, 2.0], [4.0, 6.0]]], np.float32)  # mean 3, std sqrt(5)
    expected = np.clip((channel - 3.0) / np.sqrt(5.0) * 64 + 128, 0, 255).astype(np.uint8)
    assert np.array_equal(normalize(channel), expected)
    assert normalize(channel)[0, 0, 0] == 42 and normalize(channel)[0, 1, 1] == 213


def test_dead_channel_is_flat_without_warning_and_counted():
    values = np.stack([np.zeros((3, 3)), np.full((3, 3), 0.1), np.arange(9.0).reshape(3, 3)]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        standardized = normalize(values, "standardize")
        minmaxed = normalize(values, "minmax")
    assert (standardized[0] == 128).all() and (standardized[1] == 128).all()
    assert (minmaxed[0] == 0).all() and (minmaxed[1] == 0).all()
    assert list(channel_stats(values).dead) == [True, True, False]


def test_minmax_stretches_each_channel():
    values = np.stack([np.array([[0.0, 10.0]]), np.array([[-1.0, 1.0]])]).astype(np.float32)
    result = normalize(values, "minmax")
    assert result[:, 0, 0].tolist() == [0, 0] and result[:, 0, 1].tolist() == [255, 255]


def test_layer_shares_one_scale():
    values = np.stack([np.array([[0.0, 1.0]]), np.array([[0.0, 2.0]])]).astype(np.float32)
    result = normalize(values, "layer")
    assert result[0, 0, 1] == 127 and result[1, 0, 1] == 255 and result[0, 0, 0] == 0


def test_non_finite_values_are_counted_not_propagated():
    values = np.array([[[np.nan, 1.0], [np.inf, 3.0]]], np.float32)
    stats = channel_stats(values)
    assert stats.nonfinite == 2
    result = normalize(values)
    assert result.dtype == np.uint8


def test_stats_values():
    values = np.array([[[0.0, 0.0], [2.0, 6.0]]], np.float32)
    stats = channel_stats(values)
    assert stats.mean[0] == 2.0 and stats.min[0] == 0.0 and stats.max[0] == 6.0
    assert stats.zero_fraction[0] == 0.5
    assert stats.summary()["dead_channels"] == 0


def test_unknown_method():
    with pytest.raises(ValueError):
        normalize(np.zeros((1, 2, 2), np.float32), "bogus")


def test_std_of_huge_values_is_finite_and_silent():
    # squares of 1e20 overflow float32 (max ~3.4e38); float64 holds them
    huge = np.array([[1e20, -1e20], [3e20, -2e20]], np.float32)
    ordinary = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    near_limit = np.array([[3e38, -3e38], [3e38, -3e38]], np.float32)  # centring alone overflows float32
    values = np.stack([huge, ordinary, near_limit])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning fails the test
        stats = channel_stats(values)
        result = normalize(values, stats=stats)
    expected = values.astype(np.float64).reshape(3, -1).std(axis=1)
    assert np.isfinite(stats.std).all()
    np.testing.assert_allclose(stats.std, expected, rtol=1e-6)
    assert stats.nonfinite == 0 and result.dtype == np.uint8
