"""Import torch and the ONNX exporter's dependencies, or say how to install them.

torch is imported here, lazily, and only by the modules of this package.
"""

from __future__ import annotations

from types import ModuleType

from fmonnx.errors import MissingDependencyError

__all__ = ["INSTALL_HINT", "import_torch"]


INSTALL_HINT = "run: pip install -e '.[torch]'"


def import_torch() -> ModuleType:
    """``torch``, after checking that the dynamo ONNX exporter can run (it needs onnxscript)."""
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(f"PyTorch is not installed; {INSTALL_HINT}") from exc
    try:
        import onnxscript  # noqa: F401 - torch.onnx.export(dynamo=True) imports it late, with a long error
    except ImportError as exc:
        raise MissingDependencyError(f"onnxscript is not installed; {INSTALL_HINT}") from exc
    return torch
