"""Time ``fmonnx.sources.keras.convert.convert_keras`` on ResNet50 and MobileNetV2 and report the worst layer error.

The models come from ``keras.applications`` / ``tf_keras.applications`` with
``weights=None`` (random weights, nothing downloaded), saved once under
``benchmarks/.cache/``. Each conversion runs in a fresh process, so the time
includes importing TensorFlow, loading the file, tf2onnx and the check::

    python benchmarks/convert_bench.py                       # all models, all formats
    python benchmarks/convert_bench.py --models MobileNetV2 --formats keras3.keras
    python benchmarks/convert_bench.py --models ResNet50 DenseNet121 InceptionResNetV2 --formats keras3.keras

Any keras.applications name works with ``--models``; time against layer count shows how conversion scales.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
MODELS = ("ResNet50", "MobileNetV2")
FORMATS = ("keras3.keras", "keras3.h5", "tf_keras.h5")

CONVERT = """
import json, sys, time
start = time.perf_counter()
from fmonnx.sources.keras.convert import convert_keras
result = convert_keras(sys.argv[1])
wall = time.perf_counter() - start
report = result.check
print(json.dumps({"loader": result.loader, "layers": len(result.layers), "seconds_in_convert": result.seconds,
                  "seconds_with_imports": wall, "max_abs": report.max_abs, "max_rel": report.max_rel,
                  "worst": report.worst, "passed": report.passed, "tensors": len(report.layers),
                  "onnx_mb": result.model.ByteSize() / 1e6}))
"""

SAVE = """
import sys, warnings
framework, name, path = sys.argv[1:]
module = __import__("keras" if framework == "keras3" else "tf_keras")
module.utils.set_random_seed(0)
model = getattr(module.applications, name)(weights=None)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model.save(path)
"""


def saved(name: str, flavour: str) -> Path:
    framework, suffix = flavour.split(".")
    path = CACHE / f"{name}_{framework}.{suffix}"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-c", SAVE, framework, name, str(path)], check=True, capture_output=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="keras.applications names [%(default)s]")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        for flavour in args.formats:
            path = saved(name, flavour)
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CONVERT, str(path)], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{name} {flavour}: FAILED\n{done.stderr[-2000:]}", flush=True)
                continue
            row = {"model": name, "format": flavour, "file_mb": path.stat().st_size / 1e6}
            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
            row["seconds_process"] = time.perf_counter() - start
            rows.append(row)
            print(
                f"{name:12} {flavour:13} loader={row['loader']:8} layers={row['layers']:3} "
                f"convert+check {row['seconds_in_convert']:6.1f}s (process {row['seconds_process']:5.1f}s)  "
                f"worst abs {row['max_abs']:.2e}  worst rel {row['max_rel']:.2e} in {row['worst']}  "
                f"passed={row['passed']}",
                flush=True,
            )
    (CACHE / "convert_bench.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
