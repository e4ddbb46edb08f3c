"""Run planned models on images: ``{name: (C, H, W) float32}`` per image, channels first.

``compute_activations`` streams one ImageActivations per image (in passes when
the memory bound asks for it, see runner.py); ``activations`` is the one-image
convenience behind ``fmonnx.activations``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..options import RenderOptions
from .ingraph import finite_stats, stats_columns
from .layout import Layout
from .names import NamedTensor
from .normalize import ChannelStats
from .pieces import available_bytes
from .plan import ModelPlan
from .preprocess import DEFAULT_PRESET, expand_image_paths, read_input
from .run import run_session
from .runner import Drawing, Runner

log = logging.getLogger(__name__)

__all__ = [
    "LayerActivation",
    "ImageActivations",
    "compute_activations",
    "run_images",
    "image_memory",
    "consume_layers",
    "DrawnMaps",
]


@dataclass(frozen=True)
class DrawnMaps:
    """A layer drawn in the graph (ingraph.py): its statistics, palette indices and page levels."""

    stats: ChannelStats
    indices: np.ndarray  # (C, H, W) uint8: to_palette_indices(normalize(values, method, stats))
    levels: np.ndarray | None  # (C, H, W) uint8: report.page.quantize(values, stats), with the page only

    @property
    def nbytes(self) -> int:
        return self.indices.nbytes + (self.levels.nbytes if self.levels is not None else 0)


@dataclass
class LayerActivation:
    named: NamedTensor
    values: np.ndarray | None  # (C, H, W) float32, channels first; None when drawn in the graph without them
    raw_shape: tuple[int, ...]
    layout: Layout
    drawn: DrawnMaps | None = None  # when drawn in the graph

    @property
    def shape(self) -> tuple[int, ...]:
        """(C, H, W)."""
        return self.values.shape if self.values is not None else self.drawn.indices.shape

    @property
    def nbytes(self) -> int:
        return (self.values.nbytes if self.values is not None else 0) + (self.drawn.nbytes if self.drawn else 0)


@dataclass
class ImageActivations:
    image: Path
    input_tensor: np.ndarray
    preprocess: dict
    layers: list[LayerActivation] | Iterator[LayerActivation]  # an iterator when run in passes: consume once
    problems: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    passes: dict | None = None  # how the image was split into passes, when it was
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # run_images' ``extra`` tensors, as they came


def consume_layers(layers: Iterable[LayerActivation]) -> Iterator[LayerActivation]:
    """Yield each layer, dropping the list's reference to it, so its array is freed once used
    (drawn, compared); an iterator (a run in passes) is passed through."""
    if isinstance(layers, list):
        layers.reverse()
        while layers:
            yield layers.pop()
    else:
        yield from layers


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


def _drawable(named: NamedTensor, shape: tuple[int, ...], problems: list[str]) -> bool:
    """Check one returned tensor's shape against the plan: False (said in ``problems``) when it cannot be drawn."""
    problem = _shape_problem(named, shape)
    if problem:
        problems.append(problem)
    if len(shape) != 4:
        problems.append(f"{named.name}: output has shape {list(shape)}, not 4-D; not drawn")
        return False
    if shape[0] != 1:  # shape inference could not prove it before the run (plan.set_aside)
        problems.append(f"{named.name}: output has shape {list(shape)}; first axis {shape[0]} is not the "
                        "image batch: window or head batches are not feature maps; not drawn")
        return False
    return True


def _layer(plan: ModelPlan, named: NamedTensor, raw: np.ndarray, problems: list[str]) -> LayerActivation | None:
    """Check one returned tensor against the plan; its (C, H, W) activation, or None when it cannot be drawn."""
    if not _drawable(named, raw.shape, problems):
        return None
    layout = plan.layout_of(named.candidate.tensor)  # an unproven one is said once, in plan.notes
    return LayerActivation(named, _to_chw(raw, layout), tuple(raw.shape), layout)


def _drawn_layer(plan: ModelPlan, named: NamedTensor, drawing: Drawing, outputs: dict, floats: bool,
                 problems: list[str]) -> LayerActivation | None:
    """One layer drawn in the graph (a view of the outputs it shares with the tensors drawn with it),
    checked as ``_layer`` checks a float one."""
    drawn = drawing.outputs[named.candidate.tensor]
    indices = outputs[drawn.indices][:, drawn.channels]
    raw_shape = [0] * indices.ndim
    for position, axis in enumerate(drawn.perm[: indices.ndim]):
        raw_shape[axis] = indices.shape[position]
    if not _drawable(named, tuple(raw_shape), problems):
        return None
    layout = plan.layout_of(named.candidate.tensor)
    columns = {field: column[drawn.channels] for field, column in stats_columns(outputs[drawn.stats]).items()}
    levels = outputs[drawn.levels][0, drawn.channels] if drawn.levels else None
    values = _to_chw(outputs.pop(named.candidate.tensor), layout) if floats else None
    return LayerActivation(named, values, tuple(raw_shape), layout,
                           DrawnMaps(ChannelStats(**columns, nonfinite=0), indices[0], levels))


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
    run in passes (see pieces.py): its ``layers`` is then an iterator, in graph
    order, that runs each pass as it is consumed. ``runner.provider`` says what ran.
    """
    options = options or RenderOptions()
    yield from run_images(plan, expand_image_paths(images), options, runner or Runner(plan, options))


def image_memory(max_memory: int | None) -> int | None:
    """The most an image's decoded pixels may take: the bound, else 90% of the memory available."""
    if max_memory is not None:
        return max_memory
    available = available_bytes()
    return available * 9 // 10 if available is not None else None


def run_images(
    plan: ModelPlan, paths: list[Path], options: RenderOptions, runner: Runner, before_pass=None,
    extra: tuple[str, ...] = (), draw: tuple[str, bool] | None = None,
) -> Iterator[ImageActivations]:
    """One ImageActivations per path (see compute_activations). ``extra``: more tensors (the model's
    final outputs, say) fetched in the same run into ``outputs``; not fetched when run in passes.

    With ``draw`` (normalization method, page levels wanted) an image run in one go comes back drawn in
    the graph (Runner.drawing): each layer's ``drawn`` is set and its float ``values`` only with
    ``options.save_arrays``. An image with a non-finite value in a layer is run again for its float
    maps (numpy draws those, counting the values); a model too old for the drawing nodes is not drawn.
    """
    preset = options.preprocess or ("raw" if plan.input.elem_type in (2, 3) else DEFAULT_PRESET)
    names = [named.candidate.tensor for named in plan.tensors]
    channels = plan.input.shape[plan.input_layout.channel_axis]
    channels = channels if isinstance(channels, int) else 3
    max_bytes = image_memory(options.max_memory)
    for path in paths:
        started = time.perf_counter()
        tensor, record = read_input(
            path, plan.input, plan.input_layout, preset, options.size, options.max_size, channels, max_bytes
        )
        prepared = time.perf_counter()
        result = ImageActivations(
            Path(path), tensor, record, [], problems=list(plan.notes), seconds={"preprocess": prepared - started}
        )
        passes = runner.pieces(tensor)
        if passes is not None:
            pieces, types, result.passes = passes
            result.layers = _passed_layers(plan, runner, pieces, types, result, prepared, before_pass)
            yield result
            continue
        drawing = runner.drawing(*draw, floats=options.save_arrays) if draw else None
        session = _run_drawn(plan, drawing, options, tensor, extra, result, runner) if drawing else runner.session()
        if session is not None:  # the float maps, for numpy to draw
            wanted = [name for name in extra if name not in names]
            outputs = run_session(session, {plan.input.name: tensor}, names + wanted)
            result.outputs = {name: outputs[name] for name in extra}
            for named in plan.tensors:
                layer = _layer(plan, named, outputs.pop(named.candidate.tensor), result.problems)
                if layer is not None:
                    result.layers.append(layer)
        result.seconds["inference"] = time.perf_counter() - prepared
        yield result


def _run_drawn(plan: ModelPlan, drawing: Drawing, options: RenderOptions, tensor: np.ndarray,
               extra: tuple[str, ...], result: ImageActivations, runner: Runner):
    """Run one image through the drawing session into ``result``: None when drawn, else (nothing kept)
    the session to fetch its float maps from when a layer held a non-finite value (the same one when it
    has them) or the drawing nodes failed (an inferred size the run did not keep): the plain exposed model."""
    floats = [named.candidate.tensor for named in plan.tensors] if options.save_arrays else []
    names = list(dict.fromkeys(name for outputs in drawing.outputs.values()
                               for name in (outputs.stats, outputs.indices, outputs.levels) if name))
    wanted = [name for name in extra if name not in floats]
    try:
        outputs = run_session(drawing.session, {plan.input.name: tensor}, names + floats + wanted)
    except ModelError as exc:
        log.info("drawing in the graph failed (%s); drawing with numpy", exc)
        return runner.session()
    stats = {drawn.stats for drawn in drawing.outputs.values()}
    if not all(finite_stats(outputs[name]) for name in stats):
        return drawing.session if drawing.floats else runner.session()
    result.outputs = {name: outputs[name] for name in extra}
    for named in plan.tensors:
        layer = _drawn_layer(plan, named, drawing, outputs, bool(floats), result.problems)
        if layer is not None:
            result.layers.append(layer)
    return None
