"""PNG encoding: deflate level and row filter against encode time and bytes: ``python benchmarks/png_bench.py``.

The pictures are the ResNet-50 benchmark model's (``models.resnet50()``, the
demo photo), both kinds at their stored size (no upscaling of small maps):

- layers: each layer's titled picture of palette indices, as render writes it
  (``plan_grid(..., upscale=False)``, normalize, palette, tile, title bar);
- atlases: the page's min-max levels of each layer (``report.page.layer_atlas``);
- upscaled layers (``--upscaled``): the layer pictures as fmonnx wrote them before
  issue 17, small maps upscaled into the picture (``upscale=True``), for comparison.

Each variant filters and deflates every picture of a kind, one thread, in
rounds that interleave the variants (the machine is shared: medians of the
rounds). Prints a table per kind: variant, MB, ms (median), and both against
what fmonnx uses (Sub rows and isal level 1; with zlib, Up for repeated rows
and the run-length strategy at level 1). Every variant is first checked to
decode back to the picture with Pillow. ``--runs`` sets the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import models  # noqa: E402  (benchmarks/models.py)

# PNG row filters (bytes per pixel 1): stages/png.py uses "sub" with isal and "subup" (repeated rows "Up")
# with the zlib fallback; the others are here to be measured.
NONE, SUB, UP, AVERAGE, PAETH = 0, 1, 2, 3, 4
FILTERS = ("subup", "none", "sub", "up", "average", "paeth", "adaptive")


def _sub(indices: np.ndarray, out: np.ndarray) -> None:
    out[:, 0] = indices[:, 0]
    np.subtract(indices[:, 1:], indices[:, :-1], out=out[:, 1:])


def _up(indices: np.ndarray, out: np.ndarray) -> None:
    out[0] = indices[0]
    np.subtract(indices[1:], indices[:-1], out=out[1:])


def _neighbours(indices: np.ndarray):
    """The left, above and above-left neighbours (0 outside the picture), as int16."""
    raw = np.pad(indices, ((1, 0), (1, 0))).astype(np.int16)
    return raw[1:, :-1], raw[:-1, 1:], raw[:-1, :-1]


def _average(indices: np.ndarray, out: np.ndarray) -> None:
    left, above, _ = _neighbours(indices)
    np.subtract(indices, ((left + above) >> 1).astype(np.uint8), out=out)


def _paeth(indices: np.ndarray, out: np.ndarray) -> None:
    left, above, corner = _neighbours(indices)
    estimate = left + above - corner
    to_left, to_above, to_corner = np.abs(estimate - left), np.abs(estimate - above), np.abs(estimate - corner)
    guess = np.where(to_above <= to_corner, above, corner)
    guess = np.where((to_left <= to_above) & (to_left <= to_corner), left, guess)
    np.subtract(indices, guess.astype(np.uint8), out=out)


def filtered_rows(indices: np.ndarray, row_filter: str) -> np.ndarray:
    """(H, W) uint8 -> (H, 1 + W) scanlines. "adaptive": per row, the one of None/Sub/Up/Paeth with
    the smallest sum of |signed byte| (libpng's heuristic); otherwise one filter on every row."""
    from fmonnx.stages.png import _filtered_rows

    if row_filter in ("sub", "subup"):
        return _filtered_rows(indices, up_rows=row_filter == "subup")
    height, width = indices.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    body = rows[:, 1:]
    if row_filter == "adaptive":
        candidates = np.empty((4, height, width), dtype=np.uint8)
        candidates[0] = indices
        _sub(indices, candidates[1])
        _up(indices, candidates[2])
        _paeth(indices, candidates[3])
        best = np.abs(candidates.view(np.int8)).sum(axis=2, dtype=np.int32).argmin(axis=0)
        rows[:, 0] = np.array([NONE, SUB, UP, PAETH], np.uint8)[best]
        body[:] = candidates[best, np.arange(height)]
        return rows
    if row_filter == "none":
        rows[:, 0] = NONE
        body[:] = indices
        return rows
    code, apply = {"up": (UP, _up), "average": (AVERAGE, _average), "paeth": (PAETH, _paeth)}[row_filter]
    rows[:, 0] = code
    apply(indices, body)
    return rows


def check_decodes(picture: np.ndarray, filters, deflates) -> None:
    """Every variant must give back the picture through Pillow's decoder, or its figures mean nothing."""
    import io
    import struct

    from PIL import Image

    from fmonnx.stages.png import _PNG_SIGNATURE, _chunk

    header = struct.pack(">IIBBBBB", picture.shape[1], picture.shape[0], 8, 0, 0, 0, 0)  # 8-bit gray
    table = deflaters()
    for row_filter in filters:
        for deflate in deflates:
            data = table[deflate](filtered_rows(picture, row_filter))
            parts = [_PNG_SIGNATURE, *_chunk(b"IHDR", header), *_chunk(b"IDAT", data), *_chunk(b"IEND", b"")]
            back = np.asarray(Image.open(io.BytesIO(b"".join(parts))))
            assert np.array_equal(back, picture), (row_filter, deflate)


def pictures(upscaled: bool = False) -> dict[str, list[np.ndarray]]:
    from fmonnx import RenderOptions
    from fmonnx.report.page import layer_atlas
    from fmonnx.stages.activations import run_images
    from fmonnx.stages.colormap import BACKGROUND, to_palette_indices
    from fmonnx.stages.normalize import channel_stats, normalize
    from fmonnx.stages.plan import demo_paths, plan_model
    from fmonnx.stages.png import titled
    from fmonnx.stages.runner import Runner
    from fmonnx.stages.tile import plan_grid, tile

    options = RenderOptions(report=False)
    plan = plan_model(models.resnet50(), options)
    result = next(run_images(plan, [demo_paths()[1]], options, Runner(plan, options)))
    kinds: dict[str, list[np.ndarray]] = {"layers": [], "atlases": []}
    for layer in result.layers:
        values, stats = layer.values, channel_stats(layer.values)
        for kind, upscale in (("layers", False), ("upscaled layers", True))[: 1 + upscaled]:
            grid_plan = plan_grid(*values.shape, options.layout, padding=1, upscale=upscale)
            indices = to_palette_indices(normalize(grid_plan.sample(values), options.normalization, stats))
            grid = tile(indices, options.layout, padding=1, pad_value=BACKGROUND, plan=grid_plan)
            kinds.setdefault(kind, []).append(titled(grid.image, layer.named.name))
        kinds["atlases"].append(layer_atlas(values, stats)[0])
    return kinds


def deflaters() -> dict[str, object]:
    """name -> (scanlines -> zlib stream); isal's levels where it is installed, zlib's always."""
    table = {}
    try:
        from isal import isal_zlib
    except ImportError:
        isal_zlib = None
    if isal_zlib is not None:
        for level in range(4):
            table[f"isal {level}"] = lambda rows, level=level: isal_zlib.compress(rows, level)
    for level in (1, 3, 6, 9):
        for strategy, label in ((zlib.Z_RLE, "rle"), (zlib.Z_DEFAULT_STRATEGY, "default")):
            def deflate(rows, level=level, strategy=strategy):
                compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
                return compressor.compress(rows) + compressor.flush()

            table[f"zlib {level} {label}"] = deflate
    return table


def measure(kinds: dict[str, list[np.ndarray]], runs: int, filters, deflates) -> dict:
    variants = [(kind, row_filter, deflate) for kind in kinds for row_filter in filters for deflate in deflates]
    times: dict = {variant: [] for variant in variants}
    sizes: dict = {}
    table = deflaters()
    for _ in range(runs):
        for variant in variants:  # interleaved: a busy spell of the shared machine hits every variant alike
            kind, row_filter, deflate = variant
            started, size = time.perf_counter(), 0
            for picture in kinds[kind]:
                size += len(table[deflate](filtered_rows(picture, row_filter)))
            times[variant].append(time.perf_counter() - started)
            sizes[variant] = size
    return {variant: (sizes[variant], statistics.median(times[variant])) for variant in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--filters", nargs="*", default=list(FILTERS))
    parser.add_argument("--deflates", nargs="*", default=None, help="e.g. 'isal 1' 'zlib 6 rle' (default: all)")
    parser.add_argument("--upscaled", action="store_true", help="also the upscaled layer pictures of before")
    args = parser.parse_args()
    kinds = pictures(args.upscaled)
    deflates = args.deflates or list(deflaters())
    check_decodes(kinds["layers"][0], args.filters, deflates)
    results = measure(kinds, args.runs, args.filters, deflates)
    default = ("sub", "isal 1") if "isal 1" in deflaters() else ("subup", "zlib 1 rle")  # what fmonnx uses
    for kind, images in kinds.items():
        pixels = sum(image.size for image in images)
        print(f"\n{kind}: {len(images)} pictures, {pixels / 1e6:.1f} Mpixels, median of {args.runs} rounds")
        base_size, base_time = results.get((kind, *default), (None, None))
        print(f"{'filter':<9} {'deflate':<16} {'MB':>7} {'ms':>8} {'size x':>7} {'time x':>7}")
        rows = sorted(((f, d, *results[(kind, f, d)]) for f in args.filters for d in deflates), key=lambda r: r[2])
        for row_filter, deflate, size, seconds in rows:
            ratio = f"{size / base_size:7.2f} {seconds / base_time:7.2f}" if base_size else ""
            print(f"{row_filter:<9} {deflate:<16} {size / 1e6:7.2f} {seconds * 1e3:8.1f} {ratio}")


if __name__ == "__main__":
    main()
