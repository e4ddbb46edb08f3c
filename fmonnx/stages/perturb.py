"""The gradient-free methods that run the model again: ScoreCAM and AblationCAM.

ScoreCAM (Wang et al., 2020) feeds the image masked by each channel of the layer
(upsampled, scaled to 0..1) and weighs the channel by the target's score on it; the scores
go through a softmax over the channels, as pytorch-grad-cam does. AblationCAM (Desai and
Ramaswamy, 2020) sets one channel of the layer to zero, runs only the part of the graph
after the layer, and weighs the channel by how much the score drops: (s - s_k) / s.

Both score with the target's seed, fixed by the unmasked run: ``sum(scored * seed)``.
Runs are batched when the model takes any batch size, one by one otherwise.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from ..errors import FmonnxError, ModelError
from . import cam as cams
from .run import create_session, run_session

__all__ = ["score_cam_weights", "ablation_cam_weights", "BATCH"]

log = logging.getLogger(__name__)

BATCH = 16  # masked or ablated copies per run, when the model takes any batch size


def _scores(run, inputs: np.ndarray, seed: np.ndarray, batch: int) -> np.ndarray:
    """``sum(scored * seed)`` for each copy along the first axis of ``inputs``."""
    scores = np.empty(inputs.shape[0], np.float64)
    for start in range(0, inputs.shape[0], batch):
        scored = run(inputs[start:start + batch])
        scores[start:start + batch] = (scored.astype(np.float64) * seed).reshape(scored.shape[0], -1).sum(axis=1)
    return scores


def _batched(run, inputs: np.ndarray, seed: np.ndarray, free_batch: bool) -> np.ndarray:
    """Scores in batches when the first axis is free; one by one when a batch fails or is not allowed."""
    if free_batch and inputs.shape[0] > 1:
        try:
            return _scores(run, inputs, seed, BATCH)
        except ModelError:
            log.info("the model did not run a batch of copies; running them one by one")
    return _scores(run, inputs, seed, 1)


def score_cam_weights(explainer, layer, activation: np.ndarray, tensor: np.ndarray, seed: np.ndarray,
                      hw: tuple[int, int]) -> np.ndarray:
    """(C,) ScoreCAM weights of ``activation`` (C, H, W) for the image ``tensor`` (the model input)."""
    plan = explainer.plan
    masks = cams.score_cam_masks(activation, hw)  # (C, H, W) in 0..1
    channel_axis = plan.input_layout.channel_axis
    masks = np.expand_dims(masks, channel_axis)  # (C, 1, H, W) or (C, H, W, 1): one copy per channel
    inputs = (tensor * masks).astype(tensor.dtype)
    scored = explainer.graph.scored

    def run(batch: np.ndarray) -> np.ndarray:
        return run_session(explainer._session, {plan.input.name: batch}, [scored])[scored]

    free_batch = not isinstance(plan.input.shape[0], int)
    return cams.score_cam_weights(_batched(run, inputs, seed, free_batch)).astype(np.float32)


def _after_layer(model: onnx.ModelProto, layer: str, scored: str) -> tuple[list[onnx.NodeProto], list[str]]:
    """The nodes that compute ``scored`` from ``layer``, and the other tensors they read that are made
    before it (a residual branch): those are fed from a forward run."""
    ancestors = {scored}
    needed = []
    for node in reversed(model.graph.node):
        if any(out in ancestors for out in node.output) and layer not in node.output:
            needed.append(node)
            ancestors.update(name for name in node.input if name)
    needed.reverse()
    downstream = {layer}
    after = []
    for node in needed:
        if any(name in downstream for name in node.input):
            downstream.update(node.output)
            after.append(node)
    made = {out for node in after for out in node.output}
    constants = {tensor.name for tensor in model.graph.initializer}
    constant_nodes = [node for node in needed if node.op_type == "Constant"]
    constants |= {out for node in constant_nodes for out in node.output}
    boundary = sorted({name for node in after for name in node.input
                       if name and name not in made and name != layer and name not in constants})
    return constant_nodes + after, boundary


def ablation_cam_weights(explainer, layer, activation: np.ndarray, tensor: np.ndarray,
                         seed: np.ndarray) -> np.ndarray:
    """(C,) AblationCAM weights: each channel of the layer zeroed in turn, the rest of the graph rerun."""
    plan = explainer.plan
    name = layer.named.candidate.tensor
    scored = explainer.graph.scored
    model = onnx.load(str(plan.loaded.path))
    if name not in {out for node in model.graph.node for out in node.output}:
        raise FmonnxError(f"ablationcam needs a layer computed by the model itself; {layer.named.name!r} is drawn by "
                          "fmonnx from a token sequence: choose another --layer or --method")
    nodes, boundary = _after_layer(model, name, scored)
    # a forward run gives the layer and the tensors the rest reads besides it
    extra = onnx.ModelProto()
    for tensor_name in [name, *boundary]:
        extra.graph.output.append(helper.make_tensor_value_info(tensor_name, onnx.TensorProto.FLOAT, None))
    options = explainer.options
    loaded = plan.loaded
    forward = create_session(loaded.path, options.provider, loaded.path.parent, loaded.external_data,
                             options.threads, append=extra.SerializeToString(), optimization=options.optimization)
    values = run_session(forward, {plan.input.name: tensor}, [name, *boundary])
    del forward
    used = {value for node in nodes for value in node.input}
    graph = helper.make_graph(
        nodes, "after_layer",
        [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in [name, *boundary]],
        [helper.make_tensor_value_info(scored, onnx.TensorProto.FLOAT, None)],
        initializer=[tensor for tensor in model.graph.initializer if tensor.name in used],
    )
    after = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    del model
    session = create_session(after, options.provider, threads=options.threads, optimization=options.optimization)
    raw = values[name]  # the layer in its own layout, batch 1
    channel_axis = layer.layout.channel_axis
    copies = np.repeat(raw, activation.shape[0], axis=0)
    for channel in range(activation.shape[0]):
        index = [channel, slice(None), slice(None), slice(None)]
        index[channel_axis] = channel
        copies[tuple(index)] = 0.0
    fixed = {t: values[t] for t in boundary}

    def run(batch: np.ndarray) -> np.ndarray:
        feed = {name: batch, **{t: np.repeat(v, batch.shape[0], axis=0) if v.ndim and v.shape[0] == 1 else v
                               for t, v in fixed.items()}}
        return run_session(session, feed, [scored])[scored]

    score = float(np.sum(run(raw).astype(np.float64) * seed))
    ablated = _batched(run, copies, seed, True)
    return cams.ablation_weights(score, ablated).astype(np.float32)
