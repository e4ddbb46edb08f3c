"""The manifest's per-channel numbers: 7-digit text (decimals.py, before issue 17) against orjson's float32 text.

On a ResNet-50's real channel statistics (one image, 49,000 channels x 5 numbers): the time of turning
them into JSON text, its bytes, and the time of writing the manifest and the page's compact JSON with
them spilled. The old writer is read from git (``--baseline``, the last commit that had decimals.py).
Variants interleaved, medians.

    python benchmarks/json_bench.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

BASELINE = "f134808d30536f0d96d821a1ba93f5cfc27cef31"  # fmonnx/stages/decimals.py still there


def old_decimals(commit: str):
    source = subprocess.run(["git", "show", f"{commit}:fmonnx/stages/decimals.py"], cwd=ROOT.parent,
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_decimals.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_decimals", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resnet50_stats():
    from PIL import Image

    import fmonnx
    import models
    from fmonnx.stages.normalize import channel_stats

    model = models.resnet50()
    image = Path(tempfile.mkdtemp()) / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(image)
    return [channel_stats(values) for values in fmonnx.activations(model, image).values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--baseline", default=BASELINE)
    args = parser.parse_args()

    from fmonnx.stages.json_out import json_pieces, write_manifest
    from fmonnx.stages.spill import Spill
    from fmonnx.stages.stats import CHANNEL_FIELDS, channel_columns

    decimals = old_decimals(args.baseline)

    def seven_digits(layers):  # channel_columns as it was: one json_lists call for all layers
        numbers = [getattr(stats, name) for stats in layers for name in CHANNEL_FIELDS]
        texts = iter(decimals.json_lists(np.concatenate(numbers), [column.size for column in numbers]))
        return [{name: next(texts) for name in CHANNEL_FIELDS} for _ in layers]

    def float32_orjson(layers):
        return channel_columns(layers)

    stats = resnet50_stats()
    channels = sum(one.mean.size for one in stats)
    variants = {"7 digits, numpy (decimals.py)": seven_digits, "float32 shortest, orjson": float32_orjson}
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, variant in variants.items():
            start = time.perf_counter()
            variant(stats)
            times[name].append(time.perf_counter() - start)
    print(f"ResNet-50, one image: {len(stats)} layers, {channels} channels, {channels * 5} numbers")
    for name, variant in variants.items():
        columns = variant(stats)
        size = sum(len(text) for layer in columns for field, text in layer.items() if field in CHANNEL_FIELDS)
        print(f"  {name:32s} {statistics.median(times[name]) * 1000:7.1f} ms  {size / 1e6:5.2f} MB of text")

    folder = Path(tempfile.mkdtemp())
    with Spill(folder) as spill:
        columns = channel_columns(stats)
        handles = iter(spill.put([text for layer in columns for text in layer.values()]))
        layers = [{"name": f"layer{index}", "shape": [1, 64, 56, 56], "channels": {field: next(handles) for field in
                   layer}, "stats": {"min": -1.5, "max": float("inf")}} for index, layer in enumerate(columns)]
        manifest = {"schema": 1, "images": [{"image": "a.png", "layers": layers}]}
        writes = {"manifest.json (indented)": lambda: write_manifest(folder, manifest),
                  "page data (compact)": lambda: sum(map(len, json_pieces(manifest, indent=None, compact=True)))}
        times = {name: [] for name in writes}
        for _ in range(args.rounds):
            for name, write in writes.items():
                start = time.perf_counter()
                write()
                times[name].append(time.perf_counter() - start)
        print(f"writing them spilled ({(folder / 'manifest.json').stat().st_size / 1e6:.2f} MB manifest):")
        for name in writes:
            print(f"  {name:32s} {statistics.median(times[name]) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
