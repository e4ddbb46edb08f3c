"""The naming rules of stages/naming/ on ONNX graphs built here, setting the producer_name and the metadata
each exporter writes: no torch or TensorFlow needed. (The rules held against the frameworks themselves:
tests/test_names_torch.py, tests/test_names_dynamo_calls.py, tests/test_shared_module_names.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fmonnx.stages.expose import find_candidates
from fmonnx.stages.metadata import LAYERS_KEY
from fmonnx.stages.names import call_name, name_tensors, split_call_name
from fmonnx.stages.shapes import infer_types
from tests.conftest import copy_model_nchw, save

SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # what torch's dynamo exporter writes on each node


def _named(model: onnx.ModelProto):
    return name_tensors(model, find_candidates(model, infer_types(model)))


def _names(model) -> list[tuple[str, bool]]:
    return [(named.name, named.folded_batchnorm) for named in _named(model)]


def _chain_model(names: list[str], weights: dict[int, str], scopes: list[str] | None = None,
                 biases: dict[int, str] | None = None):
    """input (1,2,4,4) -> Conv/Relu nodes in ``names`` order (``/conv/Conv`` is a Conv) -> output;
    ``weights`` and ``biases`` name the Convs' initializers by node index (default: folded, no bias)."""
    nodes, initializers, previous = [], [], "input"
    for index, name in enumerate(names):
        output = "output" if index == len(names) - 1 else f"t{index}"
        if name.endswith("Conv"):
            weight = weights.get(index, f"onnx::Conv_{index}")
            initializers.append(numpy_helper.from_array(np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1), weight))
            inputs = [previous, weight]
            if index in (biases or {}):
                inputs.append(biases[index])
                initializers.append(numpy_helper.from_array(np.zeros(2, np.float32), biases[index]))
            nodes.append(helper.make_node("Conv", inputs, [output], name=name))
        else:
            nodes.append(helper.make_node("Relu", [previous], [output], name=name))
        if scopes:
            entry = nodes[-1].metadata_props.add()
            entry.key, entry.value = SCOPES_KEY, scopes[index]
            entry = nodes[-1].metadata_props.add()
            entry.key, entry.value = "pkg.torch.onnx.fx_node", f"%node{index}"
        previous = output
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "chain", [value("input", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [value("output", TensorProto.FLOAT, [1, 2, 4, 4])], initializers)
    return helper.make_model(graph, producer_name="pytorch", opset_imports=[helper.make_opsetid("", 17)])


def _scoped_chain(scopes: list[list[str]], classes: list[list[str]], weights: dict[int, str]):
    """input -> one Relu (or a Conv where ``weights`` names its weight) per node, with dynamo records."""
    nodes, initializers, previous = [], [], "input"
    for index, (scope, hierarchy) in enumerate(zip(scopes, classes)):
        output = "output" if index == len(scopes) - 1 else f"t{index}"
        if index in weights:
            initializers.append(numpy_helper.from_array(np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1),
                                                        weights[index]))
            nodes.append(helper.make_node("Conv", [previous, weights[index]], [output], name=f"node_{index}"))
        else:
            nodes.append(helper.make_node("Relu", [previous], [output], name=f"node_{index}"))
        for key, value in ((SCOPES_KEY, ["", *scope, f"op_{index}"]),
                           ("pkg.torch.onnx.class_hierarchy", ["Net", *hierarchy, "aten.op"]),
                           ("pkg.torch.onnx.fx_node", f"%op_{index}")):
            entry = nodes[-1].metadata_props.add()
            entry.key, entry.value = key, str(value)
        previous = output
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "chain", [value("input", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [value("output", TensorProto.FLOAT, [1, 2, 4, 4])], initializers)
    return helper.make_model(graph, producer_name="pytorch", opset_imports=[helper.make_opsetid("", 17)])


# -- the rules, moved here from the torch-gated files --------------------------------------------------------

def test_call_names_round_trip():
    assert [call_name("layer1.0.relu", n) for n in (1, 2, 3)] == ["layer1.0.relu", "layer1.0.relu#2", "layer1.0.relu#3"]
    assert split_call_name("layer1.0.relu#2") == ("layer1.0.relu", 2)
    assert split_call_name("features.0") == ("features.0", 1)


def test_torchscript_call_suffix_or_real_module():
    """``relu_1`` after ``relu`` is relu's second call; ``conv_1`` owning ``conv_1.weight`` is a module of its own."""
    model = _chain_model(["/conv/Conv", "/relu/Relu", "/conv_1/Conv", "/relu_1/Relu"],
                         {0: "conv.weight", 2: "conv_1.weight"})
    assert _names(model) == [("conv", False), ("relu", False), ("conv_1", False), ("relu#2", False)]


def test_folded_batchnorm_signal():
    """A fold computes the Conv's weight and bias; a weight computed alone (weight_norm) is no fold."""
    folded = _chain_model(["/conv/Conv", "/relu/Relu"], {}, biases={0: "onnx::Conv_7"})
    assert _names(folded) == [("conv", True), ("relu", False)]
    weight_only = _chain_model(["/conv/Conv", "/relu/Relu"], {}, biases={0: "conv.bias"})
    assert _names(weight_only) == [("conv", False), ("relu", False)]
    assert _names(_chain_model(["/conv/Conv", "/relu/Relu"], {})) == [("conv", False), ("relu", False)]


def test_dynamo_calls_are_runs_of_one_scope():
    """Nothing in the dynamo export numbers calls: a run of nodes in one module is one call."""
    scopes = ["['', 'relu', 'relu']", "['', 'conv', 'conv2d']", "['', 'relu', 'relu_1']", "['', 'pool', 'relu_2']"]
    model = _chain_model(["node_relu", "node_Conv", "node_relu_1", "node_relu_2"], {1: "conv.weight"}, scopes)
    assert _names(model) == [("relu", False), ("conv", False), ("relu#2", False), ("pool", False)]


def test_suffixed_scope_is_a_later_call_unless_a_module_of_its_own(tmp_path):
    """A scope ``x_<n>`` of the same class after ``x``, with no parameter under it, is call n+1 of ``x``
    (its children too); ``conv_1`` owning ``conv_1.weight`` and ``relu_1`` of another class are modules."""
    import fmonnx

    model = _scoped_chain(
        [["blk", "blk.act"], ["blk_1", "blk_1.act"], ["conv"], ["conv_1"], ["relu"], ["relu_1"]],
        [["Blk", "ReLU"], ["Blk", "ReLU"], ["Conv2d"], ["Conv2d"], ["ReLU"], ["LeakyReLU"]],
        {2: "conv.weight", 3: "conv_1.weight"},
    )
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    rows = fmonnx.list_layers(path, fmonnx.RenderOptions(all_spatial=True))
    assert [row["name"] for row in rows] == ["blk.act", "blk.act#2", "conv", "conv_1", "relu", "relu_1"]
    assert [row["also_output_of"] for row in rows[:2]] == [["blk"], ["blk#2"]]


# -- named_by: which producer's rule named each tensor -------------------------------------------------------

def _scoped(model: onnx.ModelProto, scopes: list[str]) -> onnx.ModelProto:
    """``model`` with the dynamo exporter's records on its nodes: ``['', <scope>, <fx node>]``."""
    for node, scope in zip(model.graph.node, scopes):
        for key, value in ((SCOPES_KEY, str(["", scope, node.name])), ("pkg.torch.onnx.fx_node", f"%{node.name}")):
            entry = node.metadata_props.add()
            entry.key, entry.value = key, value
    return model


def _recorded(model: onnx.ModelProto, layers: list[dict]) -> onnx.ModelProto:
    entry = model.metadata_props.add()
    entry.key, entry.value = LAYERS_KEY, json.dumps(layers)
    return model


PRODUCERS = {
    "node name": lambda: copy_model_nchw(),
    "tf2onnx": lambda: copy_model_nchw(("model/conv2d/Conv2D", "model/relu/Relu", "model/pool/MaxPool"), "tf2onnx"),
    "torchscript scopes": lambda: copy_model_nchw(("/conv/Conv", "/relu/Relu", "/pool/MaxPool"), "pytorch"),
    "dynamo name scopes": lambda: _scoped(copy_model_nchw(("node_conv", "node_relu", "node_pool"), "pytorch"),
                                          ["conv", "relu", "pool"]),
    "fmonnx metadata": lambda: _recorded(copy_model_nchw(("a", "b", "c")), [
        {"layer": "conv", "output": "conv_out", "class": "Conv2D"},
        {"layer": "relu", "output": "relu_out"},
        {"layer": "pool", "output": "output"},
    ]),
}
LAYERS = {"node name": ["conv", "relu", "pool"], "tf2onnx": ["conv2d", "relu", "pool"]}


@pytest.mark.parametrize("named_by", sorted(PRODUCERS))
def test_named_by_says_which_producer_named_each_tensor(named_by):
    named = _named(PRODUCERS[named_by]())
    assert [tensor.named_by for tensor in named] == [named_by] * 3
    assert [tensor.name for tensor in named] == LAYERS.get(named_by, ["conv", "relu", "pool"])


def test_named_by_values_are_the_naming_modules_constants():
    from fmonnx.stages import naming

    assert set(naming.NAMED_BY) == set(PRODUCERS)
    assert naming.PRODUCERS[0] is naming.recorded and naming.PRODUCERS[-1] is naming.fallback


def test_trust_order_per_tensor():
    """A recorded tensor takes its record's name, the others the exporter's scopes; a TorchScript node in no
    module (the top-level forward's own op) keeps its node name, and says so."""
    model = copy_model_nchw(("/conv/Conv", "/relu/Relu", "MaxPool_3"), "pytorch")
    named = _named(_recorded(model, [{"layer": "stem", "output": "conv_out", "class": "Conv2d"}]))
    assert [(t.name, t.named_by) for t in named] == [
        ("stem", "fmonnx metadata"), ("relu/Relu", "torchscript scopes"), ("MaxPool_3", "node name")
    ]
    assert named[0].source_class == "Conv2d" and named[0].layer_output is True
    assert named[1].layer_output is False  # fmonnx convert records every module output: relu's was not


def test_exporter_literals_live_in_one_naming_module():
    """Each exporter-private literal is one named constant in one module (the others import it)."""
    from fmonnx.stages.naming import dynamo, tf2onnx, torchscript

    owners = {
        SCOPES_KEY: (dynamo, "SCOPES_KEY"),
        "FuseBatchNormIntoConv": (dynamo, "FUSE_RULE"),
        "pkg.onnxscript.rewriter.rule_name": (dynamo, "RULES_KEY"),
        "onnx::": (torchscript, "FOLDED_PREFIX"),
        "StatefulPartitionedCall": (tf2onnx, "WRAPPERS"),
    }
    stages = Path(dynamo.__file__).resolve().parent.parent
    for literal, (module, constant) in owners.items():
        assert literal in str(getattr(module, constant))
        holders = sorted(str(path.relative_to(stages)) for path in stages.rglob("*.py")
                         if f'"{literal}' in path.read_text())
        assert holders == [str(Path(module.__file__).resolve().relative_to(stages))], (literal, holders)


# -- named_by reaches the manifest and `fmonnx layers --json` ------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmonnx", *args], capture_output=True, text=True, timeout=300)


def test_manifest_and_layers_json_carry_named_by(tmp_path, write_image):
    path = save(PRODUCERS["tf2onnx"](), tmp_path, "tf.onnx")
    photo = write_image(np.random.default_rng(0).integers(0, 256, (4, 6, 3)), "photo.png")
    out = tmp_path / "maps"
    done = _cli("render", str(path), str(photo), "--out", str(out), "--no-report")
    assert done.returncode == 0, done.stderr
    layers = json.loads((out / "manifest.json").read_text())["images"][0]["layers"]
    assert [(layer["name"], layer["named_by"]) for layer in layers] == [
        ("conv2d", "tf2onnx"), ("relu", "tf2onnx"), ("pool", "tf2onnx")
    ]
    listed = _cli("layers", str(path), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(row["name"], row["named_by"]) for row in json.loads(listed.stdout)] == [
        ("conv2d", "tf2onnx"), ("relu", "tf2onnx"), ("pool", "tf2onnx")
    ]
