"""Run in pieces ("passes" in the manifest) when all exposed tensors at once would not fit a memory bound.

One run keeps every exposed tensor alive until it ends: a ResNet-50's
Conv/Relu/MaxPool tensors hold 84 MB at 224 x 224 but 8.4 GB at 2048 x 2048.
When they would pass the bound, the graph is cut into pieces of consecutive
nodes (graph order is topological), run one after the other. Each piece
exposes only its own tensors and hands the tensors later pieces read (the
frontier) on to them as inputs, so every node still runs once and a piece's
session holds only its own weights.

Before (one run)::

    input -> [conv1 relu maxpool layer1 ... layer4] -> 103 tensors at once

After (three passes)::

    input     -> [conv1 relu maxpool] -> 3 tensors, hands on maxpool
    maxpool   -> [layer1 layer2]      -> 48 tensors, hands on layer2.3.relu
    layer2... -> [layer3 layer4]      -> 52 tensors

``plan_passes`` is pure (names and byte sizes in, pieces out);
``piece_model`` builds a piece's ModelProto, ``write_pieces`` writes them all
to files (so no weights stay in Python), ``run_pieces`` runs them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .run import run_session
from .shapes import TensorType

__all__ = [
    "MIB",
    "BASE_MEMORY",
    "INTERPRETER_MEMORY",
    "NodeSketch",
    "Piece",
    "tensor_bytes",
    "memory_bound",
    "available_bytes",
    "release_memory",
    "sketch_graph",
    "plan_passes",
    "piece_model",
    "write_pieces",
    "run_pieces",
]

log = logging.getLogger(__name__)

MIB = 2**20
BASE_MEMORY = 300 * MIB  # the bound's allowance for Python, numpy, onnxruntime, Pillow and their buffers
INTERPRETER_MEMORY = 128 * MIB  # what they take in fact (measured: 50-110 MB for the CLI)
_ITEM_SIZES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


@dataclass(frozen=True)
class NodeSketch:
    """What planning needs of a node: the tensors it reads (subgraphs' outer reads included) and makes."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weight_bytes: int = 0  # bytes of the initializers it reads


@dataclass(frozen=True)
class Piece:
    """Nodes ``start`` to ``stop - 1`` run as one session.

    ``tensors``: the exposed tensors made here, in graph order; ``inputs``: what
    it reads from the graph input or earlier pieces; ``handoff``: what it makes
    that later pieces read; ``estimate``: bytes held while it runs.
    """

    start: int
    stop: int
    tensors: tuple[str, ...]
    inputs: tuple[str, ...]
    handoff: tuple[str, ...]
    estimate: int


def tensor_bytes(tensor_type: TensorType | None) -> int | None:
    """Bytes of a tensor whose shape is fully known, else None."""
    if tensor_type is None or tensor_type.shape is None:
        return None
    count = 1
    for dim in tensor_type.shape:
        if not isinstance(dim, int) or dim < 0:
            return None
        count *= dim
    return count * _ITEM_SIZES.get(tensor_type.elem_type, 4)


def memory_bound(model_bytes: int, largest_tensor: int) -> int:
    """The default bound on a render's resident memory: 2 x the model file + 3 x the largest tensor + 300 MB."""
    return 2 * model_bytes + 3 * largest_tensor + BASE_MEMORY


def available_bytes() -> int | None:
    """Memory the system can still give without swapping (Linux MemAvailable), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise: arrays under 32 MB
    come from the heap, and a pass frees hundreds of them)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        pass


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes."""
    made = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    reads = set()
    for node in graph.node:
        reads.update(name for name in _node_reads(node) if name not in made)
        made.update(node.output)
    return reads


def _node_reads(node: onnx.NodeProto) -> set[str]:
    reads = {name for name in node.input if name}
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            reads |= _outer_reads(attribute.g)
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            for graph in attribute.graphs:
                reads |= _outer_reads(graph)
    return reads


def sketch_graph(model: onnx.ModelProto, weight_sizes: dict[str, int] | None = None) -> list[NodeSketch]:
    """The model's nodes as NodeSketches; initializers are left out of ``inputs`` and counted as weights."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    weight_sizes = weight_sizes or {}
    sketches = []
    for node in model.graph.node:
        reads = _node_reads(node)
        weights = sum(weight_sizes.get(name, 0) for name in reads & initializers)
        sketches.append(
            NodeSketch(tuple(sorted(reads - initializers)), tuple(name for name in node.output if name), weights)
        )
    return sketches


def _peak_intermediates(nodes: list[NodeSketch], start: int, stop: int, held: set[str], sizes: dict[str, int]) -> int:
    """The most bytes of not-held tensors alive at once while nodes ``start`` to ``stop - 1`` run in order."""
    last_read = {}
    for index in range(start, stop):
        for name in nodes[index].inputs:
            last_read[name] = index
    live = peak = 0
    for index in range(start, stop):
        made = [name for name in nodes[index].outputs if name not in held]
        live += sum(sizes.get(name, 0) for name in made)
        peak = max(peak, live)  # a node's inputs are still alive while it writes its outputs
        for name in made:
            if last_read.get(name, -1) <= index:  # never read in the piece
                live -= sizes.get(name, 0)
        for name in set(nodes[index].inputs):  # what the piece reads from outside is held: made here
            if last_read[name] == index and name not in held:
                live -= sizes.get(name, 0)
    return peak


def plan_passes(
    nodes: list[NodeSketch],
    exposed: list[str],
    sizes: dict[str, int],
    budget: int,
    weights_held: int = 2,
    drawing: int = 0,
) -> list[Piece]:
    """Cut the graph into pieces whose estimated memory stays within ``budget`` bytes.

    Pieces may end after any node (between an Add and its Relu, say, so the Add's
    inputs are freed before the Relu runs). A node whose tensors alone pass the
    budget gets a piece of its own: the caller decides what to say. A piece's estimate
    is everything alive while it runs or is drawn: the tensors earlier pieces
    made that are still needed, what it exposes and hands on, and the larger of
    two phases that do not overlap: the run (the most of its other intermediates
    alive at once, and ``weights_held`` copies of its weights: parsed and in
    the session) and the
    drawing after it (``drawing`` bytes). Nodes after the last exposed tensor
    are not run.
    """
    producer = {name: index for index, node in enumerate(nodes) for name in node.outputs}
    wanted = set(exposed)
    made_exposed = [producer[name] + 1 for name in exposed if name in producer]
    if not made_exposed:
        return []
    ends = list(range(1, max(made_exposed) + 1))  # a piece may end after any node
    last_use: dict[str, int] = {}
    for index, node in enumerate(nodes[: ends[-1]]):
        for name in node.inputs:
            last_use[name] = index

    def estimate(start: int, stop: int) -> tuple[int, tuple, tuple, tuple]:
        made = [name for node in nodes[start:stop] for name in node.outputs]
        made_set = set(made)
        reads = {name for node in nodes[start:stop] for name in node.inputs} - made_set
        carried = {name for name, use in last_use.items() if use >= stop and producer.get(name, -1) < start}
        handoff = tuple(name for name in made if last_use.get(name, -1) >= stop)
        tensors = tuple(name for name in made if name in wanted)
        held = reads | carried | set(handoff) | set(tensors)
        weights = sum(node.weight_bytes for node in nodes[start:stop])
        running = _peak_intermediates(nodes, start, stop, held, sizes) + weights_held * weights
        total = sum(sizes.get(name, 0) for name in held) + max(running, drawing)
        return total, tensors, tuple(sorted(reads)), handoff

    pieces = []
    start = 0
    position = 0
    while position < len(ends):
        stop = ends[position]
        best = (stop, *estimate(start, stop))
        position += 1
        while position < len(ends):
            candidate = estimate(start, ends[position])
            if candidate[0] > budget:
                break
            best = (ends[position], *candidate)
            position += 1
        stop, total, tensors, reads, handoff = best
        pieces.append(Piece(start, stop, tensors, reads, handoff, total))
        start = stop
    return pieces


def _piece_reads(model: onnx.ModelProto, piece: Piece) -> set[str]:
    nodes = model.graph.node[piece.start : piece.stop]
    return set().union(*(_node_reads(node) for node in nodes)) if nodes else set()


def piece_model(
    model: onnx.ModelProto, piece: Piece, types: dict[str, TensorType], weights: bool = True
) -> onnx.ModelProto:
    """A ModelProto of the piece's nodes: its inputs and outputs typed from ``types``, only the weights it
    reads (none when ``weights`` is False: write_pieces adds them one by one)."""
    graph = model.graph
    nodes = graph.node[piece.start : piece.stop]
    reads = _piece_reads(model, piece)

    def value(name: str) -> onnx.ValueInfoProto:
        tensor_type = types.get(name)
        elem_type = tensor_type.elem_type if tensor_type else onnx.TensorProto.FLOAT
        shape = list(tensor_type.shape) if tensor_type and tensor_type.shape is not None else None
        return helper.make_tensor_value_info(name, elem_type, shape)

    outputs = list(dict.fromkeys([*piece.tensors, *piece.handoff]))
    sub = helper.make_graph(
        list(nodes),
        f"{graph.name}_piece_{piece.start}",
        [value(name) for name in piece.inputs],
        [value(name) for name in outputs],
        [tensor for tensor in graph.initializer if tensor.name in reads] if weights else [],
    )
    sub.sparse_initializer.extend(tensor for tensor in graph.sparse_initializer if tensor.values.name in reads)
    result = helper.make_model(sub, opset_imports=list(model.opset_import))
    result.ir_version = max(model.ir_version, 4)  # from IR 4 on, initializers need not be graph inputs
    result.functions.extend(model.functions)
    return result


def write_pieces(model: onnx.ModelProto, pieces: list[Piece], types: dict[str, TensorType], folder: Path) -> list[Path]:
    """Each piece's model as a file in ``folder``: while the pieces run, no weights are held in Python.

    A piece's file is its model without weights followed by one ModelProto per weight: protobuf
    merges concatenated messages (repeated fields append), so onnxruntime reads one model, and
    no more than one weight is copied at a time (a whole piece's weights were, twice: a ResNet-50
    render under --max-memory peaked while writing its pieces).
    """
    paths = []
    for index, piece in enumerate(pieces):
        path = folder / f"piece_{index:03d}.onnx"
        reads = _piece_reads(model, piece)
        with open(path, "wb") as file:
            file.write(piece_model(model, piece, types, weights=False).SerializeToString())
            for tensor in model.graph.initializer:
                if tensor.name in reads:
                    part = onnx.ModelProto()
                    part.graph.initializer.append(tensor)
                    file.write(part.SerializeToString())
                    del part
        paths.append(path)
    return paths


def run_pieces(
    models: list,
    pieces: list[Piece],
    feed: dict[str, np.ndarray],
    open_session,
    before_piece=None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Run the pieces in order; yield ``(tensor, array)`` for each exposed tensor as soon as its piece ran.

    ``open_session(models[i])`` makes piece i's session; ``before_piece()``,
    when given, runs before each piece (the caller finishes drawing what earlier
    pieces gave, so their memory is free). Each piece's session is dropped
    before the next is made; handed-on arrays after their last reader ran.
    """
    held = dict(feed)
    later_reads = [set().union(*(set(p.inputs) for p in pieces[index + 1 :])) for index in range(len(pieces))]
    for index, piece in enumerate(pieces):
        names = list(dict.fromkeys([*piece.tensors, *piece.handoff]))
        if not names:  # nothing shown or read later (a branch only a later cut needed): onnxruntime refuses no outputs
            continue
        if before_piece is not None:
            before_piece()
        release_memory()
        session = open_session(models[index])
        outputs = run_session(session, {name: held[name] for name in piece.inputs}, names)
        del session
        for name in piece.handoff:
            held[name] = outputs[name]
        for name in list(held):
            if name not in later_reads[index]:
                del held[name]
        log.debug("pass %d/%d: nodes %d-%d, %d tensors", index + 1, len(pieces), piece.start, piece.stop - 1,
                  len(piece.tensors))
        for name in piece.tensors:
            yield name, outputs.pop(name)
