"""Name the tensors of a tf2onnx graph after the Keras layers that made them.

Three passes over a converted ModelProto, none of which mutates its input
(each returns a new model, built on ``rename_tensors``):

``name_outputs`` gives graph outputs the names chosen by the converter::

    Before:  Conv -> Relu -> Transpose -> [graph output "Identity_3:0"]
    After:   Conv -> Relu -> Transpose -> [graph output "conv2d"]

``name_inner_tensors`` finds (with ``inner_tensors``), among the nodes tagged with a layer's name-scope
marker (``.../fmonnxL3/...``, see ``keras_trace``), the convolution stages
that are not the layer's output itself: the pre-activation Conv of a Conv2D
with an activation, the depthwise stage of a SeparableConv2D::

    [Conv .../fmonnxL3/convolution] -> [Relu .../fmonnxL3/Relu] -> Transpose -> "conv2d"
     inner: ".../fmonnxL3/convolution:0", to be named "conv2d/convolution"
     (the Relu's output is "conv2d" in another layout, so it is not inner)

and names them after the layer. ``strip_markers`` then removes the markers from all other names, so that
the graph reads like a plain tf2onnx conversion.

Elementwise steps (the scale of a BatchNormalization, a bias Add) and pure
rearrangements (Transpose, Reshape) are not inner tensors.
"""

from __future__ import annotations

import logging
import re
from collections import Counter

import onnx

__all__ = [
    "rename_tensors",
    "name_outputs",
    "inner_tensors",
    "name_inner_tensors",
    "strip_markers",
    "tensor_names",
    "tensor_ranks",
    "free_name",
    "CONV_OPS",
    "LAYOUT_OPS",
]

logger = logging.getLogger(__name__)

# Ops whose output is a stage of a layer worth seeing on its own.
CONV_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"})
# Ops that move data without computing: their output is the same activation as their input.
LAYOUT_OPS = frozenset({"Transpose", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast"})


def tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name used in ``graph`` (inputs, outputs, initializers, node inputs/outputs)."""
    names = {v.name for v in graph.input} | {v.name for v in graph.output}
    names |= {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(n for n in node.input if n)
        names.update(n for n in node.output if n)
    return names


def _rename_graph(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    for collection in (graph.input, graph.output, graph.value_info):
        for value in collection:
            value.name = mapping.get(value.name, value.name)
    for tensor in graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
        for attribute in node.attribute:
            # Subgraphs (If/Loop bodies) may read outer tensors by name.
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename_graph(attribute.g, mapping)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    _rename_graph(sub, mapping)


def rename_tensors(model: onnx.ModelProto, mapping: dict[str, str]) -> onnx.ModelProto:
    """A copy of ``model`` with tensors renamed by ``mapping`` (old name -> new name).

    Raises ValueError when a new name is already used by another tensor.
    """
    existing = tensor_names(model.graph)
    clashes = sorted(new for old, new in mapping.items() if new != old and new in existing - set(mapping))
    if clashes:
        raise ValueError(f"tensor names already in use: {clashes[:5]}")
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    _rename_graph(renamed.graph, mapping)
    return renamed


def free_name(wanted: str, taken: set[str]) -> str:
    """``wanted``, or ``wanted_1``, ``wanted_2``... whichever is not in ``taken``; adds it to ``taken``."""
    name, n = wanted, 1
    while name in taken:
        name, n = f"{wanted}_{n}", n + 1
    taken.add(name)
    return name


def name_outputs(model: onnx.ModelProto, old: list[str], wanted: list[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` whose graph outputs ``old`` are named ``wanted`` and come in that order.

    A wanted name already used by another tensor gets a ``_N`` suffix.
    Returns the model and the mapping old name -> new name.
    """
    present = [o.name for o in model.graph.output]
    if sorted(present) != sorted(old):
        raise ValueError(f"graph outputs {present[:5]} are not the expected {old[:5]}")
    taken = tensor_names(model.graph) - set(old)
    mapping = {name: free_name(new, taken) for name, new in zip(old, wanted)}
    renamed = rename_tensors(model, mapping)
    order = {mapping[name]: i for i, name in enumerate(old)}
    outputs = sorted(renamed.graph.output, key=lambda value: order[value.name])
    del renamed.graph.output[:]
    renamed.graph.output.extend(outputs)
    return renamed, mapping


def tensor_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every tensor whose shape ONNX shape inference knows."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - without shapes, inner tensors are only left out
        logger.warning("shape inference failed (%s); inner tensors are left out", exc)
        return {}
    graph = inferred.graph
    return {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in list(graph.value_info) + list(graph.output) + list(graph.input)
        if value.type.tensor_type.HasField("shape")
    }


def _aliases(output: str, producer: dict[str, onnx.NodeProto]) -> set[str]:
    """``output`` and the tensors it is a rearrangement of (back through LAYOUT_OPS)."""
    found = {output}
    node = producer.get(output)
    while node is not None and node.op_type in LAYOUT_OPS and node.input:
        found.add(node.input[0])
        node = producer.get(node.input[0])
    return found


def inner_tensors(
    graph: onnx.GraphProto, markers: dict[str, str], outputs: dict[str, str], ranks: dict[str, int]
) -> dict[str, list[tuple[str, str]]]:
    """For each layer, the 4-D convolution stages inside it that are not its output.

    ``markers[path]`` is the layer's name-scope marker, ``outputs[path]`` the
    tensor holding its output, ``ranks`` the known rank of tensors (from
    shape inference). Returns ``{path: [(tensor, readable name)]}`` in graph
    order; the readable name is the path and the node's name inside the layer
    (``sep_c/separable_conv2d/depthwise``).
    """
    producer = {out: node for node in graph.node for out in node.output if out}
    by_marker = {f"/{marker}/": path for path, marker in markers.items()}
    found: dict[str, list[tuple[str, str]]] = {path: [] for path in markers}
    for node in graph.node:
        if node.op_type not in CONV_OPS:
            continue
        name = "/" + node.name
        key, path = next(((k, p) for k, p in by_marker.items() if k in name), (None, None))
        if path is None:
            continue
        aliases = _aliases(outputs[path], producer)
        stage = name.split(key, 1)[1]
        for index, tensor in enumerate(node.output):
            if tensor and tensor not in aliases and ranks.get(tensor) == 4:
                found[path].append((tensor, f"{path}/{stage}" + (f":{index}" if index else "")))
    return found


def name_inner_tensors(
    model: onnx.ModelProto, markers: dict[str, str], outputs: dict[str, str]
) -> tuple[onnx.ModelProto, dict[str, list[str]]]:
    """Find each layer's inner tensors (``inner_tensors``) and name them after the layer.

    Returns a copy of ``model`` and ``{path: [inner tensor names]}``.
    """
    found = inner_tensors(model.graph, markers, outputs, tensor_ranks(model))
    taken = tensor_names(model.graph)
    mapping = {tensor: free_name(wanted, taken) for pairs in found.values() for tensor, wanted in pairs}
    names = {path: [mapping[tensor] for tensor, _ in pairs] for path, pairs in found.items()}
    return rename_tensors(model, mapping), names


def strip_markers(model: onnx.ModelProto, pattern: str) -> onnx.ModelProto:
    """A copy of ``model`` without the name-scope markers matching ``pattern`` in its names.

    Before: node ``model/conv2d/fmonnxL0/Conv2D``, tensor ``model/conv2d/fmonnxL0/Conv2D:0``
    After:  node ``model/conv2d/Conv2D``, tensor ``model/conv2d/Conv2D:0``
    A tensor keeps its name when the stripped one is already in use.
    """
    regex = re.compile(pattern)
    names = tensor_names(model.graph)
    wanted: dict[str, str] = {n: regex.sub("", n) for n in names if regex.search(n)}
    counts = Counter(wanted.values())
    mapping = {old: new for old, new in wanted.items() if counts[new] == 1 and new not in names}
    stripped = rename_tensors(model, mapping)
    node_names = {node.name for node in stripped.graph.node}
    for node in stripped.graph.node:
        new = regex.sub("", node.name)
        if new != node.name and new not in node_names:
            node_names.add(new)
            node.name = new
    return stripped
