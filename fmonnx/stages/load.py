"""Load an ONNX model from disk, with one-line errors for every way it can fail.

Models over 2 GB keep their weights in external data files; they are loaded
by path with ``load_external_data=False`` so the weights stay on disk and
onnxruntime reads them itself from the model's folder (see ``run.create_session``).

``load_graph`` reads the model without the values of its large initializers
(what a plan holds: sessions read the weights from the file). It skims the
file's protobuf wire format and parses only the rest, so the weights are
neither read nor parsed: a ResNet-50's 97 MB file loads in a few milliseconds
instead of 0.1 s. A file it cannot skim is loaded whole and stripped.
``weights_in_place`` skims the same way for onnxruntime: the model with its
large weights as external data at their own offsets in the file.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import ModelError

__all__ = ["LoadedModel", "load_model", "load_graph", "weights_in_place", "SMALL_INITIALIZER"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A parsed model and where it came from.

    ``external_data`` lists the external weight files (relative to
    ``path.parent``) when the weights were left on disk.
    """

    model: onnx.ModelProto
    path: Path
    external_data: tuple[str, ...] = ()


def _external_locations(model: onnx.ModelProto) -> tuple[str, ...]:
    locations = set()
    for tensor in _all_initializers(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return tuple(sorted(locations))


def _all_initializers(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_initializers(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_initializers(sub)


def _texts(model: onnx.ModelProto):
    """(where, value) of every name and text fmonnx reads from the model."""
    graph = model.graph
    for prop in model.metadata_props:
        yield "metadata", prop.key
        yield f"metadata {prop.key!r}", prop.value
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        yield "a tensor name", value.name
    for index, node in enumerate(graph.node):
        where = f"node {index}"
        yield where, node.name
        yield where, node.op_type
        yield where, node.domain
        for name in (*node.input, *node.output):
            yield where, name
        for prop in node.metadata_props:
            yield where, prop.key
            yield where, prop.value


def _check_text(model: onnx.ModelProto, path: Path) -> None:
    """ModelError for a name that is not UTF-8: protobuf hands such a string field over as bytes, which
    every later step would trip on."""
    for where, value in _texts(model):
        if isinstance(value, bytes):
            raise ModelError(
                f"{path} has a name that is not UTF-8 text ({where}: {value[:40]!r}): the file is damaged "
                "or was not written by an ONNX exporter; re-export it as .onnx"
            )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"model file {path} does not exist; check the path")
    if path.is_dir():
        raise ModelError(f"{path} is a folder, not an ONNX file; pass the .onnx file inside it")
    if path.stat().st_size == 0:
        raise ModelError(f"{path} is empty; re-export the model")


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Read ``path`` as an ONNX model; external weight files stay on disk."""
    path = Path(path)
    _check_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends, untyped
        raise ModelError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); "
            "it may be truncated or another format: re-export it as .onnx"
        ) from None
    return _checked(model, path)


def _checked(model: onnx.ModelProto, path: Path) -> LoadedModel:
    if not model.graph.node:
        raise ModelError(
            f"{path} has no graph nodes: it is not an ONNX model or is truncated; re-export it as .onnx"
        )
    _check_text(model, path)
    external = _external_locations(model)
    missing = [loc for loc in external if not (path.parent / loc).exists()]
    if missing:
        raise ModelError(
            f"{path} keeps its weights in {missing[0]}, which is not beside it; "
            "copy the model's data files into the same folder"
        )
    log.debug("loaded %s (%d nodes, external data: %s)", path, len(model.graph.node), external)
    return LoadedModel(model=model, path=path, external_data=external)


SMALL_INITIALIZER = 64  # elements; shape inference and the graph patterns read small initializers' values


def load_graph(path: str | os.PathLike) -> LoadedModel:
    """``path`` as an ONNX model whose initializers of more than SMALL_INITIALIZER elements keep only
    their name, type and dims (external ones stay whole); every error as ``load_model``'s."""
    path = Path(path)
    _check_file(path)
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            skimmed = _skim(data, 0, len(data), _MODEL, _light_tensor)
        model = onnx.ModelProto()
        model.ParseFromString(skimmed)
    except Exception as exc:  # not protobuf as ONNX writes it: the whole load says what is wrong
        log.debug("cannot skim %s (%s); loading it whole", path, exc)
        return _without_weights(load_model(path))
    return _checked(model, path)


def _without_weights(loaded: LoadedModel) -> LoadedModel:
    kept = []
    for tensor in loaded.model.graph.initializer:
        elements = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
        if elements <= SMALL_INITIALIZER or tensor.data_location == onnx.TensorProto.EXTERNAL:
            kept.append(tensor)
        else:
            kept.append(onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims))
    light = onnx.ModelProto()
    light.CopyFrom(loaded.model)
    del light.graph.initializer[:]
    light.graph.initializer.extend(kept)
    return dataclasses.replace(loaded, model=light)


# The protobuf wire format (protobuf.dev/programming-guides/encoding): the fields walked to reach the initializers
_MODEL, _GRAPH, _TENSOR = "model", "graph", "tensor"
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_NAME, _TENSOR_RAW_DATA, _TENSOR_LOCATION = 1, 2, 8, 9, 14
_LIGHT_TENSOR_FIELDS = (_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_NAME)


def _varint(data, at: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= end or shift > 63:
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(data, start: int, end: int):
    """``(field number, wire type, key start, key end, payload start, end)`` of each field of the message
    in ``data[start:end]``; ValueError where it is not well formed."""
    at = start
    while at < end:
        key, after_key = _varint(data, at, end)
        payload = after_key
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, stop = _varint(data, payload, end)
        elif wire == 1:
            stop = payload + 8
        elif wire == 2:
            length, payload = _varint(data, payload, end)
            stop = payload + length
        elif wire == 5:
            stop = payload + 4
        else:  # groups: ONNX writes none
            raise ValueError(f"wire type {wire}")
        if field == 0 or stop > end:
            raise ValueError("truncated field")
        yield field, wire, at, after_key, payload, stop
        at = stop


def weights_in_place(path: str | os.PathLike) -> bytes | None:
    """The model file ``path`` as a small serialized ModelProto whose initializers of more than
    SMALL_INITIALIZER elements held as ``raw_data`` are external data: the file's own name, at their
    offset in it. onnxruntime, given the file's folder, reads them in place (run.create_session);
    None when the file cannot be skimmed."""
    path = Path(path)
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _skim(data, 0, len(data), _MODEL, lambda *span: _referenced_tensor(*span, path.name))
    except (OSError, ValueError) as exc:
        log.debug("cannot skim %s (%s)", path, exc)
        return None


def _skim(data, start: int, end: int, kind: str, tensor) -> bytes:
    """The message in ``data[start:end]`` with each initializer as ``tensor(data, start, end)`` gives it."""
    if kind == _TENSOR:
        return tensor(data, start, end)
    inner = {_MODEL: (_MODEL_GRAPH, _GRAPH), _GRAPH: (_GRAPH_INITIALIZER, _TENSOR)}[kind]
    out = bytearray()
    for field, wire, key, after_key, payload, stop in _fields(data, start, end):
        if (field, wire) == (inner[0], 2):
            part = _skim(data, payload, stop, inner[1], tensor)
            out += data[key:after_key] + _encode_varint(len(part)) + part
        else:
            out += data[key:stop]
    return bytes(out)


def _is_large(data, fields) -> bool:
    """More than SMALL_INITIALIZER elements and not external already."""
    dims: list[int] = []
    external = False
    for field, wire, _, _, payload, stop in fields:
        if field == _TENSOR_DIMS:
            at = payload
            while at < stop:  # packed (wire 2) or one value (wire 0)
                value, at = _varint(data, at, stop)
                dims.append(value - (1 << 64) if value >= 1 << 63 else value)
                if wire == 0:
                    break
        elif field == _TENSOR_LOCATION and wire == 0:
            external = _varint(data, payload, stop)[0] == onnx.TensorProto.EXTERNAL
    elements = int(np.prod(dims, dtype=np.int64)) if dims else 1
    return elements > SMALL_INITIALIZER and not external


def _light_tensor(data, start: int, end: int) -> bytes:
    """A large initializer as its name, type and dims; any other whole."""
    fields = list(_fields(data, start, end))
    if not _is_large(data, fields):
        return bytes(data[start:end])
    return b"".join(data[key:stop] for field, _, key, _, _, stop in fields if field in _LIGHT_TENSOR_FIELDS)


def _referenced_tensor(data, start: int, end: int, location: str) -> bytes:
    """A large initializer held as ``raw_data`` as a reference to those bytes in the file; any other whole."""
    fields = list(_fields(data, start, end))
    raw = [(payload, stop) for field, wire, _, _, payload, stop in fields if (field, wire) == (_TENSOR_RAW_DATA, 2)]
    if not raw or not _is_large(data, fields):
        return bytes(data[start:end])
    offset, stop = raw[-1]  # protobuf: the last value of a field wins
    reference = onnx.TensorProto(data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(stop - offset))):
        reference.external_data.add(key=key, value=value)
    kept = b"".join(data[key:end_] for field, _, key, _, _, end_ in fields if field != _TENSOR_RAW_DATA)
    return kept + reference.SerializeToString()
