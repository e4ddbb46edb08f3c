"""Compare a converted model's tensors with its source framework's, layer by layer.

Shared by the Keras and PyTorch converters. Pure numpy: ``compare`` takes
``{name: array}`` from the framework and from onnxruntime and returns a
CheckReport. The error of a tensor is measured against the tensor's own scale,
so that a layer whose activations are in the thousands and one whose
activations are below one are judged alike::

    abs_error = max |onnx - framework|
    rel_error = abs_error / max |framework|      (0 when both are exactly zero)
    passed    = abs_error <= atol + rtol * max |framework|
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from fmonnx.errors import ConversionError

__all__ = [
    "LayerError", "CheckReport", "CheckFailedError", "compare", "onnx_tensors", "DEFAULT_RTOL", "DEFAULT_ATOL",
    "CHECK_SEED",
]

logger = logging.getLogger(__name__)

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5
CHECK_SEED = 0


@dataclass(frozen=True)
class LayerError:
    """The error of one tensor: ``name`` is a layer name, or ``output:<name>`` for a model output."""

    name: str
    tensor: str
    shape: tuple[int, ...]
    abs_error: float
    rel_error: float
    scale: float
    passed: bool

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "tensor": self.tensor,
            "shape": list(self.shape),
            "abs_error": self.abs_error,
            "rel_error": self.rel_error,
            "scale": self.scale,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class CheckReport:
    """Result of checking a conversion on one seeded random input.

    ``max_abs`` and ``max_rel`` are the worst errors over all compared
    tensors; ``worst`` is the name of the tensor with the worst relative error.
    """

    rtol: float
    atol: float
    seed: int
    input_shapes: list[tuple[int, ...]]
    layers: list[LayerError] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(layer.passed for layer in self.layers)

    @property
    def max_abs(self) -> float:
        return max((layer.abs_error for layer in self.layers), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((layer.rel_error for layer in self.layers), default=0.0)

    @property
    def worst(self) -> str:
        if not self.layers:
            return ""
        return max(self.layers, key=lambda layer: layer.rel_error).name

    @property
    def failed(self) -> list[LayerError]:
        return [layer for layer in self.layers if not layer.passed]

    def summary(self) -> str:
        """One line: verdict, tensors compared, worst errors and where."""
        verdict = "passed" if self.passed else f"FAILED in {len(self.failed)} tensors"
        return (
            f"check {verdict}: {len(self.layers)} tensors compared, worst abs error {self.max_abs:.3g}, "
            f"worst rel error {self.max_rel:.3g} in {self.worst or '-'} (rtol {self.rtol:g}, atol {self.atol:g})"
        )

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "rtol": self.rtol,
            "atol": self.atol,
            "seed": self.seed,
            "input_shapes": [list(s) for s in self.input_shapes],
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "worst": self.worst,
            "layers": [layer.as_dict() for layer in self.layers],
        }


class CheckFailedError(ConversionError):
    """The converted model's tensors differ from the source framework's past the tolerance.

    ``report`` is the CheckReport; ``result`` the ConversionResult (its model
    was not written anywhere).
    """

    def __init__(self, message: str, report: CheckReport, result=None) -> None:
        super().__init__(message)
        self.report = report
        self.result = result


def compare(
    expected: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    tensors: dict[str, str],
    *,
    rtol: float,
    atol: float,
    seed: int = 0,
    input_shapes: list[tuple[int, ...]] | None = None,
) -> CheckReport:
    """Compare the framework's arrays (``expected``) with onnxruntime's (``actual``), by name.

    ``tensors[name]`` is the ONNX tensor the name was read from (for the
    report). Every name in ``expected`` must be in ``actual`` with the same
    shape; a missing or misshapen one fails with an infinite error.
    """
    layers = []
    for name, want in expected.items():
        want = np.asarray(want, dtype=np.float64)
        got = actual.get(name)
        finite = np.abs(want[np.isfinite(want)])
        scale = float(np.max(finite)) if finite.size else 0.0
        if got is None or np.shape(got) != want.shape:
            logger.warning(
                "tensor %s: expected shape %s, got %s", name, want.shape, None if got is None else np.shape(got)
            )
            abs_error = rel_error = float("inf")
        else:
            got = np.asarray(got, dtype=np.float64)
            with np.errstate(invalid="ignore"):
                diff = np.where(got == want, 0.0, np.abs(got - want))  # the same infinity on both sides agrees
            abs_error = float(np.max(diff)) if diff.size else 0.0
            if not np.isfinite(abs_error):
                abs_error = float("inf")
            rel_error = abs_error / scale if scale > 0 else (0.0 if abs_error == 0 else float("inf"))
        passed = bool(np.isfinite(abs_error)) and abs_error <= atol + rtol * scale
        layers.append(LayerError(name, tensors.get(name, name), tuple(want.shape), abs_error, rel_error, scale, passed))
    return CheckReport(rtol, atol, seed, list(input_shapes or []), layers)


def onnx_tensors(onnx_model, input_names: list[str], inputs: list[np.ndarray], wanted: list[str],
                 label: str) -> dict[str, np.ndarray]:
    """``{tensor: value}`` for ``wanted`` from onnxruntime running the converted ``onnx_model`` on ``inputs``
    (the TensorFlow converters' check). A converter may have renamed the inputs: then they are fed in order."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = list(input_names)
        if sorted(names) != sorted(i.name for i in session.get_inputs()):
            names = [i.name for i in session.get_inputs()]  # tf2onnx renamed them: rely on their order
        return dict(zip(wanted, session.run(wanted, dict(zip(names, inputs)))))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; the user needs the reason
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"onnxruntime could not run the ONNX model converted from {label}: {first}; "
            "the model would not render either (--no-check would not help): try another --opset"
        ) from exc
