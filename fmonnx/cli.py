"""The ``fmonnx`` command: a thin shell over the library.

Options are parsed here and passed on as plain values; library errors
(FmonnxError) become ``Error: ...`` with exit code 1 and no traceback.
Everything heavy is imported inside the commands so ``fmonnx --help`` is instant.
"""

from __future__ import annotations

import json
import math
import sys
import time

import click

from . import __version__, choices
from .errors import FmonnxError

_PROCESS_STARTED = time.perf_counter()  # the reported time includes loading numpy and onnxruntime

OPS_HELP = ("Comma-separated op types or activations (SiLU, HardSwish, Gelu, ReLU6, ...) to show [default: Conv, Relu, "
            "MaxPool and every activation, or the layers recorded by fmonnx convert].")


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FmonnxError as exc:
            # one line, whatever a library's message quoted inside it holds
            raise click.ClickException(" ".join(line.strip() for line in str(exc).splitlines() if line.strip())) \
                from None
        except KeyboardInterrupt:
            click.echo("Interrupted; nothing was written.", err=True)
            sys.exit(130)


def _parse_ops(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(op.strip() for op in value.split(",") if op.strip())


def _parse_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        height, width = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter("use HxW, e.g. 224x224") from None
    if height <= 0 or width <= 0:
        raise click.BadParameter("height and width must be positive")
    return height, width


def _run_options(command):
    command = click.option(
        "--preprocess",
        type=click.Choice(choices.PRESETS),
        default=None,
        help="Pixel arithmetic: unit (/255), imagenet (mean/std), caffe (BGR, mean), tf ([-1,1]), raw [default: unit].",
    )(command)
    command = click.option(
        "--provider", type=click.Choice(choices.PROVIDERS), default=choices.DEFAULT_PROVIDER, show_default=True,
        help="onnxruntime execution provider; auto takes CUDA when installed.",
    )(command)
    return command


def _parse_memory(value: str | None) -> int | None:
    if value is None:
        return None
    units = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30}
    text = value.strip().upper()
    number = text.rstrip("KMGB")
    try:
        size = float(number) * units[text[len(number):]]
    except (ValueError, KeyError):
        raise click.BadParameter("use a size such as 800M or 1.5G") from None
    if not math.isfinite(size):
        raise click.BadParameter("use a finite size such as 800M or 1.5G")
    if size < 2**20:
        raise click.BadParameter("give at least 1M")
    return int(size)


class _Progress:
    """A progress bar with images/s on stderr, shown when several images are rendered."""

    def __init__(self):
        self.started = time.perf_counter()
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if total < 2:
            return
        if self.bar is None:
            self.bar = click.progressbar(
                length=total, label="Rendering", file=sys.stderr, show_pos=True, item_show_func=lambda rate: rate
            )
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(done - self.bar.pos, f"{rate:.1f} images/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()


def _selection_options(command):
    command = click.option("--ops", default=None, help=OPS_HELP)(command)
    command = click.option(
        "--all-spatial", is_flag=True, help="Show every float tensor of rank 4, whatever its op."
    )(command)
    command = click.option(
        "--input-layout",
        type=click.Choice(choices.INPUT_LAYOUTS, case_sensitive=False),
        default=None,
        help="Channel axis of the model input [default: detected from its shape].",
    )(command)
    return command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fmonnx")
def cli() -> None:
    """See what a convolutional network sees: feature maps of any ONNX CNN."""


@cli.command()
@click.argument("model", required=False, type=click.Path(dir_okay=True))
@click.argument("images", nargs=-1, type=click.Path())
@click.option("-o", "--out", default="feature_maps", show_default=True, help="Output folder.")
@_selection_options
@_run_options
@click.option("--normalize", "normalization", type=click.Choice(choices.NORMALIZATIONS),
              default=choices.DEFAULT_NORMALIZATION, show_default=True,
              help="Per-channel standardize (the tutorial's), per-channel min-max, or one scale per layer.")
@click.option("--layout", type=click.Choice(choices.LAYOUTS), default=choices.DEFAULT_LAYOUT, show_default=True,
              help="Near-square grid of channels, or one row (the tutorial's image belt).")
@click.option("--cmap", default=choices.DEFAULT_CMAP, show_default=True,
              help="Matplotlib colormap name, e.g. gray, magma.")
@click.option("--save-arrays", is_flag=True, help="Also write each layer's float32 CxHxW activations and input.npy.")
@click.option("--size", default=None, help="Feed images at HxW [default: the model's, or the image's own if dynamic].")
@click.option("--max-size", type=click.IntRange(min=1), default=None,
              help="Cap on the longest side when the model takes any size [default: 1024].")
@click.option("--no-report", "report", is_flag=True, flag_value=False, default=True,
              help="Skip index.html and its data (report/): only the PNGs and manifest.json.")
@click.option("--max-channels", type=click.IntRange(min=1), default=None,
              help="Draw only the first N channels of each layer (the manifest says what was left out).")
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="Draw only the N channels of highest mean activation of each layer, highest first.")
@click.option("--max-memory", default=None,
              help="Memory bound, e.g. 2G; beyond it a large input is rendered in passes "
              "[default: 2 x model + 3 x largest tensor + 300M].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="onnxruntime threads [default: onnxruntime's, the physical cores].")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Threads that draw and encode the pictures [default: the cores, at most 4].")
@click.option("--class-weights", is_flag=True,
              help="Also weigh each layer's channels by Grad-CAM for the top class (a backward pass per image); "
              "the page can order channels by it.")
def render(model, images, out, ops, all_spatial, input_layout, preprocess, provider, normalization, layout, cmap,
           save_arrays, size, max_size, report, max_channels, top, max_memory, threads, jobs, class_weights):
    """Render the feature maps of MODEL for IMAGES (files or folders) into a folder.

    With no arguments, renders the embedded demo CNN on a sample photo.
    """
    from .frontends.render import render as render_folder
    from .options import RenderOptions

    options = RenderOptions(
        ops=_parse_ops(ops),
        all_spatial=all_spatial,
        preprocess=preprocess,
        provider=provider,
        normalization=normalization,
        layout=layout,
        cmap=cmap,
        save_arrays=save_arrays,
        size=_parse_size(size),
        max_size=max_size,
        input_layout=input_layout.upper() if input_layout else None,
        report=report,
        max_channels=max_channels,
        top=top,
        max_memory=_parse_memory(max_memory),
        threads=threads,
        jobs=jobs,
        class_weights=class_weights,
    )
    progress = _Progress()
    try:
        result = render_folder(model, list(images) or None, out, options, progress=progress)
    finally:
        progress.close()
    manifest = result.outline  # manifest.json less the per-channel numbers: not read back from disk
    for image in manifest["images"]:
        for problem in image["problems"]:
            click.echo(f"Warning: {problem}", err=True)
        passes = image.get("passes")
        if passes:
            click.echo(
                f"Note: {image['image']} was run in {passes['count']} passes to stay under "
                f"{passes['max_memory'] / 2**20:.0f} MB (--max-memory)",
                err=True,
            )
    layers = sum(len(image["layers"]) for image in manifest["images"])
    count = len(manifest["images"])
    click.echo(
        f"Wrote {layers} layer pictures for {count} image{'s' if count != 1 else ''} of "
        f"{manifest['model']} to {out}/ in {time.perf_counter() - _PROCESS_STARTED:.2f} s ({manifest['provider']})"
    )
    if result.index is not None:
        click.echo(f"Open {result.index} in a browser to explore them.")


@cli.command()
@click.argument("model", required=False, type=click.Path(dir_okay=True))
@click.argument("images", nargs=-1, type=click.Path())
@click.option("-o", "--out", default="explain", show_default=True, help="Output folder.")
@click.option("--target", default=None,
              help="What to explain: K (class K), box:K (a YOLO detection), class:K or class (segmentation), "
              "'output:NAME[i,j,...]' (any element) [default: the top class, the first box, or the main "
              "segmentation class].")
@click.option("--layer", "layer_names", multiple=True,
              help="Explain this layer (render's name, or an ONNX tensor); repeatable [default: every layer render "
              "shows, detailing the last one the score depends on].")
@click.option("--all-layers", is_flag=True, help="Explain every layer render shows (the default without --layer).")
@click.option("--method", type=click.Choice(choices.EXPLAIN_METHODS), default=choices.DEFAULT_EXPLAIN_METHOD,
              show_default=True, help="How channels are weighted (saliency: gradient x input).")
@_selection_options
@_run_options
@click.option("--save-arrays", is_flag=True, help="Also write each layer's raw map and heatmap as .npy.")
@click.option("--size", default=None, help="Feed images at HxW [default: the model's, or the image's own if dynamic].")
@click.option("--max-size", type=click.IntRange(min=1), default=None,
              help="Cap on the longest side when the model takes any size [default: 1024].")
@click.option("--no-report", "report", is_flag=True, flag_value=False, default=True,
              help="Skip index.html: only the pictures and explain.json.")
@click.option("--max-memory", default=None, help="Memory bound, e.g. 2G.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="onnxruntime threads [default: onnxruntime's, the physical cores].")
def explain(model, images, out, target, layer_names, all_layers, method, ops, all_spatial, input_layout, preprocess,
            provider, save_arrays, size, max_size, report, max_memory, threads):
    """Explain which feature maps of MODEL made its prediction on IMAGES: Grad-CAM and kin.

    The backward pass is written into the ONNX graph and runs with the forward pass in one
    onnxruntime session. With no arguments, explains the embedded demo CNN on a sample photo.
    """
    from .frontends.explain import explain_images
    from .options import RenderOptions

    options = RenderOptions(
        ops=_parse_ops(ops), all_spatial=all_spatial, preprocess=preprocess, provider=provider,
        save_arrays=save_arrays, size=_parse_size(size), max_size=max_size,
        input_layout=input_layout.upper() if input_layout else None, report=report,
        max_memory=_parse_memory(max_memory), threads=threads,
    )
    layers = list(layer_names) or None
    if all_layers and layers:
        raise click.UsageError("give --layer or --all-layers, not both")
    data = explain_images(model, list(images) or None, out, target, layers, method, options)
    for image in data["images"]:
        for problem in image.get("problems", []):
            click.echo(f"Warning: {problem}", err=True)
        target_entry = image["target"]
        click.echo(f"{image['image']}: {target_entry['kind']} target {target_entry.get('label')!r} "
                   f"(score {target_entry['score']:.4g}), layer {image.get('chosen')} detailed")
    count = len(data["images"])
    click.echo(f"Wrote the {method} explanation of {count} image{'s' if count != 1 else ''} of {data['model']} to "
               f"{out}/ in {time.perf_counter() - _PROCESS_STARTED:.2f} s ({data['provider']})")
    if report:
        click.echo(f"Open {out}/index.html in a browser to explore it.")


@cli.command()
@click.argument("model", type=click.Path())
@_selection_options
@click.option("--size", default=None, help="Shapes at an HxW input when the model's H or W is dynamic "
              "[default: ? for sizes the model leaves open].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table (open sizes as null).")
def layers(model, ops, all_spatial, input_layout, size, as_json):
    """List the tensors of MODEL that can be shown, with op and C x H x W shape."""
    from .frontends.layers import list_layers
    from .options import RenderOptions

    options = RenderOptions(
        ops=_parse_ops(ops), all_spatial=all_spatial, input_layout=input_layout.upper() if input_layout else None,
        size=_parse_size(size),
    )
    rows = list_layers(model, options)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    kinds = [row.get("source_class") or row["op"] for row in rows]  # a Keras class reads better than Transpose
    width = max(len(row["name"]) for row in rows)
    kind_width = max(10, *(len(kind) for kind in kinds))
    click.echo(f"{'name':<{width}}  {'op':<{kind_width}} shape (C x H x W)")
    for row, kind in zip(rows, kinds):
        shape = "x".join(str(dim) if isinstance(dim, int) else "?" for dim in row["shape"]) if row["shape"] else "?"
        note = "" if row["layout_certain"] else "  (channel axis not proven)"
        note = f"  (not drawn: {row['not_shown']})" if "not_shown" in row else note
        click.echo(f"{row['name']:<{width}}  {kind:<{kind_width}} {shape}{note}")


@cli.command()
@click.argument("model", type=click.Path())
@click.argument("image", type=click.Path())
@_selection_options
@_run_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with per-channel columns) instead of a table.")
def stats(model, image, ops, all_spatial, input_layout, preprocess, provider, as_json):
    """Per-layer activation statistics of MODEL on IMAGE; layers with dead channels are flagged."""
    from .frontends.stats import layer_stats
    from .options import RenderOptions
    from .stages.stats import format_table

    options = RenderOptions(
        ops=_parse_ops(ops),
        all_spatial=all_spatial,
        preprocess=preprocess,
        provider=provider,
        input_layout=input_layout.upper() if input_layout else None,
    )
    result = layer_stats(model, image, options)
    for problem in result["problems"]:
        click.echo(f"Warning: {problem}", err=True)
    if as_json:
        from .stages.json_out import json_text

        click.echo(json_text(result))  # infinity as 1e999, NaN as null: valid JSON, as in every fmonnx file
        return
    click.echo(format_table(result["layers"]))


@cli.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--out", default=None, help="ONNX file to write [default: MODEL with the suffix .onnx].")
@click.option("--opset", type=click.IntRange(min=7), default=None,
              help="ONNX opset [default: 17 for Keras, 18 for PyTorch].")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Compare the framework and onnxruntime on the same random input, final outputs and every layer.")
@click.option("--rtol", type=float, default=None, help="Relative tolerance of the check [default: 1e-4].")
@click.option("--atol", type=float, default=None, help="Absolute tolerance of the check [default: 1e-5].")
@click.option("--unsafe", is_flag=True,
              help="Allow Keras Lambda layers, or load a .pt2 without vetting it. Code stored in the file RUNS: "
              "only for files you trust.")
@click.option("--force", is_flag=True, help="Overwrite the ONNX file if it exists.")
def convert(model, out, opset, check, rtol, atol, unsafe, force):
    """Convert a Keras MODEL (.h5, .keras), a PyTorch torch.export file (.pt2) or a TFLite file (.tflite) to
    ONNX, keeping its layer names, checked layer by layer against the framework.

    Needs the keras extra (pip install -e '.[keras]', also for TFLite) or the torch extra (pip install -e
    '.[torch]'). Keras Lambda layers, and .pt2 files holding pickles or code, are refused unless --unsafe.
    """
    from pathlib import Path

    from .sources.dispatch import convert as convert_model
    from .sources.registry import source_by_suffix, source_for

    target = Path(out) if out else Path(model).with_suffix(".onnx")
    # Checked before the slow conversion, not after it.
    if target.exists() and Path(model).exists() and target.samefile(model):
        raise FmonnxError(f"{target} is the input model; choose another output path with -o")
    if target.exists() and not force:
        raise FmonnxError(f"{target} already exists; pass --force to overwrite it, or choose another path with -o")
    # A failed check raises CheckFailedError, whose message holds the check's summary.
    result = convert_model(model, opset=opset, check=check, rtol=rtol, atol=atol, unsafe=unsafe)
    result.save(target, force=force)
    source = source_for(model) or source_by_suffix(model)
    click.echo(f"{model}: {source.summary(result)}")
    if result.check is not None:
        click.echo(result.check.summary())
    click.echo(f"Wrote {target} in {result.seconds:.1f} s")


@cli.command(name="compare")
@click.argument("a", type=click.Path())
@click.argument("rest", metavar="[B] [IMAGES]...", nargs=-1, type=click.Path())
@click.option("-o", "--out", default="compare", show_default=True, help="Output folder.")
@_selection_options
@click.option(
    "--preprocess", type=click.Choice(choices.PRESETS), default=None,
    help="Pixel arithmetic, the same for both sides [default: unit].",
)
@click.option("--provider-a", type=click.Choice(choices.PROVIDERS), default=choices.DEFAULT_PROVIDER,
              show_default=True,
              help="onnxruntime provider of A.")
@click.option("--provider-b", type=click.Choice(choices.PROVIDERS), default=choices.DEFAULT_PROVIDER,
              show_default=True,
              help="onnxruntime provider of B.")
@click.option("--optimization-a", type=click.Choice(choices.OPTIMIZATIONS), default=choices.DEFAULT_OPTIMIZATION,
              show_default=True, help="onnxruntime graph optimization level of A.")
@click.option("--optimization-b", type=click.Choice(choices.OPTIMIZATIONS), default=choices.DEFAULT_OPTIMIZATION,
              show_default=True, help="onnxruntime graph optimization level of B.")
@click.option("--min-sqnr", type=float, default=None,
              help="Least SQNR in dB a layer must keep [default: 30, unless --rtol/--atol are given].")
@click.option("--rtol", type=float, default=None, help="Every value within atol + rtol * |A| (numpy's allclose).")
@click.option("--atol", type=float, default=None, help="Absolute tolerance of that test [default: 0].")
@click.option("--channels", type=click.IntRange(min=1), default=choices.COMPARE_CHANNELS, show_default=True,
              help="Channels drawn per layer (A | B | |A-B|), those with the most error first.")
@click.option("--size", default=None, help="Feed images at HxW [default: the model's, or the image's own if dynamic].")
@click.option("--max-memory", default=None,
              help="Memory bound of both sides together, e.g. 2G: half each, beyond it a side runs in passes "
              "[default: each side render's default].")
def compare(a, rest, out, ops, all_spatial, input_layout, preprocess, provider_a, provider_b, optimization_a,
            optimization_b, min_sqnr, rtol, atol, channels, size, max_memory):
    """Compare two runs of a network layer by layer: model A (the reference) against B.

    B is another model file (.onnx, or Keras, converted as render does) or, when left out, A
    itself run another way (--provider-b cuda, --optimization-b all); a Keras file alone is
    compared with its ONNX conversion, Keras's own layer outputs as A. IMAGES: files or folders
    [default: the demo photo]; figures aggregate over them. Writes OUT/compare.json, one PNG per
    layer (its worst channels as A | B | |A-B|) and OUT/index.html.

    Exit code 0 when every layer and final output is within tolerance, 3 when not (with the
    first diverging layer), 1 for bad input.
    """
    from pathlib import Path

    from .frontends.compare import DIVERGED_EXIT_CODE
    from .frontends.compare import compare as compare_models
    from .options import RenderOptions
    from .sources.registry import model_suffixes

    rest = list(rest)
    b = rest.pop(0) if rest and Path(rest[0]).suffix.lower() in model_suffixes() else None
    options = RenderOptions(
        ops=_parse_ops(ops),
        all_spatial=all_spatial,
        preprocess=preprocess,
        input_layout=input_layout.upper() if input_layout else None,
        size=_parse_size(size),
        max_memory=_parse_memory(max_memory),
    )
    result = compare_models(
        a, b, rest or None, out, options, provider_a=provider_a, provider_b=provider_b,
        optimization_a=optimization_a, optimization_b=optimization_b, min_sqnr=min_sqnr, rtol=rtol, atol=atol,
        channels=channels,
    )
    for problem in result.record["problems"]:
        click.echo(f"Warning: {problem}", err=True)
    record = result.record
    click.echo(
        f"Compared {len(record['layers'])} layers of {record['a']['model']} ({record['a']['provider']}) with "
        f"{record['b']['model']} ({record['b']['provider']}); {len(record['unpaired'])} unpaired. "
        f"Open {result.index} in a browser."
    )
    if not result.within_tolerance:
        click.echo(f"Diverged: {result.summary()}", err=True)
        sys.exit(DIVERGED_EXIT_CODE)
    click.echo(f"Within tolerance: {result.summary()}")


class _ScanProgress(_Progress):
    """The scan's progress bar: images done of the collection, with images/s since this run started."""

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.first = done
            self.bar = click.progressbar(
                length=total, label="Scanning", file=sys.stderr, show_pos=True, item_show_func=lambda rate: rate
            )
        rate = (done - self.first) / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(done - self.bar.pos, f"{rate:.1f} images/s")

    def close(self) -> None:
        super().close()
        self.bar = None  # closed once, also when an interruption closed it first


@cli.command(name="scan")
@click.argument("model", type=click.Path())
@click.argument("data", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", default="scan", show_default=True, help="Output folder.")
@click.option("--top", type=click.IntRange(min=1), default=choices.SCAN_TOP, show_default=True,
              help="Images kept per channel: those with the highest spatial maximum.")
@_selection_options
@_run_options
@click.option("--size", default=None, help="Feed images at HxW when the model's H or W is dynamic [default: 224x224].")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Images per onnxruntime run [default: 16].")
@click.option("--engine", type=click.Choice(choices.ENGINES), default=choices.DEFAULT_ENGINE, show_default=True,
              help="local: this process; ray: Ray Data (pip install -e '.[ray]').")
@click.option("--ray-address", default=None, help="Ray cluster to join [default: RAY_ADDRESS, else a local Ray].")
@click.option("--resume", is_flag=True, help="Continue a killed scan into OUT from its checkpoint.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None,
              help="Images between checkpoints of the state [default: 1000].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="onnxruntime intra-op threads [default: onnxruntime's, the physical cores].")
@click.option("--renders", type=click.IntRange(min=0), default=0, show_default=True,
              help="Full renders into OUT/renders/ of this many top-1 images (the top image of the most channels "
              "first), linked from the page; the page gives the command for the others.")
def scan(model, data, out, top, ops, all_spatial, input_layout, preprocess, provider, size, batch, engine,
         ray_address, resume, checkpoint_every, threads, renders):
    """Find what every channel of MODEL responds to over a collection of images.

    DATA: image files, folders (searched recursively), text files listing paths, or Parquet files
    with a column of image bytes or paths. Pass 1 streams every image once and keeps per-channel
    statistics and the top images; pass 2 cuts each top image's crop from the receptive field.
    Writes OUT/scan.json, OUT/crops/*.jpg and OUT/index.html. Unreadable images are skipped and
    listed; a killed scan continues with --resume.
    """
    from .frontends.scan import scan as scan_collection
    from .options import RenderOptions

    options = RenderOptions(
        ops=_parse_ops(ops),
        all_spatial=all_spatial,
        preprocess=preprocess,
        provider=provider,
        size=_parse_size(size),
        input_layout=input_layout.upper() if input_layout else None,
        threads=threads,
    )
    progress = _ScanProgress()
    try:
        result = scan_collection(
            model, list(data), out, top, options, batch=batch, engine=engine, ray_address=ray_address,
            resume=resume, checkpoint_every=checkpoint_every, progress=progress, renders=renders,
        )
    except KeyboardInterrupt:
        from .frontends.scan import checkpoint_path

        progress.close()
        kept = checkpoint_path(out).exists()
        click.echo("Interrupted; " + ("the images up to the last checkpoint are kept: run the same command with "
                                      "--resume to continue." if kept else "nothing was written."), err=True)
        sys.exit(130)
    finally:
        progress.close()
    record = result.record
    for problem in record["problems"]:
        click.echo(f"Warning: {problem}", err=True)
    if record["skipped"]:
        click.echo(f"Skipped {len(record['skipped'])} unreadable images (listed in scan.json):", err=True)
        for entry in record["skipped"][:5]:
            click.echo(f"  {entry['reason']}", err=True)
    click.echo(
        f"Scanned {record['images']} images with {len(record['layers'])} layers of {record['model']} "
        f"in {record['seconds']['total']:.1f} s ({record['engine']}, {record['provider']}); "
        f"open {result.index} in a browser."
    )


def main() -> None:
    import warnings

    # Pillow warns as it reads damaged files (corrupt EXIF, tags past the end); on the terminal the one
    # Error line, or the picture, says what matters. Library callers keep the warnings.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    cli(prog_name="fmonnx")
