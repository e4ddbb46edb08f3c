"""fmonnx scan's pass 1, measured: ``python benchmarks/scan_bench.py`` (``--quick``: smaller collections).

On the ResNet-50 benchmark model (benchmarks/models.py, 224 x 224, random weights; every
Conv/Relu/MaxPool tensor reduced per channel in the graph, 103 layers), over a generated
collection of JPEG photos-like images of mixed sizes (decoded, converted and resized by the scan):

- plain batched onnxruntime inference of the unmodified model (its batch axis made dynamic, the
  same batch size, tensors prepared beforehand: inference only), images/s;
- the scan's pass 1 on the local engine (decode + resize + the reduced model + merging the state),
  images/s and its ratio to the plain figure (target >= 0.6);
- peak RSS of pass 1 in a fresh process over 500 and over 2,000 images (target: flat);
- the Ray engine on a local Ray over the same images: its fixed start-up (ray.init, the actor's
  session, the first result) stated apart from its steady throughput;
- what 1.28 M images would take on N such machines, from the measured per-image cost.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from run import machine  # noqa: E402

import models  # noqa: E402  (benchmarks/models.py)

MIB = 2**20
IMAGENET = 1_281_167


def make_collection(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs of mixed sizes (240..480 pixels a side) with smooth shapes and noise, like photos."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        path = folder / f"img_{index:05d}.jpg"
        if path.exists():
            continue
        height, width = (int(v) for v in rng.integers(240, 480, 2))
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        colour = rng.uniform(0, 255, (3,))
        centre = rng.uniform(0, 1, 2) * (height, width)
        blob = np.exp(-(((y - centre[0]) ** 2) + ((x - centre[1]) ** 2)) / (2 * (min(height, width) / 5) ** 2))
        pixels = blob[..., None] * colour + rng.normal(0, 12, (height, width, 3)) + (x / width * 80)[..., None]
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=85)


def plain_throughput(model: Path, batch: int, count: int) -> float:
    """Images/s of the unmodified model, batched, on prepared tensors (inference only)."""
    import onnxruntime as ort

    from fmonnx.stages.plan import plan_model
    from fmonnx.stages.run import session_options
    from fmonnx.stages.scanner import _batched_model

    source = _batched_model(plan_model(model)) or model.read_bytes()
    with tempfile.NamedTemporaryFile(suffix=".onnx") as file:
        file.write(source)
        file.flush()
        session = ort.InferenceSession(file.name, session_options(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    tensor = np.random.default_rng(0).random((batch, 3, 224, 224), np.float32)
    session.run(None, {name: tensor})
    started = time.perf_counter()
    done = 0
    while done < count:
        session.run(None, {name: tensor})
        done += batch
    return done / (time.perf_counter() - started)


def pass_one(model: Path, data: Path, batch: int, engine: str = "local") -> dict:
    """Pass 1 only (no crops, no output): seconds, images, the engine's timings."""
    from fmonnx.frontends.scan import _pass_one_local
    from fmonnx.options import RenderOptions
    from fmonnx.stages.collection import list_collection
    from fmonnx.stages.plan import plan_model
    from fmonnx.stages.scanner import Scanner
    from fmonnx.stages.tally import ScanTally

    options = RenderOptions()
    started = time.perf_counter()
    scanner = Scanner(plan_model(model, options), options, batch)
    collection = list_collection([data])
    state = ScanTally.empty([layer.channels for layer in scanner.layers], 9, len(collection))
    opened = time.perf_counter()
    timing = {}
    if engine == "ray":
        from fmonnx.frontends.scan_ray import pass_one_ray

        timing = pass_one_ray(model, options, scanner, collection, state, None, None, lambda s, n: None)
    else:
        _pass_one_local(scanner, collection, state, None, lambda s, n: None)
    return {"open": opened - started, "seconds": time.perf_counter() - opened, "images": state.scanned,
            "channels": sum(layer.channels for layer in scanner.layers), "layers": len(scanner.layers), **timing}


def child(model: str, data: str, batch: int) -> None:
    """In a fresh process: pass 1, then its figures and peak RSS as JSON on stdout."""
    figures = pass_one(Path(model), Path(data), batch)
    figures["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(figures))


def in_child(model: Path, data: Path, batch: int) -> dict:
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import scan_bench; " \
           f"scan_bench.child({str(model)!r}, {str(data)!r}, {batch})"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 and 400 images instead of 500 and 2,000")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # figures appear as they are measured, also into a file
    small, large = (100, 400) if args.quick else (500, 2000)
    model = models.resnet50()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="fmonnx-scan-bench-") as work:
        work = Path(work)
        images = work / "images"
        started = time.perf_counter()
        make_collection(images, large)
        listing = work / "first.txt"
        listing.write_text("\n".join(str(images / f"img_{i:05d}.jpg") for i in range(small)) + "\n")
        print(f"generated {large} JPEGs (240..480 px a side) in {time.perf_counter() - started:.0f} s")

        plain = plain_throughput(model, args.batch, min(large, 400))
        print(f"\nResNet-50, batch {args.batch}, CPU")
        print(f"  plain batched onnxruntime inference (unmodified model)   {plain:7.1f} images/s")
        figures = {}
        for count, data in ((small, listing), (large, images)):
            figures[count] = in_child(model, data, args.batch)
        big = figures[large]
        rate = big["images"] / big["seconds"]
        print(f"  scan pass 1, local engine, {large} images               {rate:7.1f} images/s  "
              f"{rate / plain:.2f}x plain  ({big['layers']} layers, {big['channels']} channels; "
              f"session opened in {big['open']:.1f} s)")
        for count in (small, large):
            print(f"  peak RSS of pass 1 over {count:>5} images (fresh process)   "
                  f"{figures[count]['peak_rss'] / MIB:7.0f} MB")
        ray_rate = None
        if not args.no_ray:
            try:
                import ray  # noqa: F401
            except ImportError:
                print("  Ray engine: skipped (pip install -e '.[ray]')")
            else:
                figures_ray = pass_one(model, images, args.batch, engine="ray")
                first = figures_ray["ray_first_result"]
                steady = figures_ray["seconds"] - first
                ray_rate = (figures_ray["images"] - args.batch) / max(steady, 1e-9)
                print(f"  scan pass 1, Ray engine (local Ray, 1 actor), {large} images: "
                      f"{figures_ray['images'] / figures_ray['seconds']:.1f} images/s overall; "
                      f"start-up {first:.1f} s (ray.init {figures_ray['ray_start']:.1f} s + actor's session + "
                      f"first batch), then {ray_rate:.1f} images/s")
        per_image = 1 / rate
        print(f"\n1.28 M images (ImageNet train) at the measured {per_image * 1000:.1f} ms an image on this machine:")
        for machines in (1, 4, 16, 64):
            hours = IMAGENET * per_image / machines / 3600
            print(f"  {machines:>3} machine(s) like this one: {hours:7.1f} h (+ start-up, + pass 2 on the top images)")


if __name__ == "__main__":
    main()
