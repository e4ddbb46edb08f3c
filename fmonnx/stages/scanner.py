"""The scanner both engines run: images in, a ScanDelta out, through one onnxruntime session with reductions.

``Scanner(plan, options)`` opens the model with every planned tensor reduced in the graph
(``reduce.reduction_suffix``), so a batch of images comes back as (N, C) numbers per layer. It
holds no state across batches; the engines merge its deltas.

Size: every image is resized to the model's input H x W; when H or W is dynamic, to ``options.size``
(``--size``), else DEFAULT_SIZE (224 x 224), so that images of any size batch together and every
channel's statistics are over maps of one size.

Batch: a model whose batch axis is fixed at 1 (most exports) is opened with that axis made dynamic
(the model is read with its weights, the input's first dimension renamed, stale shapes dropped);
when the model cannot run a batch of 2 that way (a Reshape that hard-codes 1), images go one at a time.
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
    h_axis, w_axis = (2, 3) if plan.input_layout.channel_axis == 1 else (1, 2)
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
    """The model file with its input's batch axis made dynamic, or None when it already is or cannot be."""
    loaded = plan.loaded
    if loaded.external_data:
        return None
    batch = plan.input.shape[0]
    if not isinstance(batch, int) or batch != 1:
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
        self.batch = batch or DEFAULT_BATCH
        source = _batched_model(plan) if self.batch > 1 else None
        loaded = plan.loaded
        if source is None and self.batch > 1 and plan.input.shape[0] == 1:
            self.batch = 1
        self.session = create_session(
            source if source is not None else loaded.path, options.provider, loaded.path.parent,
            loaded.external_data, options.threads, append=suffix, optimization=options.optimization,
        )
        self.provider = self.session.get_providers()[0]
        blank = self.prepare(np.zeros((*self.size, self.image_channels), np.uint8))
        try:
            outputs = self._run(np.concatenate([blank] * min(self.batch, 2)))
        except ModelError:
            if self.batch == 1:
                raise
            log.info("the model does not run batches of 2; scanning one image at a time")
            self.batch = 1
            self.session = create_session(
                loaded.path, options.provider, loaded.path.parent, loaded.external_data, options.threads,
                append=suffix, optimization=options.optimization,
            )
            outputs = self._run(blank)
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

    @staticmethod
    def _chw(shape: np.ndarray, reduced: ReducedLayer) -> tuple[int, int, int]:
        spatial = [int(shape[axis]) for axis in (1, 2, 3) if axis != reduced.channel_axis]
        return int(shape[reduced.channel_axis]), spatial[0], spatial[1]

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """The model's input (batch of one) for uint8 (H, W, C) pixels, resized to the scan's size."""
        tensor, _ = prepare_input(pixels, self.plan.input, self.plan.input_layout, self.preset, self.size)
        return tensor

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
        outputs = self._run(np.concatenate(tensors))
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
