"""Check gradient rules: the backward nodes run in onnxruntime against central finite differences
of the forward graph in float64 (onnx's reference evaluator), on tiny graphs built in the test."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fmonnx.stages.gradients.backward import build_backward
from fmonnx.stages.shapes import infer_types


def forward_model(nodes, inputs: dict[str, np.ndarray], target: str, initializers=None, opset=17, input_shapes=None):
    """A model whose graph inputs are ``inputs`` (float32 arrays, their shapes fixed unless ``input_shapes``
    declares some, e.g. ``{"x": [1, 2, "H", "W"]}`` for dynamic sizes) and output ``target``."""
    shapes = {name: list(value.shape) for name, value in inputs.items()} | dict(input_shapes or {})
    graph = helper.make_graph(
        nodes, "rule",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[name]) for name in inputs],
        [helper.make_tensor_value_info(target, TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def backward_values(model, inputs: dict[str, np.ndarray], target: str, seed: np.ndarray, wrt):
    """(score, {tensor: gradient}) from onnxruntime running the model with its backward nodes."""
    import onnxruntime as ort

    types = infer_types(model)
    backward = build_backward(model, types, target, "seed", wrt)
    full = onnx.ModelProto()
    full.CopyFrom(model)
    full.graph.input.append(helper.make_tensor_value_info("seed", TensorProto.FLOAT, list(seed.shape)))
    full.graph.node.extend(backward.nodes)
    for name in [backward.score, *backward.gradients.values()]:
        full.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [backward.score, *backward.gradients.values()]
    values = session.run(names, {**{k: v.astype(np.float32) for k, v in inputs.items()}, "seed": seed})
    return values[0], dict(zip(backward.gradients, values[1:])), backward


def numeric_gradients(model, inputs: dict[str, np.ndarray], target: str, seed: np.ndarray, wrt, step=1e-4):
    """Central finite differences of ``sum(target * seed)`` in float64, by the reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    double = onnx.ModelProto()
    double.CopyFrom(model)
    for tensor in double.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))
    for value in [*double.graph.input, *double.graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    evaluator = ReferenceEvaluator(double)
    feeds = {k: v.astype(np.float64) for k, v in inputs.items()}
    weights = seed.astype(np.float64)

    def score(feed):
        return float(np.sum(evaluator.run([target], feed)[0] * weights))

    gradients = {}
    for name in wrt:
        base = feeds[name]
        gradient = np.zeros_like(base)
        for index in np.ndindex(base.shape):
            plus, minus = base.copy(), base.copy()
            plus[index] += step
            minus[index] -= step
            gradient[index] = (score({**feeds, name: plus}) - score({**feeds, name: minus})) / (2 * step)
        gradients[name] = gradient
    return gradients


def check_gradients(nodes, inputs: dict[str, np.ndarray], target: str, initializers=None, opset=17,
                    wrt=None, rtol=1e-3, atol=1e-4, seed_values=None, step=1e-4, input_shapes=None):
    """Assert the backward nodes' gradients equal finite differences; returns them for more checks."""
    model = forward_model(nodes, inputs, target, initializers, opset, input_shapes)
    wrt = list(wrt or inputs)
    import onnxruntime as ort

    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [target], {k: v.astype(np.float32) for k, v in inputs.items()})[0]
    rng = np.random.default_rng(7)
    seed = (rng.standard_normal(out.shape) if seed_values is None else seed_values).astype(np.float32)
    _, got, backward = backward_values(model, inputs, target, seed, wrt)
    want = numeric_gradients(model, inputs, target, seed, wrt, step)
    for name in wrt:
        assert got[name].shape == want[name].shape, (name, got[name].shape, want[name].shape)
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)
    return got, backward
