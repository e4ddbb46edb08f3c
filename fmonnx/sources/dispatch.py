"""``fmonnx.convert``: one entry point for every source, chosen by what is given.

- a ``torch.nn.Module``: ``pytorch.convert.convert_module`` (with ``example_input``);
- a file path: the source the registry finds for it (``registry.py``: Keras, .pt2, TFLite).

Each returns a ``conversion.Conversion``: ``model`` is the checked ONNX ModelProto with the
``fmonnx.layers`` metadata, ``save(path)`` writes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError
from .inputs import is_torch_module, module_state, remember_conversion
from .registry import described, source_by_suffix, source_for

__all__ = ["convert"]


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
    """Convert ``model`` (an nn.Module, or a model file: .pt2, Keras, TFLite) to a checked ONNX model.

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
    if path.suffix.lower() == ".onnx":
        raise ModelError(f"{path} is already an ONNX model; pass it to render, layers or stats as it is")
    source = source_for(path) or source_by_suffix(path)
    if source is None:
        raise ModelError(f"{path} is not a model file fmonnx converts; it converts {described()}, and nn.Module "
                         "objects")
    return source.convert(path, unsafe=unsafe, **options)
