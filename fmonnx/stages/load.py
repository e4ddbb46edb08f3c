"""Load an ONNX model from disk, with one-line errors for every way it can fail.

Models over 2 GB keep their weights in external data files; they are loaded
by path with ``load_external_data=False`` so the weights stay on disk and
onnxruntime reads them itself from the model's folder (see ``run.create_session``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import ModelError

__all__ = ["LoadedModel", "load_model"]

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


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Read ``path`` as an ONNX model; external weight files stay on disk."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file {path} does not exist; check the path")
    if path.is_dir():
        raise ModelError(f"{path} is a folder, not an ONNX file; pass the .onnx file inside it")
    if path.stat().st_size == 0:
        raise ModelError(f"{path} is empty; re-export the model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends, untyped
        raise ModelError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); "
            "it may be truncated or another format: re-export it as .onnx"
        ) from None
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
