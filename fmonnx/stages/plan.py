"""Plan a model: what will be shown (names, layouts) and the input to feed, from the graph alone.

``plan_model`` reads an ONNX model (frontends/models.py converts a framework model first),
finds the tensors to show, names them and proves their channel axes;
``layer_rows`` is the plan as rows (``fmonnx.list_layers``). No session is opened here.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import ImageError, ModelError
from ..options import RenderOptions
from .expose import DEFAULT_OPS, find_candidates
from .layout import IMAGE_CHANNELS, Layout, channel_axes, chw_shape, detect_input_layout, maps_of_sequences
from .load import LoadedModel, load_graph
from .metadata import LAYERS_KEY, LayerRecord, read_layer_metadata, read_source_metadata
from .names import NamedTensor, name_tensors, naming_notes
from .preprocess import InputSpec
from .shapes import TensorType, infer_types
from .tokens import NOT_A_GRID, TokenGrid, choose_tokens, map_candidate, not_grid_tensors

__all__ = ["ModelPlan", "plan_model", "layer_rows", "demo_paths"]

log = logging.getLogger(__name__)

_DEMO_MODEL = Path(__file__).parent.parent / "data" / "tutorial_cnn.onnx"

@dataclass(frozen=True)
class ModelPlan:
    """What will be shown for a model, and how each tensor is laid out.

    ``loaded.model`` is the graph without the values of its large initializers
    (names, types and dims stay): sessions read the weights from the file, so
    a render does not hold a model's worth of memory for nothing.
    """

    loaded: LoadedModel
    input: InputSpec
    input_layout: Layout
    tensors: list[NamedTensor]
    layouts: dict[str, Layout]
    source: dict
    notes: tuple[str, ...] = ()  # recorded tensors not shown, what the names cannot promise: said once per image
    set_aside: tuple[tuple[NamedTensor, str], ...] = ()  # 4-D but not feature maps, with why: --all-spatial lists them

    def layout_of(self, tensor: str) -> Layout:
        """The proven layout, else N,C,H,W (the ONNX convention) marked uncertain."""
        return self.layouts.get(tensor) or Layout(1, False)


def demo_paths() -> tuple[Path, Path]:
    """The embedded default: the shipped tutorial CNN and matplotlib's sample photo."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    photo = None
    if spec and spec.submodule_search_locations:
        photo = Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    if photo is None or not photo.exists():
        raise ImageError("matplotlib's sample photo grace_hopper.jpg is missing; pass an image path")
    return _DEMO_MODEL, photo


def _image_input(loaded: LoadedModel, types: dict[str, TensorType]) -> InputSpec:
    graph = loaded.model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs) or "none"
        raise ModelError(
            f"{loaded.path.name} has {len(inputs)} inputs ({names}); fmonnx feeds one image input: "
            "export the model with a single image input"
        )
    value = inputs[0]
    tensor_type = types.get(value.name)
    if tensor_type is None or tensor_type.shape is None:
        raise ModelError(f"the input {value.name!r} has no declared shape; re-export the model with input shapes")
    return InputSpec(value.name, tensor_type.elem_type, tensor_type.shape)


def _source(loaded: LoadedModel) -> dict:
    model = loaded.model
    recorded = read_source_metadata(model, loaded.path.name)
    if recorded is not None:
        return recorded
    producer = model.producer_name or "unknown"
    framework = {"tf2onnx": "tensorflow", "pytorch": "pytorch", "keras2onnx": "keras", "tflite2onnx": "tflite"}
    return {
        "framework": framework.get(producer, producer),
        "producer": producer,
        "producer_version": model.producer_version,
    }


def _recorded_tensors(
    records: list[LayerRecord], types: dict[str, TensorType], label: str, ops_given: bool, grids=()
) -> tuple[tuple[str, ...], list[str]]:
    """The tensors the converter recorded, in layer order (a layer's inner tensors before its output),
    less those shape inference proves are not 4-D or token ``grids``; and a note for each left out.

    Raises ModelError when every recorded tensor is left out and nothing else was asked for (``ops_given``).
    """
    kept, notes = [], []
    for record in records:
        for name in (*record.inner, record.output):
            rank = types[name].rank if name in types else None
            if rank is None or rank == 4 or name in grids:
                kept.append(name)
            else:
                shape = "[" + ", ".join("?" if dim is None else str(dim) for dim in _readable(types[name].shape)) + "]"
                notes.append(f"{record.layer}: {LAYERS_KEY} names the tensor {name!r} of shape {shape}, not 4-D; "
                             "not shown")
    if records and not kept and not ops_given:
        layers = ", ".join(record.layer for record in records[:4]) + (", ..." if len(records) > 4 else "")
        raise ModelError(
            f"{label}'s {LAYERS_KEY} metadata records no layer with a 4-D output (it records: {layers}); "
            "pass --ops or --all-spatial to choose tensors by op"
        )
    return tuple(kept), notes


_NOT_FEATURE_MAPS = "window or head batches are not feature maps"
_OF_A_SEQUENCE = "computed from a sequence rearranged to 4-D (its axes are not the image's), not a feature map"


def _not_image_batch(tensor_type: TensorType, input_batch) -> str | None:
    """Why a 4-D tensor is not a feature map of the image, or None.

    fmonnx feeds one image (or the input's own fixed batch), so a first axis that shape inference
    fixes to another size (Swin's windows, attention heads) is not the image batch; nor is a
    symbolic product that involves the batch (``4*batch``). Unknown sizes prove nothing: the run
    checks those.
    """
    if tensor_type.rank != 4:
        return None
    first = tensor_type.shape[0]
    if isinstance(first, int) and first > 1 and first != input_batch:
        return f"first axis {first} is not the image batch: {_NOT_FEATURE_MAPS}"
    if isinstance(first, str) and isinstance(input_batch, str) and first != input_batch:
        if re.search(rf"(?<![\w]){re.escape(input_batch)}(?![\w])", first) and "*" in first:
            return f"first axis {first} is not the image batch: {_NOT_FEATURE_MAPS}"
    return None


def _fixed_input(spec: InputSpec, channel_axis: int, size: tuple[int, int] | None = None) -> tuple | None:
    """The rank-4 input shape with its open batch fixed at 1 (what fmonnx feeds) and, given ``size``,
    its open H x W fixed at it; None when it is not rank 4 or a dim stays open."""
    if len(spec.shape) != 4:
        return None
    fixed = list(spec.shape)
    spatial = [axis for axis in (1, 2, 3) if axis != channel_axis]
    for axis, value in ((0, 1), *(zip(spatial, size) if size else ())):
        if not isinstance(fixed[axis], int):
            fixed[axis] = value
    return tuple(fixed) if all(isinstance(dim, int) for dim in fixed) else None


def _types_at_batch_one(model: onnx.ModelProto, spec: InputSpec, channel_axis: int,
                        candidates) -> dict[str, TensorType]:
    """Shape inference again with the input's open batch fixed at 1, when a 4-D candidate's first axis
    is open but not the batch itself (a Reshape to ``[-1, ...]``); else {}."""
    batch = spec.shape[0] if spec.shape else None
    fixed = _fixed_input(spec, channel_axis)
    if isinstance(batch, int) or fixed is None:
        return {}
    if not any(c.type.rank == 4 and not isinstance(c.type.shape[0], int) and c.type.shape[0] != batch
               for c in candidates):
        return {}
    return infer_types(model, {spec.name: fixed})


def _set_aside_note(set_aside: list[tuple[NamedTensor, str]]) -> str:
    """One line for every 4-D tensor left out of the pictures (not one per tensor)."""
    by_reason: dict[str, list[str]] = {}
    for named, reason in set_aside:
        by_reason.setdefault(reason, []).append(named.name)
    parts = []
    for reason, names in by_reason.items():
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        parts.append(f"{shown}: {reason}")
    count = len(set_aside)
    return f"{count} tensor{'s' if count != 1 else ''} not drawn ({'; '.join(parts)})"


def _unproven_note(names: list[str]) -> str:
    """One line for every layer whose channel axis the graph does not prove (not one per layer)."""
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    count = len(names)
    return (f"{count} layer{'s' if count != 1 else ''}: the graph does not prove the channel axis, drawn as NCHW "
            f"and marked in the manifest (layout_certain false): {shown}")


def plan_model(model_path: str | os.PathLike, options: RenderOptions | None = None,
               conversion: dict | None = None) -> ModelPlan:
    """Load an ONNX model and decide what to show: names, layouts, the input to feed.

    ``model_path`` is an ONNX file: a framework model is converted first (frontends/models.py's
    ``plan_for`` does both), and ``conversion`` is what its conversion recorded (merged into the
    plan's ``source``).
    """
    options = options or RenderOptions()
    loaded = load_graph(model_path)  # the weights are never read: sessions read them from the file
    types = infer_types(loaded.model)
    spec = _image_input(loaded, types)
    input_layout = detect_input_layout(spec.shape, options.input_layout)
    channels = spec.shape[input_layout.channel_axis]
    if isinstance(channels, int) and channels not in IMAGE_CHANNELS:
        raise ModelError(
            f"the input {spec.name!r} {list(spec.shape)} has {channels} channels on axis "
            f"{input_layout.channel_axis}; images have 1, 3 or 4 (pass --input-layout if the axis is wrong)"
        )
    records = read_layer_metadata(loaded.model, loaded.path.name)
    given = options.ops is not None or options.all_spatial
    grids: dict[str, TokenGrid] = {}
    not_maps: set[str] = set()
    layouts = channel_axes(loaded.model, types, input_layout, grids, not_maps)
    recorded, skipped = _recorded_tensors(records, types, loaded.path.name, given, grids)
    ops = options.ops if options.ops is not None else (() if recorded else DEFAULT_OPS)
    by_default = options.ops is None and not options.all_spatial  # converters record 4-D outputs only: no tokens
    tokens, not_grids = choose_tokens(loaded.model, types, grids, layouts, ops, options.all_spatial, by_default)
    try:
        candidates = find_candidates(loaded.model, types, ops, options.all_spatial, recorded,
                                     activated_only=options.ops is None and not recorded)
    except ModelError:
        if not tokens:
            raise
        candidates = []  # a model of tokens alone: its maps are all there is
    chosen = {c.tensor for c in candidates}
    candidates += [c for c in tokens if c.tensor not in chosen]
    if options.all_spatial:
        candidates += not_grids
    candidates.sort(key=lambda c: c.node_index)
    if recorded and options.ops is None:
        order = {name: index for index, name in enumerate(recorded)}
        candidates.sort(key=lambda c: order.get(c.tensor, len(order)))
    source = _source(loaded)
    if source.get("framework") != "pytorch":
        # the Keras converter knows each layer output's layout, even past a Reshape; a PyTorch module's
        # output has no declared layout, so the graph's proof is the only one (older conversions said NCHW)
        for record in records:
            axis = {"NCHW": 1, "NHWC": 3}.get(record.layout)
            if axis is not None:
                layouts[record.output] = Layout(axis, True)
    input_batch = spec.shape[0] if input_layout.rank == 4 else None
    at_one = _types_at_batch_one(loaded.model, spec, input_layout.channel_axis, candidates)
    not_grid = not_grid_tensors(loaded.model, grids, layouts, types)
    of_sequences = maps_of_sequences(loaded.model, types, layouts) | not_maps
    reasons = {
        c.tensor: r for c in candidates
        if (r := NOT_A_GRID if c.tensor in not_grid else _OF_A_SEQUENCE if c.tensor in of_sequences
            else _not_image_batch(at_one.get(c.tensor) or c.type, input_batch)) is not None
    }
    if len(reasons) == len(candidates):
        shapes = ", ".join(f"{c.tensor} {list(_readable(c.type.shape))}" for c in candidates[:4])
        raise ModelError(
            f"every tensor chosen has a first axis that is not the image batch ({shapes}); "
            f"{_NOT_FEATURE_MAPS}: try --ops with the ops that make the feature maps"
        )
    everything = name_tensors(loaded.model, candidates, records)
    added: list[onnx.NodeProto] = []
    for index, named in enumerate(everything):
        grid = grids.get(named.candidate.tensor)
        if grid is not None and named.candidate.tensor not in reasons:
            everything[index], nodes = map_candidate(named, grid, types, layouts)
            layouts[everything[index].candidate.tensor] = Layout(3, True)
            added += nodes
    named = [n for n in everything if n.candidate.tensor not in reasons]
    set_aside = [(n, reasons[n.candidate.tensor]) for n in everything if n.candidate.tensor in reasons]
    if not options.all_spatial:
        set_aside = []  # ops chose them by their op, not as spatial tensors: nothing to say
    if conversion:
        source = {**source, **conversion}
    unproven = [n.name for n in named if not (layouts.get(n.candidate.tensor) or Layout(1, False)).certain]
    notes = (*skipped, *naming_notes(named), *([_set_aside_note(set_aside)] if set_aside else []),
             *([_unproven_note(unproven)] if unproven else []))
    loaded.model.graph.node.extend(added)  # the token maps' nodes: expose.exposed_suffix carries them to sessions
    return ModelPlan(
        loaded, spec, input_layout, named, layouts, source, notes, tuple(set_aside)
    )


def _readable(shape) -> list | None:
    """Sizes as ints, None where unknown: a symbolic dim (``unk__0``, a torch export's
    ``((s65 - 1)//16) + 1``) says nothing readable."""
    return None if shape is None else [dim if isinstance(dim, int) else None for dim in shape]


def _types_at_size(plan: ModelPlan, size: tuple[int, int] | None) -> dict[str, TensorType]:
    """Shape inference again with a dynamic input fixed at ``size`` (H, W; batch 1), so symbolic
    sizes become the ints that input gives; {} when there is no size or nothing to fix."""
    if size is None or all(isinstance(dim, int) for dim in plan.input.shape):
        return {}
    fixed = _fixed_input(plan.input, plan.input_layout.channel_axis, size)
    return infer_types(plan.loaded.model, {plan.input.name: fixed}) if fixed is not None else {}


def layer_rows(plan: ModelPlan, options: RenderOptions | None = None) -> list[dict]:
    """Each tensor that would be shown: name, op, tensor, C x H x W (from shape inference).

    With ``options.all_spatial`` the 4-D tensors that are not feature maps are listed too, with
    ``not_shown`` saying why (render leaves them out with one warning).

    Sizes are ints, or None where the model leaves them open; with ``options.size`` a dynamic
    H x W is fixed at that size first.
    """
    resolved = _types_at_size(plan, options.size if options else None)
    reasons = dict((named.candidate.tensor, reason) for named, reason in plan.set_aside)
    rows = []
    for named in _in_graph_order(plan):
        layout = plan.layout_of(named.candidate.tensor)
        tensor_type = resolved.get(named.candidate.tensor) or named.candidate.type
        rows.append(
            {
                "name": named.name,
                "op": named.candidate.op,
                "tensor": named.candidate.tensor,
                "source_layer": named.source_layer,
                "named_by": named.named_by,
                "shape": _readable(chw_shape(tensor_type.shape, layout)),
                "channel_axis": layout.channel_axis,
                "layout_certain": layout.certain,
            }
        )
        if named.layer_output is not None:
            rows[-1]["layer_output"] = named.layer_output
        if named.source_class:
            rows[-1]["source_class"] = named.source_class
        if named.folded_batchnorm:
            rows[-1]["folded_batchnorm"] = True
        if named.also_output_of:
            rows[-1]["also_output_of"] = list(named.also_output_of)
        if named.candidate.tensor in reasons:
            rows[-1]["not_shown"] = reasons[named.candidate.tensor]
    return rows


def _in_graph_order(plan: ModelPlan) -> list[NamedTensor]:
    """The plan's tensors, each set-aside one placed before the first shown tensor made after it
    (the shown order may follow a converter's records, so it is kept as it is)."""
    merged = list(plan.tensors)
    for named, _ in plan.set_aside:
        index = next((i for i, shown in enumerate(merged) if shown.candidate.node_index > named.candidate.node_index),
                     len(merged))
        merged.insert(index, named)
    return merged


