"""Sweep issue 14's model families: produce each model every way a user would, run every command, hold it.

Each family is built in code with random weights (nothing is downloaded),
BatchNorm statistics randomized and seeded, eval mode. Each is produced by
each path that applies to it:

- ``dynamo``: an ONNX file from ``torch.onnx.export(module, (x,), dynamo=True)``;
- ``ultra``: ultralytics' own ``YOLO.export(format="onnx")`` (YOLO families only; it fuses
  Conv + BatchNorm, so it is held against the fused module);
- ``convert``: ``fmonnx.convert(module, x)`` (its check included), saved and shown.

Each path gets a freshly built module (same seed, same weights): tracing a YOLO
leaves fake tensors in its Detect head's cached anchors, and the next export or
run of that module fails.

torchvision's detectors take a list of images: they are exported with a rank-3
(C, H, W) input, by ``dynamo`` (which torch.export may refuse: recorded) and by
``script``, the TorchScript exporter (``dynamo=False``, opset 17) that
torchvision's own ONNX tests use. ``fmonnx.convert`` gets a (1, C, H, W) tensor,
as it asks, and is expected to refuse with one short line (data-dependent
shapes), which is recorded.

On each produced file the CLI runs as subprocesses, each with a timeout:
``layers`` (and ``layers --all-spatial``: the layer counts), ``render`` (default
view and ``--all-spatial``), ``stats``, ``compare`` of the file against itself
and ``scan`` over two tiny generated PNGs. Each records pass or the first
``Error`` line.

Holding against the framework (``hold`` and ``hold*``: the default view and
``--all-spatial``): fmonnx plans and runs the file in this process
(``plan_model`` + ``compute_activations``, as benchmarks/sweep_torch.py does),
and the exact input it fed goes through the module with a forward hook on every
submodule, each call recorded under the path it was reached through (a module
shared among parents, as ultralytics' one SiLU, gets each parent's path, as
fmonnx names it). Each drawn layer named after a module call is put back in the axis
order of the graph's tensor (the channel axis where fmonnx says it is) and
compared with that call's outputs; a (1, L, C) token sequence is compared as
the (C, h, w) map of its last h*w tokens (class tokens dropped):

- ``ok``: the values are the call's output and the channel axis is right;
- ``axis``: the values are right and fmonnx is certain, but the channel axis
  is wrong (a picture drawn on the wrong axis with no warning: a failure);
- ``unc``: the layout is marked uncertain (fmonnx said it cannot; not a failure);
- ``nomap``: drawn, certain, but the tensor is not a spatial map of the image
  (heads x tokens x tokens and the like);
- ``val``: not the output of that call (mislabelled, or not folded as declared), or
  no such call (the details say which, and which call it is);
- ``fold``: marked ``folded_batchnorm`` and equal to a BatchNorm of the call;
- ``raw``/``inner``: not named after a module call (not held).

The true channel axis of a module's 4-D output is read from the geometry of the
input as fed (H x W; the images are 64 x 80, so a model that takes any size is
fed a non-square input): two axes are (H, W) at one stride 2**k (floor or
ceiling), the third is the channels. When more than one axis fits (C equals a
side), ``ok`` counts a layer whose values hold; when none fits, it is not a map.

Also timed, in the same process: ``fmonnx.convert(module, x)`` against
``torch.onnx.export(module, (x,), dynamo=True)`` of the same module (one run
each; ``--repeat 2`` for a median of two), printed as a ratio.

Two setups (PyPI's torchvision does not import beside torch 2.13, the version CI
installs, so setup 2 uses its Python code without its compiled ops):

1. torch 2.14.1 + torchvision 0.29.1 (the registry pairing)::

       python3 -m venv /work/venv-tv
       /work/venv-tv/bin/pip install torch==2.14.1 torchvision==0.29.1 onnxscript onnx onnxruntime numpy \\
           pillow matplotlib click isal
       /work/venv-tv/bin/pip install --no-deps -e /work/main
       /work/venv-tv/bin/pip install timm==1.0.31 ultralytics==8.4.190 transformers==5.24.0 \\
           segmentation-models-pytorch==0.6.0 onnxslim
       /work/venv-tv/bin/python benchmarks/sweep_families.py --quick --json /tmp/sweep_tv.json

2. torch 2.13.0 (what CI installs): the repository's venv plus a PYTHONPATH folder::

       bash benchmarks/setup_sweep_torch213.sh /work/main/.venv /tmp/timmpath
       PYTHONPATH=/tmp/timmpath /work/main/.venv/bin/python benchmarks/sweep_families.py --quick \\
           --json /tmp/sweep_213.json

   torchvision's nms/roi ops do not exist there: its detectors fail (recorded).

Run ``--quick`` (YOLO11n, convnext_atto, vit_tiny, lraspp, HF ResNet: about 6 min
on 2 busy cores), ``--families yolo11n,tv:fcn_resnet50`` for a few, or nothing
for all 17 (about an hour or more).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_torch import (  # noqa: E402
    batchnorms,
    call_outputs,
    is_folded,
    randomize_batchnorms,
    same,
    tensors_of,
    what_it_is,
)

SEED = 0
FAMILIES = {  # name: (builder, input side, kind)
    "yolo11n": ("ultra:yolo11n.yaml", 320, "yolo"),
    "yolo11n-seg": ("ultra:yolo11n-seg.yaml", 320, "yolo"),
    "yolo11n-cls": ("ultra:yolo11n-cls.yaml", 224, "yolo"),
    "yolov8n": ("ultra:yolov8n.yaml", 320, "yolo"),
    "tv:lraspp": ("tv:lraspp_mobilenet_v3_large", 224, "tensor"),
    "tv:deeplabv3": ("tv:deeplabv3_mobilenet_v3_large", 224, "tensor"),
    "tv:fcn_resnet50": ("tv:fcn_resnet50", 224, "tensor"),
    "tv:ssdlite": ("tv:ssdlite320_mobilenet_v3_large", 320, "detector"),
    "tv:retinanet": ("tv:retinanet_resnet50_fpn", 320, "detector"),
    "timm:convnext_atto": ("timm:convnext_atto", 224, "tensor"),
    "timm:mobilevit_xxs": ("timm:mobilevit_xxs", 256, "tensor"),
    "timm:efficientvit_m0": ("timm:efficientvit_m0", 224, "tensor"),
    "timm:swin_tiny": ("timm:swin_tiny_patch4_window7_224", 224, "tensor"),
    "timm:vit_tiny": ("timm:vit_tiny_patch16_224", 224, "tensor"),
    "hf:resnet": ("hf:resnet", 224, "tensor"),
    "hf:convnext": ("hf:convnext", 224, "tensor"),
    "smp:unet": ("smp:unet", 224, "tensor"),
}
QUICK = ["yolo11n", "timm:convnext_atto", "timm:vit_tiny", "tv:lraspp", "hf:resnet"]
COMMANDS = ("layers", "render", "render*", "stats", "compare", "scan")
HOLD = ("ok", "axis", "unc", "nomap", "val", "fold", "raw", "inner")
CLI_TIMEOUT = 600


def build(torch, spec: str):
    """``(module, yolo)``: the family's nn.Module in eval mode, and the ultralytics YOLO object when it is one."""
    torch.manual_seed(SEED)
    kind, name = spec.split(":", 1)
    yolo = None
    if kind == "ultra":
        from ultralytics import YOLO

        yolo = YOLO(name)
        model = yolo.model
    elif kind == "tv":
        import torchvision

        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    elif kind == "timm":
        import timm

        model = timm.create_model(name, pretrained=False)
    elif kind == "hf":
        import transformers

        if name == "resnet":
            config = transformers.ResNetConfig(
                embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic",
                num_labels=10)
            model = transformers.ResNetForImageClassification(config)
        else:
            config = transformers.ConvNextConfig(hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1], num_labels=10)
            model = transformers.ConvNextForImageClassification(config)
    elif kind == "smp":
        import segmentation_models_pytorch as smp

        model = smp.Unet(encoder_name="resnet18", encoder_weights=None, classes=2)
    else:
        raise ValueError(f"unknown family builder {spec!r}")
    randomize_batchnorms(torch, model)
    return model.eval(), yolo


def hook_calls(model, record) -> list:
    """Hooks that call ``record(path, output)`` after every call of every submodule, with the path it was
    reached through: a module shared among parents (ultralytics' one SiLU) gets each parent's path for it
    (``model.2.cv1.act``), as fmonnx names it. Returns the handles (remove them when done)."""
    first_path = {id(module): path for path, module in model.named_modules()}
    stack: list[tuple[str, object]] = []

    def before(module, _inputs):
        path = first_path.get(id(module), "")
        if stack:
            parent_path, parent = stack[-1]
            for name, child in parent._modules.items():
                if child is module:
                    path = f"{parent_path}.{name}" if parent_path else name
                    break
        stack.append((path, module))

    def after(_module, _inputs, output):
        path, _ = stack.pop()
        if path:
            record(path, output)

    handles = []
    for module in {id(m): m for m in model.modules()}.values():
        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    return handles


def hooked_calls(torch, model, x: np.ndarray) -> dict[str, list[list[np.ndarray]]]:
    """Every call of every submodule by the path it was reached through (``hook_calls``):
    ``{path: [call 1's outputs, ...]}``.

    Unlike sweep_torch's (one hook per module, its first path), a shared module is recorded under each
    parent's path. Outputs of rank 3 (token sequences) are kept beside those of rank 4. A rank-3 ``x`` is a
    detector's one image: the module is called with ``[x]``.
    """
    calls: dict[str, list[list[np.ndarray]]] = {}

    def record(path, output):  # copies: a later in-place op must not change them
        arrays = [t.detach().float().numpy().copy() for t in tensors_of(output) if t.dim() in (3, 4)]
        calls.setdefault(path, []).append(arrays)

    handles = hook_calls(model, record)
    try:
        with torch.no_grad():
            tensor = torch.from_numpy(x)
            model([tensor] if x.ndim == 3 else tensor)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def as_token_map(values: np.ndarray, output: np.ndarray) -> np.ndarray | None:
    """A (1, L, C) token sequence as the (C, h, w) map of ``values``' grid (class tokens first, dropped)."""
    channels, height, width = values.shape
    if output.ndim != 3 or output.shape[0] != 1 or output.shape[2] != channels or output.shape[1] < height * width:
        return None
    grid = output[0, output.shape[1] - height * width:]
    return grid.reshape(height, width, channels).transpose(2, 0, 1)


def first_line(text: str, limit: int = 200) -> str:
    """The first ``Error`` line of ``text``, else its last non-empty line (a traceback's exception)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Error"):
            return line[:limit]
    return lines[-1][:limit] if lines else ""


def exception_line(exc: BaseException) -> str:
    """``Type: first line``, and the same of its cause (the exporters wrap the error that says why)."""
    lines = []
    while exc is not None and len(lines) < 2:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
        line = text.splitlines()[0][:200] if text else ""
        if lines and line[:60] in lines[0]:  # the wrapper already quotes its cause
            break
        lines.append(f"{type(exc).__name__}: {line}")
        exc = exc.__cause__
    return " <- ".join(lines)


@contextlib.contextmanager
def quiet():
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        yield sink


def produce(torch, path_kind: str, model, yolo, x, out: Path) -> float:
    """Write the ONNX file of ``model`` made by ``path_kind`` to ``out``; the seconds it took."""
    started = time.perf_counter()
    with quiet():
        example = torch.from_numpy(x)
        if path_kind in ("dynamo", "script"):
            args = ([example],) if x.ndim == 3 else (example,)
            # the dynamo exporter at its own opset (18), as users call it: at 17, torch 2.13 writes an opset-18
            # Split (num_outputs) into YOLO, which onnxruntime refuses; TorchScript at 17, as torchvision's tests
            opset = {"opset_version": 17} if path_kind == "script" else {}
            torch.onnx.export(model, args, str(out), dynamo=path_kind == "dynamo", **opset)
        elif path_kind == "ultra":
            made = Path(yolo.export(format="onnx", imgsz=x.shape[-1], device="cpu"))
            made.replace(out)
        else:
            import fmonnx

            fmonnx.convert(model, example[None] if x.ndim == 3 else example).save(out)  # as fmonnx asks: (1, C, H, W)
    return time.perf_counter() - started


def run_cli(args: list[str], timeout: int = CLI_TIMEOUT) -> tuple[bool, str, str]:
    """``(passed, first error line, stdout)`` of ``python -m fmonnx ARGS``."""
    try:
        done = subprocess.run([sys.executable, "-m", "fmonnx", *args], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timeout after {timeout} s", ""
    if done.returncode == 0:
        return True, "", done.stdout
    return False, f"rc {done.returncode}: {first_line(done.stderr or done.stdout)}", done.stdout


def run_commands(model: Path, images: list[Path], work: Path, result: dict) -> None:
    model_arg = str(model)
    steps = {
        "layers": ["layers", model_arg, "--json"],
        "render": ["render", model_arg, str(images[0]), "-o", str(work / "render"), "--no-report"],
        "render*": ["render", model_arg, str(images[0]), "-o", str(work / "render_all"), "--no-report",
                    "--all-spatial"],
        "stats": ["stats", model_arg, str(images[0])],
        "compare": ["compare", model_arg, model_arg, *map(str, images), "-o", str(work / "compare")],
        "scan": ["scan", model_arg, *map(str, images), "-o", str(work / "scan")],
    }
    for command, args in steps.items():
        started = time.perf_counter()
        passed, error, stdout = run_cli(args)
        result["commands"][command] = {"passed": passed, "error": error,
                                       "seconds": round(time.perf_counter() - started, 1)}
        if command == "layers" and passed:
            result["layers_default"] = count_layers(stdout)
            passed_all, _, stdout_all = run_cli(["layers", model_arg, "--json", "--all-spatial"])
            result["layers_all"] = count_layers(stdout_all) if passed_all else None


def count_layers(stdout: str) -> int | None:
    try:
        listed = json.loads(stdout)
    except json.JSONDecodeError:
        return None
    if isinstance(listed, dict):
        listed = listed.get("layers", listed.get("tensors", []))
    return len(listed)


def true_channel_axis(shape: tuple[int, ...], height: int, width: int) -> int | None:
    """The channel axis (1..3) of a 4-D module output on a ``height`` x ``width`` input; 0 when it is not a map
    (no two axes are the image grid at one stride 2**k), None when more than one axis could be the channels."""
    def grid(rows: int, columns: int) -> bool:
        return any(rows in (height // 2**k, -(-height // 2**k)) and columns in (width // 2**k, -(-width // 2**k))
                   for k in range(13))

    fits = []
    for axis in (1, 2, 3):
        rows, columns = (shape[other] for other in (1, 2, 3) if other != axis)
        if grid(rows, columns):
            fits.append(axis)
    if not fits:
        return 0
    return fits[0] if len(fits) == 1 else None


def hold(plan_path: Path, image: Path, model, torch, all_spatial: bool, norms) -> dict:
    """Tally of the drawn layers of ``plan_path`` against the module's hooked outputs (see the docstring)."""
    from fmonnx.options import RenderOptions
    from fmonnx.stages.activations import compute_activations
    from fmonnx.stages.plan import plan_model

    options = RenderOptions(all_spatial=all_spatial)
    plan = plan_model(plan_path, options)
    (result,) = list(compute_activations(plan, [image], options))
    layers = list(result.layers)
    x = result.input_tensor
    height, width = (x.shape[axis] for axis in plan.input_layout.hw_axes)  # as fed: resized, or the image's own
    calls = hooked_calls(torch, model, x)
    tally = dict.fromkeys(HOLD, 0)
    tally["layers"] = len(layers)
    tally["details"] = []
    for layer in layers:
        named = layer.named
        if named.layer_output is not True:
            tally["raw" if named.layer_output is None else "inner"] += 1
            continue
        raw = np.moveaxis(layer.values, 0, layer.layout.channel_axis - 1)[None]  # back to the graph's order
        outputs = call_outputs(calls, named.name) or []
        tokens = [token_map for output in outputs if (token_map := as_token_map(layer.values, output)) is not None]
        if any(same(layer.values, token_map[None]) for token_map in tokens):  # a token sequence shown as maps
            tally["unc" if not layer.layout.certain else "ok"] += 1
            continue
        matching = [output for output in outputs if output.shape == raw.shape and same(raw[0], output)]
        if not matching:
            if named.folded_batchnorm and is_folded(raw[0], outputs, norms):
                tally["fold"] += 1
            else:
                tally["val"] += 1
                why = "no such module call" if not outputs else "not its output"
                tally["details"].append(f"{named.name} [{named.candidate.op}] {list(raw.shape)}: {why}; it is "
                                        f"{what_it_is(raw[0], calls)}")
            continue
        if not layer.layout.certain:
            tally["unc"] += 1
            continue
        truth = true_channel_axis(raw.shape, height, width)
        if truth == 0:
            tally["nomap"] += 1
            tally["details"].append(f"{named.name} {list(raw.shape)}: drawn as a certain map, not one")
        elif truth is None or truth == layer.layout.channel_axis:
            tally["ok"] += 1
        else:
            tally["axis"] += 1
            tally["details"].append(
                f"{named.name} {list(raw.shape)}: drawn with channels on axis {layer.layout.channel_axis}, "
                f"they are on axis {truth}")
    tally["problems"] = len(result.problems)
    return tally


def fused_copy(model):
    """The module ultralytics exports: Conv + BatchNorm fused (its ``export`` does this to a copy)."""
    import copy

    return copy.deepcopy(model).fuse().eval()


def sweep_family(torch, family: str, folder: Path, images: list[Path], repeat: int) -> list[dict]:
    spec, side, kind = FAMILIES[family]
    results = []
    shape = (3, side, side) if kind == "detector" else (1, 3, side, side)
    x = np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)
    paths = ["dynamo", *(["ultra"] if kind == "yolo" else []), *(["script"] if kind == "detector" else []), "convert"]
    for path_kind in paths:
        result = {"family": family, "path": path_kind, "error": "", "commands": {}, "seconds": None}
        started = time.perf_counter()
        out = folder / f"{family.replace(':', '_')}_{path_kind}.onnx"
        work = folder / f"{family.replace(':', '_')}_{path_kind}"
        work.mkdir(exist_ok=True)
        try:
            times = []
            for _ in range(repeat):  # a fresh module each time: tracing leaves fake tensors in ultralytics' anchors
                model, yolo = build(torch, spec)
                times.append(produce(torch, path_kind, model, yolo, x, out))
            result["produce_s"] = round(statistics.median(times), 2)
        except Exception as exc:  # noqa: BLE001
            result["error"] = exception_line(exc)
            result["seconds"] = round(time.perf_counter() - started, 1)
            results.append(result)
            continue
        run_commands(out, images, work, result)
        model, _ = build(torch, spec)
        held = fused_copy(model) if path_kind == "ultra" else model
        norms = batchnorms(torch, model)
        for key, all_spatial in (("hold", False), ("hold*", True)):
            try:
                result[key] = hold(out, images[0], held, torch, all_spatial, norms)
            except Exception as exc:  # noqa: BLE001
                result[key] = {"error": exception_line(exc)}
        result["seconds"] = round(time.perf_counter() - started, 1)
        results.append(result)
    return results


def format_row(result: dict) -> str:
    head = f"{result['family']:<21} {result['path']:<8}"
    if result["error"]:
        return f"{head} failed to produce: {result['error']} ({result.get('seconds')} s)"
    marks = []
    for command in COMMANDS:
        outcome = result["commands"].get(command)
        marks.append(f"{'-' if outcome is None else 'ok' if outcome['passed'] else 'FAIL':>8}")
    counts = f"{result.get('layers_default')!s:>5}/{result.get('layers_all')!s:<5}"
    holds = []
    for key in ("hold", "hold*"):
        tally = result.get(key, {})
        holds.append(tally["error"][:30] if "error" in tally
                     else "/".join(str(tally.get(column, "")) for column in HOLD[:6])
                     + f"+{tally.get('raw', 0) + tally.get('inner', 0)}")
    return f"{head} {''.join(marks)} {counts} {holds[0]:>21} {holds[1]:>21} {result['seconds']:>6}s"


def print_table(results: list[dict]) -> None:
    print(f"{'family':<21} {'path':<8}" + "".join(f"{c:>8}" for c in COMMANDS)
          + f" {'layers':>11} {'hold ' + '/'.join(HOLD[:6]) + '+unheld':>21} {'hold*':>21} {'time':>7}")
    for result in results:
        print(format_row(result))
    print("\nerrors:")
    for result in results:
        for command, outcome in result["commands"].items():
            if not outcome["passed"]:
                print(f"  {result['family']} {result['path']} {command}: {outcome['error']}")
        for key in ("hold", "hold*"):
            tally = result.get(key, {})
            if "error" in tally:
                print(f"  {result['family']} {result['path']} {key}: {tally['error']}")
            for line in tally.get("details", [])[:8]:
                print(f"  {result['family']} {result['path']} {key}: {line}")
            if len(tally.get("details", [])) > 8:
                print(f"  {result['family']} {result['path']} {key}: ... {len(tally['details']) - 8} more")


def print_ratios(results: list[dict]) -> None:
    print("\nfmonnx.convert (check included) against torch.onnx.export(dynamo=True), same process:")
    by_family: dict[str, dict] = {}
    for result in results:
        by_family.setdefault(result["family"], {})[result["path"]] = result
    for family, paths in by_family.items():
        dynamo, convert = paths.get("dynamo", {}), paths.get("convert", {})
        plain, ours = dynamo.get("produce_s"), convert.get("produce_s")
        ratio = f"{ours / plain:.1f}x" if plain and ours else "-"
        said = f"  ({convert['error']})" if convert.get("error") else ""
        print(f"  {family:<21} convert {ours!s:>7} s  dynamo {plain!s:>7} s  ratio {ratio}{said}")


def make_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(SEED)
    images = []
    for index in range(2):
        path = folder / f"image{index}.png"
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(path)
        images.append(path)
    return images


def warm_up(torch, folder: Path) -> None:
    """One export of a tiny module, so that the exporter's one-time imports count against neither path."""
    with quiet():
        torch.onnx.export(torch.nn.Conv2d(3, 4, 3).eval(), (torch.zeros(1, 3, 8, 8),), str(folder / "warm.onnx"),
                          dynamo=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--families", help=f"comma-separated, of: {', '.join(FAMILIES)} (default: all)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--repeat", type=int, default=1, help="exports per path, for the median time [default: 1]")
    args = parser.parse_args(argv)
    families = args.families.split(",") if args.families else QUICK if args.quick else list(FAMILIES)
    unknown = [family for family in families if family not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")

    os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics: no update checks, no downloads
    os.environ.setdefault("YOLO_VERBOSE", "False")
    import torch

    import fmonnx

    torch.set_num_threads(2)
    logging.getLogger("fmonnx").setLevel(logging.ERROR)
    for name in ("torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "fmonnx": fmonnx.__version__}
    for package in ("torchvision", "timm", "ultralytics", "transformers", "segmentation_models_pytorch"):
        try:
            versions[package] = __import__(package).__version__
        except Exception as exc:  # noqa: BLE001 - a missing library fails its families, not the sweep
            versions[package] = f"not importable ({exception_line(exc)})"
    print(", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
    results: list[dict] = []
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        images = make_images(folder)
        os.chdir(folder)  # ultralytics writes its export beside the working directory
        warm_up(torch, folder)
        for family in families:
            started = time.perf_counter()
            rows = sweep_family(torch, family, folder, images, args.repeat)
            results += rows
            for row in rows:
                print(format_row(row), flush=True)
            print(f"  ({family}: {time.perf_counter() - started:.0f} s)", flush=True)
    print()
    print_table(results)
    print_ratios(results)
    print(f"\nsweep time {time.perf_counter() - begun:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"versions": versions, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
