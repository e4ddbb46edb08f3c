"""Run a planned model on one input: in one session run, or in passes when that would pass the memory bound.

``open_session`` opens the exposed model (every planned tensor a graph output);
``Runner`` decides per input size whether one run fits the bound
(``passes.memory_bound`` or ``--max-memory``) and, when it does not, cuts the
graph into pieces (``passes.plan_passes``) written to a temporary folder and run
one after another.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..errors import ImageError, ModelError
from .expose import exposed_suffix
from .ingraph import DrawnOutputs, Shown, drawing_suffix
from .layout import chw_shape
from .normalize import CHUNK_VALUES
from .picture_pool import default_jobs
from .pieces import (
    INTERPRETER_MEMORY,
    MIB,
    Piece,
    available_bytes,
    memory_bound,
    plan_passes,
    release_memory,
    run_pieces,
    sketch_graph,
    tensor_bytes,
    write_pieces,
)
from .run import create_session
from .shapes import TensorType, infer_types
from .tile import plan_grid

if TYPE_CHECKING:
    from ..options import RenderOptions
    from .plan import ModelPlan

__all__ = ["open_session", "Runner", "Drawing", "one_run_memory"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Drawing:
    """A session of the model with every shown tensor's drawing nodes (ingraph.py), and their outputs."""

    session: object
    outputs: dict[str, DrawnOutputs]  # shown tensor -> its drawing outputs
    floats: bool  # the shown tensors are outputs too


def open_session(plan: ModelPlan, options: RenderOptions | None = None):
    """An onnxruntime session of the model with every planned tensor exposed as an output."""
    if options is None:
        from ..options import RenderOptions

        options = RenderOptions()
    loaded = plan.loaded
    suffix = exposed_suffix(loaded.model, [named.candidate for named in plan.tensors])
    return create_session(
        loaded.path, options.provider, loaded.path.parent, loaded.external_data, options.threads, append=suffix,
        optimization=options.optimization,
    )


def _sized(plan: ModelPlan, shape: tuple) -> tuple[dict, dict[str, int], list[str], list] | None:
    """Shape inference at an input of ``shape``: ``(types, bytes per tensor, exposed tensor names, graph
    sketch with weight sizes)``, or None when an exposed tensor's size stays unknown."""
    model = plan.loaded.model
    types = infer_types(model, {plan.input.name: shape})
    sizes = {name: size for name, value in types.items() if (size := tensor_bytes(value)) is not None}
    exposed = [named.candidate.tensor for named in plan.tensors]
    if any(name not in sizes for name in exposed):
        return None
    weight_sizes = {
        tensor.name: tensor_bytes(TensorType(tensor.data_type, tuple(tensor.dims))) or 0
        for tensor in model.graph.initializer
    }
    return types, sizes, exposed, sketch_graph(model, weight_sizes)


def one_run_memory(plan: ModelPlan, shape: tuple[int, ...]) -> int | None:
    """Bytes one run of the exposed model on an input of ``shape`` holds (fmonnx's footprint, the
    weights twice while the session opens, every exposed tensor and the intermediates alive with
    them), or None when shape inference cannot size the tensors."""
    sized = _sized(plan, shape)
    if sized is None:
        return None
    _, sizes, exposed, sketch = sized
    single = plan_passes(sketch, exposed, sizes, budget=2**62, weights_held=2)
    return INTERPRETER_MEMORY + single[0].estimate if single else None


class Runner:
    """Runs the exposed model on an input: in one session run, or in passes when that would pass the bound.

    The exposed model's session is opened on first use, so a render done
    entirely in passes never loads the whole model into onnxruntime.
    """

    def __init__(self, plan: ModelPlan, options: RenderOptions, session=None):
        self.plan = plan
        self.options = options
        self._session = session
        self.provider: str | None = session.get_providers()[0] if session is not None else None
        self._pieces: dict[tuple, tuple[list[Piece], dict, dict] | None] = {}
        self._folder: tempfile.TemporaryDirectory | None = None  # the pieces' model files, made for passes only
        self._files: dict[tuple, list[Path]] = {}  # input shape -> the pieces' files
        self._drawing: tuple[tuple, Drawing | None] | None = None  # (method, page, floats), its drawing session

    def drawing(self, method: str, page: bool, floats: bool = False) -> Drawing | None:
        """The session that draws in the graph (ingraph.py) by ``method``, with the page's levels when
        ``page`` and the float maps as outputs too when ``floats`` (else onnxruntime frees each map once
        drawn: ~0.1 GB less on a ResNet-50). None when the model's opset is too old for the drawing
        nodes: draw with numpy then. The last one is kept."""
        key = (method, page, floats)
        if self._drawing is not None and self._drawing[0] == key:
            return self._drawing[1]
        self._drawing = None  # the old session goes before the new one is opened
        loaded = self.plan.loaded
        shown = [
            Shown(named.candidate.tensor, named.candidate.type.elem_type,
                  self.plan.layout_of(named.candidate.tensor).channel_axis, named.candidate.type.shape)
            for named in self.plan.tensors
        ]
        drawing = None
        for grouped in (True, False):
            built = drawing_suffix(loaded.model, shown, method, page, grouped)
            if built is None:  # an opset too old for the drawing nodes
                break
            suffix, outputs = built
            candidates = [named.candidate for named in self.plan.tensors] if floats else []
            try:
                session = create_session(
                    loaded.path, self.options.provider, loaded.path.parent, loaded.external_data, self.options.threads,
                    append=exposed_suffix(loaded.model, candidates) + suffix, optimization=self.options.optimization,
                )
            except ModelError as exc:  # e.g. a declared shape the groups' concatenation contradicts
                log.info("onnxruntime refused the drawing nodes%s: %s", " in groups" if grouped else "", exc)
                continue
            self.provider = self.provider or session.get_providers()[0]
            drawing = Drawing(session, outputs, floats)
            break
        self._drawing = (key, drawing)
        return drawing

    def session(self):
        if self._session is None:
            self._session = open_session(self.plan, self.options)
            self.provider = self.provider or self._session.get_providers()[0]
        return self._session

    def _model_bytes(self) -> int:
        loaded = self.plan.loaded
        weights = sum((loaded.path.parent / name).stat().st_size for name in loaded.external_data)
        return loaded.path.stat().st_size + weights

    def pieces(self, tensor: np.ndarray) -> tuple[list[Piece], dict, dict] | None:
        """``(pieces, types, record)`` when ``tensor`` must be run in passes, else None."""
        key = tuple(tensor.shape)
        if key not in self._pieces:
            self._pieces[key] = self._plan(key)
        return self._pieces[key]

    def _plan(self, shape: tuple) -> tuple[list[Piece], dict, dict] | None:
        sized = _sized(self.plan, shape)
        if sized is None:
            log.debug("tensor sizes unknown at input %s; one run, no memory planning", shape)
            return None
        types, sizes, exposed, sketch = sized
        model_bytes = self._model_bytes()
        largest = max(sizes[name] for name in exposed)
        drawing = self._drawing_memory(types, largest)
        opened = self._session is not None
        # a session holds its weights once, twice while it opens
        single = plan_passes(sketch, exposed, sizes, budget=2**62, weights_held=1 if opened else 2)
        available = available_bytes()
        if self.options.max_memory is None and single:
            # the default bound is at least memory_bound: a run under it needs no floor (nor its node-by-node plan)
            cap = memory_bound(model_bytes, largest) - INTERPRETER_MEMORY
            if available is not None:
                cap = min(cap, available * 9 // 10)
            if single[0].estimate + drawing <= cap:
                return None
        # each piece's model is a file (see passes.write_pieces); the slack is what the estimate
        # leaves out (convolution scratch, allocator slack: measured on a 2048 x 2048 ResNet-50)
        session = model_bytes if opened else 0
        slack = 64 * MIB + largest // 4
        nodes = plan_passes(sketch, exposed, sizes, budget=0, weights_held=2, drawing=drawing)
        floor = self._least_bound(model_bytes, session, slack, nodes, single, drawing)
        bound = self.options.max_memory
        if bound is None:
            bound = max(memory_bound(model_bytes, largest), floor)
        elif bound < floor:
            raise ImageError(
                f"--max-memory {bound // MIB}M cannot be held for an input of {list(shape)}: reading the "
                f"{model_bytes // MIB} MB model and running its largest node take about {floor // MIB} MB even in "
                f"passes; give --max-memory {floor // MIB}M or more, or feed a smaller image with --size or --max-size"
            )
        # fmonnx's own footprint is estimated, not read from the process: in a notebook the
        # process holds the user's data too, and that must not push a small model into passes
        cap = bound - INTERPRETER_MEMORY
        if available is not None and cap > available * 9 // 10:
            log.info("memory bound lowered to what the system has available")
            cap = available * 9 // 10
        if not single or single[0].estimate + drawing <= cap:
            return None
        budget = cap - session - slack
        pieces = plan_passes(sketch, exposed, sizes, budget, weights_held=2, drawing=drawing)
        worst = max(piece.estimate for piece in pieces) + session
        if available is not None and worst > available:
            raise ImageError(
                f"an input of {list(shape)} needs about {worst // MIB} MB even in passes, and "
                f"{available // MIB} MB are available; feed a smaller image with --size or --max-size"
            )
        record = {
            "count": len(pieces),
            "max_memory": bound,
            "one_run_estimate": INTERPRETER_MEMORY + single[0].estimate + drawing,
            "largest_pass_estimate": INTERPRETER_MEMORY + worst,
            "least_max_memory": floor,
            "layers_per_pass": [len(piece.tensors) for piece in pieces],
        }
        log.info("input %s in %d passes to stay under %d MB", list(shape), len(pieces), bound // MIB)
        return pieces, types, record

    @staticmethod
    def _least_bound(model_bytes: int, session: int, slack: int, nodes: list[Piece], single: list[Piece],
                     drawing: int) -> int:
        """The least bound that can be held, in whole MB: reading the model (its file's bytes and the
        parsed model at once, in plan_model and again to write the pieces), and running it in one run
        or, when that needs more, one node per pass (``nodes``), each with fmonnx's own footprint."""
        floor = INTERPRETER_MEMORY + session + slack + max(piece.estimate for piece in nodes)
        floor = min(floor, INTERPRETER_MEMORY + single[0].estimate + drawing) if single else floor
        floor = max(floor, INTERPRETER_MEMORY + 2 * model_bytes)
        return -(-floor // MIB) * MIB

    def _drawing_memory(self, types: dict, largest: int) -> int:
        """Bytes the drawing threads may hold at once: per thread, float temporaries and 3 copies of a picture."""
        options, pictures = self.options, [0]
        for named in self.plan.tensors:
            chw = chw_shape(types[named.candidate.tensor].shape, self.plan.layout_of(named.candidate.tensor))
            if chw is None or not all(isinstance(dim, int) for dim in chw):
                continue
            count = min(chw[0], options.top or options.max_channels or chw[0])
            grid = plan_grid(count, chw[1], chw[2], options.layout, padding=1, upscale=False)
            tile_height = -(-chw[1] // grid.step) * grid.factor + 1
            tile_width = -(-chw[2] // grid.step) * grid.factor + 1
            pictures.append(grid.rows * tile_height * grid.columns * tile_width)
        temporaries = 2 * min(largest, 4 * CHUNK_VALUES)
        return default_jobs(options.jobs) * (temporaries + 3 * max(pictures))

    def run_in_passes(
        self, pieces: list[Piece], types: dict, tensor: np.ndarray, before_pass=None
    ) -> Iterator[tuple[str, np.ndarray]]:
        loaded, options = self.plan.loaded, self.options
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="fmonnx-passes-")
        files = self._files.get(tuple(tensor.shape))
        if files is None:
            # each input size cuts its own pieces, each a copy of the weights: keep one size's on disk
            for stale in self._files.values():
                shutil.rmtree(stale[0].parent, ignore_errors=True)
            self._files.clear()
            folder = Path(self._folder.name) / uuid.uuid4().hex[:8]
            folder.mkdir()
            weights = onnx.load(str(loaded.path), load_external_data=False)
            weights.MergeFromString(exposed_suffix(loaded.model, []))  # the plan's appended nodes (token maps)
            files = self._files[tuple(tensor.shape)] = write_pieces(weights, pieces, types, folder)
            del weights
            release_memory()

        def open_piece(path: Path):
            session = create_session(
                path, options.provider, loaded.path.parent, loaded.external_data, options.threads, arena=False,
                optimization=options.optimization,
            )
            self.provider = self.provider or session.get_providers()[0]
            return session

        yield from run_pieces(files, pieces, {self.plan.input.name: tensor}, open_piece, before_pass)
