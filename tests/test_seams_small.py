"""Issue 16, item 8: one module per job of the old write.py, pieces.py, one ``consume_layers``, and one base
for the result classes (a CompareResult or ScanResult opened from its folder reads and checks its record)."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

import fmonnx
from conftest import copy_model_nchw, save
from fmonnx.errors import FmonnxError, OutputError


@pytest.mark.parametrize("old", ["fmonnx.stages.write", "fmonnx.stages.passes"])
def test_the_old_modules_are_gone(old):
    # no re-export shim: an importer of the old name must move to the module that does the job
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_each_writing_job_has_its_module(tmp_path):
    from fmonnx.stages.json_out import MANIFEST, json_text
    from fmonnx.stages.output_folder import replaceable, staged_output
    from fmonnx.stages.picture_pool import PictureWriter
    from fmonnx.stages.png import encode_png
    from fmonnx.stages.spill import Spill

    with staged_output(tmp_path / "out") as staging:
        with Spill(staging) as spill:
            (handle,) = spill.put([json.dumps([1.5, float("inf")], allow_nan=True).replace("Infinity", "1e999")])
            (staging / MANIFEST).write_text(json_text({"schema": 1, "files": ["a.png"], "v": handle}))
        with PictureWriter(jobs=2) as writer:
            picture = encode_png(np.zeros((2, 2), np.uint8), bytes(768))
            writer.submit(4, (staging / "a.png").write_bytes, picture)
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["v"] == [1.5, float("inf")]
    replaceable(tmp_path / "out")  # an fmonnx output: may be replaced
    (tmp_path / "out" / "mine.txt").write_text("a user's file")
    with pytest.raises(OutputError, match="mine.txt"):
        replaceable(tmp_path / "out")


def test_consume_layers_frees_each_layer_as_it_goes():
    from fmonnx.stages.activations import consume_layers

    layers = ["a", "b", "c"]
    seen = []
    for layer in consume_layers(layers):
        seen.append((layer, len(layers)))  # the list no longer holds the layer handed out
    assert seen == [("a", 2), ("b", 1), ("c", 0)]
    assert list(consume_layers(iter(["x", "y"]))) == ["x", "y"]


def _photo(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (6, 4, 3), dtype=np.uint8)).save(path)
    return path


def test_compare_and_scan_results_read_their_record_from_the_folder(tmp_path):
    from fmonnx.report.compare_result import CompareResult
    from fmonnx.report.scan_result import ScanResult

    model = save(copy_model_nchw(), tmp_path, "copy.onnx")
    photo = _photo(tmp_path)
    compared = fmonnx.compare(model, model, [photo], out=tmp_path / "cmp")
    scanned = fmonnx.scan(model, [photo], tmp_path / "scan", top=1)
    for kind, result, record in [(CompareResult, compared, "compare.json"), (ScanResult, scanned, "scan.json")]:
        opened = kind(tmp_path / result.folder.name)
        assert opened.record == json.loads((result.folder / record).read_text())
        assert opened["layers"] == result["layers"] and opened.index == result.index
        assert repr(opened) == repr(result) and opened._repr_html_() == result._repr_html_()
        written = json.loads((result.folder / record).read_text())
        (result.folder / record).write_text(json.dumps({**written, "schema": 10**6}))
        with pytest.raises(FmonnxError, match="schema"):
            _ = kind(result.folder).record
    with pytest.raises(FmonnxError, match="compare again"):
        _ = CompareResult(tmp_path / "nowhere")["layers"]


def _stats(maps: np.ndarray) -> dict[str, np.ndarray]:
    """reduce.STATISTICS of (N, C, H, W) maps, by numpy (the reductions' graph outputs)."""
    n, c = maps.shape[:2]
    flat = maps.reshape(n, c, -1)
    mean = flat.mean(axis=2, keepdims=True)
    return {"max": flat.max(axis=2), "argmax": flat.argmax(axis=2), "min": flat.min(axis=2), "mean": mean,
            "m2": ((flat - mean) ** 2).sum(axis=2), "zeros": (flat == 0).sum(axis=2)}


def test_a_tally_and_a_delta_share_their_per_channel_numbers():
    from fmonnx.stages.tally import ChannelNumbers, LayerDelta, LayerTally, ScanTally, layer_delta

    assert issubclass(LayerTally, ChannelNumbers) and issubclass(LayerDelta, ChannelNumbers)
    maps = np.maximum(np.random.default_rng(1).normal(size=(7, 3, 4, 5)), 0)
    first, second, whole = LayerTally.empty(3, 2), LayerTally.empty(3, 2), LayerTally.empty(3, 2)
    first.apply(layer_delta(np.arange(4), _stats(maps[:4]), 4, 5))  # a batch's delta ...
    second.update(np.arange(4, 7), _stats(maps[4:]), 4, 5)
    first.merge(second)  # ... and another state: folded in the same way
    whole.update(np.arange(7), _stats(maps), 4, 5)
    per_channel = maps.transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(first.mean, per_channel.mean(axis=1))
    np.testing.assert_allclose(first.std, per_channel.std(axis=1))
    np.testing.assert_array_equal(first.maximum, per_channel.max(axis=1))
    best = np.argsort(-maps.max(axis=(2, 3)), axis=0, kind="stable")[:2].T
    np.testing.assert_array_equal(first.top_image, best)
    np.testing.assert_array_equal(first.top_image, whole.top_image)
    assert (first.height, first.width) == (4, 5)
    state = ScanTally([first], np.ones(7, bool))
    restored, _ = ScanTally.from_bytes(state.to_bytes({}))  # the checkpoint stores every shared array
    for name in ("count", "mean", "m2", "minimum", "maximum", "zeros", "fires", "top_value", "top_image", "top_y"):
        np.testing.assert_array_equal(getattr(restored.layers[0], name), getattr(first, name))
    np.testing.assert_array_equal(restored.layers[0].top_x, first.top_x)
