"""The render front-end: plan a model, compute activations, draw, write a folder with a manifest and a page.

An orchestrator over the stages: ``stages.plan`` (ModelProto -> what to show
and how it is laid out), ``stages.activations`` (images -> ``{name: (C, H, W)}``),
``stages.draw`` (activations -> palette pictures), ``stages.png``, ``stages.picture_pool``,
``stages.output_folder`` and ``report`` (files). Image i is drawn on writer threads
while image i + 1 runs through the model.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..contract import SCHEMA
from ..errors import FmonnxError
from ..options import RenderOptions, check_choices
from ..report.page import data_file, write_layer_data, write_layer_levels, write_photo, write_report
from ..report.result import RenderResult
from ..sources.inputs import as_model_path
from ..stages.activations import ImageActivations, LayerActivation, consume_layers, run_images
from ..stages.colormap import lookup_table, to_palette_indices
from ..stages.draw import OVERVIEW_CHANNELS, draw_indices, draw_layer, draw_overview
from ..stages.json_out import write_manifest
from ..stages.layout import Layout, chw_shape
from ..stages.normalize import ChannelStats, channel_stats, normalize
from ..stages.output_folder import staged_output
from ..stages.picture_pool import PictureWriter
from ..stages.plan import ModelPlan, demo_paths
from ..stages.png import file_stem, image_folders, title_strip, write_array, write_picture
from ..stages.preprocess import expand_image_paths
from ..stages.runner import Runner
from ..stages.select import check_selection, describe_selection, select_channels
from ..stages.spill import Spill
from ..stages.stats import channel_columns, layer_summary
from .models import plan_for

__all__ = ["render"]

log = logging.getLogger(__name__)

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
    check_choices(options)
    started = time.perf_counter()
    # a framework file's path stays itself (converted in plan_for); a module becomes its converted file
    model_path = as_model_path(model_path) if model_path is not None else demo_paths()[0]
    image_paths = expand_image_paths(images) if images else [demo_paths()[1]]
    lookup_table(options.cmap)  # an unknown colormap fails before any work
    plan, runner = _planned(model_path, options)
    planned = time.perf_counter()
    folders = image_folders(image_paths)
    weigh = _ClassWeights(model_path, options) if options.class_weights else None
    files: list[str] = []
    entries = []
    photos = []  # futures of the report's input pictures
    with staged_output(out) as staging, Spill(staging) as spill:
        with PictureWriter(options.jobs) as writer:
            # image i is drawn on the writer's threads while image i + 1 runs through the model
            pending = None
            # in passes, what a pass gave is drawn before the next runs (writer.drain)
            writer.submit(0, _draw_titles, plan, options)
            # statistics, pictures and levels computed in the graph
            draw = (options.normalization, options.report) if options.draw_in_graph else None
            images = run_images(plan, image_paths, options, runner, writer.drain, draw=draw)
            for folder, result in zip(folders, images):
                if options.report:
                    size = result.preprocess.get("resize")
                    photos.append(writer.submit(0, write_photo, staging, len(photos), result.image, size))
                job = _start_image(staging, folder, result, options, writer, spill)
                if weigh is not None:  # its backward pass runs while the writer draws this image
                    job.class_weights = weigh(result.image)
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
            "schema": SCHEMA,
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
        return (plan := plan_for(model_path, options)), Runner(plan, options)
    key = (
        str(model_path.resolve()), stat.st_size, stat.st_mtime_ns, options.ops, options.all_spatial,
        options.input_layout, options.provider, options.optimization, options.threads, options.max_memory,
        # the pass planner's drawing estimate reads these
        options.layout, options.top, options.max_channels, options.jobs,
    )
    with _last_model_lock:
        if _last_model and _last_model[0][0] == key:
            return _last_model[0][1], _last_model[0][2]
        _last_model.clear()  # the old session goes before the new one is opened
    plan = plan_for(model_path, options)
    runner = Runner(plan, options)
    with _last_model_lock:
        _last_model[:] = [(key, plan, runner)]
    return plan, runner


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
    class_weights: tuple | None = None  # ({layer name: weights}, target) or (None, problem): --class-weights


def _start_image(
    staging: Path, folder: str, result: ImageActivations, options: RenderOptions, writer: PictureWriter, spill: Spill
) -> _ImageJob:
    """Hand each layer of ``result`` to the writer's threads (numpy and zlib release the GIL)."""
    target = staging / folder
    target.mkdir(exist_ok=True)
    job = _ImageJob(result, folder, target, f"{folder}/" if folder else "", time.perf_counter(), spill, [])
    for index, layer in enumerate(consume_layers(result.layers)):
        job.layers.append(writer.submit(layer.nbytes, _write_layer, staging, job, index, layer, options))
        del layer  # the task holds the array now; it is freed once drawn
    return job


def _write_layer(
    staging: Path, job: _ImageJob, index: int, layer: LayerActivation, options: RenderOptions
) -> tuple[dict, list[str], tuple, ChannelStats]:
    """Draw and write one layer (on a writer thread): its manifest entry, files, overview row and stats."""
    folder, target, prefix = job.folder, job.target, job.prefix
    files: list[str] = []
    named = layer.named
    count = layer.shape[0]
    drawn = layer.drawn
    stats = drawn.stats if drawn is not None else channel_stats(layer.values)
    shown = select_channels(stats, options.max_channels, options.top)
    title = _title(named, layer.shape, options, shown.size if shown is not None else None)
    if drawn is not None:
        picture, grid = draw_indices(drawn.indices, options, title, shown)
    else:
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
        "named_by": named.named_by,
        "shape": list(layer.shape),
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
    if named.folded_batchnorm:  # a TorchScript export's Conv + BatchNorm, named after the Conv
        entry["folded_batchnorm"] = True
    if named.also_output_of:
        entry["also_output_of"] = list(named.also_output_of)
    if options.report:
        file = data_file(folder, stem)
        if drawn is not None and drawn.levels is not None:
            entry["report_data"] = write_layer_levels(staging, file, drawn.levels)
        else:
            entry["report_data"] = write_layer_data(staging, file, layer.values, stats)
        files.append(entry["report_data"]["file"])
    if options.save_arrays:
        write_array(target / f"{stem}.npy", layer.values)
        files.append(f"{prefix}{stem}.npy")
        entry["array"] = f"{prefix}{stem}.npy"
    first = shown[:OVERVIEW_CHANNELS] if shown is not None else slice(0, OVERVIEW_CHANNELS)
    if drawn is not None:
        overview = (named.name, count, drawn.indices[first])
    else:
        overview = (named.name, count, to_palette_indices(normalize(layer.values, options.normalization, stats, first)))
    return entry, files, overview, stats


def _title(named, shape: tuple[int, ...], options: RenderOptions, shown: int | None) -> str:
    """A layer picture's title: name, op, C x H x W and, when only some channels are drawn, which."""
    title = f"{named.name}  [{named.candidate.op}]  {'x'.join(map(str, shape))}"
    if shown is not None:
        title += f"  ({'top' if options.top else 'first'} {shown} of {shape[0]} channels)"
    return title


def _draw_titles(plan: ModelPlan, options: RenderOptions) -> None:
    """Draw the title bars of the layers whose size the plan knows (on a writer thread, while the first
    image runs through the model): a cold render otherwise draws them all after the run, ~1 ms each."""
    if options.top or options.max_channels:
        return  # their titles say how many channels were drawn, known after the run
    for named in plan.tensors:
        shape = chw_shape(named.candidate.type.shape, plan.layout_of(named.candidate.tensor))
        if shape is not None and all(isinstance(dim, int) for dim in shape):
            title_strip(_title(named, tuple(shape), options, None))


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
    if job.class_weights is not None:
        _add_class_weights(image_entry, *job.class_weights)
    if result.passes is not None:
        image_entry["passes"] = result.passes
    if overview_rows:
        writer.write(target / "overview.png", draw_overview(overview_rows), options.cmap, "overview")
        files.append(f"{prefix}overview.png")
        image_entry["overview"] = f"{prefix}overview.png"
    if options.save_arrays:
        write_array(target / "input.npy", result.input_tensor)
        files.append(f"{prefix}input.npy")
        image_entry["input_array"] = f"{prefix}input.npy"
    image_entry["seconds"] = {**result.seconds, "draw_and_write": time.perf_counter() - job.started}
    return image_entry


class _ClassWeights:
    """Each layer's Grad-CAM weights for the top class, per image (``--class-weights``): one explain
    session for the whole render, opened at the first image.

    A model the backward pass cannot be written for (an op with no gradient rule) is said once per
    image in its problems; the render itself goes on.
    """

    def __init__(self, model_path: Path, options: RenderOptions):
        self.model_path, self.options = model_path, options
        self.explainer = None
        self.failed: str | None = None  # the model-wide reason, once known

    def __call__(self, image: Path) -> tuple[dict | None, dict | str]:
        from .explain import Explainer

        if self.failed is not None:
            return None, self.failed
        try:
            if self.explainer is None:
                self.explainer = Explainer(self.model_path, None, "all", "gradcam", self.options)
                self.explainer.prepare()
        except FmonnxError as exc:
            self.failed = f"class weights left out: {exc}"
            return None, self.failed
        try:
            explained = self.explainer.explain_image(image)
        except FmonnxError as exc:  # this image only (e.g. over --max-memory in one run)
            return None, f"class weights left out: {exc}"
        return {layer.name: layer.weights for layer in explained.layers}, explained.target


def _add_class_weights(image_entry: dict, weights: dict | None, target: dict | str) -> None:
    """Put each layer's ``class_weights`` (channel order) and the image's ``class_target`` in its manifest entry,
    or the reason they are missing in its problems."""
    if weights is None:
        image_entry["problems"] = [*image_entry["problems"], target]
        return
    from ..report.explain_write import target_record

    image_entry["class_target"] = target_record(target)
    for entry in image_entry["layers"]:
        values = weights.get(entry["name"])
        if values is not None:  # JSON has no NaN: a non-finite weight is null
            entry["class_weights"] = [float(w) if math.isfinite(w) else None for w in values.tolist()]
