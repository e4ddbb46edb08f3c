"""Convert every keras.applications model Keras 3 builds, render it, and check every layer's name.

For each model, in a fresh process with a time limit (TensorFlow keeps its
memory): build it with ``weights=None``, give every BatchNormalization and
LayerNormalization random statistics and scales (seeded; with Keras's
defaults they are nearly the identity, and a label one layer off would still
match), save it in each format, convert the file with fmonnx
(``convert_keras``, check included), render it with ``save_arrays`` from a
seeded random PNG, and compare each rendered layer output (``preprocess="unit"``: pixels / 255), by its
Keras name, with Keras's own output of that layer for the exact input tensor render used::

    python benchmarks/sweep_keras.py                     # every model, .keras and .h5
    python benchmarks/sweep_keras.py --quick             # 5 small models, a few minutes
    python benchmarks/sweep_keras.py --models ResNet50,ConvNeXtTiny --formats keras
    python benchmarks/sweep_keras.py --skip-large        # without the models in LARGE

Columns: ``4d`` Keras layers with a 4-D output; ``found`` rendered tensors
marked as a layer's output; ``named`` those whose name is a Keras layer;
``correct`` those within ``--rtol`` of their own layer's Keras output;
``mislabel`` those that are not, but match another layer's output;
``worst rel`` the worst relative error (max |onnx - keras| / max |keras|) over
the layers; ``convert s`` the conversion with its check, TensorFlow import
excluded. A failure prints its one-line reason instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

SEED = 0
OPEN_SIZE = 224  # the image size for models with open height and width (MobileNetV3)
FORMATS = ("keras", "h5")
# Every keras.applications model of Keras 3, smallest first (parameters, roughly).
MODELS = (
    "MobileNetV3Small",
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Large",
    "NASNetMobile",
    "EfficientNetB0",
    "EfficientNetV2B0",
    "EfficientNetB1",
    "EfficientNetV2B1",
    "DenseNet121",
    "EfficientNetB2",
    "EfficientNetV2B2",
    "EfficientNetB3",
    "EfficientNetV2B3",
    "DenseNet169",
    "Xception",
    "InceptionV3",
    "DenseNet201",
    "ResNet50",
    "ResNet50V2",
    "EfficientNetV2S",
    "ConvNeXtTiny",
    "EfficientNetB4",
    "ResNet101",
    "ResNet101V2",
    "ConvNeXtSmall",
    "InceptionResNetV2",
    "EfficientNetB5",
    "ResNet152",
    "ResNet152V2",
    "EfficientNetB6",
    "EfficientNetV2M",
    "ConvNeXtBase",
    "EfficientNetB7",
    "VGG16",
    "VGG19",
    "NASNetLarge",
    "EfficientNetV2L",
    "ConvNeXtLarge",
    "ConvNeXtXLarge",
)
QUICK = ("MobileNetV3Small", "EfficientNetB0", "ConvNeXtTiny", "DenseNet121", "ResNet50")
# Models whose size (input 456-600 px, or 200M+ parameters) makes one conversion take many minutes here.
LARGE = ("EfficientNetB6", "EfficientNetB7", "EfficientNetV2L", "NASNetLarge", "ConvNeXtLarge", "ConvNeXtXLarge")


def randomize_normalization(keras, model, seed: int) -> int:
    """Give every BatchNormalization random moving statistics, and every Batch/LayerNormalization a
    random scale and shift (seeded); return how many layers changed.

    moving_mean and beta are drawn from N(0, 0.2), moving_variance and gamma
    from [0.5, 1.5]: none of them is the identity, and activations keep the
    scale the random kernels give them. (Statistics measured on a random
    batch were tried and are worse: on noise inputs some channels are nearly
    constant, and their tiny variance blows image borders up to 1e4.)
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    changed = 0
    for layer in flat_layers(keras, model):
        if type(layer).__name__ not in ("BatchNormalization", "LayerNormalization"):
            continue
        weights = []
        for variable in layer.weights:
            name, shape = variable.path.split("/")[-1], tuple(variable.shape)
            if name in ("moving_variance", "gamma"):
                weights.append(rng.uniform(0.5, 1.5, shape))
            else:  # moving_mean, beta
                weights.append(rng.normal(0.0, 0.2, shape))
        layer.set_weights([w.astype("float32") for w in weights])
        changed += 1
    return changed


def flat_layers(keras, model) -> list:
    """Every layer of ``model``, nested models descended into."""
    found = []
    for layer in model.layers:
        found += flat_layers(keras, layer) if isinstance(layer, keras.Model) else [layer]
    return found


def _is_spatial(layer) -> bool:
    return not isinstance(layer.output, (list, tuple)) and len(layer.output.shape) == 4


def spatial_paths(keras, model, prefix: str = "") -> list[str]:
    """Paths (``block/conv`` inside nested models) of the layers with one 4-D output, in layer order."""
    paths = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            paths += spatial_paths(keras, layer, prefix + layer.name + "/")
        elif type(layer).__name__ != "InputLayer" and _is_spatial(layer):
            paths.append(prefix + layer.name)
    return paths


def reference(keras, model, x, prefix: str = "") -> dict:
    """Keras's own output of every 4-D layer for input ``x``: ``{path: (C, H, W)}``, from probe models.

    A nested model (ConvNeXt's stem and downsampling blocks are Sequentials)
    is probed on the value that feeds it in the outer model.
    """
    import numpy as np

    direct = [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.Model) and type(layer).__name__ != "InputLayer" and _is_spatial(layer)
    ]
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    # Keras 3 has no public way to reach the outer tensor that feeds a nested model.
    feeds = [layer._inbound_nodes[0].input_tensors[0] for layer in nested]
    outputs = keras.Model(model.inputs, [layer.output for layer in direct] + feeds)(x, training=False)
    outputs = [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
    found = {prefix + layer.name: np.moveaxis(o[0], -1, 0) for layer, o in zip(direct, outputs)}
    for layer, value in zip(nested, outputs[len(direct) :]):
        found.update(reference(keras, layer, value, prefix + layer.name + "/"))
    return found


def compare_layers(arrays: dict, reference: dict, rtol: float) -> dict:
    """Judge rendered arrays ``{name: (C, H, W)}`` against Keras's ``{name: (C, H, W)}``.

    Returns counts ``named``, ``correct``, ``mislabelled``, the worst relative
    error and the names of the first bad layers.
    """
    import numpy as np

    by_shape: dict = {}
    for name, want in reference.items():
        by_shape.setdefault(want.shape, []).append(name)
    named = correct = mislabelled = 0
    worst, bad = 0.0, []
    for name, got in arrays.items():
        if name not in reference:
            bad.append(f"{name} (not a Keras layer)")
            continue
        named += 1
        want = reference[name]
        scale = float(np.max(np.abs(want))) or 1.0
        rel = float(np.max(np.abs(got - want))) / scale if got.shape == want.shape else float("inf")
        worst = max(worst, rel)
        if rel <= rtol:
            correct += 1
            continue
        others = [
            other
            for other in by_shape.get(got.shape, [])
            if other != name
            and float(np.max(np.abs(got - reference[other]))) <= rtol * (float(np.max(np.abs(reference[other]))) or 1.0)
        ]
        if others:
            mislabelled += 1
            bad.append(f"{name} (is {others[0]})")
        else:
            bad.append(f"{name} (rel {rel:.2g})")
    return {"named": named, "correct": correct, "mislabelled": mislabelled, "worst_rel": worst, "bad": bad[:3]}


def worker(name: str, formats: list[str], rtol: float, folder: Path) -> None:
    """Build, convert, render and compare one model; print one JSON line per format."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    from PIL import Image

    import fmonnx
    from fmonnx.sources.keras.convert import CheckFailedError, convert_keras, write_model

    keras.utils.set_random_seed(SEED)
    start = time.perf_counter()
    model = getattr(keras.applications, name)(weights=None)
    randomize_normalization(keras, model, SEED)
    build_s = time.perf_counter() - start
    spatial = spatial_paths(keras, model)
    height, width = (size or OPEN_SIZE for size in model.inputs[0].shape[1:3])
    pixels = np.random.default_rng(SEED).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = folder / "image.png"
    Image.fromarray(pixels).save(image)
    for suffix in formats:
        row = {"model": name, "format": suffix, "layers": len(model.layers), "spatial": len(spatial)}
        row["build_s"] = build_s
        try:
            path = folder / f"{name}.{suffix}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.save(str(path))
            try:
                result = convert_keras(path)
                check = result.check
            except CheckFailedError as exc:
                result, check = exc.result, exc.report
            row["convert_s"] = result.seconds
            row["check"] = check.summary() if check else ""
            row["check_passed"] = bool(check and check.passed)
            onnx_path = write_model(result.model, folder / f"{name}_{suffix}.onnx", force=True)
            out = folder / f"maps_{suffix}"
            started = time.perf_counter()
            options = fmonnx.RenderOptions(save_arrays=True, preprocess="unit", report=False)
            fmonnx.render(str(onnx_path), [str(image)], out=str(out), options=options)
            row["render_s"] = time.perf_counter() - started
            manifest = json.loads((out / "manifest.json").read_text())["images"][0]
            x = np.load(out / manifest["input_array"])
            expected = reference(keras, model, x)
            shown = [e for e in manifest["layers"] if e.get("layer_output")]
            row["found"] = len(shown)
            arrays = {e["source_layer"]: np.load(out / e["array"]) for e in shown}
            row.update(compare_layers(arrays, expected, rtol))
        except Exception as exc:  # noqa: BLE001 - a sweep reports every failure and goes on
            row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            row["traceback"] = traceback.format_exc()[-1500:]
        print("SWEEP " + json.dumps(row), flush=True)


def run_model(name: str, formats: list[str], rtol: float, limit: float) -> list[dict]:
    """Run ``worker`` for one model in a fresh process; rows, or one failure row per format."""
    with tempfile.TemporaryDirectory(prefix="fmonnx_sweep_") as folder:
        command = [sys.executable, __file__, "--worker", name, "--formats", ",".join(formats), "--rtol", str(rtol)]
        command += ["--folder", folder]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
            output, code = done.stdout, done.returncode
        except subprocess.TimeoutExpired as exc:
            output, code = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), None
        rows = [json.loads(line[6:]) for line in output.splitlines() if line.startswith("SWEEP ")]
        wall = time.perf_counter() - started
        for suffix in formats[len(rows) :]:
            reason = f"timed out after {limit:.0f} s" if code is None else f"process exited with {code}"
            if code is not None and done.stderr.strip():
                reason += ": " + done.stderr.strip().splitlines()[-1][:300]
            rows.append({"model": name, "format": suffix, "error": reason})
        for row in rows:
            row["process_s"] = wall
        return rows


def format_row(row: dict) -> str:
    head = f"{row['model']:18} {row['format']:6}"
    if "error" in row:
        return f"{head} FAILED: {row['error'][:200]}"
    text = (
        f"{head} {row.get('layers', 0):5} {row['spatial']:5} {row['found']:5} {row['named']:5} {row['correct']:7} "
        f"{row['mislabelled']:8} {row['worst_rel']:9.2e} {row['convert_s']:9.1f}"
    )
    if not row.get("check_passed", True):
        text += f"  check: {row['check']}"
    if row.get("bad"):
        text += f"  bad: {', '.join(row['bad'])}"
    return text


HEADER = (
    f"{'model':18} {'format':6} {'lays':>5} {'4d':>5} {'found':>5} {'named':>5} {'correct':>7} "
    f"{'mislabel':>8} {'worst rel':>9} {'convert s':>9}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated keras.applications names (default: all)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: keras, h5")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--skip-large", action="store_true", help=f"leave out {', '.join(LARGE)}")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model, all formats [900]")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative error a correct layer stays within")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    formats = [f.strip().lstrip(".") for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        parser.error(f"unknown formats {unknown}; choose from {', '.join(FORMATS)}")
    if args.worker:
        worker(args.worker, formats, args.rtol, args.folder)
        return
    names = list(QUICK) if args.quick else list(MODELS)
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n not in MODELS]
        if unknown:
            parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    if args.skip_large:
        names = [n for n in names if n not in LARGE]
    started = time.perf_counter()
    print(HEADER, flush=True)
    rows = []
    for name in names:
        for row in run_model(name, formats, args.rtol, args.timeout):
            rows.append(row)
            print(format_row(row), flush=True)
    ok = sum(1 for r in rows if "error" not in r and r["correct"] == r["spatial"] == r["found"])
    seconds = time.perf_counter() - started
    print(f"{ok}/{len(rows)} conversions with every layer found, named and correct; {seconds:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
