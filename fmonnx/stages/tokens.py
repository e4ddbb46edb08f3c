"""Transformer tokens that are an image's h x w grid, proven from the graph, and how to draw them as maps.

A ViT turns its patch-embedding Conv's (N, C, h, w) into a sequence of tokens::

    Conv (N,C,h,w) -> Reshape [N, C, -1] (N,C,L) -> Transpose [0,2,1] (N,L,C) -> Concat(cls, .) (N,1+L,C)
        -> Add pos -> blocks of LayerNormalization / MatMul [C,C'] / Gelu / Add ... (N,1+L,C)

``step`` follows such sequences node by node (``layout.channel_axes`` calls it): a
``TokenGrid`` says that a rank-3 tensor's tokens after ``prefix`` class/register
tokens are the row-major h x w pixels of ``source``, a 4-D tensor of known layout.
Only the graph proves a grid: a Reshape whose constant target merges exactly the
source's two spatial axes, a Transpose [0,2,1], a Concat of tokens in front, and
ops that keep every axis (element-wise, normalizations, MatMul of channels-last
tokens by a [C, C'] weight). A square number of tokens proves nothing.

``map_nodes`` draws a token tensor: nodes appended to the graph drop the prefix and
reshape to (N, h, w, C), with h and w read at run time from the source's shape::

    tokens (N,k+L,C) -> Slice [k:] on axis 1 -> Reshape [N, h, w, -1] -> <tokens>/token_maps (N,h,w,C) NHWC
    source (N,C,h,w) -> Shape -> Gather [0, 2, 3] -> Concat [-1] -^
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .layout import _LAYOUT_PRESERVING_OPS
from .shapes import TensorType

__all__ = [
    "TokenGrid", "ADDED_NODE_PREFIX", "MAP_SUFFIX", "NOT_A_GRID", "step", "map_nodes", "map_tensor",
    "residual_outputs", "choose_tokens", "added_nodes", "not_grid_tensors", "map_candidate",
]


ADDED_NODE_PREFIX = "fmonnx.token_maps/"  # names of the nodes fmonnx appends; expose.exposed_suffix carries them
MAP_SUFFIX = "/token_maps"  # the drawn tensor is named after the token tensor it comes from

# Ops whose output has every axis of their token input where it was (same sizes, or broadcast to them):
# layout's layout-keeping ops, less those that change sizes or act on image axes, plus fused norms.
_SAME_AXES_OPS = (
    _LAYOUT_PRESERVING_OPS
    - {"BitShift", "Concat", "Expand", "GroupNormalization", "MeanVarianceNormalization", "Not", "Pad", "Resize",
       "Slice", "Tile", "Upsample"}
) | {"SimplifiedLayerNormalization", "SkipLayerNormalization"}
_FIRST_OUTPUT_OPS = frozenset({"Dropout", "LayerNormalization", "SkipLayerNormalization"})


@dataclass(frozen=True)
class TokenGrid:
    """A rank-3 tensor of tokens: after ``prefix`` tokens (class, distillation, register), its tokens are
    the h x w pixels of the 4-D tensor ``source`` in row-major order. ``channels_last``: (N, k+L, C);
    else (N, C, k+L)."""

    source: str
    prefix: int
    channels_last: bool

    @property
    def token_axis(self) -> int:
        return 1 if self.channels_last else 2


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _merged_grid(target: np.ndarray, source_shape: tuple, channel_axis: int, copies_zero: bool) -> bool:
    """True when a Reshape of a 4-D tensor to ``target`` (3 values) merges exactly its two spatial axes:
    (N,C,H,W) to (N,C,H*W), or (N,H,W,C) to (N,H*W,C). Each size must be proven: a 0 that copies the same
    axis, a size equal to a known one, or the single -1 (then the others fix it)."""
    if target.shape != (3,) or channel_axis not in (1, 3):
        return False
    batch, channels = source_shape[0], source_shape[channel_axis]
    height, width = (source_shape[axis] for axis in ((2, 3) if channel_axis == 1 else (1, 2)))
    pixels = height * width if isinstance(height, int) and isinstance(width, int) else None
    expected = (batch, channels, pixels) if channel_axis == 1 else (batch, pixels, channels)
    copied = (0, 1) if channel_axis == 1 else (0,)  # axes whose input size is the output size
    wildcards = 0
    for axis, value in enumerate(int(v) for v in target):
        if value == -1:
            wildcards += 1
        elif value == 0 and copies_zero and axis in copied:
            continue
        elif value <= 0 or value != expected[axis]:
            return False
    return wildcards <= 1


def step(node: onnx.NodeProto, layouts: dict, grids: dict[str, TokenGrid], types: dict[str, TensorType],
         value) -> tuple[dict[str, TokenGrid], dict]:
    """The token grids (and 4-D layouts, for tokens reshaped back to an image) that ``node`` makes.

    ``layouts``: the 4-D layouts proven so far; ``value(name)``: a small constant's value or None.
    """
    from .layout import Layout

    op = node.op_type
    if not node.input or not node.output or not node.output[0]:
        return {}, {}
    out = node.output[0]
    out_type = types.get(out)
    if out_type is None or out_type.rank not in (3, 4):
        return {}, {}
    first = node.input[0]
    if op == "Reshape" and len(node.input) == 2:
        target = value(node.input[1])
        if target is None:
            return {}, {}
        target = np.asarray(target).reshape(-1)
        copies_zero = not _attr(node, "allowzero", 0)
        source = layouts.get(first)
        source_type = types.get(first)
        if out_type.rank == 3 and source is not None and source.rank == 4 and source_type and source_type.rank == 4:
            if _merged_grid(target, source_type.shape, source.channel_axis, copies_zero):
                return {out: TokenGrid(first, 0, source.channel_axis == 3)}, {}
        grid = grids.get(first)
        if out_type.rank == 4 and grid is not None and grid.prefix == 0 and grid.channels_last:
            # (N, h*w, C) back to (N, h, w, C): the sizes must be the source's own
            source_type = types.get(grid.source)
            layout = layouts.get(grid.source)
            if source_type is None or layout is None or source_type.shape is None:
                return {}, {}
            h_axis, w_axis = layout.hw_axes
            shape = source_type.shape
            channels = types[first].shape[2] if types.get(first) and types[first].shape else None
            expected = (shape[0], shape[h_axis], shape[w_axis], channels)
            if target.shape == (4,) and all(
                int(v) == e or (int(v) == -1 and i == 3) or (int(v) == 0 and copies_zero and i == 0)
                for i, (v, e) in enumerate(zip(target, expected))
            ) and all(isinstance(e, int) for e in expected[1:3]):
                return {}, {out: Layout(3, layout.certain)}
        return {}, {}
    grid = grids.get(first)
    if op == "Transpose" and grid is not None and out_type.rank == 3:
        if list(_attr(node, "perm", [2, 1, 0])) == [0, 2, 1]:
            return {out: TokenGrid(grid.source, grid.prefix, not grid.channels_last)}, {}
        return {}, {}
    if op == "Concat" and out_type.rank == 3:
        last = grids.get(node.input[-1])
        if last is None or _attr(node, "axis", 0) % 3 != last.token_axis:
            return {}, {}
        prefix = 0
        for name in node.input[:-1]:  # tokens in front: their count must be known
            size = types[name].shape[last.token_axis] if types.get(name) and types[name].shape else None
            if not isinstance(size, int):
                return {}, {}
            prefix += size
        return {out: TokenGrid(last.source, last.prefix + prefix, last.channels_last)}, {}
    if op == "MatMul" and len(node.input) == 2:
        # tokens[..., C] @ w[C, C'] mixes channels only
        weight = types.get(node.input[1])
        if grid is not None and grid.channels_last and weight is not None and weight.rank == 2 and out_type.rank == 3:
            return {out: grid}, {}
        return {}, {}
    if op in _SAME_AXES_OPS and out_type.rank == 3:
        for name in node.input:
            grid = grids.get(name)
            if grid is not None and _same_sizes(types.get(name), out_type):
                return {output: grid for output in (node.output[:1] if op in _FIRST_OUTPUT_OPS else node.output)
                        if output}, {}
    return {}, {}


def _same_sizes(a: TensorType | None, b: TensorType | None) -> bool:
    """Both rank 3 with no known size differing (a broadcast that grew the tokens would)."""
    if a is None or b is None or a.rank != 3 or b.rank != 3:
        return False
    return all(not (isinstance(x, int) and isinstance(y, int) and x != y) for x, y in zip(a.shape, b.shape))


def added_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes the plan appended to ``model`` to draw tokens: suffixes meant for the model file carry them."""
    return [node for node in model.graph.node if node.name.startswith(ADDED_NODE_PREFIX)]


def map_tensor(tokens: str) -> str:
    """The name of the drawn (N, h, w, C) tensor of a token tensor."""
    return tokens + MAP_SUFFIX


def map_nodes(tokens: str, grid: TokenGrid, source_hw: tuple[int, int]) -> list[onnx.NodeProto]:
    """Nodes that make ``map_tensor(tokens)``: the grid's tokens as (N, h, w, C), h and w read at run time
    from the source (``source_hw``: its height and width axes), so a dynamic input size works."""
    out = map_tensor(tokens)

    def name(part: str) -> str:
        return f"{out}/{part}"

    def constant(part: str, values) -> onnx.NodeProto:
        array = np.asarray(values, dtype=np.int64)
        return helper.make_node("Constant", [], [name(part)], name=ADDED_NODE_PREFIX + name(part),
                                value=numpy_helper.from_array(array, name(part)))

    nodes = []
    current = tokens
    if not grid.channels_last:
        nodes.append(helper.make_node("Transpose", [current], [name("channels_last")],
                                      name=ADDED_NODE_PREFIX + name("channels_last"), perm=[0, 2, 1]))
        current = name("channels_last")
    if grid.prefix:
        nodes += [constant("starts", [grid.prefix]), constant("ends", [np.iinfo(np.int64).max]),
                  constant("axes", [1])]
        nodes.append(helper.make_node("Slice", [current, name("starts"), name("ends"), name("axes")],
                                      [name("grid_tokens")], name=ADDED_NODE_PREFIX + name("grid_tokens")))
        current = name("grid_tokens")
    nodes += [
        helper.make_node("Shape", [grid.source], [name("source_shape")], name=ADDED_NODE_PREFIX + name("source_shape")),
        constant("axes_nhw", [0, *source_hw]),
        helper.make_node("Gather", [name("source_shape"), name("axes_nhw")], [name("nhw")], axis=0,
                         name=ADDED_NODE_PREFIX + name("nhw")),
        constant("channels", [-1]),
        helper.make_node("Concat", [name("nhw"), name("channels")], [name("shape")], axis=0,
                         name=ADDED_NODE_PREFIX + name("shape")),
        helper.make_node("Reshape", [current, name("shape")], [out], name=ADDED_NODE_PREFIX + out),
    ]
    return nodes


def residual_outputs(graph: onnx.GraphProto, eligible, layers=frozenset({"MatMul", "Gemm", "Conv"}),
                     limit: int = 400) -> list[str]:
    """Block outputs among ``eligible`` tensors: residual Adds of a tensor and a branch computed from it that
    holds one of ``layers`` and no attention (Softmax): a transformer block's MLP residual, one per block.

    The branch is what the Add's other input is made from, back to the skip tensor (at most ``limit`` nodes).
    """
    producer = {output: node for node in graph.node for output in node.output if output}
    chosen = []
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or not node.output or node.output[0] not in eligible:
            continue
        for skip, branch in (node.input, reversed(node.input)):
            ops = _branch_ops(producer, branch, skip, limit)
            if ops is not None and "Softmax" not in ops and ops & layers:
                chosen.append(node.output[0])
                break
    return chosen


def _branch_ops(producer: dict, branch: str, skip: str, limit: int) -> set[str] | None:
    """The ops that make ``branch`` from ``skip``; None when ``skip`` is not among what it is made from."""
    ops, seen, stack, found = set(), set(), [branch], False
    while stack:
        name = stack.pop()
        if name == skip:
            found = True
            continue
        node = producer.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if len(seen) > limit:
            return None
        ops.add(node.op_type)
        stack.extend(name for name in node.input if name)
    return ops if found else None


NOT_A_GRID = "its tokens are not a proven h x w grid (attention or another token tensor)"


def choose_tokens(
    model: onnx.ModelProto,
    types: dict[str, TensorType],
    grids: dict[str, TokenGrid],
    layouts: dict,
    ops: tuple[str, ...],
    all_spatial: bool,
    default: bool,
) -> tuple[list, list]:
    """``(shown, not_grids)``: Candidates beyond ``expose.find_candidates``'s 4-D ones.

    ``shown``: token tensors to draw as maps (and, by ``default``, channels-last 4-D block outputs such as
    a Swin stage's residual Adds). By default each block's output and the last LayerNormalization after
    them; with ``all_spatial`` every token grid; else the grids made by ``ops``. ``not_grids``: the rank-3
    float tensors computed from tokens that are not a proven grid (listed, with why, under --all-spatial).
    """
    from .expose import ACTIVATIONS, Candidate, _constant_tensors, _Graph

    graph = model.graph
    constant = _constant_tensors(graph)
    index_of = {output: (index, node) for index, node in enumerate(graph.node) for output in node.output if output}

    def candidate(tensor: str):
        index, node = index_of[tensor]
        return Candidate(tensor, node.op_type, node.name, index, types[tensor])

    tokens = [name for name in grids if name in index_of and name not in constant
              and types.get(name) is not None and types[name].is_float]
    if all_spatial:
        wanted = list(tokens)
    elif default:
        nhwc = [name for name, layout in layouts.items()
                if layout.rank == 4 and layout.channel_axis == 3 and layout.certain and name in index_of]
        # a channels-last 4-D block (Swin, ConvNeXt) has an MLP (MatMul); a CNN's residual is followed by
        # its activation, already shown
        blocks = [_as_image(graph, name, layouts) for name in residual_outputs(graph, set(tokens))]
        wanted = sorted(blocks + residual_outputs(graph, set(nhwc), {"MatMul"}), key=lambda name: index_of[name][0])
        last = max((index_of[name][0] for name in wanted), default=-1)
        norms = [name for name in tokens if index_of[name][1].op_type == "LayerNormalization"
                 and index_of[name][0] > last]
        wanted += norms[-1:]
    else:
        patterns = [ACTIVATIONS[name] for name in dict.fromkeys(ops) if name in ACTIVATIONS]
        context = _Graph(graph)
        wanted = [name for name in tokens if index_of[name][1].op_type in ops
                  or any(pattern(index_of[name][1], context) for pattern in patterns)]
    shown = [candidate(name) for name in wanted if types.get(name) is not None and types[name].is_float]
    return shown, [candidate(name) for name in _not_grids(graph, grids, layouts, types, constant)
                   if types[name].rank == 3]


def _as_image(graph: onnx.GraphProto, tokens: str, layouts: dict) -> str:
    """The 4-D map a Reshape makes of ``tokens`` when the graph proves its layout (a Swin block reshapes
    its MLP residual back to N,H,W,C: that is the block's output, under the block's name), else ``tokens``."""
    for node in graph.node:
        if node.op_type == "Reshape" and node.input and node.input[0] == tokens:
            layout = layouts.get(node.output[0])
            if layout is not None and layout.rank == 4 and layout.certain:
                return node.output[0]
    return tokens


def _not_grids(graph: onnx.GraphProto, grids: dict, layouts: dict, types: dict, constant: set) -> list[str]:
    """Float tensors of rank 3 or 4 computed from token grids that are neither grids nor proven 4-D maps."""
    derived: list[str] = []
    seen: set[str] = set()
    for node in graph.node:
        if not any(name in grids or name in seen for name in node.input):
            continue
        for output in node.output:
            if output and output not in grids and output not in layouts and output not in constant:
                seen.add(output)
                tensor_type = types.get(output)
                if tensor_type is not None and tensor_type.is_float and tensor_type.rank in (3, 4):
                    derived.append(output)
    return derived


def not_grid_tensors(model: onnx.ModelProto, grids: dict, layouts: dict, types: dict) -> set[str]:
    """What ``_not_grids`` gives: 4-D attention maps among find_candidates' are set aside with NOT_A_GRID."""
    from .expose import _constant_tensors

    return set(_not_grids(model.graph, grids, layouts, types, _constant_tensors(model.graph)))


def map_candidate(named, grid: TokenGrid, types: dict[str, TensorType], layouts: dict):
    """``(named tensor, nodes)``: the token tensor's NamedTensor redirected to its (N, h, w, C) map tensor,
    with the display name, op and place of the token tensor, and the nodes that make the map."""
    import dataclasses

    token = named.candidate
    h_axis, w_axis = layouts[grid.source].hw_axes
    source = types[grid.source].shape
    channels = token.type.shape[2 if grid.channels_last else 1]
    shape = (source[0], source[h_axis], source[w_axis], channels)
    maps = dataclasses.replace(token, tensor=map_tensor(token.tensor), type=TensorType(token.type.elem_type, shape))
    return dataclasses.replace(named, candidate=maps), map_nodes(token.tensor, grid, (h_axis, w_axis))
