"""Hold every name fmonnx gives a PyTorch-exported tensor against the module's own output.

For each torchvision / timm model (random weights, BatchNorm statistics and
affine parameters randomized, seeded, eval mode) and each exporter
(``torch.onnx.export`` with ``dynamo=False`` and with ``dynamo=True``; and
``fmonnx.convert`` when it exists), the ONNX file is planned and run by fmonnx
(``plan_model`` + ``compute_activations``: the names, the (C, H, W) arrays and
the exact input tensor fed), and the same input goes through the module with a
forward hook on every submodule, recording every call. Each entry is then:

- ``module``: named after a module call (``layer1.0.relu``, ``layer1.0.relu#2``),
  ``layer_output`` true. ``correct``: equal to that call's output;
  ``folded``: marked ``folded_batchnorm`` and equal to a BatchNorm's output
  (the TorchScript exporter's Conv + BatchNorm, declared as such);
  ``wrong``: anything else (mislabelled).
- ``inner``: ``<call>/<Op>``, a tensor inside a call that is not its output
  (``missed`` counts those that equal the call's output after all).
- ``raw``: no module (the top-level forward's own ops): the node's name.

``flagged`` counts ``folded_batchnorm`` entries (``fp`` those equal to the
Conv's own output: a false alarm); ``also`` checks ``also_output_of`` names.

Setup (outside the repository; torch 2.14.1 is a large download, expected)::

    python3 -m venv /work/venv-sweep
    /work/venv-sweep/bin/pip install torch==2.14.1 torchvision==0.29.1 timm onnxscript onnx \\
        onnxruntime numpy pillow matplotlib click isal
    /work/venv-sweep/bin/pip install --no-deps -e /work/main

Run::

    /work/venv-sweep/bin/python benchmarks/sweep_torch.py            # all models, about 20 min on 2 cores
    /work/venv-sweep/bin/python benchmarks/sweep_torch.py --quick    # 5 models, a few minutes
    /work/venv-sweep/bin/python benchmarks/sweep_torch.py --models tv:resnet18,timm:regnety_002
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

MODELS = [
    "tv:resnet18", "tv:resnet50", "tv:vgg11_bn", "tv:densenet121", "tv:mobilenet_v2", "tv:mobilenet_v3_small",
    "tv:efficientnet_b0", "tv:inception_v3", "tv:googlenet", "tv:squeezenet1_0", "tv:shufflenet_v2_x1_0",
    "tv:regnet_y_400mf", "tv:convnext_tiny", "tv:mnasnet0_5",
    "timm:efficientnet_b0", "timm:mobilenetv3_small_100", "timm:regnety_002", "timm:resnet18d",
    "timm:convnext_atto", "timm:ghostnet_100",
]
QUICK = ["tv:resnet18", "tv:inception_v3", "tv:squeezenet1_0", "timm:mobilenetv3_small_100", "timm:regnety_002"]
SIZES = {"tv:inception_v3": 299}
SEED = 0


def build(torch, spec: str):
    """The model of ``spec`` (``tv:name`` or ``timm:name``), random weights, BatchNorms randomized, eval mode."""
    torch.manual_seed(SEED)
    kind, name = spec.split(":", 1)
    if kind == "tv":
        import torchvision

        extra = {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
        model = torchvision.models.get_model(name, weights=None, **extra)
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
    randomize_batchnorms(torch, model)
    return model.eval()


def randomize_batchnorms(torch, model) -> None:
    """Seeded random BatchNorm statistics and affine parameters (fresh ones are the identity)."""
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(size, generator=generator) * 0.2)


def tensors_of(value) -> list:
    """The tensors in a module's output (a tensor, or a tuple/list/dict of them)."""
    if hasattr(value, "detach"):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_of(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_of(item)]
    return []


def hooked_calls(torch, model, x) -> dict[str, list[list[np.ndarray]]]:
    """Every call of every submodule: ``{path: [call 1's 4-D output arrays, call 2's, ...]}``."""
    calls: dict[str, list[list[np.ndarray]]] = {}
    handles = []
    for path, module in model.named_modules():
        if not path:
            continue

        def hook(_module, _inputs, output, path=path):  # copies: a later in-place op must not change them
            arrays = [t.detach().float().numpy().copy() for t in tensors_of(output) if t.dim() == 4]
            calls.setdefault(path, []).append(arrays)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        for handle in handles:
            handle.remove()
    return calls


def same(actual: np.ndarray, expected: np.ndarray) -> bool:
    """``actual`` (C, H, W) equals ``expected`` (1, C, H, W) to float32 accuracy, relative to its range."""
    if expected.shape[0] != 1 or actual.shape != expected.shape[1:]:
        return False
    scale = float(np.abs(expected).max()) + 1e-6
    return float(np.abs(actual - expected[0]).max()) <= 1e-3 * scale + 1e-5


@dataclass
class Tally:
    entries: int = 0
    module: int = 0
    correct: int = 0
    folded: int = 0
    wrong: int = 0
    inner: int = 0
    missed: int = 0
    raw: int = 0
    flagged: int = 0
    flag_fp: int = 0
    also: int = 0
    also_ok: int = 0
    seconds: float = 0.0
    error: str = ""
    details: list[str] = field(default_factory=list)


def call_outputs(calls, name: str) -> list[np.ndarray] | None:
    """The 4-D outputs of call ``name`` (``layer1.0.relu#2``); None when the module made no such call."""
    from fmonnx.stages.names import split_call_name

    path, number = split_call_name(name)
    made = calls.get(path, [])
    return made[number - 1] if number <= len(made) else None


def matches_call(values, calls, name: str) -> bool | None:
    """Whether ``values`` is the output of call ``name``; None when the module made no such call."""
    outputs = call_outputs(calls, name)
    return None if outputs is None else any(same(values, output) for output in outputs)


def what_it_is(values, calls, limit: int = 3) -> str:
    from fmonnx.stages.names import call_name

    found = [
        call_name(path, index + 1)
        for path, made in calls.items() for index, outputs in enumerate(made)
        if any(same(values, output) for output in outputs)
    ]
    return ", ".join(found[:limit]) + (" ..." if len(found) > limit else "") if found else "no module's output"


def batchnorms(torch, model) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each BatchNorm as the (scale, shift) it applies per channel in eval mode."""
    found = []
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            scale = 1 / np.sqrt(module.running_var.double().numpy() + module.eps)
            shift = -module.running_mean.double().numpy() * scale
            if module.affine:
                weight, bias = module.weight.detach().double().numpy(), module.bias.detach().double().numpy()
                scale, shift = scale * weight, shift * weight + bias
            found.append((scale.astype(np.float32), shift.astype(np.float32)))
    return found


def is_folded(values, conv_outputs, norms) -> bool:
    """Whether ``values`` is some BatchNorm applied to the Conv's output (the exporter folded it in)."""
    for output in conv_outputs:
        for scale, shift in norms:
            if scale.shape[0] == output.shape[1]:
                if same(values, output * scale[None, :, None, None] + shift[None, :, None, None]):
                    return True
    return False


def check(layers, calls, norms, tally: Tally) -> None:
    for layer in layers:
        named, values = layer.named, layer.values
        tally.entries += 1
        tally.flagged += named.folded_batchnorm
        for other in named.also_output_of:
            tally.also += 1
            folded = named.folded_batchnorm and is_folded(values, call_outputs(calls, other) or [], norms)
            if matches_call(values, calls, other) or folded:  # a folded Conv's outer modules hold the fold too
                tally.also_ok += 1
            else:
                tally.details.append(f"{named.name} [{named.candidate.op}]: not the output of {other}")
        if named.layer_output is True:
            tally.module += 1
            ok = matches_call(values, calls, named.name)
            if named.folded_batchnorm and ok:
                tally.flag_fp += 1
            if ok:
                tally.correct += 1
            elif named.folded_batchnorm and is_folded(values, call_outputs(calls, named.name) or [], norms):
                tally.folded += 1
            else:
                tally.wrong += 1
                why = "no such call" if ok is None else f"it is {what_it_is(values, calls)}"
                tally.details.append(f"{named.name} [{named.candidate.op}] {named.candidate.tensor}: {why}")
        elif named.layer_output is False:
            tally.inner += 1
            if matches_call(values, calls, named.name.rsplit("/", 1)[0]):
                tally.missed += 1
        else:
            tally.raw += 1


def export(torch, model, x, path: Path, exporter: str) -> None:
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        example = (torch.from_numpy(x),)
        if exporter == "torchscript":
            torch.onnx.export(model, example, str(path), dynamo=False, opset_version=17)
        elif exporter == "dynamo":
            torch.onnx.export(model, example, str(path), dynamo=True)
        else:
            import fmonnx

            made = fmonnx.convert(model, example[0], check=False)  # the sweep is the check
            path.write_bytes(made.model.SerializeToString())


def sweep_one(torch, spec: str, exporter: str, folder: Path) -> Tally:
    from fmonnx.options import RenderOptions
    from fmonnx.stages.activations import compute_activations
    from fmonnx.stages.plan import plan_model

    tally = Tally()
    started = time.perf_counter()
    try:
        model = build(torch, spec)
        size = SIZES.get(spec, 224)
        pixels = np.random.default_rng(SEED).integers(0, 256, (size, size, 3), dtype=np.uint8)
        image = folder / "image.png"
        Image.fromarray(pixels).save(image)
        path = folder / f"{spec.replace(':', '_')}_{exporter}.onnx"
        export(torch, model, np.zeros((1, 3, size, size), np.float32), path, exporter)
        plan = plan_model(path)
        (result,) = list(compute_activations(plan, [image], RenderOptions(preprocess="imagenet")))
        layers = list(result.layers)
        calls = hooked_calls(torch, model, result.input_tensor)
        check(layers, calls, batchnorms(torch, model), tally)
    except Exception as exc:  # noqa: BLE001 - one model failing must not stop the sweep
        tally.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
    tally.seconds = time.perf_counter() - started
    return tally


COLUMNS = ("entries", "module", "correct", "folded", "wrong", "inner", "missed", "raw", "flagged", "flag_fp")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--models", help="comma-separated tv:NAME / timm:NAME (default: all)")
    args = parser.parse_args(argv)
    specs = args.models.split(",") if args.models else QUICK if args.quick else MODELS

    import torch

    import fmonnx

    torch.set_num_threads(2)
    logging.getLogger("fmonnx").setLevel(logging.ERROR)  # the folded-BatchNorm warning: counted, not printed
    for name in ("torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    exporters = ["torchscript", "dynamo"]
    if "convert" in getattr(fmonnx, "__all__", ()):
        exporters.append("convert")
    else:
        print("note: fmonnx.convert is not there yet: its column is skipped")
    print(f"torch {torch.__version__}, fmonnx {fmonnx.__version__}, {len(specs)} models x {len(exporters)} exports")
    header = f"{'model':<28} {'export':<11} " + " ".join(f"{c:>7}" for c in COLUMNS) + f" {'also':>9} {'time':>7}"
    print(header)
    totals = {exporter: Tally() for exporter in exporters}
    details = []
    begun = time.perf_counter()
    for spec in specs:
        for exporter in exporters:
            with tempfile.TemporaryDirectory() as folder:
                tally = sweep_one(torch, spec, exporter, Path(folder))
            total = totals[exporter]
            for column in (*COLUMNS, "also", "also_ok", "seconds"):
                setattr(total, column, getattr(total, column) + getattr(tally, column))
            if tally.error:
                print(f"{spec:<28} {exporter:<11} failed: {tally.error} ({tally.seconds:.0f} s)", flush=True)
                continue
            row = " ".join(f"{getattr(tally, c):>7}" for c in COLUMNS)
            print(f"{spec:<28} {exporter:<11} {row} {tally.also_ok:>4}/{tally.also:<4} {tally.seconds:>6.1f}s",
                  flush=True)
            details += [f"  {spec} {exporter}: {line}" for line in tally.details]
    for exporter, total in totals.items():
        row = " ".join(f"{getattr(total, c):>7}" for c in COLUMNS)
        print(f"{'TOTAL':<28} {exporter:<11} {row} {total.also_ok:>4}/{total.also:<4} {total.seconds:>6.1f}s")
    if details:
        print("mislabelled entries (and also_output_of names that do not hold):")
        print("\n".join(details))
    print(f"sweep time {time.perf_counter() - begun:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
