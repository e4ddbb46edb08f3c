"""Check a converted PyTorch model: the module and onnxruntime on one seeded random input, every layer.

The tapped module (tap.py) runs eagerly in PyTorch, its forward hooks
capturing every module call, and the ONNX model runs in onnxruntime; the
model's outputs (``output:<name>``) and every recorded layer are compared
with ``fmonnx.sources.check.compare``.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from fmonnx.errors import ConversionError
from fmonnx.sources.check import CHECK_SEED, CheckReport, compare
from fmonnx.sources.pytorch.export import first_line

__all__ = ["random_input", "check_conversion"]

logger = logging.getLogger(__name__)


def random_input(shape: tuple[int, ...], seed: int = CHECK_SEED) -> np.ndarray:
    """Uniform in [0, 1) (an image divided by 255), float32, of ``shape``."""
    return np.random.default_rng(seed).random(shape, dtype=np.float64).astype(np.float32)


def check_conversion(
    torch, tap, onnx_model: onnx.ModelProto, records: list[dict], shape, *, rtol: float, atol: float, label: str
) -> CheckReport:
    """Run ``tap`` and ``onnx_model`` on the same seeded input; compare outputs and every record's layer.

    ``records`` are the ``fmonnx.layers`` entries; the tap's ``calls`` after
    this run must name the same layers, as calls or as their ``also_output_of``
    (an eager Dropout returns its input, a traced one may not; a model whose
    control flow differs between runs cannot be checked, and fails).
    """
    import onnxruntime

    array = random_input(tuple(shape))
    try:
        with torch.no_grad():
            expected_all = [t.detach().cpu().numpy() for t in tap(torch.from_numpy(array))]
    except Exception as exc:  # noqa: BLE001 - the model's own code; the user needs the reason
        raise ConversionError(
            f"PyTorch could not run {label} on the check's random input: {first_line(exc)}; "
            "rerun with --no-check (check=False) to skip the check"
        ) from exc
    by_layer = {name: call.output for call in tap.calls for name in call.also_output_of}
    by_layer.update({call.layer: call.output for call in tap.calls})
    graph_outputs = [value.name for value in onnx_model.graph.output]
    expected: dict[str, np.ndarray] = {}
    tensors: dict[str, str] = {}
    for index in range(tap.output_count):
        expected[f"output:{graph_outputs[index]}"] = expected_all[index]
        tensors[f"output:{graph_outputs[index]}"] = graph_outputs[index]
    for record in records:
        index = by_layer.get(record["layer"])
        if index is None:
            expected[record["layer"]] = np.full(1, np.inf)  # fails: the layer did not run this time
        else:
            expected[record["layer"]] = expected_all[index]
        tensors[record["layer"]] = record["output"]
    try:
        session = onnxruntime.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        wanted = sorted(set(tensors.values()))
        got = dict(zip(wanted, session.run(wanted, {session.get_inputs()[0].name: array})))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; the user needs the reason
        raise ConversionError(
            f"onnxruntime could not run the ONNX model converted from {label}: {first_line(exc)}; "
            "try another --opset, or rerun with --no-check (check=False) to skip the check"
        ) from exc
    actual = {name: got[tensor] for name, tensor in tensors.items()}
    report = compare(expected, actual, tensors, rtol=rtol, atol=atol, seed=CHECK_SEED, input_shapes=[array.shape])
    logger.info("%s", report.summary())
    return report
