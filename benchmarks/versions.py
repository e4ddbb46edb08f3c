"""Two versions of fmonnx measured alternately on the ResNet-50: ``python benchmarks/versions.py OLD_TREE``.

``OLD_TREE`` is a checkout of an older commit (``git worktree add /tmp/old <commit>``); the other
version is this checkout. On a shared 2-core machine figures taken minutes apart differ by 30%, so
the versions take turns, round after round, each in fresh processes, and each figure is the median
over rounds of a ratio to plain onnxruntime inference measured in the same process:

- a warm ``fmonnx.render`` without and with the page (median of 5 in one process);
- 16 images in one render with the page (images/s, against plain inference at batch 1 in the process);
- the cold CLI without and with the page (wall time, peak RSS) and the output folder with the page.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402  (benchmarks/models.py)

_PROBE = r"""
import fmonnx, sys
assert fmonnx.__file__.startswith(sys.argv[4]), fmonnx.__file__
import json, statistics, sys, time, shutil
from pathlib import Path
import numpy as np, onnxruntime as ort
from fmonnx import RenderOptions, render
model, photo, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
plain = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
feed = {plain.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)}
plain.run(None, feed)
def timed(function):
    started = time.perf_counter(); function(); return time.perf_counter() - started
figures = {}
for page in (False, True):
    options = RenderOptions(report=page, provider="cpu")
    render(model, [photo], work / "warm", options)
    walls, bases = [], []
    for _ in range(5):
        walls.append(timed(lambda: render(model, [photo], work / "warm", options)))
        bases.append(timed(lambda: plain.run(None, feed)))
    figures[f"warm_{page}"] = statistics.median(walls) / statistics.median(bases)
    figures["plain_ms"] = statistics.median(bases) * 1000
folder = work / "photos"; folder.mkdir(exist_ok=True)
for index in range(16):
    shutil.copy(photo, folder / f"p{index:02d}.jpg")
seconds = timed(lambda: render(model, [folder], work / "many", RenderOptions(provider="cpu")))
base = statistics.median(timed(lambda: plain.run(None, feed)) for _ in range(5))
figures["images_per_s"] = 16 / seconds
figures["images_vs_plain"] = (16 / seconds) * base
print(json.dumps(figures))
"""

_PEAK = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, code)"
)


def run_version(tree: Path, model: Path, photo: Path, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # run from the tree: ``python -c`` and ``-m`` put the working folder first on sys.path
    done = subprocess.run([sys.executable, "-c", _PROBE, str(model), str(photo), str(work), str(tree)], env=env,
                          cwd=tree, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{tree}: {done.stderr}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    for page in (False, True):
        out = work / f"cli_{page}"
        command = [sys.executable, "-m", "fmonnx", "render", str(model), str(photo), "-o", str(out), "--provider",
                   "cpu", *([] if page else ["--no-report"])]
        started = time.perf_counter()
        peak, code = subprocess.run([sys.executable, "-c", _PEAK, *command], env=env, cwd=tree, capture_output=True,
                                    text=True).stdout.split()
        figures[f"cold_{page}"] = time.perf_counter() - started
        figures[f"peak_{page}"] = int(peak) / 2**20
        if page:
            figures["folder_mb"] = sum(path.stat().st_size for path in out.rglob("*") if path.is_file()) / 2**20
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="a checkout of the older version")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from fmonnx.stages.plan import demo_paths

    model, photo = models.resnet50(), demo_paths()[1]
    trees = {"before": args.old.resolve(), "now": HERE.parent}
    results: dict[str, list[dict]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="fmonnx-versions-") as folder:
        for _ in range(args.rounds):
            for name, tree in trees.items():
                work = Path(folder) / name
                work.mkdir(exist_ok=True)
                results[name].append(run_version(tree, model, photo, work))
    rows = [
        ("warm render, no page (x plain)", "warm_False", "{:.1f}x"),
        ("warm render, with the page (x plain)", "warm_True", "{:.1f}x"),
        ("16 images with the page, images/s", "images_per_s", "{:.2f}"),
        ("  as a share of plain batch-1 throughput", "images_vs_plain", "{:.2f}x"),
        ("cold CLI, no page (s)", "cold_False", "{:.2f}"),
        ("cold CLI, with the page (s)", "cold_True", "{:.2f}"),
        ("  peak RSS, no page (MB)", "peak_False", "{:.0f}"),
        ("  peak RSS, with the page (MB)", "peak_True", "{:.0f}"),
        ("output folder with the page (MB)", "folder_mb", "{:.1f}"),
        ("plain inference in the warm process (ms)", "plain_ms", "{:.1f}"),
    ]
    print(f"ResNet-50, medians over {args.rounds} alternating rounds; before = {trees['before']}")
    print(f"  {'':<44} {'before':>9} {'now':>9}")
    for label, key, form in rows:
        values = [form.format(statistics.median(run[key] for run in results[name])) for name in trees]
        print(f"  {label:<44} {values[0]:>9} {values[1]:>9}")


if __name__ == "__main__":
    main()
