"""Choose the intermediate tensors to show, and promote them to graph outputs.

Before::

    input -> Conv -> Relu -> MaxPool -> ... -> output

After (``expose_outputs(model, ["conv_out", "relu_out", "pool_out"])``)::

    input -> Conv -> Relu -> MaxPool -> ... -> output
              |       |        |
          conv_out relu_out pool_out     (extra graph outputs)

The original outputs stay first and unchanged; the input model is never mutated.

``exposed_suffix`` gives the same model serialized, without copying it:
protobuf parses concatenated messages as one message whose repeated fields
are appended, so the model file's bytes followed by a ModelProto that holds
only the extra graph outputs parse as the exposed model::

    [ model file bytes ][ ModelProto{graph{output: conv_out, relu_out, pool_out}} ]
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import onnx
from onnx import helper

from ..errors import ModelError
from .shapes import TensorType

__all__ = ["DEFAULT_OPS", "Candidate", "find_candidates", "expose_outputs", "exposed_suffix"]

log = logging.getLogger(__name__)

DEFAULT_OPS = ("Conv", "Relu", "MaxPool")


@dataclass(frozen=True)
class Candidate:
    """An intermediate tensor that can be shown: its name, the node that makes it, its type."""

    tensor: str
    op: str
    node_name: str
    node_index: int
    type: TensorType


def _is_spatial(tensor_type: TensorType | None) -> bool:
    return tensor_type is not None and tensor_type.is_float and tensor_type.rank == 4


def find_candidates(
    model: onnx.ModelProto,
    types: dict[str, TensorType],
    ops: tuple[str, ...] = DEFAULT_OPS,
    all_spatial: bool = False,
    extra_tensors: tuple[str, ...] = (),
) -> list[Candidate]:
    """Tensors to expose, in graph (topological) order.

    ``ops`` picks node types (may be empty); ``all_spatial``
    takes every float tensor of rank 4 instead; ``extra_tensors`` are always
    taken (names a converter recorded; the plan leaves out those shape inference
    proves are not 4-D). Graph inputs, initializers, Constant
    outputs, non-float and non-4-D tensors and duplicates are skipped.
    Raises ModelError when nothing is left.
    """
    graph = model.graph
    excluded = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    wanted_extra = set(extra_tensors)
    chosen: dict[str, Candidate] = {}
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            continue
        by_op = all_spatial or node.op_type in ops
        for output in node.output:
            if not output or output in excluded or output in chosen:
                continue
            if output in wanted_extra or (by_op and _is_spatial(types.get(output))):
                tensor_type = types.get(output) or TensorType(onnx.TensorProto.FLOAT, None)
                chosen[output] = Candidate(output, node.op_type, node.name, index, tensor_type)
    if not chosen:
        present = Counter(node.op_type for node in graph.node)
        listing = ", ".join(op for op, _ in present.most_common(12))
        raise ModelError(
            f"the model has no 4-D {'/'.join(ops or DEFAULT_OPS)} tensors to show (it has: {listing}); "
            f"try --ops with one of those, or --all-spatial"
        )
    return list(chosen.values())


def expose_outputs(model: onnx.ModelProto, candidates: list[Candidate]) -> onnx.ModelProto:
    """Return a copy of ``model`` whose graph also outputs the candidates' tensors.

    The same mechanism as the render path: the model's bytes followed by ``exposed_suffix``.
    """
    exposed = onnx.ModelProto()
    exposed.ParseFromString(model.SerializeToString() + exposed_suffix(model, candidates))
    return exposed


def exposed_suffix(model: onnx.ModelProto, candidates: list[Candidate]) -> bytes:
    """Bytes that, appended to the serialized ``model``, add the candidates' tensors as graph outputs.

    Costs a file copy instead of a copy and a serialization of the whole model
    (0.3 s and two model sizes of memory on a ResNet-50). Tensors that are
    already outputs are not added twice. Only the element type and rank are
    declared (dims left open), so onnxruntime reports the real shapes and
    never rejects a run over an inferred size.
    """
    extra = onnx.ModelProto()
    present = {output.name for output in model.graph.output}
    for candidate in candidates:
        if candidate.tensor not in present:
            rank = candidate.type.rank
            shape = None if rank is None else [None] * rank
            extra.graph.output.append(helper.make_tensor_value_info(candidate.tensor, candidate.type.elem_type, shape))
            present.add(candidate.tensor)
    log.debug("exposing %d tensors", len(extra.graph.output))
    return extra.SerializeToString()
