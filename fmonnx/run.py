"""Run a model with onnxruntime on the provider asked for, and prove which one ran.

``--provider auto`` takes CUDA when the installed onnxruntime offers it, else
the CPU. ``cuda`` asked for but not really in use after session creation
(onnxruntime falls back silently when CUDA libraries are missing) is an error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from .errors import ModelError, ProviderError

__all__ = ["PROVIDERS", "resolve_providers", "create_session", "run_session"]

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "cpu", "cuda")
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


def create_session(
    model: onnx.ModelProto,
    provider: str = "auto",
    model_dir: Path | None = None,
    external_data: tuple[str, ...] = (),
    threads: int | None = None,
):
    """An ``onnxruntime.InferenceSession`` for ``model`` on the provider asked for."""
    import onnxruntime as ort

    providers = resolve_providers(provider, ort.get_available_providers())
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime's own warnings go to the log, not the user's terminal
    if threads:
        options.intra_op_num_threads = threads
    if external_data and model_dir is not None:
        # the model travels as bytes; its external weights are read in place from its own folder
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(model_dir))
    try:
        session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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
