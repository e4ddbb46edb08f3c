"""expose, layout and names: the graph-level stages, on models built here."""

import json

import numpy as np
import onnx
import pytest
from conftest import copy_model_nchw, dynamic_rgb_model, make_model, rgb_identity_model_nhwc
from onnx import TensorProto, helper

from fmonnx.errors import ModelError
from fmonnx.stages.expose import DEFAULT_OPS, expose_outputs, find_candidates
from fmonnx.stages.layout import channel_axes, detect_input_layout
from fmonnx.stages.names import LAYERS_KEY, name_tensors
from fmonnx.stages.shapes import infer_types


def plan(model, ops=DEFAULT_OPS, **kwargs):
    types = infer_types(model)
    return types, find_candidates(model, types, ops, **kwargs)


def test_candidates_in_graph_order_with_shapes():
    _, candidates = plan(copy_model_nchw())
    assert [(c.tensor, c.op) for c in candidates] == [("conv_out", "Conv"), ("relu_out", "Relu"), ("output", "MaxPool")]
    assert candidates[0].type.shape == (1, 2, 4, 6)
    assert candidates[2].type.shape == (1, 2, 2, 3)


def test_expose_keeps_original_outputs_and_never_mutates_input():
    model = copy_model_nchw()
    before = model.SerializeToString()
    _, candidates = plan(model)
    exposed = expose_outputs(model, candidates)
    assert model.SerializeToString() == before
    assert [o.name for o in exposed.graph.output] == ["output", "conv_out", "relu_out"]
    onnx.checker.check_model(exposed)


def test_skips_int_tensors_constants_inputs_and_non_4d():
    model = make_model(
        [
            helper.make_node(
                "Constant", [], ["const"], value=helper.make_tensor("v", TensorProto.FLOAT, [1, 1, 1, 1], [1])
            ),
            helper.make_node("Add", ["input", "const"], ["added"], name="add"),
            helper.make_node("Relu", ["added"], ["relu4d"], name="relu"),
            helper.make_node("Shape", ["relu4d"], ["shape"], name="shape"),
            helper.make_node("Flatten", ["relu4d"], ["flat"], name="flatten"),
            helper.make_node("Relu", ["flat"], ["output"], name="relu2d"),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 5])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 60])],
    )
    _, candidates = plan(model, all_spatial=True)
    assert [c.tensor for c in candidates] == ["added", "relu4d"]
    _, candidates = plan(model)
    assert [c.tensor for c in candidates] == ["relu4d"]


def test_no_spatial_tensors_names_the_ops_it_has():
    model = make_model(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Softmax", ["flat"], ["output"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 5])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 60])],
    )
    with pytest.raises(ModelError, match=r"it has: Flatten, Softmax.*--ops.*--all-spatial"):
        plan(model)


@pytest.mark.parametrize(
    "shape, axis, certain",
    [((1, 3, 224, 224), 1, True), ((1, 150, 150, 3), 3, True), (("N", 1, "h", "w"), 1, True),
     (("N", "h", "w", 4), 3, True), ((1, 3, 5, 3), 1, False)],
)
def test_input_layout_from_shape(shape, axis, certain):
    layout = detect_input_layout(shape)
    assert (layout.channel_axis, layout.certain) == (axis, certain)


def test_input_without_image_channels_is_refused():
    with pytest.raises(ModelError, match="1, 3 or 4"):
        detect_input_layout((1, 8, 32, 32))


def test_channel_axis_follows_transposes_not_sizes():
    model = rgb_identity_model_nhwc()
    types = infer_types(model)
    layouts = channel_axes(model, types, detect_input_layout(types["input"].shape))
    assert layouts["input"].channel_axis == 3
    assert layouts["nchw"].channel_axis == 1
    assert layouts["relu_out"].channel_axis == 1
    assert layouts["back"].channel_axis == 3
    assert layouts["output"].channel_axis == 3 and layouts["output"].certain


def test_dynamic_shapes_keep_symbols():
    types = infer_types(dynamic_rgb_model())
    assert types["conv_out"].shape[:2] == (1, 3)
    assert all(isinstance(d, str) or d is None for d in types["conv_out"].shape[2:])


def names_for(model):
    _, candidates = plan(model)
    return [(n.name, n.source_layer) for n in name_tensors(model, candidates)]


def test_keras_style_names():
    model = copy_model_nchw(names=("model/conv2d/BiasAdd", "model/conv2d/Relu", "model/max_pooling2d/MaxPool"),
                            producer="tf2onnx")
    assert names_for(model) == [("conv2d/Conv", "conv2d"), ("conv2d", "conv2d"), ("max_pooling2d", "max_pooling2d")]


def test_keras_nested_model_path():
    model = copy_model_nchw(names=("StatefulPartitionedCall/model/backbone/conv1/Conv2D",
                                   "model/backbone/conv1/Relu", "model/pool/MaxPool"), producer="tf2onnx")
    assert [n for n, _ in names_for(model)] == ["backbone/conv1/Conv", "backbone/conv1", "pool"]


def test_pytorch_module_paths():
    model = copy_model_nchw(names=("/layer2/layer2.0/downsample/downsample.0/Conv", "/layer2/layer2.0/relu/Relu",
                                   "/maxpool/MaxPool"), producer="pytorch")
    assert names_for(model) == [("layer2.0.downsample.0", "layer2.0.downsample.0"),
                                ("layer2.0.relu", "layer2.0.relu"), ("maxpool", "maxpool")]


def test_pytorch_dynamo_name_scopes():
    model = copy_model_nchw(names=("node_Conv_0", "node_relu_1", "node_max_pool2d"), producer="pytorch")
    scopes = ["['', 'conv1', 'convolution']", "['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']", "['', 'pool']"]
    for node, scope in zip(model.graph.node, scopes):
        entry = node.metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.name_scopes", scope
    assert [n for n, _ in names_for(model)] == ["conv1", "layer1.0.relu", "pool"]


def test_plain_node_names_and_duplicates_are_made_unique():
    model = copy_model_nchw(names=("same", "same", "same"))
    assert [n for n, _ in names_for(model)] == ["same/Conv", "same/Relu", "same"]
    nameless = copy_model_nchw(names=("", "", ""))
    assert [n for n, _ in names_for(nameless)] == ["conv_out", "relu_out", "output"]


def test_converter_metadata_wins_and_marks_layer_outputs():
    model = copy_model_nchw(names=("sequential_1/conv2d_1/convolution", "sequential_1/conv2d_1/Relu", "p"))
    entry = model.metadata_props.add()
    entry.key = LAYERS_KEY
    entry.value = json.dumps([{"layer": "conv2d", "class": "Conv2D", "output": "relu_out", "inner": ["conv_out"]}])
    _, candidates = plan(model)
    named = {n.candidate.tensor: n for n in name_tensors(model, candidates)}
    assert (named["relu_out"].name, named["relu_out"].layer_output) == ("conv2d", True)
    assert (named["conv_out"].name, named["conv_out"].layer_output) == ("conv2d/Conv", False)
    assert named["conv_out"].source_layer == "conv2d"


def test_skeleton_inference_needs_no_weight_bytes():
    model = copy_model_nchw()
    types = infer_types(model)
    assert types["w"].shape == (2, 3, 1, 1) and np.dtype("float32")


def test_converter_transposes_never_take_the_layer_name():
    model = make_model(
        [
            helper.make_node("Transpose", ["input"], ["t_in"], name="model/conv2d/BiasAdd__6", perm=[0, 3, 1, 2]),
            helper.make_node("Relu", ["t_in"], ["pooled"], name="model/pool/MaxPool"),
            helper.make_node("Transpose", ["pooled"], ["output"], name="model/pool/MaxPool__28", perm=[0, 2, 3, 1]),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 5, 6, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5, 6, 3])],
        producer="tf2onnx",
    )
    _, candidates = plan(model, all_spatial=True)
    named = [(n.name, n.candidate.op) for n in name_tensors(model, candidates)]
    assert named == [("conv2d", "Transpose"), ("pool", "Relu"), ("pool/Transpose", "Transpose")]
