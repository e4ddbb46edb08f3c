"""The compare front-end: where two runs of a network part ways, layer by layer, in numbers and pictures.

An orchestrator over the stages render uses: ``stages.plan`` plans each side,
``stages.pairing`` pairs A's tensors with B's (through QDQ chains and Casts),
``stages.runner``/``stages.activations`` run each side on the images (in passes
when the memory bound asks), ``stages.agreement`` reduces each pair to running sums that
``stages.metrics``' table finishes into figures, ``stages.triptych`` draws a layer's worst
channels as A | B | |A - B|, ``report.compare_record`` builds compare.json and
``report.compare_page`` writes the offline page; all through ``staged_output``.
A and B are each a ``Side`` (path, options, plan, runner, noise floor). A Keras file compared
with its own conversion runs Keras eagerly for side A (``sources.keras.layer_outputs``, paired
by ``pairing.pair_layer_outputs``).

Streaming: the two sides' layers are consumed in step, pair by pair; each pair is
reduced to sums and dropped (its arrays kept only while its picture is drawn,
for the first image), so memory holds at most what each side's run gives at once.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..options import RenderOptions, check_choices
from ..report.compare_page import write_compare_page
from ..report.compare_record import compare_record, side_record
from ..report.compare_result import RECORD, CompareResult, record_json
from ..sources.registry import source_for
from ..stages.activations import ImageActivations, LayerActivation, consume_layers, run_images
from ..stages.agreement import Agreement, Tolerance
from ..stages.layout import Layout
from ..stages.metadata import read_layer_metadata
from ..stages.output_folder import staged_output
from ..stages.pairing import Pair, Pairing, check_inputs, pair_layer_outputs, pair_plans
from ..stages.picture_pool import PictureWriter
from ..stages.plan import ModelPlan, demo_paths
from ..stages.png import encode_png, file_stem
from ..stages.preprocess import expand_image_paths
from ..stages.run import create_session, resolve_providers, run_session
from ..stages.runner import Runner
from ..stages.triptych import PALETTE, draw_triptych
from .models import plan_for

__all__ = ["compare", "DIVERGED_EXIT_CODE", "Side"]

DIVERGED_EXIT_CODE = 3  # the CLI's exit code when B is not within tolerance (1: bad input, 2: usage)
WORST_CHANNELS = 8  # channels drawn per layer
_CUDA = "CUDAExecutionProvider"


@dataclasses.dataclass(eq=False)
class Side:
    """One side of a compare, A (the reference) or B: its model, options (its own provider and
    optimization level, half the memory bound), plan and runner once paired, whether it runs twice
    (``noise``: one Agreement per pair, its own noise floor), how its run was split (``passes``).
    ``keras``: A when a Keras file is compared alone (Keras's own layer outputs; no plan, no runner)."""

    letter: str  # "a" or "b": which tensor of a Pair is this side's
    path: Path
    options: RenderOptions
    plan: ModelPlan | None = None
    runner: Runner | None = None
    keras: Any = None  # sources.keras.layer_outputs.KerasLayers, imported only when used
    outputs: list[str] = dataclasses.field(default_factory=list)  # its final outputs to compare
    noise: list[Agreement] | None = None
    passes: dict | None = None

    def tensor(self, pair: Pair) -> str:
        return getattr(pair, self.letter).candidate.tensor

    def run(self, path: Path, outputs: bool = True) -> ImageActivations:
        extra = tuple(self.outputs) if outputs else ()
        return next(run_images(self.plan, [path], self.options, self.runner, extra=extra))

    def describe(self, fed: dict | None = None) -> dict:
        """compare.json's entry for this side (``fed``: the other side's input, which Keras is fed)."""
        if self.keras is not None:
            record = {
                "model": str(self.path), "provider": self.keras.description, "optimization": None,
                "source": {"framework": "keras", "loader": self.keras.loader}, "input": fed,
            }
        else:
            record = side_record(self.path, self.options.optimization, self.runner.provider, self.plan)
        if self.passes is not None:
            record["passes"] = self.passes
        return record


def compare(
    a: str | os.PathLike | None = None,
    b: str | os.PathLike | None = None,
    images: list[str | os.PathLike] | None = None,
    out: str | os.PathLike = "compare",
    options: RenderOptions | None = None,
    *,
    provider_a: str | None = None,
    provider_b: str | None = None,
    optimization_a: str | None = None,
    optimization_b: str | None = None,
    min_sqnr: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    channels: int = WORST_CHANNELS,
    repeat: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompareResult:
    """Run models ``a`` (the reference) and ``b`` on ``images``, compare every paired tensor, write ``out``.

    ``b`` defaults to ``a`` (then compare two runs of one model: ``provider_b="cuda"``,
    ``optimization_b="all"``; a Keras file alone: Keras's own layer outputs against its ONNX
    conversion, on the same input); ``a`` defaults to the demo model, ``images`` to the demo photo.
    ``options``: the stages shared with render (ops, preprocessing, provider, memory: ``max_memory``
    bounds both sides together, half each, and a side that would pass its half runs in passes);
    ``provider_*`` and ``optimization_*`` override its provider and onnxruntime graph optimization
    level per side.
    Tolerance: SQNR of at least ``min_sqnr`` dB (30 unless ``rtol``/``atol`` are given), and/or
    every value within ``atol + rtol * |a|``. ``repeat``: run each side twice and report its own
    noise floor per layer (None: for a side that runs on CUDA, which is not bit-deterministic).

    Writes ``out/compare.json``, one PNG per paired layer and ``out/index.html``; returns a
    CompareResult (``.record`` is compare.json's dict; in a notebook it shows itself).
    """
    started = time.perf_counter()
    options = options or RenderOptions()
    side_a, side_b = _sides(a, b, options, (provider_a, provider_b), (optimization_a, optimization_b))
    if channels < 1:
        raise ModelError(f"channels must be at least 1 (got {channels})")
    tolerance = Tolerance(min_sqnr, rtol, atol)
    image_paths = expand_image_paths(images) if images else [demo_paths()[1]]
    pairing, outputs = _pair(side_a, side_b, alone=b is None)
    for side in (side_a, side_b):
        if side.keras is None and _repeats(side.options, repeat):
            side.noise = [Agreement() for _ in pairing.pairs]
    planned = time.perf_counter()

    layers = [Agreement(tolerance) for _ in pairing.pairs]
    finals = [Agreement(tolerance) for _ in outputs]
    problems: list[str] = []
    with staged_output(out, RECORD) as staging, PictureWriter(options.jobs) as writer:
        pictures: dict[int, Any] = {}
        for index, path in enumerate(image_paths):
            runs = _run_image(side_a, side_b, pairing, path, problems)
            drawing = (staging, writer, channels, pictures) if index == 0 else None  # the pictures: the first image
            _add_layers(pairing, runs, layers, drawing, problems)
            _add_outputs(finals, outputs, runs[:2], problems)
            del runs
            if progress is not None:
                progress(index + 1, len(image_paths))
        drawn = {position: future.result() for position, future in pictures.items()}
        b_record = side_b.describe()
        sides = {"a": side_a.describe(b_record["input"]), "b": b_record}
        noise = {side.letter: side.noise for side in (side_a, side_b) if side.noise is not None}
        record = compare_record(sides, pairing, tolerance, layers, noise, finals, outputs, drawn, image_paths,
                                problems)
        record["seconds"] = {"plan": planned - started, "total": time.perf_counter() - started}
        record["files"] = sorted(drawn[position]["png"] for position in drawn)
        record["files"].append(write_compare_page(staging, record))
        with open(staging / RECORD, "w", encoding="utf-8") as file:
            file.write(record_json(record))
    return CompareResult(Path(out), record)


def _sides(a, b, options: RenderOptions, providers: tuple, optimizations: tuple) -> tuple[Side, Side]:
    """A and B with their own options; both sides' tensors of an image are held together, so a memory
    bound is shared, half each."""
    shared = dataclasses.replace(options, max_memory=options.max_memory // 2 if options.max_memory else None)
    path_a = Path(a) if a is not None else demo_paths()[0]
    paths = (path_a, Path(b) if b is not None else path_a)
    sides = []
    for letter, path, provider, optimization in zip("ab", paths, providers, optimizations):
        side_options = dataclasses.replace(
            shared, provider=provider or options.provider, optimization=optimization or options.optimization
        )
        check_choices(side_options)
        sides.append(Side(letter, path, side_options))
    return sides[0], sides[1]


def _pair(side_a: Side, side_b: Side, alone: bool) -> tuple[Pairing, list[tuple[str, str]]]:
    """Plan both sides and pair their tensors and final outputs; gives each side its plan and runner."""
    source = source_for(side_a.path) if alone else None
    if source is not None and source.name == "keras":
        # A Keras file alone: Keras's own layer outputs (A) against its ONNX conversion (B)
        from ..sources.keras.layer_outputs import KerasLayers

        side_a.keras = KerasLayers(side_a.path)
        plan_b = plan_for(side_a.path, side_b.options)
        pairing = pair_layer_outputs(plan_b, side_a.keras.classes)
        outputs = list(zip(side_a.keras.output_names, [value.name for value in plan_b.loaded.model.graph.output]))
    else:
        plan_a = plan_for(side_a.path, side_a.options)
        plan_b = plan_for(side_b.path, side_b.options)
        check_inputs(plan_a, plan_b)
        pairing = pair_plans(plan_a, plan_b)
        outputs = _output_pairs(plan_a, plan_b)
        side_a.plan, side_a.runner = pairing.plan_a, Runner(pairing.plan_a, side_a.options)
    side_b.plan, side_b.runner = pairing.plan_b, Runner(pairing.plan_b, side_b.options)
    side_a.outputs = [name for name, _ in outputs]
    side_b.outputs = [name for _, name in outputs]
    return pairing, outputs


def _run_image(side_a: Side, side_b: Side, pairing: Pairing, path: Path, problems: list[str]):
    """Both sides' runs of one image as [(side, its activations)]: A, B, then each repeated side again."""
    second = side_b.run(path)
    if side_a.keras is not None:  # Keras is fed exactly what B was fed
        first = _keras_image(side_a.keras, pairing, path, second.input_tensor)
    else:
        first = side_a.run(path)
    runs = [(side_a, first), (side_b, second)]
    runs += [(side, side.run(path, outputs=False)) for side in (side_a, side_b) if side.noise is not None]
    for side, result in runs[:2]:
        if result.passes is not None:
            side.passes = result.passes
    for side, result in (runs[1], runs[0], *runs[2:]):  # B ran first: its problems come first
        problems.extend(f"{side.letter.upper()}: {problem}" for problem in result.problems)
    return runs


def _add_layers(pairing: Pairing, runs: list, layers: list[Agreement], drawing, problems: list[str]) -> None:
    """Add each pair's values of one image to its Agreement (and the repeats' to their noise floors);
    ``drawing``: (staging, writer, channels, pictures) for the image whose pictures are drawn."""
    side_a = runs[0][0]
    for position, values in _in_step(pairing, runs):
        pair = pairing.pairs[position]
        first, second = values[0], values[1]
        if first.shape != second.shape:
            problems.append(f"{pair.name}: A gave {list(first.shape)}, B {list(second.shape)}; not compared")
            continue
        layers[position].add(first, second)
        for (side, _), again in zip(runs[2:], values[2:]):
            primary = first if side is side_a else second
            if again.shape == primary.shape:
                side.noise[position].add(primary, again)
        if drawing is not None:
            staging, writer, channels, pictures = drawing
            pictures[position] = writer.submit(
                first.nbytes * 2, _draw_layer, staging, position, pair, first, second, channels
            )
        del first, second, values


def _keras_image(keras_a, pairing: Pairing, path: Path, tensor: np.ndarray) -> ImageActivations:
    """Keras's run of one image, shaped as a planned model's: its layers as the pairs' A tensors."""
    outputs, layers = keras_a.run(tensor)
    result = ImageActivations(path, tensor, {}, [], outputs=outputs)
    for pair in pairing.pairs:
        values = layers.pop(pair.a_source, None)
        if values is None:
            result.problems.append(f"{pair.name}: Keras gave no 4-D output for this layer; not compared")
            continue
        result.layers.append(LayerActivation(pair.a, values, (1, *values.shape), Layout(1, True)))
    return result


def _repeats(options: RenderOptions, repeat: bool | None) -> bool:
    if repeat is not None:
        return repeat
    import onnxruntime as ort

    return resolve_providers(options.provider, ort.get_available_providers())[0] == _CUDA


def _original_outputs(plan: ModelPlan) -> list[str]:
    """The model's own outputs: its graph outputs less those ``fmonnx convert`` added for the layers
    it records (``fmonnx.layers``). A recorded layer output that is also the model's own output
    (a fully convolutional net) is compared as a layer; when every graph output is recorded, the
    first is kept, since the converters put the model's own outputs first."""
    names = [value.name for value in plan.loaded.model.graph.output]
    recorded = set()
    for record in read_layer_metadata(plan.loaded.model, plan.loaded.path.name):
        recorded.update((record.output, *record.inner))
    return [name for name in names if name not in recorded] or names[:1]


def _output_pairs(plan_a: ModelPlan, plan_b: ModelPlan) -> list[tuple[str, str]]:
    """The final outputs to compare: by name, else by position when both models have as many
    (a model's outputs are its interface, like its input)."""
    names_a = _original_outputs(plan_a)
    names_b = _original_outputs(plan_b)
    if set(names_a) == set(names_b):
        return [(name, name) for name in names_a]
    if len(names_a) == len(names_b):
        return list(zip(names_a, names_b))
    return [(name, name) for name in names_a if name in names_b]


def _in_step(pairing: Pairing, runs: list) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Each pair's (C, H, W) values from every run (in ``runs``' order), in A's graph order, pulling
    each run only as far as the pair needs (in passes a run goes on to its next pass when pulled)."""
    streams = []
    for side, result in runs:
        positions = {side.tensor(pair): index for index, pair in enumerate(pairing.pairs)}
        streams.append((positions, consume_layers(result.layers), {}))
    primaries = [0 if side is runs[0][0] else 1 for side, _ in runs]
    for index in range(len(pairing.pairs)):
        values = []
        for positions, stream, waiting in streams:
            while index not in waiting:
                layer = next(stream, None)
                if layer is None:
                    break
                waiting[positions[layer.named.candidate.tensor]] = layer.values
                del layer
            values.append(waiting.pop(index, None))
        if values[0] is not None and values[1] is not None:  # a tensor a run could not give is in its problems
            values = [value if value is not None else values[primaries[at]] for at, value in enumerate(values)]
            yield index, values
        del values


def _add_outputs(finals: list[Agreement], outputs, runs: list, problems: list[str]) -> None:
    values = []
    for side, result in runs:
        got = result.outputs
        if side.outputs and not got:  # the image ran in passes, which stop at the last shown tensor
            got = _plain_outputs(side.plan, side.options, result.input_tensor, side.outputs)
        values.append(got)
    for agreement, (name_a, name_b) in zip(finals, outputs):
        first, second = np.asarray(values[0][name_a]), np.asarray(values[1][name_b])
        if first.shape != second.shape:
            problems.append(f"output {name_a}: A gave {list(first.shape)}, B {list(second.shape)}; not compared")
            continue
        agreement.add(first.reshape(-1), second.reshape(-1))


def _plain_outputs(plan: ModelPlan, options: RenderOptions, tensor: np.ndarray, names: list[str]) -> dict:
    loaded = plan.loaded
    session = create_session(
        loaded.path, options.provider, loaded.path.parent, loaded.external_data, options.threads,
        optimization=options.optimization,
    )
    return run_session(session, {plan.input.name: tensor}, names)


def _draw_layer(staging: Path, position: int, pair: Pair, a: np.ndarray, b: np.ndarray, count: int) -> dict:
    """Draw and write one layer's worst channels of the first image (on a writer thread)."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowed side's error is infinite: the worst
        error = np.square(np.nan_to_num(b.astype(np.float64) - a.astype(np.float64), nan=np.inf))
    per_channel = error.reshape(error.shape[0], -1).sum(axis=1)
    worst = [int(channel) for channel in np.argsort(-per_channel, kind="stable")[:count]]
    title = f"{pair.name}  {'x'.join(map(str, a.shape))}  channels {', '.join(map(str, worst))}"
    picture = draw_triptych(a, b, worst, title)
    name = f"{file_stem(position, pair.name)}.png"
    (staging / name).write_bytes(encode_png(picture, PALETTE, title))
    return {"png": name, "channels": worst}
