"""Print a Markdown summary of an ONNX CNN's feature-map nodes.

Used to write models/README.md and to check a regenerated model. Needs only
``onnx``::

    python models/describe_onnx.py models/tutorial_cnn.onnx
    python models/describe_onnx.py models/torch_cnn.onnx 1,3,150,200

The optional second argument fixes the input shape for a second, concrete
run of shape inference (dynamic H/W otherwise infer as unk__N symbols).

For each Conv, Relu and MaxPool node it prints the node name, op, output
tensor, inferred output shape and layout. The layout is found by following
Transpose nodes from the graph input: the input's layout is guessed from
where its 3-channel axis is, and each Transpose permutes it.
"""

from __future__ import annotations

import sys

import onnx

FEATURE_OPS = ("Conv", "Relu", "MaxPool")


def _dims(value_info: onnx.ValueInfoProto) -> list[str]:
    shape = value_info.type.tensor_type.shape
    return [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _input_layout(dims: list[str]) -> str:
    """NHWC when the channel axis (size 1 or 3) is last, else NCHW."""
    return "NHWC" if dims[-1] in ("1", "3") and dims[1] not in ("1", "3") else "NCHW"


def _layouts(model: onnx.ModelProto) -> dict[str, str]:
    """Layout of each 4-D tensor reachable from the graph input.

    Transpose permutes the layout; Conv, Relu, MaxPool, BatchNormalization
    and elementwise ops keep it; any other op (Reshape, Flatten, ...) ends it,
    so tensors that are not 4-D feature maps get no layout ("-").
    """
    keep = {"Conv", "Relu", "MaxPool", "AveragePool", "BatchNormalization", "Add", "Mul", "Clip"}
    graph_input = model.graph.input[0]
    layouts = {graph_input.name: _input_layout(_dims(graph_input))}
    for node in model.graph.node:  # ONNX nodes are stored in topological order
        source = layouts.get(node.input[0]) if node.input else None
        if source is None:
            continue
        if node.op_type == "Transpose":
            perm = next(a.ints for a in node.attribute if a.name == "perm")
            layouts[node.output[0]] = "".join(source[p] for p in perm)
        elif node.op_type in keep:
            layouts[node.output[0]] = source
    return layouts


def _inferred_shapes(model: onnx.ModelProto, input_dims: list[int] | None) -> dict[str, str]:
    """Tensor name -> "[d0, d1, ...]" from onnx.shape_inference."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    if input_dims:
        dims = model_copy.graph.input[0].type.tensor_type.shape.dim
        for dim, value in zip(dims, input_dims):
            dim.Clear()
            dim.dim_value = value
    inferred = onnx.shape_inference.infer_shapes(model_copy)
    infos = [*inferred.graph.value_info, *inferred.graph.output]
    return {vi.name: "[" + ", ".join(_dims(vi)) + "]" for vi in infos}


def describe(path: str, input_dims: list[int] | None = None) -> str:
    model = onnx.load(path)
    shapes = _inferred_shapes(model, None)
    fixed = _inferred_shapes(model, input_dims) if input_dims else None
    layouts = _layouts(model)
    graph_input = model.graph.input[0]

    lines = [
        f"Input `{graph_input.name}`: [{', '.join(_dims(graph_input))}] "
        f"{_input_layout(_dims(graph_input))}, opset "
        f"{next(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))}, "
        f"producer {model.producer_name} {model.producer_version}".rstrip(),
        "",
    ]
    if fixed is None:
        lines += ["| node | op | output tensor | output shape | layout |", "|---|---|---|---|---|"]
    else:
        at = "x".join(map(str, input_dims))
        lines += [
            f"| node | op | output tensor | output shape | shape at {at} | layout |",
            "|---|---|---|---|---|---|",
        ]
    props = []
    for node in model.graph.node:
        if node.op_type not in FEATURE_OPS:
            continue
        out = node.output[0]
        cells = [f"`{node.name}`", node.op_type, f"`{out}`", shapes.get(out, "?")]
        if fixed is not None:
            cells.append(fixed.get(out, "?"))
        cells.append(layouts.get(out, "-"))
        lines.append("| " + " | ".join(cells) + " |")
        props.extend(f"  {node.name}: {p.key} = {p.value}" for p in node.metadata_props)
    if props:
        lines += ["", "Node metadata_props:", *props]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(f"usage: {sys.argv[0]} MODEL.onnx [N,C,H,W]")
    dims = [int(d) for d in sys.argv[2].split(",")] if len(sys.argv) == 3 else None
    print(describe(sys.argv[1], dims))
