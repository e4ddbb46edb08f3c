"""Export a tapped PyTorch model to ONNX with the dynamo exporter (``torch.export`` then ``torch.onnx``).

The height and width of the image input are exported as ``Dim.AUTO``: they
stay symbolic in the ONNX model when the model's code allows other sizes (a
ResNet), and are fixed at the example's size when it does not. torch.export
does not always pin them (a Linear after a Flatten only needs H * W fixed),
so the open model is run once in onnxruntime at (H + 32, W + 64), a size that
keeps multiples of 32 but changes the area and the aspect; when that fails
the input is pinned to the example's size. ``ExportedModel.dynamic`` says
which happened.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass

import onnx

from fmonnx.errors import ConversionError

__all__ = ["ExportedModel", "export_onnx", "first_line"]

logger = logging.getLogger(__name__)

# torch logs a warning per missing torchvision op, and about opset conversion, on every export
_NOISY_LOGGERS = (
    "torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes", "onnxscript", "onnx_ir",
)


@dataclass
class ExportedModel:
    """The ONNX model of a tapped module, and whether its height and width stayed open."""

    model: onnx.ModelProto
    dynamic: bool
    opset: int


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (at most 300 characters), or its type when it has none."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def _cause(exc: BaseException) -> BaseException:
    """The innermost cause of ``exc``: the exporter wraps the error that says why in its own."""
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


def _data_dependent(exc: BaseException) -> bool:
    """Whether torch.export failed on a shape that depends on tensor values (its message is a page of sympy)."""
    text = f"{type(exc).__name__} {str(exc)[:2000]}"
    return "DataDependent" in text or "data-dependent" in text


def _runs_at_another_size(model: onnx.ModelProto, shape: tuple[int, ...]) -> bool:
    import numpy as np
    import onnxruntime

    batch, channels, height, width = shape
    probe = np.zeros((batch, channels, height + 32, width + 64), np.float32)
    try:
        quiet_run = onnxruntime.SessionOptions()
        quiet_run.log_severity_level = 4  # a failure here is an answer, not an error to print
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), quiet_run, providers=["CPUExecutionProvider"]
        )
        session.run(None, {session.get_inputs()[0].name: probe})
    except Exception:  # noqa: BLE001 - any failure means: not at this size
        return False
    return True


@contextlib.contextmanager
def quiet():
    """Silence torch's export chatter (warnings and log lines the user cannot act on)."""
    saved = []
    for name in _NOISY_LOGGERS:
        log = logging.getLogger(name)
        saved.append((log, log.level))
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in saved:
            log.setLevel(level)


def export_onnx(torch, tap, example, opset: int, label: str, dynamic: bool = True) -> ExportedModel:
    """``tap`` (see tap.py) on ``example`` (1, C, H, W) as ONNX; raises ConversionError with torch's reason."""
    shapes = None
    auto = getattr(torch.export.Dim, "AUTO", None)  # torch >= 2.6; before it, the example's size is kept
    if dynamic and auto is not None:
        shapes = (({2: auto, 3: auto},),)
    with quiet():
        try:
            with torch.no_grad():
                # one call, not torch.export then torch.onnx.export of the program: the same graph, in about
                # half the time (mobilevit_xxs: 17-21 s against 36-44 s)
                exported = torch.onnx.export(
                    tap, (example,), dynamic_shapes=shapes, dynamo=True, opset_version=opset, verbose=False,
                    report=False,
                )
        except Exception as exc:  # noqa: BLE001 - the exporter raises anything; the user needs the reason
            reason = _cause(exc)
            if _data_dependent(reason) or _data_dependent(exc):
                raise ConversionError(
                    f"torch.export could not trace {label}: its shapes depend on the values it computes "
                    "(data-dependent control flow, as in a detector's box selection); convert its backbone, "
                    "or export it with torch.onnx.export(dynamo=False) and render the .onnx file"
                ) from exc
            if type(exc).__name__ == "TorchExportError":  # step 1 of 3: torch.export could not trace the model
                raise ConversionError(
                    f"torch.export could not trace {label} on an input of shape {list(example.shape)}: "
                    f"{first_line(reason)}; make sure model(example_input) runs, or pass another example_input"
                ) from exc
            raise ConversionError(
                f"torch.onnx.export could not convert {label}: {first_line(reason)}; try another --opset"
            ) from exc
    model = exported.model_proto
    image = model.graph.input[0].type.tensor_type.shape.dim
    open_size = len(image) == 4 and not (image[2].HasField("dim_value") and image[3].HasField("dim_value"))
    if open_size and not _runs_at_another_size(model, tuple(example.shape)):
        logger.info("%s: the exported model does not run at other sizes; its input is fixed", label)
        image[2].dim_value, image[3].dim_value = int(example.shape[2]), int(example.shape[3])
        open_size = False
    opsets = {entry.domain: entry.version for entry in model.opset_import}
    return ExportedModel(model, open_size, opsets.get("", opset))
