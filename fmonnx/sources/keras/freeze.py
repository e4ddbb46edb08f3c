"""Freeze a traced Keras function into one self-contained TensorFlow GraphDef for tf2onnx.

``freeze`` turns the concrete function of ``trace.traced_function`` into a
GraphDef whose only inputs are the model's inputs:

- variables become Const nodes (``convert_variables_to_constants_v2``, as
  tf2onnx itself does);
- captured plain tensors become Const nodes too. Keras 3's Normalization
  keeps its mean and variance as tensors, not variables; the concrete
  function lists them among its inputs, and tf2onnx's ``from_function``
  made every one of them a graph input that nothing feeds. Here the graph
  inputs are the signature's, and nothing else;
- nested functions that Keras compiles with XLA (a Conv2D with
  ``groups > 1``, in Keras 3 and tf_keras) lose the attributes that forbid
  inlining, so that grappler's function pass (run by tf2onnx) inlines them::

    Before:  conv/StatefulPartitionedCall [_XlaMustCompile, _noinline]
               -> f = {Conv2D} in the function library      (tf2onnx: "No Op registered")
    After:   conv/StatefulPartitionedCall -> inlined by grappler as conv/StatefulPartitionedCall/Conv2D

XLA compilation is a speed hint for TensorFlow; the ops inside are the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = ["FrozenGraph", "freeze", "allow_inlining", "NO_INLINE_ATTRS", "CALL_OPS"]

logger = logging.getLogger(__name__)

# Attributes by which TensorFlow keeps a function call out of grappler's inlining.
NO_INLINE_ATTRS = ("_XlaMustCompile", "_noinline", "_XlaCompile", "_XlaScope", "_XlaInternalScope")
CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})


@dataclass
class FrozenGraph:
    """A frozen graph and the names tf2onnx needs.

    ``inputs`` and ``outputs`` are tensor names in ``graph_def``
    (``input:0``), in the order of the function's signature and outputs;
    ``renames`` maps each input tensor to its signature name (``input``).
    ``inlined`` counts the function calls made inlinable.
    """

    graph_def: Any
    inputs: list[str]
    outputs: list[str]
    renames: dict[str, str]
    inlined: int


def allow_inlining(graph_def) -> int:
    """Remove NO_INLINE_ATTRS from call nodes and library functions of ``graph_def`` (in place).

    Returns how many call nodes (in the graph or in library functions) had them.
    """
    changed = 0
    nodes = list(graph_def.node) + [node for function in graph_def.library.function for node in function.node_def]
    for node in nodes:
        if node.op in CALL_OPS and any(name in node.attr for name in NO_INLINE_ATTRS):
            changed += 1
        for name in NO_INLINE_ATTRS:
            if name in node.attr:
                del node.attr[name]
    for function in graph_def.library.function:
        for name in NO_INLINE_ATTRS:
            if name in function.attr:
                del function.attr[name]
    return changed


def freeze(tf: ModuleType, concrete, signature: list) -> FrozenGraph:
    """Freeze ``concrete`` (a ConcreteFunction traced with ``signature``) into a FrozenGraph.

    Only the first ``len(signature)`` inputs of ``concrete`` are graph
    inputs; the rest are captures, which freezing turns into constants.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
    graph_def = frozen.graph.as_graph_def(add_shapes=True)
    inlined = allow_inlining(graph_def)
    if inlined:
        logger.info("%d XLA-compiled nested functions (e.g. grouped convolutions) will be inlined", inlined)
    arguments = [t for t in frozen.inputs if t.dtype != tf.dtypes.resource][: len(signature)]
    inputs = [t.name for t in arguments]
    outputs = [t.name for t in frozen.outputs]
    renames = {tensor: spec.name for tensor, spec in zip(inputs, signature) if spec.name and tensor != spec.name}
    return FrozenGraph(graph_def, inputs, outputs, renames, inlined)
