"""Issue 17, start faster: a plan reads the model without its weights (``load.load_graph``), and a session
reads them in place in the model file (``load.weights_in_place``, ``run.create_session``).

The truth is onnx and onnxruntime themselves: the whole file parsed by ``onnx.load`` (each large
initializer then reduced to its name, type and dims, as the plan keeps it), and a session of that model.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import copy_model_nchw, save
from fmonnx.errors import ModelError
from fmonnx.stages.expose import exposed_suffix, find_candidates
from fmonnx.stages.load import SMALL_INITIALIZER, load_graph, load_model, weights_in_place
from fmonnx.stages.plan import plan_model
from fmonnx.stages.run import create_session, session_options
from fmonnx.stages.shapes import infer_types


def stripped(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every initializer over SMALL_INITIALIZER elements, unless external, reduced to name,
    type and dims."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for tensor in light.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL and int(np.prod(tensor.dims)) > SMALL_INITIALIZER:
            tensor.CopyFrom(TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims))
    return light


def conv_model() -> onnx.ModelProto:
    """input (1,3,8,8) -> Conv (16 filters 3x3, raw_data) + bias -> Relu -> Add (a (16,8,8) float_data tensor)
    -> Reshape (a small int64 shape kept with its values)."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w")
    weights.doc_string = "dropped with the values"
    offsets = helper.make_tensor("offsets", TensorProto.FLOAT, [16, 8, 8], rng.standard_normal(1024).tolist())
    assert offsets.float_data and not offsets.raw_data
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
            helper.make_node("Add", ["relu_out", "offsets"], ["added"], name="add"),
            helper.make_node("Reshape", ["added", "shape"], ["output"], name="flat"),
        ],
        "startup",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1024])],
        initializer=[
            weights,
            numpy_helper.from_array(np.arange(16, dtype=np.float32), "b"),
            offsets,
            numpy_helper.from_array(np.array([1, 1024], dtype=np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, producer_name="fmonnx-tests", opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"note": "kept"})
    onnx.checker.check_model(model)
    return model


def test_the_graph_is_read_as_onnx_reads_it_less_the_large_weights(tmp_path):
    path = save(conv_model(), tmp_path, "m.onnx")
    loaded = load_graph(path)
    truth = stripped(onnx.load(str(path)))
    assert loaded.model == truth
    by_name = {tensor.name: tensor for tensor in loaded.model.graph.initializer}
    assert not by_name["w"].raw_data and list(by_name["w"].dims) == [16, 3, 3, 3]
    assert not by_name["offsets"].float_data
    np.testing.assert_array_equal(numpy_helper.to_array(by_name["shape"]), [1, 1024])
    np.testing.assert_array_equal(numpy_helper.to_array(by_name["b"]), np.arange(16))


def test_a_graph_merged_from_two_messages_is_read_as_onnx_merges_it(tmp_path):
    """A file of two ModelProto messages back to back (how expose.py appends outputs) parses as one."""
    model = conv_model()
    extra = onnx.ModelProto()
    extra.graph.output.append(helper.make_tensor_value_info("relu_out", TensorProto.FLOAT, [1, 16, 8, 8]))
    extra.graph.initializer.append(numpy_helper.from_array(np.ones((4, 40), np.float32), "late"))
    path = tmp_path / "merged.onnx"
    path.write_bytes(model.SerializeToString() + extra.SerializeToString())
    truth = stripped(onnx.load(str(path)))
    assert [value.name for value in truth.graph.output] == ["output", "relu_out"]
    assert load_graph(path).model == truth


def test_external_weights_stay_whole(tmp_path):
    path = tmp_path / "external.onnx"
    onnx.save(conv_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    loaded = load_graph(path)
    assert loaded.external_data == ("weights.bin",)
    whole = onnx.load(str(path), load_external_data=False)
    assert loaded.model == stripped(whole)
    external = [tensor for tensor in whole.graph.initializer if tensor.data_location == TensorProto.EXTERNAL]
    assert [tensor.name for tensor in external] == ["w", "b", "shape"]  # onnx keeps float_data inline
    assert all(tensor in loaded.model.graph.initializer for tensor in external)


@pytest.mark.parametrize("damage", ["truncated", "text", "no_nodes"])
def test_a_damaged_file_gives_the_whole_load_s_error(tmp_path, damage):
    data = conv_model().SerializeToString()
    path = tmp_path / "damaged.onnx"
    if damage == "truncated":
        path.write_bytes(data[: len(data) - 1500])  # cut inside the weights
    elif damage == "text":
        path.write_text("ir_version: 8\ngraph { node { op_type: 'Relu' } }\n")
    else:
        path.write_bytes(onnx.ModelProto(ir_version=8).SerializeToString() + b"\x3a\x00")  # an empty graph
    with pytest.raises(ModelError) as whole:
        load_model(path)
    with pytest.raises(ModelError) as skimmed:
        load_graph(path)
    assert str(skimmed.value) == str(whole.value)


def test_a_plan_does_not_read_the_weights(tmp_path):
    """32 MB of weights: onnx.load would hold them as Python bytes; the plan's peak stays far below."""
    model = copy_model_nchw()
    model.graph.initializer.append(numpy_helper.from_array(np.ones(8 * 2**20, np.float32), "unused_big"))
    path = save(model, tmp_path, "big.onnx")
    plan_model(path)  # warm: imports and caches are not what is measured
    tracemalloc.start()
    try:
        plan = plan_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, peak
    assert [named.name for named in plan.tensors] == ["conv", "relu", "pool"]
    assert plan.loaded.model == stripped(onnx.load(str(path)))


def test_rendered_maps_equal_onnxruntime_on_the_original_file(tmp_path, write_image):
    """The light plan still runs the model's real weights: fmonnx's maps equal onnxruntime's own run."""
    import onnxruntime as ort

    path = save(conv_model(), tmp_path, "m.onnx")
    image = write_image(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    import fmonnx

    maps = fmonnx.activations(path, image, fmonnx.RenderOptions(ops=("Relu",)))
    exposed = onnx.load(str(path))
    exposed.graph.output.append(helper.make_tensor_value_info("relu_out", TensorProto.FLOAT, None))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    from PIL import Image

    pixels = np.asarray(Image.open(image).convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 255
    (truth,) = session.run(["relu_out"], {"input": pixels})
    (name,) = maps
    np.testing.assert_allclose(maps[name], truth[0], rtol=1e-6, atol=1e-6)



def test_weights_in_place_point_at_each_large_tensor_s_bytes_in_the_file(tmp_path):
    path = save(conv_model(), tmp_path, "m.onnx")
    view = onnx.ModelProto()
    view.ParseFromString(weights_in_place(path))
    whole = onnx.load(str(path))
    data = path.read_bytes()
    for placed, tensor in zip(view.graph.initializer, whole.graph.initializer, strict=True):
        if tensor.name == "w":  # large, as raw_data: a reference to its bytes
            where = {entry.key: entry.value for entry in placed.external_data}
            assert placed.data_location == TensorProto.EXTERNAL and where["location"] == "m.onnx"
            start = int(where["offset"])
            assert data[start:start + int(where["length"])] == tensor.raw_data
            assert not placed.raw_data and placed.dims == tensor.dims and placed.data_type == tensor.data_type
        else:  # small ("b", "shape") or float_data ("offsets"): whole
            assert placed == tensor
    assert view.graph.node == whole.graph.node


def test_a_session_with_the_weights_in_place_equals_onnxruntime_on_the_whole_model(tmp_path):
    """The exposed outputs equal, bit for bit, those of onnxruntime's session of the whole model (same options)."""
    import onnxruntime as ort

    path = save(conv_model(), tmp_path, "m.onnx")
    light = load_graph(path).model
    candidates = find_candidates(light, infer_types(light), ("Conv", "Relu"), False)
    session = create_session(path, "cpu", append=exposed_suffix(light, candidates))
    names = [c.tensor for c in candidates]
    assert names == ["conv_out", "relu_out"]
    feed = {"input": np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    whole = onnx.load(str(path))
    whole.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names)
    truth = ort.InferenceSession(whole.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    for got, expected in zip(session.run(names, feed), truth.run(names, feed), strict=True):
        np.testing.assert_array_equal(got, expected)


_TRUNCATED = """
import sys
import numpy as np
from fmonnx.stages.expose import exposed_suffix, find_candidates
from fmonnx.stages.load import load_graph
from fmonnx.stages.run import create_session
from fmonnx.stages.shapes import infer_types

path = sys.argv[1]
light = load_graph(path).model
candidates = find_candidates(light, infer_types(light), ("Relu",), False)
session = create_session(path, "cpu", append=exposed_suffix(light, candidates))
open(path, "wb").close()  # exported again in place: truncated first
(relu,) = session.run(["relu_out"], {"input": np.ones((1, 3, 8, 8), np.float32)})
print(relu.shape)
"""


def test_a_session_outlives_its_model_file_being_rewritten(tmp_path):
    """onnxruntime maps the weights it reads in place; from the user's file, truncating it would kill the
    process (SIGBUS) at the next run, so the session maps a private copy."""
    big = conv_model()
    big.graph.initializer.append(numpy_helper.from_array(np.ones(2**20, np.float32), "unused_big"))
    path = save(big, tmp_path, "m.onnx")
    result = subprocess.run([sys.executable, "-c", _TRUNCATED, str(path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stdout.strip() == "(1, 16, 8, 8)"
