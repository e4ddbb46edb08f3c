"""Read what a Keras model file says about itself, without TensorFlow.

A Keras model is stored as one of:

- ``.h5`` / ``.hdf5`` (HDF5; Keras 2 and Keras 3 "legacy" format): the root
  attributes ``model_config`` (JSON) and ``keras_version``;
- ``.keras`` (a zip; Keras 3, and tf_keras >= 2.13): ``config.json`` and
  ``metadata.json`` (which holds ``keras_version``).

Everything here reads the configuration as JSON data only, so that the choice
of loader and the refusal of unsafe content (Lambda layers, whose Python code
the file carries) happen before any stored code could run.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fmonnx.errors import MissingDependencyError, ModelError

__all__ = [
    "KerasFile",
    "is_keras_file",
    "read_keras_file",
    "layer_configs",
    "lambda_layers",
    "choose_loader",
]


KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
# Layers that run Python code stored in the file when the model is loaded.
UNSAFE_CLASSES = frozenset({"Lambda", "__lambda__"})
_VERSION = re.compile(r"^[0-9]{1,4}(\.[0-9A-Za-z+-]{1,16}){0,4}$")  # 3.15.1, 2.15.0, 3.0.0rc1, 2.13.1+local
SAVE_HINT = "in the code that built it, save the whole model with model.save('model.keras')"


@dataclass(frozen=True)
class KerasFile:
    """A Keras model file, as described by its own metadata.

    ``format`` is ``"h5"`` or ``"keras"``; ``keras_version`` is the version of
    Keras that saved it (``""`` when the file does not say); ``config`` is the
    model configuration (the JSON of ``model.get_config()`` with its
    ``class_name``), plain data.
    """

    path: Path
    format: str
    keras_version: str
    config: dict


def _magic(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(8)


def is_keras_file(path: str | os.PathLike) -> bool:
    """True when ``path`` looks like a Keras model: by suffix, or by HDF5/zip magic.

    Cheap: reads at most 8 bytes and imports nothing heavy. A file that does
    not exist is judged by its suffix alone.
    """
    path = Path(path)
    if path.suffix.lower() in KERAS_SUFFIXES:
        return True
    if not path.is_file():
        return False
    try:
        head = _magic(path)
    except OSError:
        return False
    return head.startswith(HDF5_MAGIC) or head.startswith(ZIP_MAGIC)


def read_keras_file(path: str | os.PathLike) -> KerasFile:
    """Read the format, saving Keras version and model config of ``path``.

    Raises ModelError for a missing file, a folder, a file that is neither
    HDF5 nor zip, a corrupt one, or an ``.h5`` holding only weights.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            raise ModelError(
                f"{path} is a TensorFlow SavedModel folder, which fmonnx convert does not read; "
                f"{SAVE_HINT}, or convert it with: python -m tf2onnx.convert --saved-model {path}"
            )
        raise ModelError(f"{path} is a folder; pass a Keras model file (.keras or .h5)")
    if not path.exists():
        raise ModelError(f"{path} does not exist; check the path")
    try:
        head = _magic(path)
    except OSError as exc:
        raise ModelError(f"{path} cannot be read ({exc.strerror}); check its permissions") from exc
    if head.startswith(HDF5_MAGIC):
        return _read_h5(path)
    if head.startswith(ZIP_MAGIC):
        return _read_zip(path)
    raise ModelError(
        f"{path} is not a Keras model file (neither HDF5 nor a .keras zip); "
        "pass a file written by model.save('model.keras') or model.save('model.h5')"
    )


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_h5(path: Path) -> KerasFile:
    try:
        import h5py
    except ImportError as exc:
        raise MissingDependencyError(
            "h5py is not installed, so .h5 files cannot be read; run: pip install -e '.[keras]'"
        ) from exc
    try:
        with h5py.File(path, "r") as handle:
            attrs = dict(handle.attrs)
    except OSError as exc:
        raise ModelError(
            f"{path} is HDF5 but cannot be read, truncated or corrupt ({exc}); save the model again"
        ) from exc
    if "model_config" not in attrs:
        raise ModelError(
            f"{path} holds only weights, no model architecture (written by save_weights); "
            f"{SAVE_HINT} (or build the model, load these weights, then save it)"
        )
    try:
        config = _parse_config(path, _text(attrs["model_config"]))
        return KerasFile(path, "h5", _version(path, _text(attrs.get("keras_version", ""))), config)
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path} has a model config that is not UTF-8 text ({exc}); save the model again") from exc


def _read_zip(path: Path) -> KerasFile:
    try:
        with zipfile.ZipFile(path) as archive:
            listed = archive.namelist()
            repeated = sorted({name for name in listed if listed.count(name) > 1})
            if repeated:
                raise ModelError(
                    f"{path} holds the entry {repeated[0]!r} twice, so readers could disagree on which copy is "
                    "the model; save the model again with model.save('model.keras')"
                )
            names = set(listed)
            if "config.json" not in names:
                raise ModelError(
                    f"{path} is a zip without config.json, not a .keras model; "
                    "pass a file written by model.save('model.keras')"
                )
            config_text = archive.read("config.json").decode("utf-8")
            metadata_text = archive.read("metadata.json").decode("utf-8") if "metadata.json" in names else "{}"
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, zipfile.LargeZipFile) as exc:
        raise ModelError(
            f"{path} is a zip but cannot be read, truncated or corrupt ({exc}); save the model again"
        ) from exc
    except (NotImplementedError, RuntimeError) as exc:  # a compression method, zip version or encryption
        raise ModelError(
            f"{path} is a zip that Python cannot read ({exc}); save the model again with "
            "model.save('model.keras'), which writes a plain zip"
        ) from exc
    metadata = _parse_config(path, metadata_text)
    version = _version(path, metadata.get("keras_version", ""))
    return KerasFile(path, "keras", version, _parse_config(path, config_text))


def _version(path: Path, value: Any) -> str:
    """The Keras version a file says saved it, checked: it picks the loader (choose_loader)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not _VERSION.match(value):
        raise ModelError(f"{path} says it was saved by Keras {str(value)[:40]!r}, which is not a version number; "
                         "save the model again with model.save('model.keras')")
    return value


def _parse_config(path: Path, text: str) -> dict:
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ModelError(f"{path} has a model config that is not valid JSON ({exc}); save the model again") from exc
    except RecursionError:
        raise ModelError(f"{path} has a model config nested too deep to read; save the model again") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path} has a model config that is not a JSON object; save the model again")
    return config


def layer_configs(config: dict) -> Iterator[tuple[str, str]]:
    """Yield ``(path, class_name)`` for every layer in a model config, nested ones too.

    ``config`` is the whole model config, ``{"class_name": ..., "config": {...}}``.
    Paths join the names of enclosing models with ``/`` (``backbone/conv1``);
    the layer inside a wrapper (TimeDistributed, Bidirectional) is
    ``wrapper/inner``.
    """
    yield from _walk(config.get("config") or {}, "")


# Keys under which a config nests the layers it is made of (models, wrappers such as Bidirectional).
_LAYER_KEYS = ("layers", "layer", "forward_layer", "backward_layer")


def _walk(body: Any, prefix: str) -> Iterator[tuple[str, str]]:
    if not isinstance(body, dict):
        return
    children = body.get("layers")
    children = list(children) if isinstance(children, list) else []
    children += [body[key] for key in _LAYER_KEYS[1:] if isinstance(body.get(key), dict)]
    for child in children:
        if not isinstance(child, dict) or not isinstance(child.get("class_name"), str):
            continue
        inner = child.get("config") if isinstance(child.get("config"), dict) else {}
        name = str(inner.get("name") or child.get("name") or child["class_name"])
        yield prefix + name, child["class_name"]
        yield from _walk(inner, prefix + name + "/")


def _unsafe_objects(value: Any, prefix: str = "") -> Iterator[str]:
    """Paths of every object in ``value`` whose loading runs stored code, under whatever key it is nested
    (a layer list, a wrapper's ``backward_layer``, an initializer, a key Keras adds tomorrow)."""
    if isinstance(value, list):
        for item in value:
            yield from _unsafe_objects(item, prefix)
    elif isinstance(value, dict):
        class_name = value.get("class_name")
        inner = value.get("config") if isinstance(value.get("config"), dict) else {}
        if isinstance(class_name, str):
            name = str(inner.get("name") or value.get("name") or class_name)
            registered = value.get("registered_name")
            if class_name in UNSAFE_CLASSES or (isinstance(registered, str) and registered in UNSAFE_CLASSES):
                yield prefix + name
                return
            prefix = prefix + name + "/"
        if value.get("function_type") == "lambda":  # tf_keras marshals a lambda's bytecode into the config
            yield prefix.rstrip("/") or "function"
            return
        for key, child in value.items():
            if key != "class_name":
                yield from _unsafe_objects(child, prefix)


def lambda_layers(config: dict) -> list[str]:
    """Paths of the objects whose loading runs Python code stored in the file (Lambda layers, serialized
    lambdas), found anywhere in the config, not only among the layers."""
    found = []
    for key, child in config.items():
        if key != "class_name":
            found += [path for path in _unsafe_objects(child) if path not in found]
    return found


def choose_loader(keras_file: KerasFile) -> str:
    """``"keras3"`` for files saved by Keras 3, else ``"tf_keras"`` (Keras 2).

    Keras 3 cannot read some Keras 2 files (DepthwiseConv2D with ``groups``),
    and tf_keras cannot read Keras 3 ones (``batch_shape``), so the version
    written in the file decides. A file without a version is old, so Keras 2.
    """
    major = keras_file.keras_version.split(".", 1)[0]
    if major.isdigit():
        return "keras3" if int(major) >= 3 else "tf_keras"
    return "keras3" if keras_file.format == "keras" else "tf_keras"
