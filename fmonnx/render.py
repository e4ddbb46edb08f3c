"""The render pipeline: plan a model, compute activations, draw, write.

Stages pass plain data: ``plan_model`` (ModelProto -> what to show and how
it is laid out), ``compute_activations`` (images -> ``{name: (C, H, W)}``),
``draw_layer`` (activations -> palette picture and statistics) and
``render`` (all of it, written to a folder with a manifest).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from . import __version__
from .colormap import BACKGROUND, DEFAULT_CMAP, lookup_table, to_palette_indices
from .errors import FmonnxError, ImageError, ModelError
from .expose import DEFAULT_OPS, find_candidates
from .keras_input import conversion_record, onnx_path_for
from .layout import IMAGE_CHANNELS, Layout, channel_axes, chw_shape, detect_input_layout
from .load import LoadedModel, load_model
from .names import SOURCE_KEY, NamedTensor, name_tensors, read_layer_metadata
from .normalize import DEFAULT_METHOD, METHODS, ChannelStats, channel_stats, normalize
from .preprocess import DEFAULT_PRESET, PRESETS, InputSpec, expand_image_paths, load_image, prepare_input
from .report import data_file, write_layer_data, write_photo, write_report
from .result import RenderResult
from .run import PROVIDERS, run_session
from .runner import Runner, open_session
from .select import check_selection, describe_selection, select_channels
from .shapes import TensorType, infer_types
from .stats import channel_columns, layer_summary
from .tile import DEFAULT_LAYOUT, LAYOUTS, Grid, plan_grid, tile
from .write import (
    PictureWriter,
    Spill,
    file_stem,
    staged_output,
    titled,
    write_array,
    write_manifest,
    write_picture,
)

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
    report: bool = True  # index.html and its data (report/) beside the pictures
    size: tuple[int, int] | None = None  # the model's H x W, or the image's own when dynamic
    max_size: int | None = None
    input_layout: str | None = None  # detected from the input shape
    max_channels: int | None = None  # draw only each layer's first N channels (all)
    top: int | None = None  # draw only each layer's N channels of highest mean activation (all)
    max_memory: int | None = None  # bytes; passes.memory_bound(model, largest tensor) when None
    threads: int | None = None  # onnxruntime's intra-op threads (its default: the physical cores)
    jobs: int | None = None  # PNG encoding threads (the cores, at most 4)


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
    layers: list[LayerActivation] | Iterator[LayerActivation]  # an iterator when run in passes: consume once
    problems: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    passes: dict | None = None  # how the image was split into passes, when it was


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
    loaded = load_model(onnx_path_for(model_path))
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
    recorded = tuple(  # in layer order; a layer's inner tensors (its pre-activation Conv) before its output
        name for record in records for name in (*record.get("inner", []), record["output"])
    )
    ops = options.ops if options.ops is not None else (() if recorded else DEFAULT_OPS)
    candidates = find_candidates(loaded.model, types, ops, options.all_spatial, recorded)
    if recorded and options.ops is None:
        order = {name: index for index, name in enumerate(recorded)}
        candidates.sort(key=lambda c: order.get(c.tensor, len(order)))
    layouts = channel_axes(loaded.model, types, input_layout)
    for record in records:  # the converter knows each Keras layer output's layout, even past a Reshape
        axis = {"NCHW": 1, "NHWC": 3}.get(record.get("layout"))
        if axis is not None:
            layouts[record["output"]] = Layout(axis, True)
    named = name_tensors(loaded.model, candidates)
    source = _source(loaded)
    converted = conversion_record(model_path)
    if converted:
        source = {**source, **converted}
    return ModelPlan(_without_weights(loaded), spec, input_layout, named, layouts, source)


_SMALL_INITIALIZER = 64  # elements; shape inference reads small integer initializers' values


def _without_weights(loaded: LoadedModel) -> LoadedModel:
    """The loaded model with its large initializers reduced to name, type and dims.

    The original message is emptied and dropped (protobuf frees a message's
    memory only with the message), so it must be the plan's own.
    """
    model = loaded.model
    kept = []
    for tensor in model.graph.initializer:
        elements = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
        if elements <= _SMALL_INITIALIZER or tensor.data_location == onnx.TensorProto.EXTERNAL:
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
        else:
            copy = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        kept.append(copy)
    model.graph.ClearField("initializer")
    light = onnx.ModelProto()
    light.CopyFrom(model)
    light.graph.initializer.extend(kept)
    return dataclasses.replace(loaded, model=light)


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
                "shape": chw_shape(named.candidate.type.shape, layout),
                "channel_axis": layout.channel_axis,
                "layout_certain": layout.certain,
            }
        )
        if named.layer_output is not None:
            rows[-1]["layer_output"] = named.layer_output
        if named.source_class:
            rows[-1]["source_class"] = named.source_class
    return rows


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


def _layer(plan: ModelPlan, named: NamedTensor, raw: np.ndarray, problems: list[str]) -> LayerActivation | None:
    """Check one returned tensor against the plan; its (C, H, W) activation, or None when it cannot be drawn."""
    problem = _shape_problem(named, raw.shape)
    if problem:
        problems.append(problem)
    if raw.ndim != 4 or raw.shape[0] != 1:
        problems.append(f"{named.name}: output has shape {list(raw.shape)}, not 4-D; not drawn")
        return None
    layout = plan.layout_of(named.candidate.tensor)
    if not layout.certain:
        problems.append(f"{named.name}: the graph does not prove its channel axis; drawn as {layout.name}")
    return LayerActivation(named, _to_chw(raw, layout), tuple(raw.shape), layout)


def _passed_layers(
    plan: ModelPlan, runner: Runner, pieces, types, result: ImageActivations, started: float, before_pass=None
):
    by_tensor = {named.candidate.tensor: named for named in plan.tensors}
    for tensor, raw in runner.run_in_passes(pieces, types, result.input_tensor, before_pass):
        result.seconds["inference"] = time.perf_counter() - started
        layer = _layer(plan, by_tensor[tensor], raw, result.problems)
        del raw
        if layer is not None:
            yield layer
            layer = None


def compute_activations(
    plan: ModelPlan, images: list[str | os.PathLike], options: RenderOptions | None = None,
    runner: Runner | None = None,
) -> Iterator[ImageActivations]:
    """Run every image through the exposed model; yields one ImageActivations per image.

    When an image's tensors would not fit the memory bound (``max_memory``) it is
    run in passes (see passes.py): its ``layers`` is then an iterator, in graph
    order, that runs each pass as it is consumed. ``runner.provider`` says what ran.
    """
    options = options or RenderOptions()
    yield from _compute(plan, expand_image_paths(images), options, runner or Runner(plan, options))


def _compute(
    plan: ModelPlan, paths: list[Path], options: RenderOptions, runner: Runner, before_pass=None
) -> Iterator[ImageActivations]:
    preset = options.preprocess or ("raw" if plan.input.elem_type in (2, 3) else DEFAULT_PRESET)
    names = [named.candidate.tensor for named in plan.tensors]
    channels = plan.input.shape[plan.input_layout.channel_axis]
    channels = channels if isinstance(channels, int) else 3
    for path in paths:
        started = time.perf_counter()
        pixels = load_image(path, channels)
        tensor, record = prepare_input(pixels, plan.input, plan.input_layout, preset, options.size, options.max_size)
        prepared = time.perf_counter()
        result = ImageActivations(Path(path), tensor, record, [], seconds={"preprocess": prepared - started})
        passes = runner.pieces(tensor)
        if passes is not None:
            pieces, types, result.passes = passes
            result.layers = _passed_layers(plan, runner, pieces, types, result, prepared, before_pass)
        else:
            outputs = run_session(runner.session(), {plan.input.name: tensor}, names)
            result.seconds["inference"] = time.perf_counter() - prepared
            for named in plan.tensors:
                layer = _layer(plan, named, outputs.pop(named.candidate.tensor), result.problems)
                if layer is not None:
                    result.layers.append(layer)
        yield result


def activations(
    model_path: str | os.PathLike, image: str | os.PathLike, options: RenderOptions | None = None
) -> dict[str, np.ndarray]:
    """``{display name: (C, H, W) float32}`` for one image: the numbers behind the pictures."""
    plan = plan_model(model_path, options)
    result = next(compute_activations(plan, [image], options))
    return {layer.named.name: layer.values for layer in result.layers}


def draw_layer(
    values: np.ndarray,
    options: RenderOptions | None = None,
    title: str | None = None,
    stats: ChannelStats | None = None,
    shown: np.ndarray | None = None,
) -> tuple[np.ndarray, Grid, ChannelStats]:
    """(C, H, W) activations -> palette-index picture (titled), its grid geometry and channel stats.

    ``shown``: the channels to draw, in tile order (``select.select_channels``); None draws all.
    """
    options = options or RenderOptions()
    stats = stats if stats is not None else channel_stats(values)
    count = values.shape[0] if shown is None else len(shown)
    plan = plan_grid(count, values.shape[1], values.shape[2], options.layout, padding=1)
    # a picture too big to show whole keeps every step-th value: sample before normalizing, not after
    indices = to_palette_indices(normalize(plan.sample(values), options.normalization, stats, shown))
    grid = tile(indices, options.layout, padding=1, pad_value=BACKGROUND, plan=plan)
    del indices
    picture = titled(grid.image, title) if title else grid.image
    return picture, grid, stats


_OVERVIEW_CHANNELS = 16


def _overview(
    pictures: list[tuple[str, int, np.ndarray]], per_row: int = _OVERVIEW_CHANNELS, size: int = 48
) -> np.ndarray:
    """One picture of the network: a row per layer, its first drawn channels at a common size.

    pictures: (title, the layer's channel count, (C', H, W) palette indices of its first drawn channels).
    """
    rows = []
    for title, count, channels in pictures:
        _, height, width = channels.shape
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


def _check_choices(options: RenderOptions) -> None:
    """Options the CLI restricts with choices, checked for library callers before any work."""
    for value, allowed, what in (
        (options.normalization, METHODS, "normalization"),
        (options.layout, LAYOUTS, "layout"),
        (options.provider, PROVIDERS, "provider"),
    ):
        if value not in allowed:
            raise FmonnxError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")
    if options.preprocess is not None and options.preprocess not in PRESETS:
        raise FmonnxError(f"unknown preprocessing {options.preprocess!r}; choose one of: {', '.join(PRESETS)}")


def render(
    model_path: str | os.PathLike | None = None,
    images: list[str | os.PathLike] | None = None,
    out: str | os.PathLike = "feature_maps",
    options: RenderOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RenderResult:
    """Render every shown tensor of ``model_path`` for ``images`` into ``out``.

    Returns a RenderResult: ``.manifest`` is what manifest.json holds; in a notebook it shows itself.

    With no model, the embedded demo model; with no images, matplotlib's sample photo.
    ``progress(done, total)`` is called after each image. Pictures are encoded on
    ``options.jobs`` threads while the next image runs through the model.
    """
    options = options or RenderOptions()
    check_selection(options.max_channels, options.top)
    _check_choices(options)
    started = time.perf_counter()
    model_path = Path(model_path) if model_path is not None else demo_paths()[0]
    image_paths = expand_image_paths(images) if images else [demo_paths()[1]]
    lookup_table(options.cmap)  # an unknown colormap fails before any work
    plan, runner = _planned(model_path, options)
    planned = time.perf_counter()
    folders = _image_folders(image_paths)
    files: list[str] = []
    entries = []
    photos = []  # futures of the report's input pictures
    with staged_output(out) as staging, Spill(staging) as spill:
        with PictureWriter(options.jobs) as writer:
            # image i is drawn on the writer's threads while image i + 1 runs through the model
            pending = None
            # in passes, what a pass gave is drawn before the next runs (writer.drain)
            for folder, result in zip(folders, _compute(plan, image_paths, options, runner, writer.drain)):
                if options.report:
                    size = result.preprocess.get("resize")
                    photos.append(writer.submit(0, write_photo, staging, len(photos), result.image, size))
                job = _start_image(staging, folder, result, options, writer, spill)
                if pending is not None:
                    entries.append(_finish_image(pending, plan.input_layout, options, files, writer))
                    if progress is not None:
                        progress(len(entries), len(image_paths))
                pending = job
            if pending is not None:
                entries.append(_finish_image(pending, plan.input_layout, options, files, writer))
                if progress is not None:
                    progress(len(entries), len(image_paths))
        manifest = {
            "model": str(model_path),
            "source": plan.source,
            "provider": runner.provider,
            "fmonnx_version": __version__,
            "options": {
                "normalization": options.normalization,
                "layout": options.layout,
                "cmap": options.cmap,
                "ops": list(options.ops) if options.ops is not None else None,
                "all_spatial": options.all_spatial,
                "max_channels": options.max_channels,
                "top": options.top,
                "max_memory": options.max_memory,
            },
            "input": {"name": plan.input.name, "shape": list(plan.input.shape), "layout": plan.input_layout.name},
            "images": entries,
            "files": files,
            "seconds": {"plan": planned - started},
        }
        manifest["seconds"]["total"] = time.perf_counter() - started  # what the page's header shows
        if options.report:
            files.extend(write_report(staging, manifest, [photo.result() for photo in photos]))
            manifest["seconds"]["total"] = time.perf_counter() - started
        write_manifest(staging, manifest)
    for image in manifest["images"]:  # their per-channel columns are in manifest.json, read when asked for
        for layer in image["layers"]:
            del layer["channels"]
    return RenderResult(Path(out), outline=manifest)


_last_model: list = []  # [(key, plan, runner)]: the model of the last render, kept for the next
_last_model_lock = threading.Lock()


def _planned(model_path: Path, options: RenderOptions) -> tuple[ModelPlan, Runner]:
    """The plan and runner (with its open session) of the last render when it had the same model file and
    the same model options, else new ones.

    A warm process (a notebook, a script rendering in a loop) skips reading, planning
    and opening the model again: 0.25 s of a ResNet-50's 0.5 s. The file's size and
    modification time are part of the key, so an edited model is read again. Only
    the last model is kept.
    """
    try:
        stat = model_path.stat()
    except OSError:
        return (plan := plan_model(model_path, options)), Runner(plan, options)
    key = (
        str(model_path.resolve()), stat.st_size, stat.st_mtime_ns, options.ops, options.all_spatial,
        options.input_layout, options.provider, options.threads, options.max_memory,
        # the pass planner's drawing estimate reads these
        options.layout, options.top, options.max_channels, options.jobs,
    )
    with _last_model_lock:
        if _last_model and _last_model[0][0] == key:
            return _last_model[0][1], _last_model[0][2]
        _last_model.clear()  # the old session goes before the new one is opened
    plan = plan_model(model_path, options)
    runner = Runner(plan, options)
    with _last_model_lock:
        _last_model[:] = [(key, plan, runner)]
    return plan, runner


def _consume(layers: Iterable[LayerActivation]) -> Iterator[LayerActivation]:
    """Yield each layer, dropping the list's reference to it, so its array is freed once drawn."""
    if isinstance(layers, list):
        layers.reverse()
        while layers:
            yield layers.pop()
    else:
        yield from layers


@dataclass
class _ImageJob:
    """An image whose layers are being drawn and written on the writer's threads."""

    result: ImageActivations
    folder: str
    target: Path
    prefix: str
    started: float
    spill: Spill  # where the per-channel columns wait for the manifest
    layers: list  # futures of (entry, files, overview row, channel stats), in layer order


def _start_image(
    staging: Path, folder: str, result: ImageActivations, options: RenderOptions, writer: PictureWriter, spill: Spill
) -> _ImageJob:
    """Hand each layer of ``result`` to the writer's threads (numpy and zlib release the GIL)."""
    target = staging / folder
    target.mkdir(exist_ok=True)
    job = _ImageJob(result, folder, target, f"{folder}/" if folder else "", time.perf_counter(), spill, [])
    for index, layer in enumerate(_consume(result.layers)):
        job.layers.append(writer.submit(layer.values.nbytes, _write_layer, staging, job, index, layer, options))
        del layer  # the task holds the array now; it is freed once drawn
    return job


def _write_layer(
    staging: Path, job: _ImageJob, index: int, layer: LayerActivation, options: RenderOptions
) -> tuple[dict, list[str], tuple, ChannelStats]:
    """Draw and write one layer (on a writer thread): its manifest entry, files, overview row and stats."""
    folder, target, prefix = job.folder, job.target, job.prefix
    files: list[str] = []
    named = layer.named
    count = layer.values.shape[0]
    stats = channel_stats(layer.values)
    shown = select_channels(stats, options.max_channels, options.top)
    title = f"{named.name}  [{named.candidate.op}]  {'x'.join(map(str, layer.values.shape))}"
    if shown is not None:
        title += f"  ({'top' if options.top else 'first'} {shown.size} of {count} channels)"
    picture, grid, stats = draw_layer(layer.values, options, title, stats, shown)
    grid_record = grid.describe()
    del grid  # its untitled picture: only the titled one is written
    stem = file_stem(index, named.name)
    write_picture(target / f"{stem}.png", picture, options.cmap, title)
    del picture
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
        "stats": layer_summary(stats),
        "channels": None,  # filled in by _spill_channels, with the image's other layers
        "grid": grid_record,
        "png": f"{prefix}{stem}.png",
    }
    if shown is not None:
        entry["selection"] = describe_selection(shown, count, options.max_channels, options.top)
    if named.layer_output is not None:
        entry["layer_output"] = named.layer_output
    if named.source_class:
        entry["source_class"] = named.source_class
    if options.report:
        entry["report_data"] = write_layer_data(staging, data_file(folder, stem), layer.values, stats)
        files.append(entry["report_data"]["file"])
    if options.save_arrays:
        write_array(target / f"{stem}.npy", layer.values)
        files.append(f"{prefix}{stem}.npy")
        entry["array"] = f"{prefix}{stem}.npy"
    first = shown[:_OVERVIEW_CHANNELS] if shown is not None else slice(0, _OVERVIEW_CHANNELS)
    overview = (named.name, count, to_palette_indices(normalize(layer.values, options.normalization, stats, first)))
    return entry, files, overview, stats


def _spill_channels(spill: Spill, layers: list[tuple[dict, ChannelStats]]) -> None:
    """Fill each entry's ``channels`` with its per-channel columns, as JSON text kept in ``spill``
    (on a writer thread: one image's layers formatted together, see stats.channel_columns)."""
    columns = channel_columns([stats for _, stats in layers])
    handles = iter(spill.put([text for layer in columns for text in layer.values()]))
    for (entry, _), layer in zip(layers, columns):
        entry["channels"] = {field: next(handles) for field in layer}


def _finish_image(job: _ImageJob, input_layout: Layout, options: RenderOptions, files: list[str],
                  writer: PictureWriter) -> dict:
    """Wait for the image's layers; its manifest entry (the overview is written on a writer thread)."""
    result, target, prefix = job.result, job.target, job.prefix
    layers = []
    overview_rows = []
    measured = []
    for future in job.layers:
        entry, layer_files, overview, stats = future.result()
        layers.append(entry)
        files.extend(layer_files)
        overview_rows.append(overview)
        measured.append((entry, stats))
    job.layers.clear()
    if measured:
        size = sum(stats.mean.nbytes * 6 for _, stats in measured)
        writer.submit(size, _spill_channels, job.spill, measured)
    image_entry = {
        "image": str(result.image),
        "input_shape": list(result.input_tensor.shape),
        "input_layout": input_layout.name,
        "preprocess": result.preprocess,
        "layers": layers,
        "problems": result.problems,
    }
    if result.passes is not None:
        image_entry["passes"] = result.passes
    if overview_rows:
        writer.write(target / "overview.png", _overview(overview_rows), options.cmap, "overview")
        files.append(f"{prefix}overview.png")
        image_entry["overview"] = f"{prefix}overview.png"
    if options.save_arrays:
        write_array(target / "input.npy", result.input_tensor)
        files.append(f"{prefix}input.npy")
        image_entry["input_array"] = f"{prefix}input.npy"
    image_entry["seconds"] = {**result.seconds, "draw_and_write": time.perf_counter() - job.started}
    return image_entry

