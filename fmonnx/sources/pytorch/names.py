"""Name the exported ONNX graph after the PyTorch modules: outputs, weights and name scopes.

Before (what ``torch.onnx.export`` gives for the tapped model, see tap.py)::

    x -> Conv -> conv2d -> BatchNormalization -> getitem -> ...
    outputs: linear, conv2d, getitem, ...        weights: model.stem.0.weight
    node metadata name_scopes: ['', 'model', 'model.stem', 'model.stem.0', 'conv2d']

After (``name_graph(model, {"conv2d": "stem.0", "getitem": "stem.1"}, "model")``)::

    x -> Conv -> stem.0 -> BatchNormalization -> stem.1 -> ...
    outputs: linear, stem.0, stem.1, ...          weights: stem.0.weight
    node metadata name_scopes: ['', 'stem', 'stem.0', 'conv2d']

A tensor takes a module's name only when it is that module's output; any
other tensor that already had such a name is renamed ``<name>__<n>`` first.
The input model is not changed.
"""

from __future__ import annotations

import ast

import onnx

from fmonnx.stages.naming.dynamo import CLASSES_KEY, SCOPES_KEY

__all__ = ["name_graph", "NAME_SCOPES_KEY"]


NAME_SCOPES_KEY, CLASS_HIERARCHY_KEY = SCOPES_KEY, CLASSES_KEY  # the dynamo exporter's keys, named once


def _value_names(graph: onnx.GraphProto) -> set[str]:
    names = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names - {""}


def _rename(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = mapping.get(value.name, value.name)
    for tensor in graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)
    for node in graph.node:
        node.input[:] = [mapping.get(name, name) for name in node.input]
        node.output[:] = [mapping.get(name, name) for name in node.output]
        for attr in node.attribute:  # a subgraph reads outer values by name
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename(attr.g, mapping)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _rename(sub, mapping)


def _strip_scope(scopes: list[str], wrapper: str) -> list[str]:
    prefix = wrapper + "."
    return [scope[len(prefix):] if scope.startswith(prefix) else scope for scope in scopes if scope != wrapper]


def _fix_metadata(graph: onnx.GraphProto, wrapper: str, wrapper_class: str) -> None:
    for node in graph.node:
        for prop in node.metadata_props:
            if prop.key not in (NAME_SCOPES_KEY, CLASS_HIERARCHY_KEY):
                continue
            try:
                values = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                continue
            if prop.key == NAME_SCOPES_KEY:
                values = _strip_scope(values, wrapper)
            else:
                values = [value for value in values if not str(value).endswith(wrapper_class)]
            prop.value = repr(values)


def name_graph(
    model: onnx.ModelProto, outputs: dict[str, str], wrapper: str = "model", wrapper_class: str = ".Tap"
) -> onnx.ModelProto:
    """A copy of ``model`` whose tensors ``outputs`` keys are renamed to the values (module names).

    Weights and name scopes lose the ``wrapper`` attribute's prefix (``model.``)
    that tapping the model added, when that leaves names unique.
    """
    named = onnx.ModelProto()
    named.CopyFrom(model)
    graph = named.graph
    existing = _value_names(graph)
    prefix = wrapper + "."
    weights = {
        tensor.name: tensor.name[len(prefix):] for tensor in graph.initializer if tensor.name.startswith(prefix)
    }
    mapping = {**weights, **outputs}
    targets = set(mapping.values())
    if len(targets) != len(mapping):
        mapping = dict(outputs)  # stripping the prefix would merge two names: keep the weights' names
        targets = set(mapping.values())
    taken = existing | targets
    for name in sorted(existing & targets):
        if name in mapping:
            continue  # renamed itself, so its name is free
        count = 1
        while f"{name}__{count}" in taken:
            count += 1
        mapping[name] = f"{name}__{count}"
        taken.add(mapping[name])
    _rename(graph, mapping)
    _fix_metadata(graph, wrapper, wrapper_class)
    return named
