"""fmonnx explain on real model zoos, every layer's gradient held against torch autograd.

For each model (random weights, nothing downloaded, BatchNorm statistics randomized as in
benchmarks/sweep_families.py) and each way of making its ONNX file (``convert``: fmonnx.convert,
the dynamo exporter; ``script``: torch.onnx.export(dynamo=False, opset 17) where cheap; ``ultra``:
ultralytics' own export for YOLO), ``fmonnx.explain(path, photo, layers="all")`` runs, and the exact
input it fed goes through the module with hooks on every submodule call (named by the path it was
reached through, as fmonnx names it: ultralytics' one shared SiLU gets each parent's path). The
gradient of the same score (the class logit; the box target's class-score element; the segmentation
class's winning logits) with respect to each call's 4-D output comes from autograd and is compared with
the layer's gradient by relative L2 (folded-BatchNorm layers skipped, as tests/test_explain_torch.py).

Run with the zoo packages beside torch (``bash benchmarks/setup_sweep_torch213.sh``)::

    PYTHONPATH=/tmp/timmpath python benchmarks/explain_zoo.py [--models tv:resnet18,yolo11n]

Prints per model and path: layers compared, how many are below 1e-2, the worst relative L2 (and its
layer), and explain's wall time.

A max pooling whose window holds two values one float step apart can pick a different one in
onnxruntime than in torch (their forward values differ in the last bits), and the gradient then
reaches a different pixel and everything before it: YOLO11n's SPPF pools its own output three
times, and the layers before it show such flips (five of 12800 picks, one step apart).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_families import exception_line, fused_copy, hook_calls, quiet  # noqa: E402
from sweep_torch import randomize_batchnorms  # noqa: E402

TOLERANCE = 1e-2
SEED = 0
MODELS = {  # name: (builder, input side, paths)
    "tv:resnet18": ("tv:resnet18", 224, ("convert", "script")),
    "tv:mobilenet_v3_small": ("tv:mobilenet_v3_small", 224, ("convert", "script")),
    "timm:resnet18": ("timm:resnet18", 224, ("convert", "script")),
    "timm:convnext_atto": ("timm:convnext_atto", 224, ("convert",)),
    "tv:lraspp": ("tv:lraspp_mobilenet_v3_large", 224, ("convert", "script")),
    "tv:fcn_resnet50": ("tv:fcn_resnet50", 224, ("convert",)),
    "yolo11n": ("ultra:yolo11n.yaml", 320, ("ultra", "convert")),
}


def build(torch, spec: str):
    """``(module, yolo)``: a freshly built, seeded module in eval mode (and the ultralytics YOLO object)."""
    torch.manual_seed(SEED)
    kind, name = spec.split(":", 1)
    yolo = None
    if kind == "ultra":
        from ultralytics import YOLO

        yolo = YOLO(name)
        model = yolo.model
    elif kind == "tv":
        import torchvision

        segmenter = name.startswith(("lraspp", "fcn", "deeplab"))  # their backbone weights would be downloaded
        model = torchvision.models.get_model(name, weights=None, **({"weights_backbone": None} if segmenter else {}))
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
    randomize_batchnorms(torch, model)
    model.eval()
    for module in model.modules():  # in-place activations would overwrite the outputs autograd holds
        if hasattr(module, "inplace"):
            module.inplace = False
    return model, yolo


def produce(torch, path_kind: str, model, yolo, x: np.ndarray, out: Path) -> None:
    import fmonnx

    with quiet():
        example = torch.from_numpy(x)
        if path_kind == "script":
            torch.onnx.export(model, (example,), str(out), dynamo=False, opset_version=17)
        elif path_kind == "ultra":
            Path(yolo.export(format="onnx", imgsz=x.shape[-1], device="cpu")).replace(out)
        else:
            fmonnx.convert(model, example).save(out)


def autograd_calls(torch, model, x: np.ndarray, score):
    """``(score, {call name: 4-D output}, {call name: d score / d output})``, calls named by the path they
    were reached through (``path``, ``path#2`` for a second call)."""
    from fmonnx.stages.names import call_name

    calls: dict[str, list] = {}
    handles = hook_calls(model, lambda path, output: calls.setdefault(path, []).append(output))
    try:
        # the input asks for a gradient, so every output has one even where the weights are frozen (a YOLO)
        result = model(torch.from_numpy(np.ascontiguousarray(x, np.float32)).requires_grad_())
    finally:
        for handle in handles:
            handle.remove()
    tensors = {call_name(path, i + 1): out for path, outs in calls.items() for i, out in enumerate(outs)
               if isinstance(out, torch.Tensor) and out.dim() == 4 and out.requires_grad}
    value = score(result)
    grads = torch.autograd.grad(value, list(tensors.values()), allow_unused=True)
    gradients = {name: (g.numpy() if g is not None else np.zeros(tuple(t.shape), np.float32))
                 for (name, t), g in zip(tensors.items(), grads)}
    return float(value.detach()), {n: t.detach().numpy() for n, t in tensors.items()}, gradients


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def score_of(torch, target: dict):
    """The explained score on the module's output, as fmonnx defines it for the target's kind."""
    def first(result):
        if isinstance(result, dict):
            return result["out"]
        return result[0] if isinstance(result, (tuple, list)) else result

    if target["kind"] == "mask":
        mask = torch.from_numpy(np.asarray(target["mask"]))
        return lambda result: (first(result)[0, target["class"]] * mask).sum()
    (index,) = target["index"]
    return lambda result: first(result)[tuple(index)]


def hold(torch, ex, model) -> dict:
    """Compare every explained layer with autograd on ``model``."""
    score, activations, gradients = autograd_calls(torch, model, ex.input, score_of(torch, ex.target))
    worst, worst_name, compared, skipped, unmatched, within = 0.0, "", 0, 0, 0, 0
    missing: list[str] = []
    for layer in ex.layers:
        names = [n for n in (layer.name, *layer.also_output_of) if n in gradients]
        if layer.folded_batchnorm:
            skipped += 1
            continue
        if not names:
            unmatched += 1
            missing.append(f"{layer.name} (no such call)")
            continue
        reference = gradients[names[0]][0]
        if layer.gradient.shape != reference.shape or relative(layer.activation, activations[names[0]][0]) > 1e-3:
            unmatched += 1  # not the values of that call (e.g. a layout fmonnx could not prove)
            missing.append(f"{layer.name} (other values)")
            continue
        error = relative(layer.gradient, reference)
        compared += 1
        within += error < TOLERANCE
        if error > worst:
            worst, worst_name = error, layer.name
    return {"compared": compared, "within": within, "worst": worst, "missing": missing, "worst_layer": worst_name,
            "skipped": skipped,
            "unmatched": unmatched, "layers": len(ex.layers), "score_error": abs(score - ex.target["score"])}


def run_one(torch, name: str, path_kind: str, folder: Path, image: Path) -> dict:
    import fmonnx

    spec, side, _ = MODELS[name]
    row = {"model": name, "path": path_kind}
    x = np.random.default_rng(SEED).random((1, 3, side, side), dtype=np.float32)
    try:
        model, yolo = build(torch, spec)
        out = folder / f"{name.replace(':', '_')}-{path_kind}.onnx"
        produce(torch, path_kind, model, yolo, x, out)
        started = time.perf_counter()
        ex = fmonnx.explain(str(out), image, layers="all")
        row["seconds"] = time.perf_counter() - started
        row["kind"] = ex.target["kind"]
        reference, _ = build(torch, spec)
        if path_kind == "ultra":
            reference = fused_copy(reference)  # ultralytics exports Conv + BatchNorm fused
        row.update(hold(torch, ex, reference))
    except Exception as exc:  # noqa: BLE001 - the table records any failure
        row["error"] = exception_line(exc)
        row["trace"] = traceback.format_exc(limit=-3)
    return row


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<22} {'path':<8} {'target':<6} {'compared':>8} {'skip':>4} {'unm':>4} {'<1e-2':>6} "
          f"{'worst rel L2':>12} {'explain s':>9}  worst layer / error")
    for row in rows:
        if "error" in row:
            print(f"{row['model']:<22} {row['path']:<8} ERROR {row['error']}")
            continue
        print(f"{row['model']:<22} {row['path']:<8} {row['kind']:<6} {row['compared']:>4}/{row['layers']:<3} "
              f"{row['skipped']:>4} {row['unmatched']:>4} {row['within']:>6} {row['worst']:>12.2e} "
              f"{row['seconds']:>9.2f}  {row['worst_layer']}")
    for row in rows:
        if row.get("missing"):
            print(f"  {row['model']} {row['path']} unmatched: {', '.join(row['missing'][:6])}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            side = MODELS[name][1]
            image = folder / f"photo{side}.png"
            pixels = np.random.default_rng(SEED).integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image)
            for path_kind in MODELS[name][2]:
                row = run_one(torch, name, path_kind, folder, image)
                rows.append(row)
                print_table([row])
                if "trace" in row:
                    print(row["trace"], file=sys.stderr)
                sys.stdout.flush()
    print()
    print_table(rows)
    return 0 if all("error" not in r and r["compared"] and r["worst"] < TOLERANCE for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
