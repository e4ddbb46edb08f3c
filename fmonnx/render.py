"""The render pipeline: plan a model, compute activations, draw, write.

Stages pass plain data: ``plan_model`` (ModelProto -> what to show and how
it is laid out), ``compute_activations`` (images -> ``{name: (C, H, W)}``),
``draw_layer`` (activations -> palette picture and statistics) and
``render`` (all of it, written to a folder with a manifest).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .colormap import BACKGROUND, DEFAULT_CMAP, lookup_table, to_palette_indices
from .errors import ImageError, ModelError
from .expose import DEFAULT_OPS, expose_outputs, find_candidates
from .layout import IMAGE_CHANNELS, Layout, channel_axes, detect_input_layout
from .load import LoadedModel, load_model
from .names import SOURCE_KEY, NamedTensor, name_tensors, read_layer_metadata
from .normalize import DEFAULT_METHOD, ChannelStats, channel_stats, normalize
from .preprocess import DEFAULT_PRESET, InputSpec, expand_image_paths, load_image, prepare_input
from .run import create_session, run_session
from .shapes import TensorType, infer_types
from .tile import DEFAULT_LAYOUT, Grid, tile
from .write import file_stem, staged_output, titled, write_array, write_manifest, write_picture

__all__ = [
    "RenderOptions",
    "ModelPlan",
    "LayerActivation",
    "ImageActivations",
    "plan_model",
    "open_session",
    "list_layers",
    "compute_activations",
    "activations",
    "draw_layer",
    "render",
    "demo_paths",
]

log = logging.getLogger(__name__)

_DEMO_MODEL = Path(__file__).parent / "data" / "tutorial_cnn.onnx"


@dataclass(frozen=True)
class RenderOptions:
    """Every render choice; None means the default written beside each field."""

    ops: tuple[str, ...] | None = None  # DEFAULT_OPS, or the converter's layers when recorded
    all_spatial: bool = False
    preprocess: str | None = None  # DEFAULT_PRESET ("raw" for integer inputs)
    provider: str = "auto"
    normalization: str = DEFAULT_METHOD
    layout: str = DEFAULT_LAYOUT
    cmap: str = DEFAULT_CMAP
    save_arrays: bool = False
    size: tuple[int, int] | None = None  # the model's H x W, or the image's own when dynamic
    max_size: int | None = None
    input_layout: str | None = None  # detected from the input shape


@dataclass(frozen=True)
class ModelPlan:
    """What will be shown for a model, and how each tensor is laid out."""

    loaded: LoadedModel
    input: InputSpec
    input_layout: Layout
    tensors: list[NamedTensor]
    layouts: dict[str, Layout]
    source: dict

    def layout_of(self, tensor: str) -> Layout:
        """The proven layout, else N,C,H,W (the ONNX convention) marked uncertain."""
        return self.layouts.get(tensor) or Layout(1, False)


@dataclass
class LayerActivation:
    named: NamedTensor
    values: np.ndarray  # (C, H, W) float32, channels first
    raw_shape: tuple[int, ...]
    layout: Layout


@dataclass
class ImageActivations:
    image: Path
    input_tensor: np.ndarray
    preprocess: dict
    layers: list[LayerActivation]
    problems: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


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
    import json

    model = loaded.model
    for prop in model.metadata_props:
        if prop.key == SOURCE_KEY:
            try:
                return json.loads(prop.value)
            except ValueError:
                break
    producer = model.producer_name or "unknown"
    framework = {"tf2onnx": "tensorflow", "pytorch": "pytorch", "keras2onnx": "keras", "tflite2onnx": "tflite"}
    return {
        "framework": framework.get(producer, producer),
        "producer": producer,
        "producer_version": model.producer_version,
    }


def plan_model(model_path: str | os.PathLike, options: RenderOptions | None = None) -> ModelPlan:
    """Load a model and decide what to show: names, layouts, the input to feed."""
    options = options or RenderOptions()
    loaded = load_model(model_path)
    types = infer_types(loaded.model)
    spec = _image_input(loaded, types)
    input_layout = detect_input_layout(spec.shape, options.input_layout)
    channels = spec.shape[input_layout.channel_axis]
    if isinstance(channels, int) and channels not in IMAGE_CHANNELS:
        raise ModelError(
            f"the input {spec.name!r} {list(spec.shape)} has {channels} channels on axis "
            f"{input_layout.channel_axis}; images have 1, 3 or 4 (pass --input-layout if the axis is wrong)"
        )
    records = read_layer_metadata(loaded.model)
    recorded = tuple(
        name for record in records for name in (record["output"], *record.get("inner", []))
    )
    ops = options.ops if options.ops is not None else (() if recorded else DEFAULT_OPS)
    candidates = find_candidates(loaded.model, types, ops, options.all_spatial, recorded)
    if recorded and options.ops is None:
        order = {name: index for index, name in enumerate(recorded)}
        candidates.sort(key=lambda c: order.get(c.tensor, len(order)))
    layouts = channel_axes(loaded.model, types, input_layout)
    return ModelPlan(loaded, spec, input_layout, name_tensors(loaded.model, candidates), layouts, _source(loaded))


def list_layers(model_path: str | os.PathLike, options: RenderOptions | None = None) -> list[dict]:
    """Each tensor that would be shown: name, op, tensor, C x H x W (from shape inference)."""
    plan = plan_model(model_path, options)
    rows = []
    for named in plan.tensors:
        layout = plan.layout_of(named.candidate.tensor)
        rows.append(
            {
                "name": named.name,
                "op": named.candidate.op,
                "tensor": named.candidate.tensor,
                "source_layer": named.source_layer,
                "shape": _chw(named.candidate.type.shape, layout),
                "channel_axis": layout.channel_axis,
                "layout_certain": layout.certain,
            }
        )
    return rows


def _chw(shape: tuple | None, layout: Layout) -> list | None:
    if shape is None or len(shape) != 4:
        return None
    spatial = [axis for axis in (1, 2, 3) if axis != layout.channel_axis]
    return [shape[layout.channel_axis], *(shape[axis] for axis in spatial)]


def _shape_problem(named: NamedTensor, actual: tuple[int, ...]) -> str | None:
    expected = named.candidate.type.shape
    if expected is None:
        return None
    mismatched = len(expected) != len(actual) or any(
        isinstance(want, int) and want != got for want, got in zip(expected, actual)
    )
    if mismatched:
        return f"{named.name}: shape inference expected {list(expected)}, the run gave {list(actual)}"
    return None


def _to_chw(raw: np.ndarray, layout: Layout) -> np.ndarray:
    single = raw[0]  # batch of one
    return np.ascontiguousarray(np.moveaxis(single, layout.channel_axis - 1, 0), dtype=np.float32)


def open_session(plan: ModelPlan, options: RenderOptions | None = None):
    """An onnxruntime session of the model with every planned tensor exposed as an output."""
    options = options or RenderOptions()
    exposed = expose_outputs(plan.loaded.model, [named.candidate for named in plan.tensors])
    return create_session(exposed, options.provider, plan.loaded.path.parent, plan.loaded.external_data)


def compute_activations(
    plan: ModelPlan, images: list[str | os.PathLike], options: RenderOptions | None = None, session=None
) -> Iterator[ImageActivations]:
    """Run every image through the exposed model; yields one ImageActivations per image."""
    options = options or RenderOptions()
    paths = expand_image_paths(images)
    session = session or open_session(plan, options)
    preset = options.preprocess or ("raw" if plan.input.elem_type in (2, 3) else DEFAULT_PRESET)
    names = [named.candidate.tensor for named in plan.tensors]
    channels = plan.input.shape[plan.input_layout.channel_axis]
    channels = channels if isinstance(channels, int) else 3
    for path in paths:
        started = time.perf_counter()
        pixels = load_image(path, channels)
        tensor, record = prepare_input(pixels, plan.input, plan.input_layout, preset, options.size, options.max_size)
        prepared = time.perf_counter()
        outputs = run_session(session, {plan.input.name: tensor}, names)
        ran = time.perf_counter()
        result = ImageActivations(Path(path), tensor, record, [])
        for named in plan.tensors:
            raw = outputs[named.candidate.tensor]
            problem = _shape_problem(named, raw.shape)
            if problem:
                result.problems.append(problem)
            if raw.ndim != 4 or raw.shape[0] != 1:
                result.problems.append(f"{named.name}: output has shape {list(raw.shape)}, not 4-D; not drawn")
                continue
            layout = plan.layout_of(named.candidate.tensor)
            if not layout.certain:
                result.problems.append(
                    f"{named.name}: the graph does not prove its channel axis; drawn as {layout.name}"
                )
            result.layers.append(LayerActivation(named, _to_chw(raw, layout), tuple(raw.shape), layout))
        result.seconds = {"preprocess": prepared - started, "inference": ran - prepared}
        yield result


def activations(
    model_path: str | os.PathLike, image: str | os.PathLike, options: RenderOptions | None = None
) -> dict[str, np.ndarray]:
    """``{display name: (C, H, W) float32}`` for one image: the numbers behind the pictures."""
    plan = plan_model(model_path, options)
    result = next(compute_activations(plan, [image], options))
    return {layer.named.name: layer.values for layer in result.layers}


def draw_layer(
    values: np.ndarray, options: RenderOptions | None = None, title: str | None = None
) -> tuple[np.ndarray, Grid, ChannelStats]:
    """(C, H, W) activations -> palette-index picture (titled), its grid geometry and channel stats."""
    options = options or RenderOptions()
    stats = channel_stats(values)
    normalized = normalize(values, options.normalization, stats)
    grid = tile(to_palette_indices(normalized), options.layout, padding=1, pad_value=BACKGROUND)
    picture = titled(grid.image, title) if title else grid.image
    return picture, grid, stats


def _overview(pictures: list[tuple[str, np.ndarray]], per_row: int = 16, size: int = 48) -> np.ndarray:
    """One picture of the network: a row per layer, its first channels at a common size."""
    rows = []
    for title, channels in pictures:
        count, height, width = channels.shape
        picks = channels[:per_row]
        ys = (np.arange(size) * height // size).clip(0, height - 1)
        xs = (np.arange(size) * width // size).clip(0, width - 1)
        small = picks[:, ys][:, :, xs]
        grid = tile(small, "belt", padding=2, pad_value=BACKGROUND, min_tile=0)
        shown = f", first {len(picks)} shown" if len(picks) < count else ""
        label = f"{title}  ({count}x{height}x{width}{shown})"
        rows.append(titled(grid.image, label))
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 4), (0, width - row.shape[1])), constant_values=BACKGROUND) for row in rows]
    return np.concatenate(padded, axis=0)


def _image_folders(paths: list[Path]) -> list[str]:
    if len(paths) == 1:
        return [""]
    folders, seen = [], set()
    for index, path in enumerate(paths):
        stem = file_stem(index, path.stem)
        folders.append(stem if stem not in seen else f"{stem}_{index}")
        seen.add(folders[-1])
    return folders


def render(
    model_path: str | os.PathLike | None = None,
    images: list[str | os.PathLike] | None = None,
    out: str | os.PathLike = "feature_maps",
    options: RenderOptions | None = None,
) -> dict:
    """Render every shown tensor of ``model_path`` for ``images`` into ``out``; returns the manifest.

    With no model, the embedded demo model; with no images, matplotlib's sample photo.
    """
    options = options or RenderOptions()
    started = time.perf_counter()
    demo_model, demo_photo = (None, None)
    if model_path is None or not images:
        demo_model, demo_photo = demo_paths()
    model_path = Path(model_path) if model_path is not None else demo_model
    image_paths = expand_image_paths(images) if images else [demo_photo]
    lookup_table(options.cmap)  # an unknown colormap fails before any work
    plan = plan_model(model_path, options)
    planned = time.perf_counter()
    session = open_session(plan, options)
    folders = _image_folders(image_paths)
    files: list[str] = []
    entries = []
    with staged_output(out) as staging:
        for folder, result in zip(folders, compute_activations(plan, image_paths, options, session)):
            entries.append(_write_image(staging, folder, result, plan.input_layout, options, files))
        manifest = {
            "model": str(model_path),
            "source": plan.source,
            "provider": session.get_providers()[0],
            "fmonnx_version": __version__,
            "options": {
                "normalization": options.normalization,
                "layout": options.layout,
                "cmap": options.cmap,
                "ops": list(options.ops) if options.ops is not None else None,
                "all_spatial": options.all_spatial,
            },
            "input": {"name": plan.input.name, "shape": list(plan.input.shape), "layout": plan.input_layout.name},
            "images": entries,
            "files": files,
            "seconds": {"plan": planned - started},
        }
        manifest["seconds"]["total"] = time.perf_counter() - started
        write_manifest(staging, manifest)
    return manifest


def _write_image(
    staging: Path, folder: str, result: ImageActivations, input_layout: Layout, options: RenderOptions, files: list[str]
) -> dict:
    target = staging / folder
    target.mkdir(exist_ok=True)
    prefix = f"{folder}/" if folder else ""
    drawn = time.perf_counter()
    layers = []
    overview_rows = []
    for index, layer in enumerate(result.layers):
        named = layer.named
        title = f"{named.name}  [{named.candidate.op}]  {'x'.join(map(str, layer.values.shape))}"
        picture, grid, stats = draw_layer(layer.values, options, title)
        stem = file_stem(index, named.name)
        write_picture(target / f"{stem}.png", picture, options.cmap, title)
        files.append(f"{prefix}{stem}.png")
        entry = {
            "name": named.name,
            "tensor": named.candidate.tensor,
            "op": named.candidate.op,
            "source_layer": named.source_layer,
            "shape": list(layer.values.shape),
            "channel_axis": layer.layout.channel_axis,
            "layout_certain": layer.layout.certain,
            "dead_channels": int(stats.dead.sum()),
            "stats": stats.summary(),
            "grid": grid.describe(),
            "png": f"{prefix}{stem}.png",
        }
        if named.layer_output is not None:
            entry["layer_output"] = named.layer_output
        if options.save_arrays:
            write_array(target / f"{stem}.npy", layer.values)
            files.append(f"{prefix}{stem}.npy")
            entry["array"] = f"{prefix}{stem}.npy"
        layers.append(entry)
        overview_rows.append((named.name, to_palette_indices(normalize(layer.values, options.normalization, stats))))
    image_entry = {
        "image": str(result.image),
        "input_shape": list(result.input_tensor.shape),
        "input_layout": input_layout.name,
        "preprocess": result.preprocess,
        "layers": layers,
        "problems": result.problems,
    }
    if overview_rows:
        write_picture(target / "overview.png", _overview(overview_rows), options.cmap, "overview")
        files.append(f"{prefix}overview.png")
        image_entry["overview"] = f"{prefix}overview.png"
    if options.save_arrays:
        write_array(target / "input.npy", result.input_tensor)
        files.append(f"{prefix}input.npy")
        image_entry["input_array"] = f"{prefix}input.npy"
    image_entry["seconds"] = {**result.seconds, "draw_and_write": time.perf_counter() - drawn}
    return image_entry

