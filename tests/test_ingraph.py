"""The drawing nodes appended to the graph (stages/ingraph.py) against numpy's path (normalize.py,
colormap.to_palette_indices, report.page.quantize), on real onnxruntime sessions.

From the graph's own statistics the pictures and levels must equal numpy's exactly; against numpy's
statistics (float64 sums) a value may sit one grey level off, and the statistics within float32 sums.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fmonnx.report.page import quantize
from fmonnx.stages.colormap import to_palette_indices
from fmonnx.stages.ingraph import MIN_OPSET, Shown, drawing_suffix, finite_stats, stats_columns
from fmonnx.stages.normalize import METHODS, ChannelStats, channel_stats, normalize


def _weights(rng: np.random.Generator, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Conv weights whose channels are: all zero, constant 1000, flat (1000 within float32 rounding),
    constant negative, then random ones."""
    weight = rng.normal(size=(channels, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(size=channels).astype(np.float32)
    weight[:4] = 0
    bias[0], bias[1], bias[2], bias[3] = 0, 1000, 1000, -3
    weight[2] = 2e-5  # a few float32 steps of 1000: flat, not constant
    return weight, bias


def _model(opset: int = 17, channels: int = 9, dynamic: bool = False, elem_type: int = TensorProto.FLOAT,
           rng_seed: int = 0) -> onnx.ModelProto:
    """X -> Conv -> conv; Relu -> relu; Transpose to N,H,W,C -> nhwc (channels last); each an output."""
    rng = np.random.default_rng(rng_seed)
    weight, bias = _weights(rng, channels)
    height = "H" if dynamic else 12
    width = "W" if dynamic else 10
    nodes = [
        helper.make_node("Conv", ["X", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Transpose", ["conv"], ["nhwc"], perm=[0, 2, 3, 1]),
    ]
    outputs = ["conv", "relu", "nhwc"]
    if elem_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["conv"], ["half"], to=elem_type))
        outputs.append("half")
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT if name != "half" else elem_type, None)
         for name in outputs],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


_SHOWN = [Shown("conv", TensorProto.FLOAT, 1), Shown("relu", TensorProto.FLOAT, 1), Shown("nhwc", TensorProto.FLOAT, 3)]


def _run(model: onnx.ModelProto, shown: list[Shown], method: str, page: bool, image: np.ndarray) -> tuple[dict, dict]:
    suffix, outputs = drawing_suffix(model, shown, method, page)
    session = ort.InferenceSession(model.SerializeToString() + suffix, providers=["CPUExecutionProvider"])
    names = [name for drawn in outputs.values() for name in (drawn.stats, drawn.indices, drawn.levels) if name]
    floats = [item.tensor for item in shown]
    values = dict(zip(names + floats, session.run(names + floats, {"X": image})))
    return outputs, values


def _chw(raw: np.ndarray, channel_axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(raw[0], channel_axis - 1, 0), dtype=np.float32)


def _graph_stats(stats: np.ndarray) -> ChannelStats:
    return ChannelStats(**stats_columns(stats), nonfinite=0)


def _image(height: int = 12, width: int = 10, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, height, width), dtype=np.float32)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("opset", [MIN_OPSET, 17, 18, 21])
def test_pictures_equal_numpy_from_the_graph_stats(method, opset):
    model = _model(opset)
    outputs, values = _run(model, _SHOWN, method, True, _image())
    for item in _SHOWN:
        drawn = outputs[item.tensor]
        maps = _chw(values[item.tensor], item.channel_axis)
        stats = _graph_stats(values[drawn.stats])
        expected = to_palette_indices(normalize(maps, method, stats))
        np.testing.assert_array_equal(values[drawn.indices][0], expected)
        np.testing.assert_array_equal(values[drawn.levels][0], quantize(maps, stats))


@pytest.mark.parametrize("method", METHODS)
def test_pictures_within_one_level_of_the_numpy_path(method):
    model = _model(channels=24, dynamic=True)
    outputs, values = _run(model, _SHOWN, method, False, _image(40, 36))
    for item in _SHOWN:
        drawn = outputs[item.tensor]
        maps = _chw(values[item.tensor], item.channel_axis)
        expected = to_palette_indices(normalize(maps, method, channel_stats(maps)))
        difference = np.abs(values[drawn.indices][0].astype(int) - expected)
        assert difference.max() <= 1
        assert (difference == 0).mean() > 0.999


def test_statistics_match_numpy():
    model = _model(channels=16, dynamic=True)
    outputs, values = _run(model, _SHOWN, "standardize", False, _image(30, 20))
    for item in _SHOWN:
        maps = _chw(values[item.tensor], item.channel_axis)
        reference = channel_stats(maps)
        graph = _graph_stats(values[outputs[item.tensor].stats])
        live = ~reference.dead  # a flat channel's std is its rounding noise: only its flatness is compared
        for field in ("mean", "std", "min", "max", "zero_fraction"):
            np.testing.assert_allclose(getattr(graph, field)[live], getattr(reference, field)[live], rtol=2e-6,
                                       atol=1e-6, err_msg=field)
        np.testing.assert_array_equal(graph.dead, reference.dead)
        assert graph.dead[:4].all() and not graph.dead[4:].any()
        assert graph.flat[2] and not graph.flat[1]  # flat within rounding, and exactly constant
        assert finite_stats(values[outputs[item.tensor].stats])


def test_dead_channels_are_flat_tiles():
    model = _model()
    for method, flat in (("standardize", 128), ("minmax", 0)):
        outputs, values = _run(model, _SHOWN[:1], method, False, _image())
        indices = values[outputs["conv"].indices][0]
        assert (indices[:4] == to_palette_indices(np.array([flat], dtype=np.uint8))[0]).all()
        assert len(np.unique(indices[5])) > 10


def test_layer_normalization_of_a_flat_layer_is_flat():
    """Every channel of the layer equal: the whole layer is one flat channel, drawn 0."""
    model = _model()
    image = np.zeros((1, 3, 12, 10), dtype=np.float32)
    weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight[:] = 0
    bias = np.full(weight.shape[0], 7.0, dtype=np.float32)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "w"))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(bias, "b"))
    outputs, values = _run(model, _SHOWN[:1], "layer", False, image)
    assert (values[outputs["conv"].indices] == 0).all()


def test_dynamic_height_and_width():
    model = _model(dynamic=True)
    suffix, outputs = drawing_suffix(model, _SHOWN, "standardize", True)
    session = ort.InferenceSession(model.SerializeToString() + suffix, providers=["CPUExecutionProvider"])
    for height, width in ((12, 10), (33, 47)):
        names = [outputs["nhwc"].indices, outputs["nhwc"].stats, "nhwc"]
        indices, stats, raw = session.run(names, {"X": _image(height, width)})
        assert indices.shape == (1, 9, height, width)
        maps = _chw(raw, 3)
        np.testing.assert_array_equal(indices[0], to_palette_indices(normalize(maps, "standardize",
                                                                              _graph_stats(stats))))


def test_half_precision_tensor_is_cast_then_drawn():
    model = _model(elem_type=TensorProto.FLOAT16)
    shown = [Shown("half", TensorProto.FLOAT16, 1)]
    outputs, values = _run(model, shown, "minmax", False, _image())
    maps = _chw(values["half"], 1)
    stats = _graph_stats(values[outputs["half"].stats])
    np.testing.assert_array_equal(values[outputs["half"].indices][0], to_palette_indices(normalize(maps, "minmax",
                                                                                                   stats)))


def test_non_finite_values_show_in_the_stats():
    model = _model()
    image = _image()
    image[0, 0, 3, 4] = np.nan
    outputs, values = _run(model, _SHOWN[:1], "standardize", False, image)
    assert not finite_stats(values[outputs["conv"].stats])


def test_old_opsets_are_left_to_numpy():
    assert drawing_suffix(_model(opset=11), _SHOWN, "standardize", False) is None


def test_names_never_clash_with_the_model():
    model = _model()
    model.graph.node[1].output[0] = "fmonnx_draw/1"  # a model that happens to use the prefix
    model.graph.output[1].name = "fmonnx_draw/1"
    shown = [Shown("conv", TensorProto.FLOAT, 1), Shown("fmonnx_draw/1", TensorProto.FLOAT, 1)]
    suffix, outputs = drawing_suffix(model, shown, "standardize", False)
    assert not any(drawn.indices.startswith("fmonnx_draw/") for drawn in outputs.values())
    session = ort.InferenceSession(model.SerializeToString() + suffix, providers=["CPUExecutionProvider"])
    session.run(None, {"X": _image()})


def test_tensors_of_one_size_are_drawn_together_each_as_alone():
    """conv and relu (same size, channels first) share one set of nodes; each tensor's slice of the
    shared outputs equals numpy's picture of it, and nhwc (channels last) is drawn on its own."""
    model = _model(channels=9)
    shown = [Shown("conv", TensorProto.FLOAT, 1, (1, 9, 12, 10)), Shown("relu", TensorProto.FLOAT, 1, (1, 9, 12, 10)),
             Shown("nhwc", TensorProto.FLOAT, 3, (1, 12, 10, 9))]
    suffix, outputs = drawing_suffix(model, shown, "standardize", True)
    assert outputs["conv"].indices == outputs["relu"].indices != outputs["nhwc"].indices
    session = ort.InferenceSession(model.SerializeToString() + suffix, providers=["CPUExecutionProvider"])
    names = sorted({name for drawn in outputs.values() for name in (drawn.stats, drawn.indices, drawn.levels)})
    values = dict(zip(names + ["conv", "relu", "nhwc"], session.run(names + ["conv", "relu", "nhwc"],
                                                                      {"X": _image()})))
    for item in shown:
        drawn = outputs[item.tensor]
        maps = _chw(values[item.tensor], item.channel_axis)
        columns = {field: column[drawn.channels] for field, column in stats_columns(values[drawn.stats]).items()}
        stats = ChannelStats(**columns, nonfinite=0)
        np.testing.assert_allclose(stats.mean, channel_stats(maps).mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(values[drawn.indices][0, drawn.channels],
                                      to_palette_indices(normalize(maps, "standardize", stats)))
        np.testing.assert_array_equal(values[drawn.levels][0, drawn.channels], quantize(maps, stats))


def test_groups_stay_under_their_size_and_layer_draws_alone(monkeypatch):
    from fmonnx.stages import ingraph

    shown = [Shown(f"t{index}", TensorProto.FLOAT, 1, (1, 4, 8, 8)) for index in range(5)]  # 1 KB each
    assert [len(group) for group in ingraph._groups(shown, "standardize")] == [5]
    monkeypatch.setattr(ingraph, "GROUP_BYTES", 2 * 4 * 4 * 8 * 8)
    assert [len(group) for group in ingraph._groups(shown, "standardize")] == [2, 2, 1]
    assert [len(group) for group in ingraph._groups(shown, "layer")] == [1] * 5
    dynamic = [Shown("a", TensorProto.FLOAT, 1, (1, 4, "H", "W")), Shown("b", TensorProto.FLOAT, 1, (1, 4, "H", "W"))]
    assert [len(group) for group in ingraph._groups(dynamic, "standardize")] == [1, 1]
