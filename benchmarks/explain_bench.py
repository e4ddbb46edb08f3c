"""fmonnx explain's speed and memory, measured: ``python benchmarks/explain_bench.py``.

On the ResNet-50 benchmark model (benchmarks/models.py: 224 x 224, random weights,
nothing downloaded), warm (one Explainer built and prepared once, then repeated
``explain_image`` calls), the median of ``--repeat`` runs, timed in interleaved rounds (one
call of each per round, so a shared machine's load weighs on every row alike), of:

- plain onnxruntime inference of the same model, with fmonnx's session options (the 1x);
- explain, Grad-CAM on the default layer (target: at most 3x the inference);
- explain, Grad-CAM on every layer render shows (``layers="all"``: one backward pass);
- torchvision's resnet50 (weights=None, eval) on the same CPU: its forward, and Grad-CAM by
  autograd (hook on layer4, backward of the top logit, the formula); explain's ratio to it;
- ScoreCAM (one forward per channel of the layer: measured once, on ``--scorecam-layer``);
- peak RSS of a process that runs one explain against one that runs ``fmonnx.activations``;

then where one warm explain's time goes (read, session run, the method, to_image, the rest).
Ratios are to the inference measured in the same run; nothing here asserts a time.
torchvision comes from /tmp/timmpath (the python-only 0.29.1 beside the venv's torch 2.13; put on
sys.path after the venv when it is not installed; ``bash benchmarks/setup_sweep_torch213.sh`` rebuilds it);
its rows are skipped, with the reason printed, when it does not import.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from run import MIB, Table, machine  # noqa: E402  (benchmarks/run.py)

import models  # noqa: E402  (benchmarks/models.py)

TORCHVISION_PATH = "/tmp/timmpath"
_PEAK = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
    "print(peak * (1 if sys.platform == 'darwin' else 1024), code)"
)
_EXPLAIN = "import sys, fmonnx; fmonnx.explain(sys.argv[1], sys.argv[2])"
_ACTIVATIONS = "import sys, fmonnx; fmonnx.activations(sys.argv[1], sys.argv[2])"


def peak_rss(code: str, *args: str) -> int:
    """Peak RSS (bytes) of a fresh Python process running ``code``; the wrapper's own RSS is not counted."""
    command = [sys.executable, "-c", code, *args]
    output = subprocess.run([sys.executable, "-c", _PEAK, *command], capture_output=True, text=True, check=True)
    peak, status = output.stdout.split()
    if status != "0":
        raise SystemExit(f"{code!r} failed with exit code {status}")
    return int(peak)


def import_torchvision():
    """(torch, torchvision) or the reason they do not import."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        if TORCHVISION_PATH not in sys.path and Path(TORCHVISION_PATH).is_dir():
            sys.path.append(TORCHVISION_PATH)  # appended: the venv's torch wins over any copy there
    try:
        import torch
        import torchvision
    except Exception as exc:  # a broken torchvision raises more than ImportError (RuntimeError on its ops)
        return f"torchvision does not import ({type(exc).__name__}: {exc}); bash benchmarks/setup_sweep_torch213.sh"
    return torch, torchvision


def torch_gradcam(tensor: np.ndarray):
    """(forward, Grad-CAM, threads, version): torchvision's resnet50 as callables, or the reason it is skipped."""
    found = import_torchvision()
    if isinstance(found, str):
        return found
    torch, torchvision = found
    model = torchvision.models.resnet50(weights=None).eval()
    image = torch.from_numpy(tensor)
    kept = {}

    def keep(_module, _inputs, output):
        if output.requires_grad:  # not under no_grad (the plain forward)
            output.retain_grad()
        kept["layer4"] = output

    model.layer4.register_forward_hook(keep)

    def forward():
        with torch.no_grad():
            model(image)

    def gradcam():
        model.zero_grad(set_to_none=True)
        logits = model(image)
        logits[0, int(logits[0].argmax())].backward()
        activation, gradient = kept["layer4"][0], kept["layer4"].grad[0]
        weights = gradient.mean(dim=(1, 2))
        return torch.relu((weights[:, None, None] * activation).sum(0)).detach().numpy()

    return forward, gradcam, torch.get_num_threads(), torchvision.__version__


def interleaved(functions: dict, runs: int) -> dict[str, float]:
    """Median seconds of each function, timed in rounds (one call of each per round, after a warm-up call):
    on a shared machine the load then weighs on every row alike, and the ratios hold."""
    times: dict[str, list[float]] = {label: [] for label in functions}
    for function in functions.values():
        function()
    for _ in range(runs):
        for label, function in functions.items():
            started = time.perf_counter()
            function()
            times[label].append(time.perf_counter() - started)
    return {label: statistics.median(values) for label, values in times.items()}


class StageClock:
    """Seconds spent in each wrapped callable during one explain."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, label: str, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started

        return timed


@contextlib.contextmanager
def clocked(explainer, clock: StageClock):
    """Time the stages of ``explainer.explain_image``: the wrappers go on the instance and on ``cams.to_image``,
    and come off again afterwards."""
    from fmonnx.stages import cam as cams

    original = cams.to_image
    explainer._read = clock.wrap("read + preprocess", explainer._read)
    explainer._run = clock.wrap("session run (forward + backward)", explainer._run)
    explainer._layers = clock.wrap("method (cam) incl. to_image", explainer._layers)
    explainer._photo = clock.wrap("photo (overlay base)", explainer._photo)
    cams.to_image = clock.wrap("  of which to_image", original)
    try:
        yield
    finally:
        cams.to_image = original
        for name in ("_read", "_run", "_layers", "_photo"):
            del explainer.__dict__[name]


STAGES = ("read + preprocess", "session run (forward + backward)", "method (cam) incl. to_image",
          "  of which to_image", "photo (overlay base)")


def profile(explainer, photo: Path, runs: int, title: str) -> None:
    clocks = []
    for _ in range(runs):
        clock = StageClock()
        with clocked(explainer, clock):
            started = time.perf_counter()
            explainer.explain_image(photo)
            clock.seconds["total"] = time.perf_counter() - started
        clocks.append(clock.seconds)
    total = statistics.median(clock["total"] for clock in clocks)
    print(f"\nStage profile, warm explain ({title}), medians of {runs}")
    accounted = 0.0
    for label in STAGES:
        seconds = statistics.median(clock.get(label, 0.0) for clock in clocks)
        if not label.startswith(" "):
            accounted += seconds
        print(f"  {label:<40} {seconds * 1000:>7.1f}ms {seconds / total:>6.0%}")
    rest = total - accounted
    print(f"  {'the rest (targets, records)':<40} {rest * 1000:>7.1f}ms {rest / total:>6.0%}")
    print(f"  {'total':<40} {total * 1000:>7.1f}ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per median [default: 5]")
    parser.add_argument("--scorecam-layer", default="maxpool",
                        help="the layer ScoreCAM runs on (one forward per channel); 'default' for explain's default "
                             "layer (2048 channels on ResNet-50: minutes) [default: maxpool, 64 channels]")
    parser.add_argument("--no-memory", action="store_true", help="skip the two peak-RSS processes")
    args = parser.parse_args()
    runs = args.repeat

    from fmonnx import RenderOptions
    from fmonnx.frontends.explain import Explainer
    from fmonnx.stages.plan import demo_paths
    from fmonnx.stages.run import create_session, run_session

    _, photo = demo_paths()
    model = models.resnet50()
    options = RenderOptions()
    print(f"Machine: {machine()}")
    print(f"Model: {model.name} ({model.stat().st_size / MIB:.1f} MB, random weights); photo: {photo.name}; "
          f"medians of {runs} warm runs, timed in interleaved rounds")
    print(f"Command: {' '.join([Path(sys.executable).name, *sys.argv])}")

    explainer = Explainer(model, None, None, "gradcam", options)
    explainer.prepare()
    tensor, _ = explainer._read(photo)
    feed = {explainer.plan.input.name: tensor}
    output = explainer.plan.loaded.model.graph.output[0].name

    plain = create_session(model, options.provider, threads=options.threads, optimization=options.optimization)
    every = Explainer(model, None, "all", "gradcam", options)
    every.prepare()
    functions = {
        "plain": lambda: run_session(plain, feed, [output]),
        "default": lambda: explainer.explain_image(photo),
    }
    torch_result = torch_gradcam(tensor)
    if not isinstance(torch_result, str):
        functions["torch forward"], functions["torch gradcam"] = torch_result[:2]
    medians = interleaved(functions, runs)
    # every layer in rounds of its own: its seconds of numpy between the short rows slowed the next torch
    # call ~10x (a cold start after the memory churn), which no warm use would see
    all_layers = interleaved({"all": lambda: every.explain_image(photo)}, max(1, runs // 2))["all"]
    plain_time, default = medians["plain"], medians["default"]

    layer = None if args.scorecam_layer == "default" else args.scorecam_layer
    scorer = Explainer(model, None, layer, "scorecam", options)
    scorer.prepare()
    channels = scorer.layers[0].named.candidate.type.shape[1]
    started = time.perf_counter()
    scorer.explain_image(photo)
    scorecam = time.perf_counter() - started

    table = Table(f"explain on ResNet-50 ({explainer.provider}), warm: one Explainer, repeated explain_image",
                  plain_time)
    table.add("plain onnxruntime inference", plain_time, "fmonnx's session options (create_session)")
    table.add(f"explain gradcam, default layer ({explainer.chosen})", default, "target <= 3x; forward + backward")
    table.add(f"explain gradcam, every layer ({len(explainer.plan.tensors)})", all_layers,
              f"one backward pass, all CAMs; median of {max(1, runs // 2)}")
    if isinstance(torch_result, str):
        print(f"\n(torch rows skipped: {torch_result})")
    else:
        _, _, threads, version = torch_result
        forward, gradcam = medians["torch forward"], medians["torch gradcam"]
        table.add("torch resnet50 forward (no_grad)", forward, f"torchvision {version}, {threads} threads")
        table.add("torch resnet50 Grad-CAM (autograd, layer4)", gradcam,
                  f"explain / torch Grad-CAM = {default / gradcam:.2f}x (target < 1)")
    table.add(f"explain scorecam on {scorer.chosen} ({channels} ch), once", scorecam,
              f"{1 / scorecam:.2f} images/s; at this rate the 2048-channel default layer: "
              f"~{scorecam * 2048 / channels:.0f} s/image")
    table.print()

    if not args.no_memory:
        explain_peak = peak_rss(_EXPLAIN, str(model), str(photo))
        activations_peak = peak_rss(_ACTIVATIONS, str(model), str(photo))
        print(f"\nPeak RSS of one process, {model.name}: fmonnx.explain {explain_peak / MIB:.0f} MB, "
              f"fmonnx.activations {activations_peak / MIB:.0f} MB "
              f"({explain_peak / activations_peak:.2f}x)")

    profile(explainer, photo, runs, f"Grad-CAM, default layer {explainer.chosen}")
    profile(every, photo, max(1, runs // 2), f"Grad-CAM, every layer ({len(every.layers)})")


if __name__ == "__main__":
    main()
