"""fmonnx's speed and memory, measured: ``python benchmarks/run.py``.

Builds its models (nothing is downloaded; the ResNet-50s are cached in
``benchmarks/.cache/``) and prints, for the shipped tutorial CNN and a
ResNet-50 (224 x 224, random weights), the median of several runs of:

- plain onnxruntime inference of the unmodified model (default session options);
- the exposed model's run (every Conv/Relu/MaxPool tensor an output);
- the run that draws in the graph (statistics, palette indices and the page's levels as outputs,
  stages/ingraph.py), what a render runs;
- the numpy path's normalize + tile (statistics, uint8 mapping, palette, grid, title) of all layers;
- encode + write of all layer PNGs, on one thread and on the render's threads;
- ``fmonnx.render`` in-process: with the model read again each time, and warm
  (a later call in the same process, which keeps the last model's session);
- ``fmonnx render`` as a cold CLI process, with its peak RSS against the bound
  2 x model file + 3 x largest exposed tensor + 300 MB;

each also as a ratio to the plain inference measured in the same run. Then
cold ``fmonnx --help`` and ``fmonnx layers``, onnxruntime's session options on
the exposed ResNet-50, the throughput on a folder of copies of the photo, and
a fully convolutional ResNet-50 fed 2048 x 2048 (rendered in passes: peak RSS
against its bound). ``--quick`` skips the 2048 x 2048 render and uses fewer
runs; ``--provider cuda`` runs every figure on the GPU (onnxruntime-gpu). Last, the targets of
the ResNet-50 (warm render <= 3x plain inference, <= 5x with the page; cold CLI <= the import of the
dependencies + 1.5x a warm render; 16 images >= 0.5x plain batched throughput; output folder with the
page <= 25 MB), each figure from this run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import models  # noqa: E402  (benchmarks/models.py)

MIB = 2**20
FMONNX = [sys.executable, "-m", "fmonnx"]
_PEAK = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
    "print(peak * (1 if sys.platform == 'darwin' else 1024), code)"
)


def median_time(function, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cold(command: list[str], runs: int) -> tuple[float, int]:
    """Median wall time and median peak RSS (bytes) of ``command`` run as a fresh process."""
    times, peaks = [], []
    for _ in range(runs):
        started = time.perf_counter()
        output = subprocess.run([sys.executable, "-c", _PEAK, *command], capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - started)
        peak, code = output.stdout.split()
        if code != "0":
            raise SystemExit(f"{' '.join(command)} failed with exit code {code}")
        peaks.append(int(peak))
    return statistics.median(times), int(statistics.median(peaks))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as info:
            memory = f", {int(info.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    import onnxruntime

    return (
        f"{cpu}, {os.cpu_count()} cores{memory}; Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}"
    )


class Table:
    def __init__(self, title: str, baseline: float):
        self.title, self.baseline, self.rows = title, baseline, []

    def add(self, label: str, seconds: float, note: str = "") -> None:
        self.rows.append((label, seconds, note))

    def print(self) -> None:
        print(f"\n{self.title}")
        print(f"  {'':<48} {'median':>9} {'x plain':>8}")
        for label, seconds, note in self.rows:
            print(f"  {label:<48} {seconds * 1000:>7.1f}ms {seconds / self.baseline:>7.1f}x  {note}")


def bound_of(model: Path, largest: int) -> int:
    from fmonnx.stages.pieces import memory_bound

    return memory_bound(model.stat().st_size, largest)


def bench_model(name: str, model: Path, photo: Path, runs: int, workdir: Path, provider: str) -> dict:
    import onnxruntime as ort

    from fmonnx import RenderOptions, render
    from fmonnx.frontends.render import _last_model
    from fmonnx.stages.activations import run_images
    from fmonnx.stages.colormap import palette
    from fmonnx.stages.draw import draw_layer
    from fmonnx.stages.normalize import channel_stats
    from fmonnx.stages.picture_pool import PictureWriter
    from fmonnx.stages.plan import plan_model
    from fmonnx.stages.png import encode_png
    from fmonnx.stages.run import run_session
    from fmonnx.stages.runner import Runner, open_session

    options = RenderOptions(report=False, provider=provider)
    plan = plan_model(model, options)
    runner = Runner(plan, options)
    result = next(run_images(plan, [photo], options, runner))
    feed = {plan.input.name: result.input_tensor}
    layers = list(result.layers)
    largest = max(layer.values.nbytes for layer in layers)
    values = sum(layer.values.size for layer in layers)

    plain = ort.InferenceSession(str(model), providers=_providers(provider))
    plain.run(None, feed)
    baseline = [median_time(lambda: plain.run(None, feed), runs)]

    session = open_session(plan, options)
    names = [named.candidate.tensor for named in plan.tensors]
    run_session(session, feed, names)
    exposed = median_time(lambda: run_session(session, feed, names), runs)
    drawn_runs = {page: _drawn_run(runner, options.normalization, page, feed, runs) for page in (False, True)}
    del runner

    def draw_all():
        return [
            draw_layer(layer.values, options, layer.named.name, channel_stats(layer.values))[0] for layer in layers
        ]

    pictures = draw_all()
    drawn = median_time(draw_all, runs)
    pixels = sum(picture.size for picture in pictures)
    colors = palette(options.cmap)
    target = workdir / f"{name}-pngs"
    target.mkdir(exist_ok=True)

    def encode_serial():
        for index, picture in enumerate(pictures):
            (target / f"{index}.png").write_bytes(encode_png(picture, colors, "title"))

    def encode_threads():
        with PictureWriter() as writer:
            for index, picture in enumerate(pictures):
                writer.write(target / f"{index}.png", picture, options.cmap, "title")

    encoded_serial = median_time(encode_serial, runs)
    encoded_threads = median_time(encode_threads, runs)
    png_bytes = sum(path.stat().st_size for path in target.iterdir())
    jobs = PictureWriter().jobs

    out = workdir / f"{name}-maps"

    def render_new_model():
        _last_model.clear()  # as if the model file had changed: read, plan and open it again
        render(model, [photo], out, options)

    uncached = median_time(render_new_model, max(3, runs // 2))
    render(model, [photo], out, options)
    warm = median_time(lambda: render(model, [photo], out, options), runs)
    warm_report = median_time(lambda: render(model, [photo], out, RenderOptions(provider=provider)), max(3, runs // 2))

    cli = [*FMONNX, "render", str(model), str(photo), "-o", str(workdir / f"{name}-cli"), "--provider", provider]
    cold_time, cold_peak = cold([*cli, "--no-report"], max(3, runs // 2))
    cold_report, cold_report_peak = cold(cli, max(3, runs // 2))
    baseline.append(median_time(lambda: plain.run(None, feed), runs))
    plain_time = statistics.median(baseline)

    table = Table(
        f"{name}: {model.name} ({model.stat().st_size / MIB:.1f} MB), {len(layers)} layers, "
        f"{values / 1e6:.1f} M values, {sum(layer.values.shape[0] for layer in layers)} channels; "
        f"{pixels / 1e6:.1f} M pixels, {png_bytes / MIB:.1f} MB of PNG",
        plain_time,
    )
    used = plain.get_providers()[0]
    table.add("plain onnxruntime inference", plain_time, f"unmodified model, default options, {used}")
    table.add("exposed-model run", exposed, f"{len(names)} extra outputs")
    table.add("drawn-in-graph run (no page)", drawn_runs[False], "stats + palette indices, uint8 out")
    table.add("drawn-in-graph run (with page)", drawn_runs[True], "+ the page's min-max levels")
    table.add("numpy path: normalize + tile (all layers)", drawn, "stats, uint8, palette, grid, title")
    table.add("encode + write (1 thread)", encoded_serial)
    table.add(f"encode + write ({jobs} threads)", encoded_threads)
    table.add("render in-process, model read again (no report)", uncached, "load, plan, session, run, draw, write")
    table.add("render in-process, warm (no report)", warm, "session kept from the last render")
    table.add("render in-process, warm (with report)", warm_report, "the default: index.html and its data")
    bound = bound_of(model, largest)
    table.add(
        "fmonnx render, cold CLI (no report)",
        cold_time,
        f"peak RSS {cold_peak / MIB:.0f} MB, bound {bound / MIB:.0f} MB",
    )
    table.add(
        "fmonnx render, cold CLI (with report)",
        cold_report,
        f"peak RSS {cold_report_peak / MIB:.0f} MB",
    )
    table.print()
    return {"plain": plain_time, "peak": cold_peak, "bound": bound, "warm": warm, "warm_report": warm_report,
            "cold": cold_time, "cold_report": cold_report, "folder_report": _folder_bytes(model, photo, workdir,
                                                                                          provider)}


def _drawn_run(runner, method: str, page: bool, feed: dict, runs: int) -> float:
    """Median time of the session that draws in the graph (stages/ingraph.py), fetching what render fetches."""
    from fmonnx.stages.run import run_session

    drawing = runner.drawing(method, page)
    if drawing is None:  # an opset too old for the drawing nodes: render draws with numpy
        return float("nan")
    names = [name for item in drawing.outputs.values() for name in (item.stats, item.indices, item.levels) if name]
    run_session(drawing.session, feed, names)
    return median_time(lambda: run_session(drawing.session, feed, names), runs)


def _folder_bytes(model: Path, photo: Path, workdir: Path, provider: str) -> int:
    """Bytes of the output folder of a default render (with the page)."""
    from fmonnx import RenderOptions, render

    out = workdir / "folder-size"
    render(model, [photo], out, RenderOptions(provider=provider))
    return sum(path.stat().st_size for path in out.rglob("*") if path.is_file())


def import_floor(runs: int) -> float:
    """Median wall time of a fresh process importing what a render needs (numpy, onnx, onnxruntime, Pillow)."""
    command = [sys.executable, "-c", "import numpy, onnx, onnxruntime, PIL.Image"]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def batched_throughput(model: Path, photo: Path, batch: int, runs: int, provider: str) -> tuple[float, str]:
    """Images per second of plain onnxruntime inference of ``model`` at batch ``batch`` (its batch axis
    made dynamic), or of ``batch`` runs at batch 1 when the model cannot take a batch."""
    import onnx
    import onnxruntime as ort

    model_proto = onnx.load(str(model))
    for value in [*model_proto.graph.input, *model_proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    session = ort.InferenceSession(model_proto.SerializeToString(), providers=_providers(provider))
    name = session.get_inputs()[0].name
    shape = [dim if isinstance(dim, int) else batch for dim in session.get_inputs()[0].shape]
    feed = {name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    try:
        session.run(None, feed)
    except Exception:  # a fixed Reshape inside: one image at a time
        feed = {name: feed[name][:1]}
        one = median_time(lambda: session.run(None, feed), runs)
        return 1 / one, "batch 1 (the model cannot take a batch)"
    seconds = median_time(lambda: session.run(None, feed), runs)
    return batch / seconds, f"batch {batch}"


_SESSION_PROBE = """
import os, sys, time, numpy as np, onnxruntime as ort
from fmonnx import RenderOptions
from fmonnx.stages.plan import plan_model
from fmonnx.stages.expose import exposed_suffix
from fmonnx.stages.run import session_options
path, level, spin = sys.argv[1], sys.argv[2], sys.argv[3]
plan = plan_model(path, RenderOptions())
names = [n.candidate.tensor for n in plan.tensors]
model = open(path, "rb").read() + exposed_suffix(plan.loaded.model, [n.candidate for n in plan.tensors])
options = session_options()
options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
options.add_session_config_entry("session.intra_op.allow_spinning", spin)
started = time.perf_counter()
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
opened = time.perf_counter() - started
del model
feed = {plan.input.name: np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)}
session.run(names, feed)
times = []
for _ in range(int(sys.argv[4])):
    started = time.perf_counter(); session.run(names, feed); times.append(time.perf_counter() - started)
with open("/proc/self/statm") as statm:
    resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
print(opened, float(np.median(times)), resident)
"""


def bench_session_options(model: Path, runs: int) -> None:
    """The exposed ResNet-50 under each graph optimization level, each in a fresh process."""
    print(f"\nSession options, exposed {model.name} (fresh process each; bytes loading, so resident includes a copy)")
    for level in ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
        for spin in ("0", "1"):
            output = subprocess.run(
                [sys.executable, "-c", _SESSION_PROBE, str(model), level, spin, str(runs)],
                capture_output=True, text=True, check=True,
            )
            opened, run, resident = (float(value) for value in output.stdout.split())
            label = f"{level.rsplit('_', 1)[1].lower()}, spinning {'on' if spin == '1' else 'off'}"
            print(f"  {label:<30} open {opened * 1000:6.0f} ms  run {run * 1000:6.1f} ms  "
                  f"resident {resident / MIB:5.0f} MB")


def _providers(provider: str) -> list[str]:
    import onnxruntime

    from fmonnx.stages.run import resolve_providers

    return resolve_providers(provider, onnxruntime.get_available_providers())


def bench_cli(runs: int) -> None:
    print("\nCold commands (tutorial CNN)")
    for label, command in (
        ("fmonnx --help", [*FMONNX, "--help"]),
        ("fmonnx layers models/tutorial_cnn.onnx", [*FMONNX, "layers", str(models.TUTORIAL)]),
    ):
        seconds, peak = cold(command, runs)
        print(f"  {label:<48} {seconds * 1000:>7.1f}ms  peak RSS {peak / MIB:.0f} MB")


def bench_throughput(model: Path, photo: Path, count: int, workdir: Path, provider: str) -> None:
    from fmonnx import RenderOptions, render

    folder = workdir / "photos"
    folder.mkdir(exist_ok=True)
    for index in range(count):
        shutil.copy(photo, folder / f"photo_{index:02d}{photo.suffix}")
    print(f"\nMany images: {count} copies of the photo, {model.name}")
    rates = {}
    for report in (False, True):
        out = workdir / "many"
        started = time.perf_counter()
        result = render(model, [folder], out, RenderOptions(report=report, provider=provider))
        seconds = time.perf_counter() - started
        manifest = result.outline  # the manifest less its per-channel numbers, without reading it back
        inference = sum(image["seconds"]["inference"] for image in manifest["images"])
        rates[report] = count / seconds
        label = f"render in-process, {'with' if report else 'no'} report"
        print(
            f"  {label:<48} {seconds:>7.2f} s  {count / seconds:.2f} images/s "
            f"(session built once; inference {inference:.2f} s of it)"
        )
    for flags in (["--no-report"], []):
        command = [*FMONNX, "render", str(model), str(folder), "-o", str(workdir / "many-cli"), "--provider", provider,
                   *flags]
        seconds, peak = cold(command, 1)
        label = f"fmonnx render FOLDER, cold CLI ({'no' if flags else 'with'} report)"
        print(f"  {label:<48} {seconds:>7.2f} s  {count / seconds:.2f} images/s, peak RSS {peak / MIB:.0f} MB")
    return rates


def bench_large(photo: Path, size: int, workdir: Path, provider: str) -> None:
    import json

    model = models.fully_convolutional()
    print(f"\nFully convolutional ResNet-50 ({model.stat().st_size / MIB:.0f} MB) fed {size}x{size}")
    out = workdir / "large"
    command = [*FMONNX, "render", str(model), str(photo), "-o", str(out), "--size", f"{size}x{size}", "--no-report",
               "--provider", provider]
    seconds, peak = cold(command, 1)
    manifest = json.loads((out / "manifest.json").read_text())
    image = manifest["images"][0]
    largest = max(np.prod(layer["shape"]) * 4 for layer in image["layers"])
    all_values = sum(np.prod(layer["shape"]) * 4 for layer in image["layers"])
    bound = bound_of(model, int(largest))
    passes = image.get("passes") or {"count": 1}
    print(
        f"  all {len(image['layers'])} tensors: {all_values / MIB:.0f} MB; largest {largest / MIB:.0f} MB; "
        f"bound {bound / MIB:.0f} MB"
    )
    print(f"  fmonnx render --size {size}x{size}, cold CLI: {seconds:.1f} s in {passes['count']} passes, "
          f"peak RSS {peak / MIB:.0f} MB ({'within' if peak <= bound else 'OVER'} the bound)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per median [default: 10, 5 with --quick]")
    parser.add_argument("--images", type=int, default=16, help="copies of the photo for the throughput run")
    parser.add_argument("--large", type=int, default=2048, help="side of the fully convolutional run's input")
    parser.add_argument("--quick", action="store_true", help="fewer runs, no 2048x2048 render")
    parser.add_argument("--provider", choices=["cpu", "cuda", "auto"], default="cpu",
                        help="onnxruntime provider for every figure (cuda needs onnxruntime-gpu) [default: cpu]")
    args = parser.parse_args()
    runs = args.runs or (5 if args.quick else 10)

    from fmonnx.stages.plan import demo_paths

    _, photo = demo_paths()
    from fmonnx.stages.png import deflate_backend

    print(f"Machine: {machine()}")
    print(f"Provider: {args.provider}; PNG deflate: {deflate_backend()} (isal when installed, else zlib)")
    print(f"Photo: {photo.name}; medians of {runs} runs (cold CLI: of {max(3, runs // 2)})")
    resnet = models.resnet50()
    with tempfile.TemporaryDirectory(prefix="fmonnx-bench-") as folder:
        workdir = Path(folder)
        bench_model("tutorial CNN", models.TUTORIAL, photo, runs, workdir, args.provider)
        figures = bench_model("ResNet-50", resnet, photo, runs, workdir, args.provider)
        bench_cli(runs)
        if args.provider == "cpu" and sys.platform.startswith("linux"):
            bench_session_options(resnet, runs)
        rates = bench_throughput(resnet, photo, args.images, workdir, args.provider)
        batched, how = batched_throughput(resnet, photo, args.images, runs, args.provider)
        floor = import_floor(max(3, runs // 2))
        print_targets(figures, rates, batched, how, floor, args.images)
        if not args.quick:
            bench_large(photo, args.large, workdir, args.provider)


def print_targets(figures: dict, rates: dict, batched: float, how: str, floor: float, count: int) -> None:
    """The issue's targets for the ResNet-50, each figure from this run."""
    plain = figures["plain"]
    rows = [
        ("warm render, no page", f"{figures['warm'] / plain:.1f}x plain", "<= 3x", figures["warm"] <= 3 * plain),
        ("warm render, with the page", f"{figures['warm_report'] / plain:.1f}x plain", "<= 5x",
         figures["warm_report"] <= 5 * plain),
        ("cold CLI, no page", f"{figures['cold']:.2f} s = import floor {floor:.2f} s + "
         f"{(figures['cold'] - floor) / figures['warm']:.1f}x warm", "<= floor + 1.5x warm",
         figures["cold"] <= floor + 1.5 * figures["warm"]),
        ("cold CLI, with the page", f"{figures['cold_report']:.2f} s = floor + "
         f"{(figures['cold_report'] - floor) / figures['warm_report']:.1f}x warm", "<= floor + 1.5x warm",
         figures["cold_report"] <= floor + 1.5 * figures["warm_report"]),
        (f"{count} images, with the page", f"{rates[True]:.2f} images/s = {rates[True] / batched:.2f}x plain "
         f"{how} ({batched:.1f} images/s)", ">= 0.5x", rates[True] >= 0.5 * batched),
        (f"{count} images, no page", f"{rates[False]:.2f} images/s = {rates[False] / batched:.2f}x", ">= 0.5x",
         rates[False] >= 0.5 * batched),
        ("output folder with the page", f"{figures['folder_report'] / MIB:.1f} MB", "<= 25 MB",
         figures["folder_report"] <= 25 * MIB),
    ]
    print("\nTargets (ResNet-50, this run)")
    for label, value, target, met in rows:
        print(f"  {label:<30} {value:<60} {target:<22} {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
