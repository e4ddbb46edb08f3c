"""Where a warm ``fmonnx.render`` spends its time, stage by stage: ``python benchmarks/render_profile.py``.

Renders the ResNet-50 benchmark model (benchmarks/models.py) on the sample photo in one process,
warm (the session kept from the first call), with and without the page, and prints the median
wall time of the render and, per stage, the median time spent in it summed over threads (the
drawing stages run on the writer threads, 2 on a 2-core machine, while the main thread waits).
Each stage is timed by wrapping the function render calls for it, so the figures cost a few
microseconds a call more than an unwrapped render.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import models  # noqa: E402  (benchmarks/models.py)

# (label, module, function name as render's module sees it)
STAGES = [
    ("session run (drawn in the graph)", "fmonnx.stages.activations", "run_session"),
    ("tile + title", "fmonnx.frontends.render", "draw_indices"),
    ("layer PNG encode + write", "fmonnx.frontends.render", "write_picture"),
    ("page levels: tile, PNG, base64, write", "fmonnx.frontends.render", "write_layer_levels"),
    ("overview", "fmonnx.frontends.render", "draw_overview"),
    ("per-channel JSON (orjson)", "fmonnx.frontends.render", "channel_columns"),
    ("manifest.json", "fmonnx.frontends.render", "write_manifest"),
    ("index.html", "fmonnx.frontends.render", "write_report"),
    ("input photo for the page", "fmonnx.frontends.render", "write_photo"),
]


def instrument(spent: dict[str, list[float]]) -> None:
    import importlib

    lock = threading.Lock()
    for label, module_name, name in STAGES:
        module = importlib.import_module(module_name)
        function = getattr(module, name)

        def timed(*args, _function=function, _label=label, **kwargs):
            started = time.perf_counter()
            try:
                return _function(*args, **kwargs)
            finally:
                with lock:
                    if spent[_label]:  # the warm-up call is not counted
                        spent[_label][-1] += time.perf_counter() - started

        setattr(module, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort

    from fmonnx import RenderOptions, render
    from fmonnx.stages.plan import demo_paths

    model, photo = models.resnet50(), demo_paths()[1]
    plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = {plain.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)}
    plain.run(None, feed)
    spent: dict[str, list[float]] = defaultdict(list)
    instrument(spent)
    with tempfile.TemporaryDirectory(prefix="fmonnx-profile-") as folder:
        for report in (False, True):
            options = RenderOptions(report=report, provider="cpu")
            render(model, [photo], Path(folder) / "out", options)  # warm-up: plan, session, titles
            walls, inference = [], []
            for label, *_ in STAGES:
                spent[label].clear()
            for _ in range(args.runs):
                for label, *_ in STAGES:
                    spent[label].append(0.0)
                started = time.perf_counter()
                render(model, [photo], Path(folder) / "out", options)
                walls.append(time.perf_counter() - started)
                started = time.perf_counter()
                plain.run(None, feed)
                inference.append(time.perf_counter() - started)
            wall, base = statistics.median(walls), statistics.median(inference)
            print(f"\nwarm render, {'with' if report else 'no'} page: {wall * 1000:.0f} ms = {wall / base:.1f}x plain "
                  f"inference ({base * 1000:.1f} ms), medians of {args.runs}, interleaved")
            print(f"  {'stage':<40} {'ms':>7} {'x plain':>8}   (summed over threads)")
            for label, *_ in STAGES:
                seconds = statistics.median(spent[label])
                if seconds:
                    print(f"  {label:<40} {seconds * 1000:7.1f} {seconds / base:8.2f}")


if __name__ == "__main__":
    main()
