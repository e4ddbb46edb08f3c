"""``fmonnx.convert(module)`` feeds the per-module cache of render/activations/list_layers.

Conversions are counted through the converter's own log line ("converted <Module>: N layers mapped"),
with real exports; the rendered arrays are compared with forward-hook outputs on the input render fed.
"""

from __future__ import annotations

import gc
import json
import logging
import weakref

import numpy as np
import pytest

RTOL, ATOL = 1e-4, 1e-5
CONVERTER = "fmonnx.sources.pytorch.convert"

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def models():
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    import torch_models

    return torch_models


@pytest.fixture
def photo(write_image):
    return write_image(np.random.default_rng(5).integers(0, 255, (36, 44, 3)), "photo.png")


@pytest.fixture
def conversions(caplog):
    caplog.set_level(logging.INFO, logger=CONVERTER)

    def count() -> int:
        return sum(r.name == CONVERTER and r.getMessage().startswith("converted ") for r in caplog.records)

    return count


def close(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and float(np.max(np.abs(got - want))) <= ATOL + RTOL * float(np.max(np.abs(want)))


def render_arrays(module, photo, out) -> tuple[dict[str, np.ndarray], np.ndarray]:
    import fmonnx

    fmonnx.render(module, [photo], out=out, options=fmonnx.RenderOptions(save_arrays=True, report=False))
    image = json.loads((out / "manifest.json").read_text())["images"][0]
    arrays = {layer["name"]: np.load(out / layer["array"]) for layer in image["layers"]}
    return arrays, np.load(out / image["input_array"])


def test_render_after_convert_reuses_it_until_a_weight_changes(models, tmp_path, photo, conversions):
    import fmonnx

    module = models.plain()
    converted = fmonnx.convert(module)
    assert conversions() == 1

    arrays, fed = render_arrays(module, photo, tmp_path / "first")
    assert conversions() == 1  # the result of convert was read, not made again
    hooks = models.reference(module, fed)
    assert list(arrays) == [record["layer"] for record in converted.layers]
    for name, got in arrays.items():
        assert close(got, hooks[name][0]), name
    maps = fmonnx.activations(module, photo)
    assert [row["name"] for row in fmonnx.list_layers(module)] == list(arrays)
    assert conversions() == 1
    for name, values in maps.items():
        assert close(values, hooks[name][0]), name

    module[0].weight.data.mul_(2)  # through .data: no version bump, the sum changes
    changed, fed = render_arrays(module, photo, tmp_path / "second")
    assert conversions() == 2
    hooks = models.reference(module, fed)
    for name, got in changed.items():
        assert close(got, hooks[name][0]), name
    assert not close(changed["0"], arrays["0"])

    alive = weakref.ref(module)  # the cache holds modules weakly: a large model is not kept alive
    del module
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("options", [{"opset": 17}, {"check": False}, {"rtol": 1e-2}])
def test_an_incompatible_convert_is_not_reused(models, tmp_path, photo, conversions, options):
    import fmonnx

    module = models.plain()
    fmonnx.convert(module, **options)
    assert conversions() == 1
    arrays, fed = render_arrays(module, photo, tmp_path / "maps")
    assert conversions() == 2  # render makes its own default, checked conversion
    hooks = models.reference(module, fed)
    for name, got in arrays.items():
        assert close(got, hooks[name][0]), name
