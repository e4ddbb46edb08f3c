"""Convert a PyTorch model to ONNX, keeping every module's name, and check it layer by layer.

The stages, each in its own module::

    nn.Module in hand                 .pt2 file
          |                             |  read_pt2 (pt2_file: vetted, nothing unpickled)
          |                             |  torch.export.load, torch.export.unflatten
          +--------------+--------------+
                         |
      tapped (tap: forward hooks on every submodule; the model's outputs,
         then a copy of every module call's 4-D output)
      -> export_onnx (export: torch.export with open height and width,
         then torch.onnx.export(dynamo=True))
      -> name_graph (names: each module output tensor named after its call,
         e.g. layer1.0.conv1, layer1.0.relu#2)
      -> metadata_props "fmonnx.layers" and "fmonnx.source"
      -> onnx.checker, then check_conversion (check: PyTorch vs onnxruntime)

Because every module output is a graph output, the ONNX optimizer cannot fold
it away: a BatchNorm stays after its Conv (torch 2.13's exporter folds
BatchNorm into Conv by default, rule FuseBatchNormIntoConv, when it can).

The converted model's ``metadata_props``:

- ``fmonnx.layers``: JSON list in call order, one object per recorded module
  call (tap.py says which): ``{"layer": "layer1.0.relu#2", "class": "ReLU",
  "output": "<tensor holding the call's output>", "layout": "NCHW",
  "also_output_of": ["layer1.0", "layer1"]}`` (``layout`` as the graph proves it
  from the N,C,H,W input, absent when it does not; the containers that returned
  the same tensor, innermost first; for a module shared by several paths,
  first its own name, e.g. ``blocks.0.act#3`` beside ``blocks.2.act``;
  absent when none).
- ``fmonnx.source``: JSON object ``{"framework": "pytorch", "torch_version",
  "module": class name, "file", "converter", "example_input": [1, C, H, W],
  "spatial": "dynamic" | "fixed", "opset": the model's (the exporter keeps 18
  when it cannot convert to a lower one asked for; a warning says so)}``.

The module is run in eval mode, with its modules' ``inplace`` flags off (both
are restored afterwards), and is not otherwise changed. A check that fails
raises CheckFailedError after the report is complete; nothing is written.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from fmonnx.errors import ConversionError, ModelError
from fmonnx.sources.check import DEFAULT_ATOL, DEFAULT_RTOL, CheckFailedError, CheckReport
from fmonnx.sources.conversion import stamp
from fmonnx.sources.pytorch.check import check_conversion, random_input
from fmonnx.sources.pytorch.export import export_onnx, first_line, quiet
from fmonnx.sources.pytorch.load import import_torch
from fmonnx.sources.pytorch.names import name_graph
from fmonnx.sources.pytorch.pt2_file import load_exported_program
from fmonnx.sources.pytorch.tap import tapped
from fmonnx.sources.write import write_model

__all__ = ["TorchConversion", "convert_module", "convert_pt2", "example_input_for", "DEFAULT_OPSET", "DEFAULT_SIZE"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # the dynamo exporter's own; lower ones go through onnx's version converter
DEFAULT_SIZE = 224  # height and width of the example input when none is given


@dataclass
class TorchConversion:
    """A converted PyTorch model and how it was made.

    ``model`` is the checked ONNX ModelProto; ``layers`` the ``fmonnx.layers``
    list and ``source`` the ``fmonnx.source`` object (both also in the
    model's metadata); ``check`` is None when the check was skipped;
    ``dynamic`` says whether height and width stayed open; ``seconds`` is the
    wall time of the whole conversion.
    """

    model: onnx.ModelProto
    layers: list[dict]
    source: dict
    check: CheckReport | None
    dynamic: bool
    seconds: float
    example_shape: tuple[int, ...] = field(default=())

    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path:
        """Write the ONNX model to ``path`` (atomically; an existing file only with ``force``)."""
        return write_model(self.model, path, force=force)


def example_input_for(torch, module, example_input=None):
    """The example input: ``example_input`` as a float32 tensor, else seeded uniform [0, 1) of
    shape (1, C, 224, 224), C the ``in_channels`` of the module's first Conv2d (3 without one)."""
    if example_input is None:
        channels = next((m.in_channels for m in module.modules() if isinstance(m, torch.nn.Conv2d)), 3)
        return torch.from_numpy(random_input((1, channels, DEFAULT_SIZE, DEFAULT_SIZE)))
    tensor = example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(example_input)
    if tensor.dim() != 4 or tensor.shape[0] != 1 or not tensor.is_floating_point():
        raise ModelError(
            f"example_input has shape {list(tensor.shape)} and dtype {tensor.dtype}; fmonnx feeds one image: "
            "pass a float tensor of shape (1, C, H, W)"
        )
    return tensor.detach().to("cpu", torch.float32)


def convert_module(
    module,
    example_input=None,
    *,
    opset: int | None = None,
    check: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
) -> TorchConversion:
    """Convert the ``nn.Module`` ``module`` to ONNX, every module call named, checked on a random input.

    ``example_input`` (a (1, C, H, W) tensor) sets the traced and checked
    shape; by default (1, C, 224, 224) (see ``example_input_for``). Height and
    width stay open in the ONNX model when the module allows it. Raises
    ModelError when ``module`` is not an nn.Module, fails on the example input
    or has no 4-D output; ConversionError when export or the check's run
    fails; CheckFailedError when the check fails. ``opset``, ``rtol`` and
    ``atol`` default (None) to DEFAULT_OPSET, DEFAULT_RTOL and DEFAULT_ATOL.
    """
    start = time.perf_counter()
    torch = import_torch()
    if not isinstance(module, torch.nn.Module):
        raise ModelError(
            f"expected a torch.nn.Module, got {type(module).__name__}; pass the model object, or a .pt2 file path"
        )
    example = example_input_for(torch, module, example_input)
    label = type(module).__name__
    modes = {m: m.training for m in module.modules()}
    # ONNX has no in-place ops: computing out of place changes no value, and spares the tap a copy
    # of every output an in-place activation would overwrite (a node each in the traced graph)
    in_place = {m: m.inplace for m in module.modules() if isinstance(getattr(m, "inplace", None), bool)}
    module.eval()
    try:
        for m in in_place:
            m.inplace = False
        return _convert(torch, module, {}, example, label, "", opset, check, rtol, atol, start)
    finally:
        for m, training in modes.items():
            m.training = training
        for m, flag in in_place.items():
            m.inplace = flag


def convert_pt2(
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    check: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
    unsafe: bool = False,
) -> TorchConversion:
    """Convert a ``torch.export.save`` file. The file is vetted first (pt2_file.py) unless ``unsafe``.

    The example input is the one saved in the file (its first positional
    tensor), else (1, 3, 224, 224). Errors as ``convert_module``.
    """
    start = time.perf_counter()
    torch = import_torch()
    path = Path(path)
    program = load_exported_program(torch, path, unsafe=unsafe)
    classes = {}
    for node in program.graph.nodes:
        for module_path, class_path in (node.meta.get("nn_module_stack") or {}).values():
            classes.setdefault(str(module_path), str(class_path).rsplit(".", 1)[-1])
    try:
        with quiet():
            module = torch.export.unflatten(program)
    except Exception as exc:  # noqa: BLE001 - torch raises anything; the user needs the reason
        raise ConversionError(f"torch could not rebuild the modules of {path}: {first_line(exc)}") from exc
    args = (program.example_inputs or ((), {}))[0]
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if len(args) > 1 or (args and not tensors):
        raise ModelError(f"{path} takes {len(args)} inputs; fmonnx feeds one image: export a model with one input")
    example = example_input_for(torch, module, tensors[0] if tensors else None)
    return _convert(torch, module, classes, example, path.name, path.name, opset, check, rtol, atol, start)


def _convert(torch, module, classes, example, label, file_name, opset, check, rtol, atol, start) -> TorchConversion:
    opset = DEFAULT_OPSET if opset is None else int(opset)
    rtol = DEFAULT_RTOL if rtol is None else float(rtol)
    atol = DEFAULT_ATOL if atol is None else float(atol)
    newest = onnx.defs.onnx_opset_version()
    if not 7 <= opset <= newest:
        raise ConversionError(f"opset {opset} is not supported; pass an opset from 7 to {newest}")
    tap = tapped(torch, module, classes)
    try:
        with torch.no_grad(), quiet():
            tap(example)
    except Exception as exc:  # noqa: BLE001 - the model's own code; the user needs the reason
        raise ModelError(
            f"{label} fails on an example input of shape {list(example.shape)}: {first_line(exc)}; "
            "pass an example_input the model accepts"
        ) from exc
    if not tap.calls:
        kinds = sorted({tap.class_of(name) for name, _ in module.named_modules() if name}) or ["no submodules"]
        raise ModelError(
            f"{label} has no module with a 4-D (image-like) output (it has: {', '.join(kinds)}); "
            "fmonnx shows the feature maps of convolutional models built from nn.Modules"
        )
    try:
        exported = export_onnx(torch, tap, example, opset, label, dynamic=True)
    except ConversionError:
        logger.info("%s: export with open height and width failed; exporting at %s", label, list(example.shape))
        exported = export_onnx(torch, tap, example, opset, label, dynamic=False)
    if not exported.dynamic:
        logger.warning(
            "%s was exported at the fixed size %s (its code does not allow other sizes); images are resized to it",
            label, [int(size) for size in example.shape[2:]],
        )
    if exported.opset != opset:
        logger.warning(
            "%s: the exporter could not convert to opset %d; the ONNX model has opset %d", label, opset, exported.opset
        )
    onnx_model, layers = _map_layers(exported.model, tap, label)
    _prove_layouts(onnx_model, layers, label)
    source = {
        "framework": "pytorch",
        "torch_version": torch.__version__,
        "module": type(module).__name__ if not file_name else "ExportedProgram",
        "file": file_name,
        "converter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "example_input": list(example.shape),
        "spatial": "dynamic" if exported.dynamic else "fixed",
        "opset": exported.opset,
    }
    stamp(onnx_model, layers, source, label, label)
    result = TorchConversion(onnx_model, layers, source, None, exported.dynamic, 0.0, tuple(example.shape))
    if check:
        result.check = check_conversion(
            torch, tap, onnx_model, layers, example.shape, rtol=rtol, atol=atol, label=label
        )
    result.seconds = time.perf_counter() - start
    logger.info("converted %s: %d layers mapped in %.1fs", label, len(layers), result.seconds)
    if result.check is not None and not result.check.passed:
        raise CheckFailedError(
            f"{label}: the converted model differs from PyTorch: {result.check.summary()}; nothing was written; "
            "if that error is acceptable, rerun with a larger --rtol/--atol",
            result.check,
            result,
        )
    return result


def _map_layers(model: onnx.ModelProto, tap, label: str) -> tuple[onnx.ModelProto, list[dict]]:
    """Name each recorded call's graph output after the call; the named model and ``fmonnx.layers``."""
    outputs = [value.name for value in model.graph.output]
    expected = tap.output_count + sum(1 for call in tap.calls if call.output >= tap.output_count)
    if len(outputs) != expected:
        raise ConversionError(
            f"the exporter returned {len(outputs)} outputs for {label}, {expected} were expected; please report it"
        )
    renamed = {outputs[call.output]: call.layer for call in tap.calls}
    renamed[model.graph.input[0].name] = "input"
    named = name_graph(model, renamed)
    final = [value.name for value in named.graph.output]
    layers = []
    by_value: dict[str, dict] = {}
    merged: set[str] = set()
    producers = {output: node for node in named.graph.node for output in node.output}
    for call in tap.calls:
        value = _through_identities(producers, final[call.output])
        earlier = by_value.get(value)
        if earlier is not None:  # a traced Dropout or Identity: the same values under a second name
            earlier.setdefault("also_output_of", []).extend([call.layer, *call.also_output_of])
            merged.add(final[call.output])
            continue
        record = {"layer": call.layer, "class": call.class_name, "output": final[call.output]}
        if call.also_output_of:
            record["also_output_of"] = list(call.also_output_of)
        by_value[value] = record
        layers.append(record)
    _drop_outputs(named.graph, merged)
    return named, layers


def _prove_layouts(model: onnx.ModelProto, layers: list[dict], label: str) -> None:
    """Set each record's ``layout`` to what the graph proves from the N,C,H,W input, as render does.

    A module's 4-D output is not N,C,H,W by nature: ConvNeXt and Swin blocks work on N,H,W,C, a
    ViT's heads on heads x tokens x dims. Unproven records get no layout, and render says so.
    """
    from fmonnx.stages.layout import Layout, channel_axes
    from fmonnx.stages.shapes import infer_types

    layouts = channel_axes(model, infer_types(model), Layout(1, True))
    unproven = []
    for record in layers:
        layout = layouts.get(record["output"])
        if layout is not None and layout.certain:
            record["layout"] = layout.name
        else:
            unproven.append(record["layer"])
    if unproven:
        shown = ", ".join(unproven[:4]) + (f" and {len(unproven) - 4} more" if len(unproven) > 4 else "")
        logger.info("%s: the graph does not prove the channel axis of %d layers (%s)", label, len(unproven), shown)


def _through_identities(producers: dict[str, onnx.NodeProto], name: str) -> str:
    """The tensor ``name`` copies through a chain of Identity nodes (``name`` itself when none)."""
    seen = set()
    while name in producers and producers[name].op_type == "Identity" and name not in seen:
        seen.add(name)
        name = producers[name].input[0]
    return name


def _drop_outputs(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the graph outputs ``names``, and the Identity nodes that only made them."""
    if not names:
        return
    kept = [value for value in graph.output if value.name not in names]
    del graph.output[:]
    graph.output.extend(kept)
    read = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    nodes = [node for node in graph.node
             if not (node.op_type == "Identity" and node.output[0] in names and node.output[0] not in read)]
    del graph.node[:]
    graph.node.extend(nodes)
