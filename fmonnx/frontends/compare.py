"""The compare front-end: where two runs of a network part ways, layer by layer, in numbers and pictures.

An orchestrator over the stages render uses: ``stages.plan`` plans each side,
``stages.pairing`` pairs A's tensors with B's (through QDQ chains and Casts),
``stages.runner``/``stages.activations`` run each side on the images (in passes
when the memory bound asks), ``stages.agreement`` reduces each pair to figures,
``stages.triptych`` draws a layer's worst channels as A | B | |A - B|, and
``report.compare_page`` writes the offline page; all through ``staged_output``.
A Keras file compared with its own conversion runs Keras eagerly for side A
(``sources.keras.layer_outputs``, paired by ``pairing.pair_layer_outputs``).

Streaming: the two sides' layers are consumed in step, pair by pair; each pair is
reduced to sums and dropped (its arrays kept only while its picture is drawn,
for the first image), so memory holds at most what each side's run gives at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ModelError
from ..options import RenderOptions, check_choices
from ..report.compare_page import write_compare_page
from ..report.compare_result import RECORD, CompareResult, record_json
from ..sources.registry import source_for
from ..stages.activations import ImageActivations, LayerActivation, run_images
from ..stages.agreement import Agreement, Tolerance
from ..stages.layout import Layout
from ..stages.metadata import read_layer_metadata
from ..stages.pairing import Pair, Pairing, check_inputs, pair_layer_outputs, pair_plans
from ..stages.plan import ModelPlan, demo_paths, plan_model
from ..stages.preprocess import expand_image_paths
from ..stages.run import create_session, resolve_providers, run_session
from ..stages.runner import Runner
from ..stages.triptych import PALETTE, draw_triptych
from ..stages.write import PictureWriter, encode_png, file_stem, staged_output

__all__ = ["compare", "DIVERGED_EXIT_CODE"]

log = logging.getLogger(__name__)

DIVERGED_EXIT_CODE = 3  # the CLI's exit code when B is not within tolerance (1: bad input, 2: usage)
WORST_CHANNELS = 8  # channels drawn per layer
_CUDA = "CUDAExecutionProvider"


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
    # both sides' tensors of an image are held together: a memory bound is shared, half each
    shared = dataclasses.replace(options, max_memory=options.max_memory // 2 if options.max_memory else None)
    side_a = dataclasses.replace(
        shared, provider=provider_a or options.provider, optimization=optimization_a or options.optimization
    )
    side_b = dataclasses.replace(
        shared, provider=provider_b or options.provider, optimization=optimization_b or options.optimization
    )
    check_choices(side_a)
    check_choices(side_b)
    if channels < 1:
        raise ModelError(f"channels must be at least 1 (got {channels})")
    tolerance = Tolerance(min_sqnr, rtol, atol)
    path_a = Path(a) if a is not None else demo_paths()[0]
    path_b = Path(b) if b is not None else path_a
    image_paths = expand_image_paths(images) if images else [demo_paths()[1]]
    keras_a = None
    source_a = source_for(path_a) if b is None else None
    if source_a is not None and source_a.name == "keras":
        # A Keras file alone: Keras's own layer outputs (A) against its ONNX conversion (B)
        from ..sources.keras.layer_outputs import KerasLayers

        keras_a = KerasLayers(path_a)
        plan_b = plan_model(path_a, side_b)
        pairing = pair_layer_outputs(plan_b, keras_a.classes)
        outputs = list(zip(keras_a.output_names, [value.name for value in plan_b.loaded.model.graph.output]))
        runner_a = None
    else:
        plan_a = plan_model(path_a, side_a)
        plan_b = plan_model(path_b, side_b)
        check_inputs(plan_a, plan_b)
        pairing = pair_plans(plan_a, plan_b)
        outputs = _output_pairs(plan_a, plan_b)
        runner_a = Runner(pairing.plan_a, side_a)
    runner_b = Runner(pairing.plan_b, side_b)
    repeat_a = keras_a is None and _repeats(side_a, repeat)
    repeat_b = _repeats(side_b, repeat)
    planned = time.perf_counter()

    layers = [Agreement(tolerance) for _ in pairing.pairs]
    noise = {"a": [Agreement() for _ in pairing.pairs] if repeat_a else None,
             "b": [Agreement() for _ in pairing.pairs] if repeat_b else None}
    finals = [Agreement(tolerance) for _ in outputs]
    problems: list[str] = []
    pictures: dict[int, tuple] = {}
    passes: dict[str, dict | None] = {"a": None, "b": None}  # how a side's run was split, when it was
    with staged_output(out, RECORD) as staging, PictureWriter(options.jobs) as writer:
        for index, path in enumerate(image_paths):
            results = {"b": next(_side(pairing.plan_b, path, side_b, runner_b, [name for _, name in outputs]))}
            if keras_a is not None:  # Keras is fed exactly what B was fed
                results["a"] = _keras_image(keras_a, pairing, path, results["b"].input_tensor)
            else:
                results["a"] = next(_side(pairing.plan_a, path, side_a, runner_a, [name for name, _ in outputs]))
            if repeat_a:
                results["a2"] = next(_side(pairing.plan_a, path, side_a, runner_a, []))
            if repeat_b:
                results["b2"] = next(_side(pairing.plan_b, path, side_b, runner_b, []))
            for key, result in results.items():
                if result.passes is not None and key in passes:
                    passes[key] = result.passes
                problems.extend(f"{key.upper()[0]}: {problem}" for problem in result.problems)
            for position, values in _in_step(pairing, results):
                pair = pairing.pairs[position]
                first, second = values["a"], values["b"]
                if first.shape != second.shape:
                    problems.append(f"{pair.name}: A gave {list(first.shape)}, B {list(second.shape)}; not compared")
                    continue
                layers[position].add(first, second)
                for side in ("a", "b"):
                    if noise[side] is not None and values[side + "2"].shape == values[side].shape:
                        noise[side][position].add(values[side], values[side + "2"])
                if index == 0:  # the pictures show the first image
                    pictures[position] = writer.submit(
                        first.nbytes * 2, _draw_layer, staging, position, pair, first, second, channels
                    )
                del first, second, values
            _add_outputs(finals, outputs, results, pairing, side_a, side_b, problems)
            del results
            if progress is not None:
                progress(index + 1, len(image_paths))
        drawn = {position: future.result() for position, future in pictures.items()}
        record = _record(
            path_a, path_b, side_a, side_b, runner_a, runner_b, pairing, tolerance, layers, noise, finals, outputs,
            drawn, image_paths, problems,
        )
        if keras_a is not None:
            record["a"] = {
                "model": str(path_a), "provider": keras_a.description, "optimization": None,
                "source": {"framework": "keras", "loader": keras_a.loader}, "input": record["b"]["input"],
            }
        for side in ("a", "b"):
            if passes[side] is not None:
                record[side]["passes"] = passes[side]
        record["seconds"] = {"plan": planned - started, "total": time.perf_counter() - started}
        record["files"] = sorted(drawn[position]["png"] for position in drawn)
        record["files"].append(write_compare_page(staging, record))
        with open(staging / RECORD, "w", encoding="utf-8") as file:
            file.write(record_json(record))
    return CompareResult(Path(out), record)


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


def _side(plan: ModelPlan, path: Path, options: RenderOptions, runner: Runner, extra: list[str]):
    return run_images(plan, [path], options, runner, extra=tuple(extra))


def _drained(layers: Iterable[LayerActivation]) -> Iterator[LayerActivation]:
    """Yield each layer, dropping the list's reference to it, so its array is freed once compared."""
    if isinstance(layers, list):
        layers.reverse()
        while layers:
            yield layers.pop()
    else:
        yield from layers


def _in_step(pairing: Pairing, results: dict) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Each pair's (C, H, W) values from every stream, in A's graph order, pulling each stream
    only as far as the pair needs (in passes a stream runs its next pass when pulled)."""
    positions = {}
    for key in results:
        side = key[0]
        positions[key] = {getattr(pair, side).candidate.tensor: index for index, pair in enumerate(pairing.pairs)}
    streams = {key: _drained(result.layers) for key, result in results.items()}
    waiting: dict[str, dict[int, np.ndarray]] = {key: {} for key in results}
    for index in range(len(pairing.pairs)):
        values = {}
        for key, stream in streams.items():
            while index not in waiting[key]:
                layer = next(stream, None)
                if layer is None:
                    break
                waiting[key][positions[key][layer.named.candidate.tensor]] = layer.values
                del layer
            if index in waiting[key]:
                values[key] = waiting[key].pop(index)
        if "a" in values and "b" in values:  # a tensor the run could not give is in the image's problems
            for key in results:
                values.setdefault(key, values[key[0]])
            yield index, values
        del values


def _add_outputs(finals, outputs, results, pairing: Pairing, side_a, side_b, problems) -> None:
    values = {}
    for key, plan, options, position in (("a", pairing.plan_a, side_a, 0), ("b", pairing.plan_b, side_b, 1)):
        names = [pair[position] for pair in outputs]
        got = results[key].outputs
        if names and not got:  # the image ran in passes, which stop at the last shown tensor
            got = _plain_outputs(plan, options, results[key].input_tensor, names)
        values[key] = got
    for agreement, (name_a, name_b) in zip(finals, outputs):
        first, second = np.asarray(values["a"][name_a]), np.asarray(values["b"][name_b])
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


def _side_record(path: Path, options: RenderOptions, runner: Runner, plan: ModelPlan) -> dict:
    return {
        "model": str(path),
        "provider": runner.provider,
        "optimization": options.optimization or "extended",
        "source": plan.source,
        "input": {"name": plan.input.name, "shape": list(plan.input.shape), "layout": plan.input_layout.name},
    }


def _record(path_a, path_b, side_a, side_b, runner_a, runner_b, pairing: Pairing, tolerance: Tolerance, layers,
            noise, finals, outputs, drawn, image_paths, problems) -> dict:
    entries = []
    for position, (pair, agreement) in enumerate(zip(pairing.pairs, layers)):
        if agreement.images == 0:
            continue
        entry = {
            "name": pair.name,
            "a_tensor": pair.a.candidate.tensor,
            "b_tensor": pair.b.candidate.tensor,
            "b_name": pair.b_name,
            "paired_by": pair.rule,
            "op": pair.a.candidate.op,
            "shape": list(agreement.shape),
            **agreement.figures(),
        }
        if pair.a_source != pair.a.candidate.tensor:
            entry["a_source"] = pair.a_source
        if pair.b_source != pair.b.candidate.tensor:
            entry["b_source"] = pair.b_source
        for side in ("a", "b"):
            if noise[side] is not None:
                figures = noise[side][position].figures()
                entry[f"noise_{side}"] = {"max_abs": figures["max_abs"], "sqnr_db": figures["sqnr_db"]}
        if position in drawn:
            entry["png"] = drawn[position]["png"]
            entry["worst_channels"] = drawn[position]["channels"]
        entries.append(entry)
    first = next((entry["name"] for entry in entries if not entry["within_tolerance"]), None)
    final = []
    for agreement, (name_a, name_b) in zip(finals, outputs):
        if agreement.images:
            final.append({"name": name_a, "a_tensor": name_a, "b_tensor": name_b, **agreement.figures()})
    within = first is None and all(entry["within_tolerance"] for entry in final)
    return {
        "fmonnx_version": __version__,
        "a": _side_record(path_a, side_a, runner_a, pairing.plan_a) if runner_a is not None else None,
        "b": _side_record(path_b, side_b, runner_b, pairing.plan_b),
        "images": [str(path) for path in image_paths],
        "tolerance": tolerance.describe(),
        "within_tolerance": within,
        "first_divergence": first,
        "outputs": final,
        "layers": entries,
        "unpaired": [
            {"tensor": item.tensor, "name": item.name, "side": item.side, "reason": item.reason}
            for item in pairing.unpaired
        ],
        "problems": problems,
    }
