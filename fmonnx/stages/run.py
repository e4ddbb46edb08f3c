"""Run a model with onnxruntime on the provider asked for, and prove which one ran.

``--provider auto`` takes CUDA when the installed onnxruntime offers it, else
the CPU. ``cuda`` asked for but not really in use after session creation
(onnxruntime falls back silently when CUDA libraries are missing) is an error.

Session options, measured on a ResNet-50 with every Conv/Relu/MaxPool exposed
(benchmarks/run.py): graph optimization ``extended``, not ``all``: ``all``
adds the NCHWc layout transform, which must reorder every exposed tensor back
to NCHW and keeps a second, reordered copy of the weights (306 MB against
173 MB resident after loading), for no faster run. Idle worker threads do
not spin, so PNG encoding on other threads gets the cores between runs.

A model is handed to onnxruntime as a file whenever it can be: it keeps a
second copy of the weights of a model it parsed from bytes (a ResNet-50:
276 MB resident against 179 MB). The exposed model (the model file with the
extra outputs appended, see expose.py) is copied to a temporary file by the
system and goes to onnxruntime as that file's graph alone, its weights as
external data at their own offsets in the copy (``load.weights_in_place``):
onnxruntime maps them from the file instead of parsing them as protobuf. On a
ResNet-50 that opens the session in 0.07-0.10 s instead of 0.20-0.25 s (2
cores), holding 90 MB resident instead of 188 MB, with the same outputs bit
for bit. The copy is private because a file truncated under a mapping kills
the process (a model exported again to the same path while a session runs).
A file that cannot be skimmed so, or that onnxruntime refuses so, goes whole
with the outputs appended, as before.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from .. import choices
from ..errors import ModelError, ProviderError
from .load import weights_in_place

__all__ = ["PROVIDERS", "OPTIMIZATIONS", "resolve_providers", "session_options", "create_session", "run_session"]

log = logging.getLogger(__name__)

PROVIDERS = choices.PROVIDERS
OPTIMIZATIONS = choices.OPTIMIZATIONS  # onnxruntime's graph optimization levels
DEFAULT_OPTIMIZATION = choices.DEFAULT_OPTIMIZATION
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_GPU_INSTALL = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"


def resolve_providers(provider: str, available: list[str]) -> list[str]:
    """The provider list to create a session with, for ``auto``, ``cpu`` or ``cuda``."""
    if provider == "cpu":
        return [_CPU]
    if provider == "cuda":
        if _CUDA not in available:
            raise ProviderError(
                f"--provider cuda: this onnxruntime offers only {', '.join(available)}; "
                f"install the GPU build ({_GPU_INSTALL}) or use --provider cpu"
            )
        return [_CUDA, _CPU]
    if provider == "auto":
        return [_CUDA, _CPU] if _CUDA in available else [_CPU]
    raise ProviderError(f"unknown provider {provider!r}; choose one of: {', '.join(PROVIDERS)}")


def session_options(threads: int | None = None, arena: bool = True, optimization: str | None = None):
    """The ``onnxruntime.SessionOptions`` fmonnx runs with (see the module docstring);
    ``optimization``: one of OPTIMIZATIONS, None for DEFAULT_OPTIMIZATION."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    level = optimization or DEFAULT_OPTIMIZATION
    if level not in levels:
        raise ModelError(f"unknown graph optimization level {level!r}; choose one of: {', '.join(OPTIMIZATIONS)}")
    options = ort.SessionOptions()
    # fatal only: fmonnx reports every failure itself, as one line; onnxruntime's own printout of the same
    # error (and its warnings) would only bury it
    options.log_severity_level = 4
    options.graph_optimization_level = levels[level]
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = arena  # off for passes: freed tensors go back to the system
    if threads:
        options.intra_op_num_threads = threads
    return options


_FILE_SIZE = 16 * 2**20  # bytes; larger models go to onnxruntime as a temporary file


@contextmanager
def _model_source(model: onnx.ModelProto | bytes | os.PathLike, append: bytes, as_bytes: bool):
    """What onnxruntime loads: a file path where possible (see the module docstring), else bytes."""
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    if as_bytes:  # external weights are found through the session's folder option, which needs bytes
        yield (Path(model).read_bytes() if not isinstance(model, bytes) else model) + append
        return
    if not isinstance(model, bytes) and not append:
        yield str(model)
        return
    if isinstance(model, bytes) and len(model) + len(append) < _FILE_SIZE:
        yield model + append
        return
    with tempfile.TemporaryDirectory(prefix="fmonnx-") as folder:
        target = Path(folder) / "model.onnx"
        if isinstance(model, bytes):
            target.write_bytes(model)
        else:
            shutil.copyfile(model, target)  # a copy in the kernel: the weights never pass through Python
        with open(target, "ab") as file:
            file.write(append)
        yield str(target)


def _session_in_place(model, append: bytes, external: bool, providers: list[str], threads, arena, optimization):
    """The session of a model file with outputs appended, its weights read in place from a private copy
    of the file (module docstring); None where that does not apply or onnxruntime refuses it."""
    import onnxruntime as ort

    if isinstance(model, (onnx.ModelProto, bytes)) or not append or external:
        return None
    with tempfile.TemporaryDirectory(prefix="fmonnx-", ignore_cleanup_errors=True) as folder:
        # onnxruntime maps the weights from the file: a copy nobody rewrites, for a file truncated under a
        # mapping kills the process (SIGBUS); the mapping outlives the copy's name
        target = Path(folder) / "model.onnx"
        shutil.copyfile(model, target)  # a copy in the kernel: the weights never pass through Python
        graph = weights_in_place(target)
        if graph is None:
            return None
        options = session_options(threads, arena, optimization)
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
        try:
            return ort.InferenceSession(graph + append, sess_options=options, providers=providers)
        except Exception as exc:  # the whole file below says what is wrong, if anything is
            log.debug("onnxruntime refused the weights in place (%s); loading the whole file", exc)
            return None


def create_session(
    model: onnx.ModelProto | bytes | os.PathLike,
    provider: str = "auto",
    model_dir: Path | None = None,
    external_data: tuple[str, ...] = (),
    threads: int | None = None,
    arena: bool = True,
    append: bytes = b"",
    optimization: str | None = None,
):
    """An ``onnxruntime.InferenceSession`` on the provider asked for.

    ``model``: a ModelProto, its bytes, or a model file's path; ``append``:
    serialized ModelProto bytes merged into it (``expose.exposed_suffix``).
    """
    import onnxruntime as ort

    providers = resolve_providers(provider, ort.get_available_providers())
    options = session_options(threads, arena, optimization)
    if external_data and model_dir is not None:
        # the model travels as bytes; its external weights are read in place from its own folder
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(model_dir))
    session = _session_in_place(model, append, bool(external_data), providers, threads, arena, optimization)
    try:
        if session is None:
            with _model_source(model, append, as_bytes=bool(external_data)) as source:
                session = ort.InferenceSession(source, sess_options=options, providers=providers)
    except OSError as exc:
        raise ModelError(
            f"cannot prepare the model for onnxruntime ({exc}); check the free space of the temporary folder"
        ) from None
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(model, (str, os.PathLike)):  # onnxruntime names the temporary copy it was given
            message = re.sub(r"\S*fmonnx-[^/\s]+/model\.onnx", str(model), message)
        raise ModelError(f"onnxruntime cannot load the model: {message}") from None
    used = session.get_providers()
    if provider == "cuda" and _CUDA not in used:
        raise ProviderError(
            "--provider cuda: onnxruntime could not start CUDA (check the CUDA and cuDNN libraries "
            "onnxruntime-gpu needs); use --provider cpu to run on the CPU"
        )
    log.debug("session providers: %s", used)
    return session


def run_session(session, feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """Run and return ``{tensor name: array}`` for ``outputs``."""
    try:
        values = session.run(outputs, feed)
    except Exception as exc:  # onnxruntime's RuntimeException etc.
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"onnxruntime failed to run the model: {message}; check the input size (--size HxW) "
            "and preprocessing"
        ) from None
    return dict(zip(outputs, values))
