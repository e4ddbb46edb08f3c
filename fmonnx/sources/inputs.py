"""Models that are not ONNX files, given to ``render``, ``layers``, ``stats``: converted on the fly.

- a model file the source registry (registry.py) recognises: Keras ``.h5``/``.keras`` (checked,
  Lambda layers refused), ``torch.export`` ``.pt2`` (vetted, checked), TFLite ``.tflite`` (checked);
- an ``nn.Module`` object, converted by sources/pytorch (``fmonnx.convert(module,
  example_input)`` first, and pass its result, for another example input);
- a conversion result (``fmonnx.convert(...)``): its checked model as it is.

The ONNX model goes into a temporary folder that lives as long as the
process, so every later stage reads an ordinary ONNX file by path. A file is
converted once per process (again when its size or modification time
changes); a module once per state (again when a weight or buffer is replaced
or changed, in place or through ``.data``; a change that keeps every tensor's
sum and version is missed); ``fmonnx.convert(module)`` counts as that
conversion when it matches it (``remember_conversion``). A module is converted on an example input of
(1, C, 224, 224); height and width stay open when the module allows it, so an
image renders at its own size. torch is imported only when a PyTorch model is given.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import weakref
from pathlib import Path

from ..errors import ModelError
from .pytorch.pt2_file import SAVE_HINT
from .registry import described, source_for

__all__ = [
    "onnx_path_for", "conversion_record", "as_model_path", "is_torch_module", "module_state", "remember_conversion",
]

log = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_converted: dict[tuple, tuple[Path, dict]] = {}
_records_by_path: dict[Path, dict] = {}
_modules: dict[int, tuple] = {}  # id(module) -> (weak reference, state key, path)
_folder: list[Path] = []


def _temporary_folder() -> Path:
    if not _folder:
        folder = Path(tempfile.mkdtemp(prefix="fmonnx-converted-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _folder.append(folder)
    return _folder[0]


def _key(path: Path) -> tuple:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def is_torch_module(model) -> bool:
    """True for a ``torch.nn.Module`` (without importing torch: a module needs torch imported already)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _is_result(model) -> bool:
    import onnx

    return isinstance(getattr(model, "model", None), onnx.ModelProto) and hasattr(model, "layers")


def _record(result) -> dict:
    """What a conversion (``conversion.Conversion``) made the model from, for the manifest's ``source``."""
    check = result.check.summary() if result.check is not None else None
    made_from = result.source.get("file") or result.source.get("module") or ""
    return {"converted_from": made_from, **result.source, "check": check, "seconds": round(result.seconds, 3)}


def _store(result, stem: str, record: dict) -> Path:
    from .write import write_model

    target = _temporary_folder() / f"{len(_records_by_path)}_{stem}.onnx"
    write_model(result.model, target, force=True)
    _records_by_path[target] = record
    return target


def module_state(module) -> tuple:
    """Changes when a weight or buffer is replaced (data pointer, shape) or changed in place: the version
    counter sees in-place ops, the sum also sees writes through ``.data``, which bypass the counter."""
    import torch

    with torch.no_grad():
        return tuple(
            (name, t.data_ptr(), t._version, tuple(t.shape), float(t.sum()) if t.is_floating_point() else 0.0)
            for name, t in module.state_dict(keep_vars=True).items()
        )


def _remember(module, state: tuple, target: Path) -> None:
    key = id(module)

    def forget(ref, key=key):  # the entry goes with the module, so a dead module's id is never matched
        if _modules.get(key, (None,))[0] is ref:
            del _modules[key]

    _modules[key] = (weakref.ref(module, forget), state, target)


def remember_conversion(module, state: tuple, result, *, opset=None, check=True, rtol=None, atol=None) -> None:
    """Let a later render of ``module``, still in ``state`` (``module_state`` taken before converting),
    read ``result`` of ``fmonnx.convert`` instead of converting again, when ``result`` is what that
    conversion would make: the default opset, checked within the default tolerances or tighter, and
    height and width open, or fixed at the default example shape."""
    from .check import DEFAULT_ATOL, DEFAULT_RTOL
    from .pytorch.convert import DEFAULT_OPSET, example_input_for
    from .pytorch.load import import_torch

    if opset is not None and int(opset) != DEFAULT_OPSET:
        return
    if not check or result.check is None:
        return
    if (rtol is not None and float(rtol) > DEFAULT_RTOL) or (atol is not None and float(atol) > DEFAULT_ATOL):
        return
    default_shape = tuple(example_input_for(import_torch(), module).shape)
    shape = tuple(result.example_shape)
    if shape[:2] != default_shape[:2] or (not result.dynamic and shape != default_shape):
        return
    target = _store(result, type(module).__name__, _record(result))
    result._fmonnx_path = target  # render(result) reads the same file
    _remember(module, state, target)


def _module_path(module) -> Path:
    state = module_state(module)
    entry = _modules.get(id(module))
    if entry is not None and entry[0]() is module and entry[1] == state:
        return entry[2]
    from .pytorch.convert import convert_module

    result = convert_module(module)
    target = _store(result, type(module).__name__, _record(result))
    _remember(module, state, target)
    log.info("converted %s in %.1f s", type(module).__name__, result.seconds)
    return target


def _file_path(path: Path) -> Path:
    key = _key(path)
    if key not in _converted:
        result = source_for(path).convert(path)
        record = {**_record(result), "converted_from": str(path)}
        _converted[key] = (_store(result, path.stem, record), record)
        log.info("converted %s in %.1f s", path, result.seconds)
    return _converted[key][0]


def onnx_path_for(model) -> Path:
    """The ONNX file to read for ``model``: an ONNX path itself, else its checked conversion (module docstring)."""
    if is_torch_module(model):
        return _module_path(model)
    if _is_result(model):
        cached = getattr(model, "_fmonnx_path", None)
        if cached is None or not cached.exists():
            cached = _store(model, "converted", _record(model))
            model._fmonnx_path = cached
        return cached
    if not isinstance(model, (str, os.PathLike)):
        raise ModelError(
            f"cannot read a model from a {type(model).__name__}; pass an ONNX file path, {described()}, "
            "a torch.nn.Module, or the result of fmonnx.convert"
        )
    path = Path(model)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise ModelError(
            f"{path} is a pickle (torch.save), which runs code when loaded; fmonnx reads torch.export files: "
            f"{SAVE_HINT}, or pass the nn.Module itself"
        )
    if not path.is_file():
        return path
    if source_for(path) is not None:
        return _file_path(path)
    return path


def as_model_path(model) -> Path:
    """A path to show as the model: the file given, or the converted ONNX file of an object."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model)
    return onnx_path_for(model)


def conversion_record(model) -> dict | None:
    """What the on-the-fly conversion of ``model`` did (source, check), or None for an ONNX file."""
    if not isinstance(model, (str, os.PathLike)):
        return _records_by_path.get(onnx_path_for(model))
    path = Path(model)
    if path in _records_by_path:
        return _records_by_path[path]
    if source_for(path) is None:
        return None
    entry = _converted.get(_key(path))
    return entry[1] if entry else None
