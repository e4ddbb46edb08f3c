"""Exceptions for problems a user can fix.

Every message says what is wrong and how to fix it, in one line. The CLI
prints them as ``Error: <message>`` with exit code 1, without a traceback;
any other exception is a bug in fmonnx.
"""

from __future__ import annotations

__all__ = [
    "FmonnxError",
    "ModelError",
    "ImageError",
    "OutputError",
    "ProviderError",
    "ConversionError",
    "MissingDependencyError",
    "GradientError",
]


class FmonnxError(Exception):
    """Base class of every error a user can act on."""


class ModelError(FmonnxError):
    """The model file is missing, unreadable, or has nothing to show."""


class ImageError(FmonnxError):
    """An input image is missing, unreadable, or does not fit the model."""


class OutputError(FmonnxError):
    """The output folder or file cannot be written."""


class ProviderError(FmonnxError):
    """The onnxruntime execution provider asked for is not available."""


class ConversionError(FmonnxError):
    """A Keras model could not be converted, or the conversion check failed."""


class MissingDependencyError(FmonnxError):
    """An optional dependency (an extra) is not installed."""


class GradientError(ModelError):
    """The backward pass cannot be written for the model (an op without a gradient rule, an old opset)."""
