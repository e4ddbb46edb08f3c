"""Where a target's score is read: the model output it names, or the logits before a final Softmax.

Grad-CAM takes a class score before the Softmax (Selvaraju et al., 2017, section 3): a
softmax probability also rises when the other classes fall, so its gradient mixes classes.
``score_tensor`` walks back from an output through the ops that only move values (Identity,
Reshape, Flatten, Squeeze, Unsqueeze) to a Softmax and takes its input, which has the same
elements in the same order; anything else is scored as it is.

``top1_seed`` makes the default classifier target in the graph (one-hot of the arg max),
so the forward and the backward pass run in one session run.
"""

from __future__ import annotations

import numpy as np
import onnx

from .gradients.emit import Emitter

__all__ = ["score_tensor", "top1_seed"]

_MOVES_VALUES = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})
_PROBABILITIES = frozenset({"Softmax", "LogSoftmax"})


def score_tensor(model: onnx.ModelProto, output: str) -> tuple[str, bool]:
    """``(tensor, before_softmax)``: the tensor a score on ``output`` is read from, and whether it is
    a final Softmax's input. Its elements correspond one to one, in order, to the output's."""
    producer = {out: node for node in model.graph.node for out in node.output if out}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    tensor = output
    while (node := producer.get(tensor)) is not None:
        if node.op_type in _PROBABILITIES:
            return node.input[0], True
        if node.op_type not in _MOVES_VALUES or consumers.get(node.input[0], 0) != 1:
            break
        tensor = node.input[0]
    return output, False


def top1_seed(emit: Emitter, logits: str, flag: str) -> str:
    """A seed that is one at the arg max of ``logits`` along its last axis and zero elsewhere,
    times the scalar ``flag`` (fed: 1 to use it, 0 to leave the score to a fed seed)."""
    winner = emit.op("ArgMax", [logits], hint="top1", axis=-1, keepdims=1)
    shape = emit.shape(logits)
    classes = emit.op("Gather", [shape, emit.const(np.asarray(-1, np.int64))], hint="classes")
    positions = emit.op("Range", [emit.const(np.asarray(0, np.int64)), classes, emit.const(np.asarray(1, np.int64))],
                        hint="positions")
    onehot = emit.op("Cast", [emit.op("Equal", [positions, winner])], hint="onehot", to=onnx.TensorProto.FLOAT)
    return emit.op("Mul", [onehot, flag], hint="top1_seed")
