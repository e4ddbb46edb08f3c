import numpy as np
import pytest

from fmonnx.stages.tile import tile


def channels(count, height, width):
    return (np.arange(count)[:, None, None] + np.zeros((count, height, width))).astype(np.uint8) + 1


def test_grid_places_channel_k_at_row_k_div_columns():
    grid = tile(channels(10, 5, 5), "grid", padding=1, pad_value=0, min_tile=0)
    assert (grid.columns, grid.rows) == (4, 3)
    assert grid.image.shape == (3 * 6 - 1, 4 * 6 - 1)
    for k in range(10):
        row, column = divmod(k, grid.columns)
        block = grid.image[row * 6 : row * 6 + 5, column * 6 : column * 6 + 5]
        assert (block == k + 1).all()
    assert (grid.image[5, :] == 0).all()  # separator row
    assert (grid.image[12:, 12:] == 0).all()  # empty cells stay background


def test_belt_is_one_row():
    grid = tile(channels(8, 4, 3), "belt", padding=2, pad_value=9, min_tile=0)
    assert grid.rows == 1 and grid.columns == 8
    assert grid.image.shape == (4, 8 * 5 - 2)
    assert (grid.image[:, 3:5] == 9).all()


def test_small_maps_are_upscaled_by_whole_factor():
    grid = tile(channels(4, 7, 7), "grid", min_tile=32)
    assert grid.scale == 5 and (grid.tile_height, grid.tile_width) == (35, 35)


def test_many_channels_make_a_near_square_grid():
    grid = tile(np.zeros((2048, 7, 7), np.uint8), "grid")
    assert grid.columns == 46 and grid.rows == 45
    assert max(grid.image.shape) <= 8192
    ratio = grid.image.shape[1] / grid.image.shape[0]
    assert 0.8 < ratio < 1.25


def test_huge_pictures_are_subsampled():
    grid = tile(np.zeros((4, 6000, 6000), np.uint8), "grid", max_side=4000)
    assert grid.scale < 1 and max(grid.image.shape) <= 4000 + 4


def test_unknown_layout():
    with pytest.raises(ValueError):
        tile(channels(1, 2, 2), "spiral")
