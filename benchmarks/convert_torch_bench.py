"""Time ``fmonnx.convert(module)`` against a plain ``torch.onnx.export(dynamo=True)`` of the same module.

Both run in one process, alternating, ``--repeat`` times each (the first
pair warms the exporter up and is not counted); medians and their ratio are
printed, with the plain export given the same open height and width
(``Dim.AUTO``) that fmonnx asks for. ``fmonnx.convert`` includes its check
(PyTorch against onnxruntime, every layer). Then ``fmonnx.render(module)``
right after: it must reuse the conversion (``reused`` true).

Models are built in code with random weights; those whose library is not
installed are skipped with the reason::

    python benchmarks/convert_torch_bench.py                       # YOLO11n, convnext_atto, swin_tiny,
                                                                   # mobilevit_xxs, resnet50
    python benchmarks/convert_torch_bench.py --models tv:resnet50 --repeat 3

Names: ``yolo:<yaml>`` (ultralytics), ``tv:<name>`` (torchvision), anything
else a timm name. See benchmarks/setup_sweep_torch213.sh for torchvision and
timm beside the torch 2.13 that CI installs.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("yolo:yolo11n.yaml", "convnext_atto", "swin_tiny_patch4_window7_224", "mobilevit_xxs", "tv:resnet50")


def build(name: str):
    if name.startswith("yolo:"):
        from ultralytics import YOLO

        return YOLO(name[5:]).model.eval()
    if name.startswith("tv:"):
        import torchvision

        return getattr(torchvision.models, name[3:])(weights=None).eval()
    import timm

    return timm.create_model(name, pretrained=False).eval()


def plain_export(torch, module, example, path: Path) -> float:
    from fmonnx.sources.pytorch.export import quiet

    auto = torch.export.Dim.AUTO
    start = time.perf_counter()
    with quiet(), torch.no_grad():
        torch.onnx.export(module, (example,), str(path), dynamo=True, dynamic_shapes=({2: auto, 3: auto},),
                          verbose=False, report=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeat", type=int, default=2, help="timed pairs per model, after one warm-up pair")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    import numpy as np
    import torch
    from PIL import Image

    import fmonnx

    rows = []
    work = Path(tempfile.mkdtemp(prefix="convert-bench-"))
    photo = work / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(photo)
    def fresh(name: str):
        torch.manual_seed(0)  # the same weights each time
        return build(name)

    for name in args.models.split(","):
        try:
            module = fresh(name)
        except Exception as exc:  # noqa: BLE001 - a missing library or a model it lacks: say so, go on
            print(f"{name}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", flush=True)
            continue
        example = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        plain, fm = [], []
        layers = None
        try:
            for round_ in range(args.repeat + 1):
                # a fresh module per export: a traced YOLO keeps fake tensors in its cached anchors
                took = plain_export(torch, fresh(name), example, work / "plain.onnx")
                module = fresh(name)
                start = time.perf_counter()
                converted = fmonnx.convert(module, example)
                took_fm = time.perf_counter() - start
                layers = len(converted.layers)
                if round_:
                    plain.append(took)
                    fm.append(took_fm)
            start = time.perf_counter()
            fmonnx.render(module, [photo], out=work / "maps", options=fmonnx.RenderOptions(report=False))
            render_s = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - record the failure, go on with the next model
            print(f"{name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", flush=True)
            rows.append({"model": name, "error": str(exc).splitlines()[0][:200]})
            continue
        row = {
            "model": name, "layers": layers, "plain_s": statistics.median(plain), "convert_s": statistics.median(fm),
            "ratio": statistics.median(fm) / statistics.median(plain), "render_after_convert_s": render_s,
            "torch": torch.__version__,
        }
        rows.append(row)
        print(f"{name}: {layers} layers, plain export {row['plain_s']:.1f} s, fmonnx.convert {row['convert_s']:.1f} s "
              f"(ratio {row['ratio']:.2f}), render(module) after it {render_s:.1f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
