"""``fmonnx.convert``: one entry point for every source, chosen by what is given.

- a ``torch.nn.Module``: ``pytorch.convert.convert_module`` (with ``example_input``);
- a ``.pt2`` path (``torch.export.save``): ``pytorch.convert.convert_pt2``;
- a Keras ``.keras``/``.h5`` path: ``keras.convert.convert_keras``.

Each returns a result whose ``model`` is the checked ONNX ModelProto with the
``fmonnx.layers`` metadata; a PyTorch result writes itself with ``.save(path)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ModelError
from .inputs import is_torch_module, module_state, remember_conversion
from .keras.file import is_keras_file
from .pytorch.pt2_file import is_pt2_file

__all__ = ["convert"]

log = logging.getLogger(__name__)


def convert(
    model,
    example_input=None,
    *,
    opset: int | None = None,
    check: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
    unsafe: bool = False,
):
    """Convert ``model`` (an nn.Module, or a .pt2 or Keras file path) to a checked ONNX model.

    ``example_input`` ((1, C, H, W), modules only) sets the traced and checked
    shape [default: (1, C, 224, 224)]. ``check`` compares the framework and
    onnxruntime on a seeded random input, every layer, within ``rtol``/``atol``
    [default: 1e-4/1e-5]; a failure raises CheckFailedError and returns nothing.
    ``unsafe`` allows Keras Lambda layers, or skips the vetting of a .pt2 file:
    both run code stored in the file.
    """
    options = {"opset": opset, "check": check, "rtol": rtol, "atol": atol}
    if is_torch_module(model):
        from .pytorch.convert import convert_module

        state = module_state(model)  # before converting: what the result was made from
        result = convert_module(model, example_input, **options)
        remember_conversion(model, state, result, **options)  # a later render of the same module reads it
        return result
    if not isinstance(model, (str, os.PathLike)):
        raise ModelError(
            f"cannot convert a {type(model).__name__}; pass a torch.nn.Module, or a .pt2 or Keras file path"
        )
    path = Path(model)
    if example_input is not None:
        raise ModelError(f"example_input applies to nn.Module objects; {path.name} carries its own input shape")
    if is_pt2_file(path):
        from .pytorch.convert import convert_pt2

        return convert_pt2(path, unsafe=unsafe, **options)
    if path.suffix.lower() == ".onnx":
        raise ModelError(f"{path} is already an ONNX model; pass it to render, layers or stats as it is")
    if is_keras_file(path):
        from .keras.convert import convert_keras

        return convert_keras(path, unsafe=unsafe, **options)
    raise ModelError(
        f"{path} is neither a .pt2 (torch.export) nor a Keras (.keras, .h5) file; "
        "fmonnx converts those, and nn.Module objects"
    )
