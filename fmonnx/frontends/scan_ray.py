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
every CPU starves Ray Data's read tasks and the scan stalls (on 2 cores, 1 actor). With
``--provider cuda`` each actor takes one GPU and there is one actor per GPU.
``ray.init(address=...)`` joins ``--ray-address`` or RAY_ADDRESS; with neither, a local Ray starts
(and stops at the end). Image paths must be readable on every node (a shared file system).

Every wait on Ray is bounded. Joining: a TCP probe of the address first (nothing listening fails at
once), and Ray's own connect timeouts shortened for the join (left alone, Ray retries 20 times for
about 35 s each). Scanning: Ray Data's no-progress guard (``execution_no_progress_timeout_s``, Ray's
default 30 min; ours ``DEFAULT_STALL_S`` or RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S) ends a scan
that stopped moving, as one that lost a node does: the actors restarted on the nodes left take the
CPUs the readers need, and Ray Data waits for resources that never come. That and the loss of
objects or actors raise ``ScanStoppedError``; every delta merged so far is whole, so the caller
checkpoints the state and ``--resume`` goes on from it.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import FmonnxError, ImageError, MissingDependencyError
from ..options import RenderOptions
from ..stages.collection import Collection, decode_bytes, row_bytes
from ..stages.tally import ScanDelta, ScanTally

__all__ = ["pass_one_ray", "actor_count", "ScanStoppedError", "STALL_ENV", "DEFAULT_STALL_S"]

log = logging.getLogger(__name__)

STALL_ENV = "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S"  # Ray Data's own knob, also read by Ray at import
DEFAULT_STALL_S = 300.0  # Ray's default is 30 min; a batch of a CPU model takes seconds
PROBE_S = 3.0
# Ray's connect knobs, only while joining: one attempt (not 20) of 2 s to connect plus 3 s for the cluster id
JOIN_TIMEOUTS = {
    "RAY_gcs_server_port_wait_time_s": "1",
    "RAY_gcs_rpc_server_connect_timeout_s": "2",
    "RAY_py_gcs_connect_timeout_s": "3",
}
HOW_TO_JOIN = ("start a cluster with `ray start --head` (it prints the address), check --ray-address / RAY_ADDRESS, "
               "or leave both out to start a local Ray")


class ScanStoppedError(FmonnxError):
    """Ray stopped making progress or lost part of the scan; the state merged so far is whole (checkpoint it)."""


def actor_count(cpus: float, gpus: float, provider: str) -> int:
    """Actors for the pool: one per GPU with CUDA, else one fewer than the CPUs (so the readers get one)."""
    if provider == "cuda":
        return max(1, int(gpus))
    return max(1, int(cpus) - 1)


class _ScanActor:
    """Holds a Scanner (the onnxruntime session) and an actor-local state used to filter top-k candidates."""

    def __init__(self, model_path: str, options: RenderOptions, batch: int, top: int, images: int):
        from ..stages.scanner import Scanner
        from .models import plan_for

        self.scanner = Scanner(plan_for(model_path, options), options, batch)
        self.own = ScanTally.empty([layer.channels for layer in self.scanner.layers], top, images)

    def __call__(self, batch: dict) -> dict:
        scanner = self.scanner
        ids, tensors, skipped = [], [], {}
        for image_id, data, label in zip(batch["id"], batch["bytes"], batch["label"]):
            image_id = int(image_id)
            try:
                pixels = decode_bytes(row_bytes(data, str(label)), str(label), scanner.image_channels, scanner.size)
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
        # a list may name one file twice: it is read once and its bytes go to every id that names it
        ids_by_path: dict[str, list[tuple[int, str]]] = {}
        for ref in files:
            ids_by_path.setdefault(str(Path(ref.path).resolve()), []).append((ref.id, ref.label))

        def with_ids(batch: dict) -> dict:
            rows = [(found, data) for path, data in zip(batch["path"], batch["bytes"])
                    for found in ids_by_path[str(Path(path).resolve())]]
            return {"id": np.array([image_id for (image_id, _), _ in rows], np.int64),
                    "bytes": np.array([data for _, data in rows], dtype=object),
                    "label": np.array([label for (_, label), _ in rows], dtype=object)}

        read = ray_data.read_binary_files(list(ids_by_path), include_paths=True, ignore_missing_paths=True)
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

        import pyarrow
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(file, columns=[column])
        except (OSError, ValueError, pyarrow.ArrowException) as exc:  # a damaged data page
            raise ImageError(f"{file} cannot be read as Parquet ({_first_line(exc)}); write it again") from None
        table = table.rename_columns(["__image"]).append_column("__row", pyarrow.array(
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
    started = time.perf_counter()
    address = address or os.environ.get("RAY_ADDRESS") or None
    running = "ray" in sys.modules and sys.modules["ray"].is_initialized()  # the caller's own Ray session
    joining = not running and address not in (None, "local")
    if joining:
        _probe(address)
    # Ray's C++ side reads its knobs once, at import: they are set before it, where this process imports Ray
    with _environment(JOIN_TIMEOUTS if joining else {}):
        try:
            import ray
            import ray.data as ray_data
        except ImportError:
            raise MissingDependencyError(
                "--engine ray needs Ray Data: pip install -e '.[ray]' (or pip install 'ray[data]')"
            ) from None
        started_here = not ray.is_initialized()
        if started_here:
            _init_ray(ray, address)
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
        stall = stall_seconds()
        if not hasattr(results.context, "execution_no_progress_timeout_s"):
            log.warning("this Ray Data (%s) has no no-progress timeout: a scan that loses a node waits forever; "
                        "upgrade Ray (pip install -U 'ray[data]')", ray.__version__)
        results.context.execution_no_progress_timeout_s = stall
        first = None
        try:
            for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
                for blob in batch["delta"]:
                    delta: ScanDelta = pickle.loads(blob)
                    state.apply(delta)
                    save(state, len(delta.ids))
                if first is None:
                    first = time.perf_counter() - started
                if progress is not None:
                    progress(int(state.done.sum()), len(collection))
        except Exception as exc:
            stopped = _stopped(ray, exc, stall, resources, actors, gpu, int(state.done.sum()), len(collection))
            if stopped is None:
                raise
            raise stopped from None
        timing["ray_first_result"] = first
        missing = [ref.id for ref in collection.images if ref.id in todo and not state.done[ref.id]]
        for image_id in missing:  # a file Ray Data could not open (removed, no permission)
            state.done[image_id] = True
            state.skipped[image_id] = f"{collection.images[image_id].label} could not be read by Ray Data"
    finally:
        if started_here:
            ray.shutdown()
    return timing


def stall_seconds() -> float:
    """How long a scan may go without progress: RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S, else DEFAULT_STALL_S."""
    value = os.environ.get(STALL_ENV)
    if value is None:
        return DEFAULT_STALL_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0 and seconds != -1:
        raise FmonnxError(f"{STALL_ENV}={value!r} is not a number of seconds above 0 (or -1 to wait forever); "
                          f"unset it for the default {DEFAULT_STALL_S:.0f} s")
    return seconds


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of "host:port" or "ray://host:port"; None for "auto" and "local", which Ray resolves itself."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set the variables the user has not set, for the block only."""
    added = [name for name in values if name not in os.environ]
    os.environ.update({name: values[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _probe(address: str) -> None:
    """Fail at once where nothing listens at ``address`` ("auto" is left to Ray, bounded by JOIN_TIMEOUTS)."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=PROBE_S).close()
    except OSError as exc:
        raise FmonnxError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); {HOW_TO_JOIN}") from None


def _init_ray(ray, address: str | None) -> None:
    """Join the cluster at ``address`` or, with None or "local", start a local Ray."""
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: not a Ray cluster, a bad address
        if address in (None, "local"):
            raise FmonnxError(f"cannot start a local Ray ({_first_line(exc)}); check `ray status`, "
                              "or use --engine local") from None
        raise FmonnxError(f"cannot join Ray at {address} ({_first_line(exc)}); {HOW_TO_JOIN}") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _stopped(ray, exc: Exception, stall: float, resources: dict, actors: int, gpu: bool, done: int,
             total: int) -> ScanStoppedError | None:
    """The error for a scan Ray can no longer finish (a stall, lost objects or actors); None for anything else."""
    from ray.data.exceptions import ExecutionTimeoutError
    from ray.exceptions import RayError, RayTaskError, UserCodeException

    kept = (f"the {done} of {total} images merged so far are checkpointed: run the same command with --resume "
            "to go on")
    if isinstance(exc, ExecutionTimeoutError):
        try:  # a node lost shows as fewer CPUs (or GPUs) than the pool was sized for
            now = ray.cluster_resources()
        except Exception:
            now = None
        kind = "GPU" if gpu else "CPU"
        before, after = resources.get(kind, 0), (now or {}).get(kind, 0)
        if now is None:
            cluster = "the cluster does not answer"
        elif after < before:
            cluster = f"Ray has {after:g} {kind}s, {before:g} at the start: a node was lost"
        else:  # Ray counts a killed node until its health checks fail
            cluster = (f"a node lost, or the pool of {actors} actors{'' if gpu else ' and the readers'} does not fit "
                       f"in Ray's {after:g} {kind}s")
        return ScanStoppedError(f"the Ray scan made no progress for {stall:g} s ({cluster}); {kept} (on a cluster "
                                f"with the CPUs back, or with --engine local); if batches are this slow, raise "
                                f"{STALL_ENV}")
    if isinstance(exc, RayError) and not isinstance(exc, RayTaskError | UserCodeException):
        return ScanStoppedError(f"Ray lost part of the scan ({_first_line(exc)}); {kept}")
    return None
