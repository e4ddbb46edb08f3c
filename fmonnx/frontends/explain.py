"""The explain front-end: which feature maps made a prediction, for any model render takes.

An orchestrator over the stages: ``stages.plan`` (the layers render shows),
``stages.explain_graph`` (the backward pass of the target's score written into the graph),
``stages.targets`` (what the score is), ``stages.cam`` (the methods' formulas) and
``report.explain_write`` (pictures, explain.json, the page). Forward and backward run in one
onnxruntime session; the default classifier target needs one run, the others two (the
forward to find the target, then forward and backward).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..contract import SCHEMA
from ..errors import FmonnxError, ImageError, ModelError
from ..options import RenderOptions, check_choices
from ..sources.inputs import as_model_path
from ..stages import cam as cams
from ..stages import targets as targets_
from ..stages.activations import _to_chw
from ..stages.explain_graph import (
    SEED,
    USE_TOP1,
    ExplainGraph,
    build_explain_graph,
    build_forward_graph,
    score_depends_on,
    weighted_ancestors,
)
from ..stages.explained import ExplainedLayer, ImageExplanation, TargetChoice
from ..stages.layout import Layout, chw_shape
from ..stages.names import NamedTensor
from ..stages.plan import ModelPlan, demo_paths
from ..stages.preprocess import DEFAULT_PRESET, expand_image_paths, load_image, read_input
from ..stages.run import create_session, run_session
from ..stages.score import score_tensor
from ..stages.shapes import infer_types
from .models import plan_for

__all__ = ["explain", "explain_images", "Explainer"]


CHOICES = 5  # targets the page's picker offers


@dataclass
class _Layer:
    named: NamedTensor
    layout: Layout


def _spatial(plan: ModelPlan, named: NamedTensor) -> bool:
    """Whether shape inference leaves the layer's H and W possibly above 1."""
    shape = chw_shape(named.candidate.type.shape, plan.layout_of(named.candidate.tensor)) \
        if named.candidate.type.shape is not None else None
    return shape is None or not all(isinstance(dim, int) and dim <= 1 for dim in shape[1:])


class Explainer:
    """A planned model with its explain session, ready to explain images one by one.

    ``layers``: None (the default layer: the last layer render shows whose H and W exceed 1
    and on which the score depends), "all" (every layer render shows) or a list of names
    (render's names, ``also_output_of`` names, or ONNX tensor names).
    """

    def __init__(self, model, target=None, layers=None, method: str = cams.DEFAULT_METHOD,
                 options: RenderOptions | None = None):
        self.options = options = options or RenderOptions()
        check_choices(options)
        if method not in cams.METHODS:
            raise FmonnxError(f"unknown method {method!r}; choose one of: {', '.join(cams.METHODS)}")
        self.method = method
        self.spec = targets_.parse_target(target)
        self.model_path = as_model_path(model) if model is not None else demo_paths()[0]
        self.plan = plan = plan_for(self.model_path, options)
        self.types = infer_types(plan.loaded.model)
        self.metadata = {entry.key: entry.value for entry in plan.loaded.model.metadata_props}
        self.notes: list[str] = []  # what the explanation cannot promise, said once per image
        self.output, self.kind, self.yolo = self._resolve_output()
        self.layers = self._resolve_layers(layers)
        if layers is None:
            self.layers = [self._default_layer()]
        self.chosen = self.layers[0].named.name
        self.graph: ExplainGraph | None = None
        self._session = None
        self.provider: str | None = None

    # --- what is scored, and where
    def _resolve_output(self) -> tuple[str, str, object]:
        model = self.plan.loaded.model
        outputs = [value.name for value in model.graph.output]
        spec = self.spec
        if spec.kind == "element":
            if spec.output not in outputs:
                raise FmonnxError(f"--target output:{spec.output}[...]: the model has no output {spec.output!r}; "
                                  f"its outputs: {', '.join(outputs)}")
            return spec.output, "element", None
        yolo = None
        for name in outputs:
            shape = self.types.get(name).shape if name in self.types else None
            info = targets_.yolo_info(shape, self.metadata) if shape is not None else None
            if info is not None:
                yolo = (name, info)
                break
        if yolo is None and (spec.kind == "box" or spec.kind is None):
            yolo = self._detector_by_shape(outputs)
        if spec.kind == "box":
            if yolo is None:
                shapes = ", ".join(f"{n} {list(self.types[n].shape or [])}" for n in outputs if n in self.types)
                raise FmonnxError(f"--target box:K needs a YOLO-style detector output (1, 4+classes, anchors) with "
                                  f"ultralytics' task/names metadata; this model's outputs: {shapes}")
            return yolo[0], "box", yolo[1]
        if spec.kind == "mask":
            for name in outputs:
                if name in self.types and self.types[name].rank == 4:
                    return name, "mask", None
            raise FmonnxError("--target class:K needs a segmentation output (1, classes, H, W); the model has none")
        if spec.kind is None:
            if yolo is not None:
                return yolo[0], "box", yolo[1]
            first = outputs[0]
            if first in self.types and self.types[first].rank == 4:
                return first, "mask", None
        return outputs[0], "class", None

    def _detector_by_shape(self, outputs: list[str]) -> tuple[str, object] | None:
        """The first output shaped (1, 4 + classes, anchors) with more anchors than rows, taken as a YOLO-style
        detector's without ultralytics' metadata (a module converted by fmonnx has none); said in the notes."""
        first = outputs[0]
        shape = self.types[first].shape if first in self.types else None
        if shape is None or len(shape) != 3 or not isinstance(shape[1], int) or shape[1] <= 4:
            return None
        if isinstance(shape[2], int) and shape[2] <= shape[1]:
            return None
        info = targets_.yolo_info(shape, self.metadata, force=True)
        if info is None:
            return None
        self.notes.append(f"{first!r} {list(shape)} is taken as a YOLO-style detector's output (1, 4 + classes, "
                          "anchors) from its shape alone: the model has no ultralytics task/names metadata; pass "
                          "--target 'output:NAME[i,j,k]' if it is something else")
        return first, info

    def _resolve_layers(self, layers) -> list[_Layer]:
        plan = self.plan
        shown = [_Layer(named, plan.layout_of(named.candidate.tensor)) for named in plan.tensors]
        if not shown:
            raise ModelError(f"{self.model_path} has no layer render shows; try --ops or --all-spatial")
        if layers == "all":
            return shown
        if layers is None:
            return shown  # narrowed to the default layer by the caller
        if isinstance(layers, str):
            layers = [layers]
        chosen = []
        for wanted in layers:
            found = next((layer for layer in shown if wanted in (layer.named.name, layer.named.candidate.tensor,
                                                                   *layer.named.also_output_of)), None)
            if found is None:
                names = ", ".join(layer.named.name for layer in shown[-8:])
                raise FmonnxError(f"no layer {wanted!r}; explain takes the layers render shows (fmonnx layers MODEL "
                                  f"lists them; the last: {names})")
            chosen.append(found)
        return chosen

    # --- the session
    def _default_layer(self) -> _Layer:
        """The last layer render shows whose H and W exceed 1, on which the score depends through a weighted
        op (Conv, Gemm, MatMul...). A layer that reaches the score without one is the score's own map (a
        detector's or segmenter's class convolution): Grad-CAM there weighs one channel, the target's, and
        says nothing about the features behind it. When no layer qualifies, the last one the score reads."""
        model = self.plan.loaded.model
        scored, _ = score_tensor(model, self.output)
        tensors = [layer.named.candidate.tensor for layer in self.layers]
        depends = score_depends_on(model, scored, tensors)
        candidates = [layer for layer in self.layers
                      if layer.named.candidate.tensor in depends and _spatial(self.plan, layer.named)]
        if not candidates:
            raise FmonnxError(f"the score on {self.output!r} depends on no layer render shows with H and W above 1; "
                              "pass --layer NAME")
        weighted = weighted_ancestors(model, scored)
        behind = [layer for layer in candidates if layer.named.candidate.tensor in weighted]
        return (behind or candidates)[-1]

    def prepare(self) -> None:
        """Write the backward pass (gradient methods) and open the session, once."""
        if self._session is not None:
            return
        model = self.plan.loaded.model
        tensors = [layer.named.candidate.tensor for layer in self.layers]
        top1 = self.kind == "class" and self.spec.index is None
        if self.method in cams.FREE_METHODS:
            graph = build_forward_graph(model, self.output, tensors, self.types)
        elif self.method == "saliency":
            graph = build_explain_graph(model, self.output, [], with_top1=top1 or False, types=self.types,
                                        extra_wrt=(self.plan.input.name,))
        else:
            graph = build_explain_graph(model, self.output, tensors, with_top1=top1 or False, types=self.types)
        self.graph = graph
        loaded, options = self.plan.loaded, self.options
        self._session = create_session(loaded.path, options.provider, loaded.path.parent, loaded.external_data,
                                       options.threads, append=graph.suffix, optimization=options.optimization)
        self.provider = self._session.get_providers()[0]

    # --- one image
    def _read(self, path: Path) -> tuple[np.ndarray, dict]:
        plan, options = self.plan, self.options
        preset = options.preprocess or ("raw" if plan.input.elem_type in (2, 3) else DEFAULT_PRESET)
        channels = plan.input.shape[plan.input_layout.channel_axis]
        channels = channels if isinstance(channels, int) else 3
        return read_input(path, plan.input, plan.input_layout, preset, options.size, options.max_size, channels,
                          options.max_memory)

    def _run(self, feed: dict, names: list[str]) -> dict[str, np.ndarray]:
        return run_session(self._session, feed, list(dict.fromkeys(names)))

    def _feed(self, tensor: np.ndarray, seed: np.ndarray | None, top1: bool = False) -> dict:
        """The session's feed: the input, and (gradient graphs) the seed and the top-1 switch."""
        feed = {self.plan.input.name: tensor}
        if self.graph.seeded:
            feed[SEED] = seed if seed is not None else np.zeros(self._scored_shape(tensor), np.float32)
            if self.graph.top1:
                feed[USE_TOP1] = np.asarray(1.0 if top1 else 0.0, np.float32)
        return feed

    def _target(self, tensor: np.ndarray) -> tuple[dict, np.ndarray, list[dict], list[dict]]:
        """From a forward run: (target, seed, the picker's other targets, decoded boxes)."""
        graph, spec = self.graph, self.spec
        values = self._run(self._feed(tensor, None), [graph.scored, graph.output])
        scored = values[graph.scored]
        labels = targets_.labels_from(self.metadata)
        if self.kind == "class":
            target, seed, choices = targets_.class_target(scored, spec, labels)
            return {**target, "output": graph.output}, seed, choices, []
        if self.kind == "element":
            target, seed = targets_.element_target(graph.output, scored, spec.element)
            return target, seed, [], []
        if self.kind == "mask":
            target, seed = targets_.mask_target(scored, spec.index, labels=labels)
            choices = [{**choice, "output": graph.output} for choice in targets_.mask_choices(scored, labels=labels)]
            return {**target, "output": graph.output}, seed, choices, []
        boxes = targets_.decode_boxes(values[graph.output], self.yolo)
        target, seed = targets_.box_target(values[graph.output], boxes, spec.index or 0, graph.output)
        choices = []
        for rank in range(min(len(boxes), CHOICES)):
            choice, _ = targets_.box_target(values[graph.output], boxes, rank, graph.output)
            choices.append(choice)
        return target, seed, choices, boxes

    def explain_image(self, path: str | os.PathLike, choices: int = 0) -> ImageExplanation:
        """Explain one image; ``choices``: how many targets the page's picker offers (0: none)."""
        started = time.perf_counter()
        self.prepare()
        graph, plan = self.graph, self.plan
        tensor, record = self._read(Path(path))
        self._check_memory(tensor)
        gradients = self.method not in cams.FREE_METHODS
        names = [layer.named.candidate.tensor for layer in self.layers] if self.method != "saliency" else []
        fetch = [*names, graph.scored]
        if gradients:
            wrt = names if self.method != "saliency" else [plan.input.name]
            fetch += [graph.score, *(graph.gradients[name] for name in wrt)]
        if graph.top1:  # the default classifier target: forward and backward in one run
            values = self._run(self._feed(tensor, None, top1=True), fetch)
            target, seed, choice_targets = targets_.class_target(values[graph.scored], self.spec,
                                                                 targets_.labels_from(self.metadata))
            target = {**target, "output": graph.output}
            boxes: list[dict] = []
        else:
            target, seed, choice_targets, boxes = self._target(tensor)
            values = self._run(self._feed(tensor, seed.astype(np.float32)), fetch)
        if gradients:
            target["score"] = float(values[graph.score])
        else:
            target["score"] = float(np.sum(values[graph.scored].astype(np.float64) * seed))
        inference = time.perf_counter() - started
        hw = self._input_hw(tensor)
        layers = self._layers(values, tensor, hw, seed)
        photo = self._photo(Path(path), hw)
        explanation = ImageExplanation(Path(path), tensor, photo, target, layers, self.chosen, boxes=boxes,
                                       preprocess=record, problems=[*plan.notes, *self.notes])
        unreached = [layer.name for layer in layers if not layer.depends]
        if unreached:
            explanation.problems.append(
                f"the score does not depend on {', '.join(unreached[:6])}{' and more' if len(unreached) > 6 else ''}"
                ": their maps are zero")
        if choices and self.method != "saliency":
            main = next((layer for layer in layers if layer.name == self.chosen), layers[-1])
            others = [c for c in choice_targets if c.get("index") != target.get("index")][: choices - 1]
            explanation.choices = self._choices(tensor, TargetChoice(target, main.cam), others, hw)
        explanation.seconds = {"inference": inference, "total": time.perf_counter() - started}
        return explanation

    def _check_memory(self, tensor: np.ndarray) -> None:
        """Refuse an input whose forward and backward run would pass ``--max-memory``: explain runs in one
        session run (render's passes cannot split a backward pass)."""
        bound = self.options.max_memory
        if bound is None:
            return
        from ..stages.runner import one_run_memory

        estimate = one_run_memory(self.plan, tuple(tensor.shape))
        if estimate is None:
            return
        if self.method not in cams.FREE_METHODS:
            estimate *= 2  # the backward pass holds about as much again as the exposed forward
        if estimate > bound:
            raise ImageError(
                f"explaining an input of {list(tensor.shape)} takes about {estimate // 2**20} MB (forward and backward "
                f"in one run), over --max-memory {bound // 2**20}M; give --max-memory {estimate // 2**20 + 1}M or "
                "more, a smaller --size, or fewer --layer"
            )

    def _scored_shape(self, tensor: np.ndarray) -> tuple[int, ...]:
        shape = self.graph.scored_type.shape if self.graph.scored_type is not None else None
        if shape is not None and all(isinstance(dim, int) for dim in shape):
            return shape
        types = infer_types(self.plan.loaded.model, {self.plan.input.name: tensor.shape})
        shape = types.get(self.graph.scored).shape if self.graph.scored in types else None
        if shape is None or not all(isinstance(dim, int) for dim in shape):
            raise ModelError(f"the size of {self.graph.scored!r} at this input is unknown; pass --size HxW")
        return shape

    def _input_hw(self, tensor: np.ndarray) -> tuple[int, int]:
        axes = [axis for axis in (1, 2, 3) if axis != self.plan.input_layout.channel_axis]
        return int(tensor.shape[axes[0]]), int(tensor.shape[axes[1]])

    @staticmethod
    def _photo(path: Path, hw: tuple[int, int]) -> np.ndarray:
        from PIL import Image

        pixels = load_image(path, 3, hw)
        if pixels.shape[:2] != hw:
            pixels = np.asarray(Image.fromarray(pixels, "RGB").resize((hw[1], hw[0]), Image.Resampling.BILINEAR))
        return pixels

    def _layers(self, values: dict, tensor: np.ndarray, hw, seed: np.ndarray | None) -> list[ExplainedLayer]:
        graph, method = self.graph, self.method
        if method == "saliency":
            name = self.plan.input.name
            activation = _to_chw(tensor.astype(np.float32), self.plan.input_layout)
            gradient = _to_chw(values[graph.gradients[name]], self.plan.input_layout)
            raw = cams.saliency_map(activation, gradient)
            return [ExplainedLayer(name, name, method, activation, gradient, np.zeros(activation.shape[0], np.float32),
                                   raw, cams.to_image(raw, hw), name not in graph.unreached, "input")]
        layers = []
        for layer in self.layers:
            tensor_name = layer.named.candidate.tensor
            activation = _to_chw(values[tensor_name], layer.layout)
            gradient = None
            if method in cams.GRADIENT_METHODS:
                gradient = _to_chw(values[graph.gradients[tensor_name]], layer.layout)
                weights, raw = cams.gradient_map(method, activation, gradient)
            elif method == "eigencam":
                weights, raw = cams.eigen_map(activation)
            else:
                weights = self._perturbation_weights(layer, activation, tensor, seed, hw)
                raw = cams.combine(activation, weights)
            layers.append(ExplainedLayer(
                layer.named.name, tensor_name, method, activation, gradient, np.asarray(weights, np.float32),
                np.asarray(raw, np.float32), cams.to_image(raw, hw), tensor_name not in graph.unreached,
                layer.named.candidate.op, tuple(layer.named.also_output_of), layer.named.folded_batchnorm))
        return layers

    def _perturbation_weights(self, layer: _Layer, activation: np.ndarray, tensor: np.ndarray, seed: np.ndarray,
                              hw) -> np.ndarray:
        from ..stages import perturb

        if self.method == "scorecam":
            return perturb.score_cam_weights(self, layer, activation, tensor, seed, hw)
        return perturb.ablation_cam_weights(self, layer, activation, tensor, seed)

    def _choices(self, tensor: np.ndarray, main: TargetChoice, others: list[dict], hw) -> list[TargetChoice]:
        """The chosen layer's map for each of the picker's targets, the explained one first."""
        result = [main]
        if self.method not in cams.GRADIENT_METHODS:
            return result
        chosen = next(layer for layer in self.layers if layer.named.name == self.chosen)
        tensor_name = chosen.named.candidate.tensor
        gradient_name = self.graph.gradients[tensor_name]
        for choice in others:
            run_feed = self._feed(tensor, _seed_of(choice, self._scored_shape(tensor)))
            values = self._run(run_feed, [tensor_name, gradient_name, self.graph.score])
            activation = _to_chw(values[tensor_name], chosen.layout)
            _, raw = cams.gradient_map(self.method, activation, _to_chw(values[gradient_name], chosen.layout))
            result.append(TargetChoice({**choice, "score": float(values[self.graph.score])}, cams.to_image(raw, hw)))
        return result


def _seed_of(target: dict, shape: tuple[int, ...]) -> np.ndarray:
    """The seed that scores ``target``: one at each of its index entries, zero elsewhere."""
    seed = np.zeros(shape, np.float32)
    for index in target["index"]:
        seed[tuple(index)] = 1.0
    return seed


def explain(model=None, image=None, target=None, layers=None, method: str = cams.DEFAULT_METHOD,
            options: RenderOptions | None = None):
    """Explain one image: which feature maps made the prediction (see the README's "explain").

    Returns an Explanation: ``.input``, ``.target``, ``.layers`` (``.name``, ``.tensor``,
    ``.activation``, ``.gradient``, ``.weights``, ``.raw``, ``.cam``) and ``.layer(name)``.
    ``model``: an ONNX, Keras or .pt2 file, or an nn.Module (converted and checked first).
    """
    from ..report.explanation import Explanation

    explainer = Explainer(model, target, layers, method, options)
    image = image if image is not None else demo_paths()[1]
    return Explanation(explainer.explain_image(image), explainer.provider)


def explain_images(model=None, images=None, out: str | os.PathLike = "explain", target=None, layers=None,
                   method: str = cams.DEFAULT_METHOD, options: RenderOptions | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Explain ``images`` into the folder ``out`` (explain.json, overlays, index.html); returns explain.json's dict.

    ``layers`` None: every layer render shows (the page's strip), the default one detailed.
    """
    from ..report.explain_write import EXPLAIN_JSON, write_explanation
    from ..stages.output_folder import staged_output

    options = options or RenderOptions()
    started = time.perf_counter()
    explainer = Explainer(model, target, "all" if layers is None else layers, method, options)
    if layers is None:
        explainer.chosen = explainer._default_layer().named.name
    paths = expand_image_paths(images) if images else [demo_paths()[1]]
    explainer.prepare()  # the provider goes in the header

    def explained():
        for index, path in enumerate(paths):
            yield explainer.explain_image(path, choices=CHOICES)
            if progress is not None:
                progress(index + 1, len(paths))

    header = {
        "schema": SCHEMA,
        "model": str(explainer.model_path),
        "source": explainer.plan.source,
        "provider": explainer.provider,
        "method": method,
        "fmonnx_version": __version__,
        "input": {"name": explainer.plan.input.name, "shape": list(explainer.plan.input.shape)},
    }
    with staged_output(out, record=EXPLAIN_JSON) as staging:
        data = write_explanation(staging, explained(), header, save_arrays=options.save_arrays,
                                 report=options.report, paths=paths)
    data["seconds"] = {"total": time.perf_counter() - started}
    return data
