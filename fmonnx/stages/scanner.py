"""The scanner both engines run: images in, a ScanDelta out, through one onnxruntime session with reductions.

``Scanner(plan, options)`` opens the model with every planned tensor reduced in the graph
(``reduce.reduction_suffix``), so a batch of images comes back as (N, C) numbers per layer. It
holds no state across batches; the engines merge its deltas.

Size: every image is resized to the model's input H x W; when H or W is dynamic, to ``options.size``
(``--size``), else DEFAULT_SIZE (224 x 224), so that images of any size batch together and every
channel's statistics are over maps of one size.

Batch: decided once, up front, by a probe run of 2 blank images. A model whose batch axis is a fixed
integer (most exports: 1) is opened with that axis made dynamic (the model is read with its weights, the
input's first dimension renamed, stale shapes dropped). When the probe fails, or returns tensors whose
first axis is not 2 (a Reshape that hard-codes batch 1, as torchvision's detection graphs do: the images
would be mixed into one), the scan falls back to the model's fixed batch (partial batches padded), else
to 1, and ``note`` says so in one line. An input without a batch axis (C,H,W) is not probed: one image a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import ImageError, ModelError
from ..options import RenderOptions
from .collection import ImageRef, read_pixels
from .layout import IMAGE_CHANNELS
from .plan import ModelPlan
from .preprocess import DEFAULT_PRESET, prepare_input
from .reduce import STATISTICS, ReducedLayer, reduction_suffix
from .run import create_session, run_session
from .tally import ScanDelta, layer_delta

__all__ = ["Scanner", "DEFAULT_SIZE", "DEFAULT_BATCH", "input_size"]

log = logging.getLogger(__name__)

DEFAULT_SIZE = (224, 224)
DEFAULT_BATCH = 16


def input_size(plan: ModelPlan, options: RenderOptions) -> tuple[int, int]:
    """The H x W every image is fed at (see the module docstring)."""
    shape = plan.input.shape
    h_axis, w_axis = plan.input_layout.hw_axes
    height, width = shape[h_axis], shape[w_axis]
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return height, width
    return options.size or DEFAULT_SIZE


@dataclass(frozen=True)
class LayerShape:
    name: str
    tensor: str
    channels: int
    height: int
    width: int


def _batched_model(plan: ModelPlan) -> bytes | None:
    """The model file with its input's fixed batch axis made dynamic, or None when it cannot be (external data)."""
    loaded = plan.loaded
    if loaded.external_data:
        return None
    model = onnx.load(str(loaded.path))
    for value in model.graph.input:
        if value.name == plan.input.name:
            value.type.tensor_type.shape.dim[0].ClearField("dim_value")
            value.type.tensor_type.shape.dim[0].dim_param = "fmonnx_batch"
    for value in model.graph.output:
        if value.type.tensor_type.HasField("shape"):
            value.type.tensor_type.ClearField("shape")
    model.graph.ClearField("value_info")
    return model.SerializeToString()


def fixed_batch(plan: ModelPlan) -> int | None:
    """The input's batch size when the graph fixes it to an integer, else None (symbolic, unknown, or no
    batch axis)."""
    if plan.input_layout.rank == 3:
        return None
    batch = plan.input.shape[0]
    return batch if isinstance(batch, int) and batch > 0 else None


class Scanner:
    """Runs batches of images through the reduced model; ``run`` returns a ScanDelta.

    ``layers``: each planned tensor's name and C x H x W at the scan's input size, learnt from a first
    run on a blank image. ``batch``: images per session run (1 when the model cannot take more).
    """

    def __init__(self, plan: ModelPlan, options: RenderOptions, batch: int | None = None):
        self.plan = plan
        self.options = options
        self.size = input_size(plan, options)
        self.preset = options.preprocess or ("raw" if plan.input.elem_type in (2, 3) else DEFAULT_PRESET)
        channels = plan.input.shape[plan.input_layout.channel_axis]
        self.image_channels = channels if channels in IMAGE_CHANNELS else 3
        layers = [
            (tensor.candidate.tensor, plan.layout_of(tensor.candidate.tensor).channel_axis,
             tensor.candidate.type.elem_type)
            for tensor in plan.tensors
        ]
        suffix, self.reduced = reduction_suffix(plan.loaded.model, layers)
        self._suffix = suffix
        requested = batch or DEFAULT_BATCH
        fixed = fixed_batch(plan)
        self.note: str | None = None  # one line when the scan cannot use the batch it was asked for
        self.batch, self._padded = requested, False
        outputs, why = None, "its weights are in separate files, so its batch axis stays fixed"
        if plan.input_layout.rank == 3:  # C,H,W (a list of images): nothing to batch along
            why = "its input has no batch axis"
        elif requested > 1 or fixed not in (None, 1):
            source = _batched_model(plan) if fixed is not None else plan.loaded.path
            if source is not None:
                outputs, why = self._probe(source, min(requested, 2))
        if outputs is None:
            outputs = self._fall_back(fixed or 1, requested, why, asked=batch is not None)
        self.provider = self.session.get_providers()[0]
        self.layers = []
        for named, reduced in zip(plan.tensors, self.reduced):
            shape = outputs[reduced.shape]
            if shape.size != 4:  # the plan drops what shape inference proves is not 4-D; this was not inferred
                raise ModelError(
                    f"{named.name}: the tensor {named.candidate.tensor!r} has shape {shape.tolist()}, not 4-D, and "
                    "cannot be scanned; choose other tensors with --ops"
                )
            c, h, w = self._chw(shape, reduced)
            self.layers.append(LayerShape(named.name, named.candidate.tensor, c, h, w))

    def _open(self, source) -> None:
        loaded = self.plan.loaded
        self.session = create_session(
            source, self.options.provider, loaded.path.parent, loaded.external_data, self.options.threads,
            append=self._suffix, optimization=self.options.optimization,
        )

    def _blanks(self, count: int) -> np.ndarray:
        blank = self.prepare(np.zeros((*self.size, self.image_channels), np.uint8))
        return np.concatenate([blank] * count)

    def _probe(self, source, count: int) -> tuple[dict[str, np.ndarray] | None, str]:
        """The outputs of ``count`` blank images on ``source``, or None and why the model cannot batch."""
        try:
            self._open(source)
            outputs = self._run(self._blanks(count))
        except ModelError as exc:  # its text tells how to fix a failed render, not this: kept in the log
            log.info("a probe run of %d images failed: %s", count, exc)
            return None, f"a run of {count} images fails in onnxruntime"
        for reduced in self.reduced:
            # a graph that pins batch 1 (Reshape to [1, -1, ...]) runs, but folds the images into one
            first = outputs[reduced.shape][0] if outputs[reduced.shape].size else None
            if first != count or any(outputs[name].shape[0] != count for name in reduced.outputs):
                return None, (f"a run of {count} images returns {reduced.tensor!r} with a first axis of {first}, "
                              f"not {count}: the graph fixes its batch")
        return outputs, ""

    def _fall_back(self, batch: int, requested: int, why: str, asked: bool) -> dict[str, np.ndarray]:
        """Open the model as it is, with its own ``batch``; the outputs of a blank batch."""
        self.batch, self._padded = batch, batch > 1
        if batch != requested and (asked or batch == 1):  # a fixed batch > 1 by default is the model's own choice
            size = f"batches of {batch}" if batch > 1 else "one image at a time"
            self.note = f"the model cannot scan batches of {requested} ({why}); scanned {size}"
        if self.note:
            log.info("%s", self.note)  # the front-end lists it among the scan's problems
        self._open(self.plan.loaded.path)
        return self._run(self._blanks(batch))

    @staticmethod
    def _chw(shape: np.ndarray, reduced: ReducedLayer) -> tuple[int, int, int]:
        spatial = [int(shape[axis]) for axis in (1, 2, 3) if axis != reduced.channel_axis]
        return int(shape[reduced.channel_axis]), spatial[0], spatial[1]

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """The model's input (batch of one) for uint8 (H, W, C) pixels, resized to the scan's size."""
        tensor, _ = prepare_input(pixels, self.plan.input, self.plan.input_layout, self.preset, self.size)
        return tensor

    def filled(self, tensor: np.ndarray) -> np.ndarray:
        """A batch of one as the unmodified model takes it: repeated to its fixed batch when it has one > 1."""
        fixed = fixed_batch(self.plan) or 1
        return np.concatenate([tensor] * fixed) if fixed > 1 else tensor

    def load(self, ref: ImageRef, data: bytes | None = None) -> np.ndarray:
        """The input tensor of one image; ImageError when it cannot be read. A huge image is decoded reduced."""
        return self.prepare(read_pixels(ref, self.image_channels, data, self.size))

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = [name for reduced in self.reduced for name in (*reduced.outputs, reduced.shape)]
        return run_session(self.session, {self.plan.input.name: batch}, names)

    def run(self, ids: list[int], tensors: list[np.ndarray], skipped: dict[int, str] | None = None) -> ScanDelta:
        """The ScanDelta of images ``ids`` (their input tensors, at most ``batch`` of them) and of
        ``skipped`` ({id: reason}, images that could not be read)."""
        skipped = dict(skipped or {})
        covered = np.array(sorted([*ids, *skipped]), np.int64)
        if not ids:
            return ScanDelta([], covered, skipped)
        count = len(tensors)
        if self._padded and count < self.batch:  # a graph with a fixed batch: fill it, keep the real rows
            tensors = [*tensors, *[tensors[-1]] * (self.batch - count)]
        outputs = self._run(np.concatenate(tensors))
        if self._padded:
            shapes = {reduced.shape for reduced in self.reduced}
            outputs = {name: value if name in shapes else value[:count] for name, value in outputs.items()}
        array_ids = np.asarray(ids, np.int64)
        deltas = []
        for reduced in self.reduced:
            stats = dict(zip(STATISTICS, (outputs[name] for name in reduced.outputs)))
            _, height, width = self._chw(outputs[reduced.shape], reduced)
            deltas.append(layer_delta(array_ids, stats, height, width))
        return ScanDelta(deltas, covered, skipped)

    def read_batch(self, refs: list[ImageRef], data: dict[int, bytes] | None = None):
        """Read ``refs``: (ids, tensors, skipped) with skipped {id: reason} for those that cannot be read."""
        ids, tensors, skipped = [], [], {}
        for ref in refs:
            try:
                tensors.append(self.load(ref, (data or {}).get(ref.id)))
                ids.append(ref.id)
            except ImageError as exc:
                skipped[ref.id] = str(exc)
            except Exception as exc:  # a decoder's own error on a broken file must not end the scan
                skipped[ref.id] = f"{ref.label} could not be read ({type(exc).__name__}: {exc})"
        return ids, tensors, skipped
