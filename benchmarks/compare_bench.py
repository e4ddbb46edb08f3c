"""How long ``fmonnx.compare`` takes, as a ratio to one render: ``python benchmarks/compare_bench.py``.

The benchmark's ResNet-50 (random weights, benchmarks/models.py) against its int8 QDQ version
(``onnxruntime.quantization.quantize_static``, calibrated on a few random inputs; cached in
``benchmarks/.cache/``), on one image (the demo photo, ImageNet preprocessing), CPU.

Printed, medians of ``--runs`` runs in this process:

- ``render``: ``fmonnx.render`` of the fp32 model with its report, the model read, planned and
  opened each time (the session cache cleared), as a first render of a model is;
- ``render, warm``: the same with the last model's session kept (a later render in a notebook);
- ``compare``: ``fmonnx.compare`` of fp32 against int8, both models read, planned and opened,
  with its pictures and page.

Each compare does two models' work (two sessions opened, two runs, the pairing, two arrays a
layer reduced and drawn): the issue's target is at most 2.5 x a render.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import models  # noqa: E402  (benchmarks/models.py)


def int8_resnet50() -> Path:
    """The ResNet-50 quantized to int8 QDQ, built on first use (about a minute on 2 cores)."""
    target = models.CACHE / "resnet50_int8_qdq.onnx"
    if target.exists():
        return target
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Calibration(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            # ImageNet-normalized pixels are roughly N(0, 1)
            self.feeds = iter([{"input": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    source = models.resnet50()
    partial = target.with_suffix(".partial.onnx")
    quantize_static(
        str(source), str(partial), Calibration(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    partial.replace(target)
    return target


def median_time(function, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median) [5]")
    arguments = parser.parse_args()

    import fmonnx
    from fmonnx.frontends.render import _last_model
    from fmonnx.stages.plan import demo_paths

    model = models.resnet50()
    started = time.perf_counter()
    int8 = int8_resnet50()
    built = time.perf_counter() - started
    photo = demo_paths()[1]
    options = fmonnx.RenderOptions(preprocess="imagenet", provider="cpu")
    with tempfile.TemporaryDirectory(prefix="fmonnx-compare-bench-") as folder:
        work = Path(folder)

        def render_new_model():
            _last_model.clear()  # as if the model file had changed: read, plan and open it again
            fmonnx.render(model, [photo], work / "maps", options)

        def compare():
            return fmonnx.compare(model, int8, [photo], out=work / "compare", options=options)

        result = compare()  # warm-up: imports, caches of the file system
        render_new_model()
        rendered = median_time(render_new_model, arguments.runs)
        fmonnx.render(model, [photo], work / "maps", options)
        warm = median_time(lambda: fmonnx.render(model, [photo], work / "maps", options), arguments.runs)
        compared = median_time(compare, arguments.runs)

    record = result.record
    print(f"ResNet-50 ({model.stat().st_size / 2**20:.0f} MB) vs its int8 QDQ version "
          f"({int8.stat().st_size / 2**20:.0f} MB{f', quantized in {built:.0f} s' if built > 1 else ''}); "
          f"one 224 x 224 image, CPU, median of {arguments.runs}")
    print(f"  {len(record['layers'])} layers compared, {len(record['unpaired'])} unpaired, first divergence "
          f"{record['first_divergence']}, final output SQNR {record['outputs'][0]['sqnr_db']:.1f} dB")
    print(f"  render (model opened each time)   {rendered:7.3f} s   1.00x")
    print(f"  render, warm (session kept)       {warm:7.3f} s   {warm / rendered:.2f}x")
    print(f"  compare fp32 vs int8              {compared:7.3f} s   {compared / rendered:.2f}x render, "
          f"{compared / warm:.2f}x warm render   (target <= 2.5x)")


if __name__ == "__main__":
    main()
