"""What a cold ``fmonnx render`` spends before and besides its work: ``python benchmarks/startup_bench.py``.

Each figure is the median over ``--runs`` fresh processes, their kinds interleaved (the cores are shared, so
runs taken in blocks would measure the neighbours):

- the dependency-import floor (``import numpy, onnx, onnxruntime, PIL.Image``), ``fmonnx --help`` and
  the cold CLI render of the ResNet-50 benchmark model (``--no-report``), as wall time of the process;
- inside one fresh process, stage by stage as a cold render meets them: importing the CLI and the
  render front-end, reading the graph (``load.load_graph``: the weights are skipped) and, for
  comparison, the whole file (``onnx.load``, what planning read before), shape inference, the
  whole plan, the colormap tables and the title font, opening the drawing session (its weights
  mapped from a copy of the file, ``run.create_session``), the first render in the process and a
  warm one (the same call again);
- hashing the model file (sha256), what a cache keyed by the model's content would pay on every start.

Then the issue 17 target: cold CLI <= the import floor + 1.5 x a warm render.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE / ".cache" / "resnet50.onnx"
FLOOR = "import numpy, onnx, onnxruntime, PIL.Image"


def _wall(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return time.perf_counter() - started


def child(model: str, photo: str, out: str) -> None:
    """One cold process: each stage's seconds, as JSON on stdout."""
    times: dict[str, float] = {}

    def timed(name, function):
        started = time.perf_counter()
        value = function()
        times[name] = time.perf_counter() - started
        return value

    timed("import fmonnx.cli", lambda: __import__("fmonnx.cli"))
    timed("import render front-end", lambda: __import__("fmonnx.frontends.render"))
    from fmonnx import RenderOptions, render
    from fmonnx.frontends.models import plan_for
    from fmonnx.stages.colormap import DEFAULT_CMAP, palette
    from fmonnx.stages.load import load_graph
    from fmonnx.stages.png import _font
    from fmonnx.stages.runner import Runner
    from fmonnx.stages.shapes import infer_types

    loaded = timed("read the graph (load_graph)", lambda: load_graph(model))
    timed("shape inference", lambda: infer_types(loaded.model))
    options = RenderOptions(report=False)
    plan = timed("plan (read + infer + name + layouts)", lambda: plan_for(model, options))
    timed("colormap tables", lambda: palette(DEFAULT_CMAP))
    timed("title font", _font)
    runners = [Runner(plan, options)]
    timed("open the drawing session", lambda: runners[0].drawing(options.normalization, False) or runners[0].session())
    runners.clear()  # its session goes before render opens its own
    timed("first render in the process", lambda: render(model, [photo], out, options))
    timed("warm render", lambda: render(model, [photo], out, options))

    import hashlib

    import onnx

    timed("for comparison: read the whole file (onnx.load)", lambda: onnx.load(model, load_external_data=False))

    def digest():
        hasher = hashlib.sha256()
        with open(model, "rb") as file:
            while chunk := file.read(2**24):
                hasher.update(chunk)
        return hasher.hexdigest()

    timed("for comparison: sha256 of the model file", digest)
    print(json.dumps(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--photo", type=Path, default=None, help="default: matplotlib's sample photo")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "PHOTO", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if not args.model.exists():
        sys.path.insert(0, str(HERE))
        import models  # benchmarks/models.py builds and caches the ResNet-50

        args.model = Path(models.resnet50())
    if args.photo is None:
        from fmonnx.stages.plan import demo_paths

        args.photo = demo_paths()[1]
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="fmonnx-startup-") as work:
        commands = {
            "dependency-import floor": [python, "-c", FLOOR],
            "fmonnx --help": [python, "-m", "fmonnx", "--help"],
            "cold CLI render --no-report": [python, "-m", "fmonnx", "render", str(args.model), str(args.photo),
                                            "-o", f"{work}/cli", "--no-report"],
        }
        walls: dict[str, list[float]] = {name: [] for name in commands}
        stages: dict[str, list[float]] = {}
        for _ in range(args.runs):
            for name, command in commands.items():
                walls[name].append(_wall(command))
            result = subprocess.run([python, __file__, "--child", str(args.model), str(args.photo), f"{work}/api"],
                                    capture_output=True, text=True, check=True)
            for name, seconds in json.loads(result.stdout.strip().splitlines()[-1]).items():
                stages.setdefault(name, []).append(seconds)
    print(f"{args.model.name} ({args.model.stat().st_size / 2**20:.0f} MB), medians of {args.runs} fresh processes")
    print("\nprocess wall time")
    for name, values in walls.items():
        print(f"  {name:<52} {statistics.median(values):7.3f} s")
    print("\nstages of one cold process, in order")
    for name, values in stages.items():
        print(f"  {name:<52} {statistics.median(values):7.3f} s")
    floor = statistics.median(walls["dependency-import floor"])
    warm = statistics.median(stages["warm render"])
    cold = statistics.median(walls["cold CLI render --no-report"])
    target = floor + 1.5 * warm
    print(f"\ntarget: cold CLI {cold:.3f} s <= floor {floor:.3f} s + 1.5 x warm {warm:.3f} s = {target:.3f} s: "
          f"{'met' if cold <= target else 'not met'}")


if __name__ == "__main__":
    main()
