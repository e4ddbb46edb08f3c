"""Seeded random inputs for the Keras check; the comparison itself is ``fmonnx.sources.check``.

Keras leaves open axes (batch, or H and W of a fully convolutional model) unset; the check fills them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["random_inputs", "CHECK_BATCH", "CHECK_OPEN_AXIS"]

CHECK_BATCH = 1
CHECK_OPEN_AXIS = 64


def random_inputs(specs: list[tuple[tuple, str]], seed: int) -> list[np.ndarray]:
    """Seeded random inputs for ``(shape, dtype)`` specs; open axes get fixed sizes.

    Float inputs are uniform in [0, 1), the range of an image divided by 255.
    Integer inputs are uniform in [0, 10).
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for shape, dtype in specs:
        concrete = tuple(
            (CHECK_BATCH if axis == 0 else CHECK_OPEN_AXIS) if size is None else int(size)
            for axis, size in enumerate(shape)
        )
        if np.issubdtype(np.dtype(dtype), np.floating):
            arrays.append(rng.random(concrete, dtype=np.float64).astype(dtype))
        else:
            arrays.append(rng.integers(0, 10, size=concrete).astype(dtype))
    return arrays
