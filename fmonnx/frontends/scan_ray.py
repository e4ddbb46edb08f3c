"""The scan's Ray engine: pass 1 on Ray Data, partial states merged on the driver. The only module importing Ray.

Images are read by Ray Data's readers: ``read_binary_files`` for image files (folders, lists,
files), ``read_parquet`` for Parquet files (with a row-number column added per file, so each row
keeps its image id). ``map_batches`` runs ``_ScanActor`` (a callable class: the onnxruntime session
with the reductions, opened once per actor) on an actor pool. Each actor decodes, converts and
resizes its images (any size or mode), runs them, and sends back a ``ScanDelta`` per batch: the
batch's per-channel moments and only the top-k candidates that entered the actor's own lists
(``LayerTally.filtered``), never a feature map. Output order is not preserved by Ray, so every
delta carries its image ids; the driver applies the deltas as they come, which gives the state the
local engine computes (the top-k and counts exactly; the moments to rounding).

The pool has one actor fewer than the CPUs Ray has (at least 1), one CPU each: a pool that takes
every CPU starves Ray Data's read tasks and the scan hangs (on 2 cores, 1 actor). With
``--provider cuda`` each actor takes one GPU and there is one actor per GPU.
``ray.init(address=...)`` joins ``--ray-address`` or RAY_ADDRESS; with neither, a local Ray starts
(and stops at the end). Image paths must be readable on every node (a shared file system).
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from pathlib import Path

import numpy as np

from ..errors import FmonnxError, MissingDependencyError
from ..options import RenderOptions
from ..stages.collection import Collection, decode_bytes
from ..stages.tally import ScanDelta, ScanTally

__all__ = ["pass_one_ray", "actor_count"]

log = logging.getLogger(__name__)


def actor_count(cpus: float, gpus: float, provider: str) -> int:
    """Actors for the pool: one per GPU with CUDA, else one fewer than the CPUs (so the readers get one)."""
    if provider == "cuda":
        return max(1, int(gpus))
    return max(1, int(cpus) - 1)


class _ScanActor:
    """Holds a Scanner (the onnxruntime session) and an actor-local state used to filter top-k candidates."""

    def __init__(self, model_path: str, options: RenderOptions, batch: int, top: int, images: int):
        from ..stages.plan import plan_model
        from ..stages.scanner import Scanner

        self.scanner = Scanner(plan_model(model_path, options), options, batch)
        self.own = ScanTally.empty([layer.channels for layer in self.scanner.layers], top, images)

    def __call__(self, batch: dict) -> dict:
        scanner = self.scanner
        ids, tensors, skipped = [], [], {}
        for image_id, data, label in zip(batch["id"], batch["bytes"], batch["label"]):
            image_id = int(image_id)
            try:
                if data is None:
                    raise FmonnxError(f"{label} holds no image bytes (null)")
                pixels = decode_bytes(bytes(data), str(label), scanner.image_channels)
                tensors.append(scanner.prepare(pixels))
                ids.append(image_id)
            except FmonnxError as exc:
                skipped[image_id] = str(exc)
            except Exception as exc:  # a decoder's own error on a broken file must not end the scan
                skipped[image_id] = f"{label} could not be read ({type(exc).__name__}: {exc})"
        deltas = []
        for start in range(0, max(len(ids), 1), scanner.batch):
            part = scanner.run(ids[start : start + scanner.batch], tensors[start : start + scanner.batch],
                               skipped if start == 0 else None)
            if part.layers:
                part = ScanDelta([mine.filtered(delta) for mine, delta in zip(self.own.layers, part.layers)],
                                 part.ids, part.skipped)
            deltas.append(pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL))
        return {"delta": np.array(deltas, dtype=object)}


def _datasets(ray_data, collection: Collection, todo: set[int]):
    """Ray datasets of rows {id, bytes, label} for the images not yet done."""
    files = [ref for ref in collection.images if ref.id in todo and ref.path is not None]
    datasets = []
    if files:
        ids_by_path = {str(Path(ref.path).resolve()): (ref.id, ref.label) for ref in files}

        def with_ids(batch: dict) -> dict:
            found = [ids_by_path[str(Path(path).resolve())] for path in batch["path"]]
            return {"id": np.array([image_id for image_id, _ in found], np.int64), "bytes": batch["bytes"],
                    "label": np.array([label for _, label in found], dtype=object)}

        read = ray_data.read_binary_files([ref.path for ref in files], include_paths=True, ignore_missing_paths=True)
        datasets.append(read.map_batches(with_ids, batch_format="numpy"))
    by_file: dict[str, tuple[str, dict[int, int]]] = {}
    for ref in collection.images:
        if ref.id in todo and ref.parquet is not None:
            file, row, column = ref.parquet
            by_file.setdefault(file, (column, {}))[1][row] = ref.id
    for file, (column, rows) in by_file.items():
        def with_rows(batch: dict, file=file, rows=rows) -> dict:
            numbers = batch["__row"]
            keep = np.array([int(row) in rows for row in numbers], bool)
            values = [value.get("bytes") if isinstance(value, dict) else value for value in batch["__image"]]
            return {
                "id": np.array([rows[int(row)] for row in numbers[keep]], np.int64),
                "bytes": np.array([value for value, kept in zip(values, keep) if kept], dtype=object),
                "label": np.array([f"{file}#{int(row)}" for row in numbers[keep]], dtype=object),
            }

        import pyarrow.parquet as pq

        table = pq.read_table(file, columns=[column])
        table = table.rename_columns(["__image"]).append_column("__row", __import__("pyarrow").array(
            np.arange(table.num_rows, dtype=np.int64)))
        # the row numbers are added before Ray sees the rows, so they survive any reordering
        datasets.append(ray_data.from_arrow(table).map_batches(with_rows, batch_format="numpy"))
    if not datasets:
        return None
    dataset = datasets[0]
    for other in datasets[1:]:
        dataset = dataset.union(other)
    return dataset


def pass_one_ray(
    model_path: Path, options: RenderOptions, scanner, collection: Collection, state: ScanTally,
    address: str | None, progress, save,
) -> dict:
    """Pass 1 on Ray: apply every image's delta to ``state``; returns timings (Ray start-up separately)."""
    try:
        import ray
        import ray.data as ray_data
    except ImportError:
        raise MissingDependencyError(
            "--engine ray needs Ray Data: pip install -e '.[ray]' (or pip install 'ray[data]')"
        ) from None
    started = time.perf_counter()
    address = address or os.environ.get("RAY_ADDRESS") or None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except Exception as exc:  # ConnectionError, RuntimeError: no cluster at the address
            raise FmonnxError(f"cannot start or join Ray at {address or 'a new local Ray'} ({exc}); "
                              "check --ray-address / RAY_ADDRESS") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines would bury the bar
    context = ray_data.DataContext.get_current()
    context.enable_progress_bars = False
    try:  # its memory advice (the actor holds a model) repeats every 30 s over the bar; Ray Data >= 2.50
        context.issue_detectors_config.detectors = []
    except AttributeError:
        pass
    timing = {"ray_start": time.perf_counter() - started}
    try:
        todo = {ref.id for ref in collection.images if not state.done[ref.id]}
        dataset = _datasets(ray_data, collection, todo)
        if dataset is None:
            return timing
        resources = ray.cluster_resources()
        actors = actor_count(resources.get("CPU", 1), resources.get("GPU", 0), options.provider)
        gpu = options.provider == "cuda"
        results = dataset.map_batches(
            _ScanActor,
            fn_constructor_kwargs={"model_path": str(model_path), "options": options, "batch": scanner.batch,
                                   "top": state.layers[0].k if state.layers else 1, "images": len(collection)},
            batch_size=scanner.batch, batch_format="numpy", compute=ray_data.ActorPoolStrategy(size=actors),
            num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0,
        )
        first = None
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for blob in batch["delta"]:
                delta: ScanDelta = pickle.loads(blob)
                state.apply(delta)
                save(state, len(delta.ids))
            if first is None:
                first = time.perf_counter() - started
            if progress is not None:
                progress(int(state.done.sum()), len(collection))
        timing["ray_first_result"] = first
        missing = [ref.id for ref in collection.images if ref.id in todo and not state.done[ref.id]]
        for image_id in missing:  # a file Ray Data could not open (removed, no permission)
            state.done[image_id] = True
            state.skipped[image_id] = f"{collection.images[image_id].label} could not be read by Ray Data"
    finally:
        if started_here:
            ray.shutdown()
    return timing
