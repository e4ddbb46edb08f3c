"""Scale: passes, channel selection, many images, memory planning, the PNG writer, the session cache.

Models are built here with hand-set weights; nothing is timed.
"""

import io
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from PIL import Image

from conftest import make_model, save
from fmonnx import RenderOptions, activations, render
from fmonnx.cli import cli
from fmonnx.errors import FmonnxError
from fmonnx.stages.activations import compute_activations
from fmonnx.stages.colormap import palette
from fmonnx.stages.json_out import json_pieces, manifest_json
from fmonnx.stages.picture_pool import PictureWriter
from fmonnx.stages.pieces import NodeSketch, memory_bound, plan_passes, tensor_bytes
from fmonnx.stages.plan import plan_model
from fmonnx.stages.png import encode_png
from fmonnx.stages.shapes import TensorType
from fmonnx.stages.spill import Spill
from fmonnx.stages.tile import tile

MIB = 2**20


def residual_model(channels: int = 4, scale: float = 1.0):
    """input (1,3,H,W) -> Conv 1x1 (3->C) -> Relu -> Conv 1x1 (C->C) -> Add(relu) -> Relu -> MaxPool 2x2 -> Conv.

    Channel k of the first Conv is ``scale * (k + 1) * red - k * green``: its mean grows with k on a
    red image. The second Conv is -0.5 x identity, so the Add halves the Relu.
    """
    first = np.zeros((channels, 3, 1, 1), np.float32)
    for k in range(channels):
        first[k, 0] = scale * (k + 1)
        first[k, 1] = -k
    second = (-0.5 * np.eye(channels, dtype=np.float32)).reshape(channels, channels, 1, 1)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="/stem/conv/Conv"),
        helper.make_node("Relu", ["c1"], ["r1"], name="/stem/relu/Relu"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="/block/conv/Conv"),
        helper.make_node("Add", ["r1", "c2"], ["sum"], name="/block/add/Add"),
        helper.make_node("Relu", ["sum"], ["r2"], name="/block/relu/Relu"),
        helper.make_node("MaxPool", ["r2"], ["pooled"], name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pooled", "w2"], ["output"], name="/head/conv/Conv"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, "oh", "ow"])],
        [("w1", first), ("w2", second)],
    )


@pytest.fixture
def residual_path(tmp_path):
    return save(residual_model(), tmp_path, "residual.onnx")


@pytest.fixture
def red_image(write_image):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    pixels[..., 0] = np.maximum(pixels[..., 0], 100)  # red dominates: every first-Conv channel has a positive mean
    return write_image(pixels, "red.png")


def read_manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


# --- passes ------------------------------------------------------------------------------------------


def test_passes_give_the_arrays_of_one_run(residual_path, red_image, unholdable_bounds):
    options = RenderOptions(preprocess="raw")
    whole = activations(residual_path, red_image, options)
    # a bound below what Python itself takes: every node gets a pass of its own
    passed = activations(residual_path, red_image, RenderOptions(preprocess="raw", max_memory=MIB))
    assert list(passed) == list(whole) == ["stem.conv", "stem.relu", "block.conv", "block.relu", "pool", "head.conv"]
    for name, values in whole.items():
        assert np.array_equal(passed[name], values), name


def test_passes_are_recorded_and_the_files_match(residual_path, red_image, tmp_path, unholdable_bounds):
    one = render(residual_path, [red_image], tmp_path / "one", RenderOptions(save_arrays=True, report=False))
    many = render(
        residual_path, [red_image], tmp_path / "many", RenderOptions(save_arrays=True, report=False, max_memory=MIB)
    )
    (single,), (passed,) = one.manifest["images"], many.manifest["images"]
    assert "passes" not in single
    record = passed["passes"]
    assert record["count"] > 1 and record["max_memory"] <= MIB
    assert sum(record["layers_per_pass"]) == len(passed["layers"]) == len(single["layers"])
    assert many.manifest["options"]["max_memory"] == MIB
    for a, b in zip(single["layers"], passed["layers"]):
        assert a["name"] == b["name"] and a["png"] == b["png"]
        assert np.array_equal(np.load(tmp_path / "one" / a["array"]), np.load(tmp_path / "many" / b["array"]))
        assert (tmp_path / "many" / b["png"]).read_bytes() == (tmp_path / "one" / a["png"]).read_bytes()


def test_compute_activations_in_passes_yields_layers_lazily(residual_path, red_image, unholdable_bounds):
    options = RenderOptions(preprocess="raw", max_memory=MIB)
    plan = plan_model(residual_path, options)
    (result,) = compute_activations(plan, [red_image], options)
    assert result.passes["count"] > 1
    assert not isinstance(result.layers, list)  # each pass runs as the layers are taken
    assert [layer.named.name for layer in result.layers][:2] == ["stem.conv", "stem.relu"]


def test_cli_says_when_it_used_passes(residual_path, red_image, tmp_path, unholdable_bounds):
    outcome = CliRunner().invoke(
        cli, ["render", str(residual_path), str(red_image), "-o", str(tmp_path / "out"), "--max-memory", "1M"]
    )
    assert outcome.exit_code == 0, outcome.output
    assert "passes to stay under 1 MB" in outcome.output
    bad = CliRunner().invoke(cli, ["render", str(residual_path), str(red_image), "--max-memory", "lots"])
    assert bad.exit_code != 0 and "800M or 1.5G" in bad.output


# --- memory planning on synthetic sizes --------------------------------------------------------------


def chain(sizes):
    """input -> n0 -> t0 -> n1 -> t1 ...: each node reads the previous tensor."""
    nodes, previous = [], "input"
    for index in range(len(sizes)):
        nodes.append(NodeSketch((previous,), (f"t{index}",)))
        previous = f"t{index}"
    return nodes, {f"t{index}": size for index, size in enumerate(sizes)} | {"input": 10}


def covers_in_order(pieces, exposed):
    assert [name for piece in pieces for name in piece.tensors] == exposed
    assert pieces[0].start == 0 and all(a.stop == b.start for a, b in zip(pieces, pieces[1:]))


def test_everything_fits_in_one_pass():
    nodes, sizes = chain([100, 100, 100, 100])
    exposed = ["t0", "t1", "t2", "t3"]
    (piece,) = plan_passes(nodes, exposed, sizes, budget=10_000)
    assert piece.tensors == tuple(exposed) and piece.inputs == ("input",) and piece.handoff == ()
    assert piece.estimate == 410  # the input and the four exposed tensors


def test_a_tight_budget_cuts_the_chain_and_hands_tensors_on():
    nodes, sizes = chain([100, 100, 100, 100])
    exposed = ["t0", "t1", "t2", "t3"]
    pieces = plan_passes(nodes, exposed, sizes, budget=250)
    covers_in_order(pieces, exposed)
    assert len(pieces) == 3
    assert all(piece.estimate <= 250 for piece in pieces)
    for earlier, later in zip(pieces, pieces[1:]):
        assert later.inputs == earlier.handoff  # what one pass hands on is what the next reads


def test_a_tensor_over_the_budget_gets_a_pass_of_its_own():
    nodes, sizes = chain([100, 5000, 100])
    pieces = plan_passes(nodes, ["t0", "t1", "t2"], sizes, budget=400)
    covers_in_order(pieces, ["t0", "t1", "t2"])
    big = next(piece for piece in pieces if "t1" in piece.tensors)
    assert big.tensors == ("t1",) and big.estimate > 400


def test_a_shortcut_is_held_across_the_cut():
    # a -> b -> c, and d = a + c: cutting after b keeps a alive for d
    nodes = [
        NodeSketch(("input",), ("a",)),
        NodeSketch(("a",), ("b",)),
        NodeSketch(("b",), ("c",)),
        NodeSketch(("a", "c"), ("d",)),
    ]
    sizes = {"input": 1, "a": 100, "b": 100, "c": 100, "d": 100}
    pieces = plan_passes(nodes, ["b", "d"], sizes, budget=350)
    covers_in_order(pieces, ["b", "d"])
    second = next(piece for piece in pieces if "d" in piece.tensors)
    assert "a" in second.inputs
    first = pieces[0]
    assert "a" in first.handoff


def test_intermediates_weights_and_drawing_count_toward_the_estimate():
    nodes = [NodeSketch(("input",), ("hidden",), weight_bytes=50), NodeSketch(("hidden",), ("shown",))]
    sizes = {"input": 10, "hidden": 300, "shown": 100}
    (piece,) = plan_passes(nodes, ["shown"], sizes, budget=10_000, weights_held=2)
    assert piece.estimate == 10 + 100 + 300 + 2 * 50  # input, shown, the largest other, weights twice
    (drawn,) = plan_passes(nodes, ["shown"], sizes, budget=10_000, weights_held=2, drawing=1000)
    assert drawn.estimate == 10 + 100 + 1000  # drawing comes after the run: the larger phase counts


def test_nodes_after_the_last_shown_tensor_are_not_run():
    nodes, sizes = chain([100, 100, 100])
    pieces = plan_passes(nodes, ["t0"], sizes, budget=10_000)
    assert pieces[-1].stop == 1


def test_memory_bound_and_tensor_sizes():
    assert memory_bound(100 * MIB, 10 * MIB) == 2 * 100 * MIB + 3 * 10 * MIB + 300 * MIB
    assert tensor_bytes(TensorType(TensorProto.FLOAT, (1, 64, 112, 112))) == 64 * 112 * 112 * 4
    assert tensor_bytes(TensorType(TensorProto.FLOAT16, (1, 2, 3, 4))) == 48
    assert tensor_bytes(TensorType(TensorProto.FLOAT, (1, 64, "h", "w"))) is None
    assert tensor_bytes(TensorType(TensorProto.FLOAT, None)) is None


# --- --max-channels and --top ------------------------------------------------------------------------


def test_top_draws_the_channels_of_highest_mean_first(tmp_path, red_image):
    model = save(residual_model(channels=6), tmp_path, "six.onnx")
    out = tmp_path / "top"
    manifest = render(model, [red_image], out, RenderOptions(top=2, report=False, preprocess="raw")).manifest
    assert manifest["options"]["top"] == 2 and manifest["options"]["max_channels"] is None
    conv = manifest["images"][0]["layers"][0]
    means = conv["channels"]["mean"]
    assert len(means) == 6  # statistics still cover every channel
    expected = sorted(range(6), key=lambda k: -means[k])[:2]
    assert conv["selection"] == {
        "method": "top", "n": 2, "by": "mean activation", "channels": expected, "left_out": 4
    }
    assert conv["grid"]["columns"] * conv["grid"]["rows"] >= 2 and conv["grid"]["columns"] <= 2
    assert "top 2 of 6 channels" in Image.open(out / conv["png"]).info["Title"]


def test_max_channels_keeps_the_first_and_layers_with_fewer_are_whole(tmp_path, red_image):
    model = save(residual_model(channels=6), tmp_path, "six.onnx")
    out = tmp_path / "first"
    manifest = render(model, [red_image], out, RenderOptions(max_channels=3, report=False)).manifest
    assert manifest["options"]["max_channels"] == 3
    for layer in manifest["images"][0]["layers"]:
        assert layer["selection"]["channels"] == [0, 1, 2] and layer["selection"]["left_out"] == 3
    few = render(model, [red_image], tmp_path / "few", RenderOptions(max_channels=99, report=False)).manifest
    assert all("selection" not in layer for layer in few["images"][0]["layers"])


def test_selected_tiles_show_the_selected_channels(tmp_path, red_image):
    model = save(residual_model(channels=6), tmp_path, "six.onnx")
    options = RenderOptions(preprocess="raw", normalization="layer", cmap="gray", report=False, layout="belt")
    maps = activations(model, red_image, options)
    whole = render(model, [red_image], tmp_path / "all", options).manifest["images"][0]["layers"][0]
    picked = render(model, [red_image], tmp_path / "top", RenderOptions(
        preprocess="raw", normalization="layer", cmap="gray", report=False, layout="belt", top=1
    )).manifest["images"][0]["layers"][0]
    strongest = picked["selection"]["channels"][0]
    assert strongest == int(np.argmax(maps["stem.conv"].mean(axis=(1, 2))))
    grid_all, grid_top = whole["grid"], picked["grid"]
    tile_h, tile_w = grid_all["tile"]
    all_pixels = np.asarray(Image.open(tmp_path / "all" / whole["png"]))[20:]  # below the title bar
    top_pixels = np.asarray(Image.open(tmp_path / "top" / picked["png"]))[20:]
    left = strongest * (tile_w + 1)
    assert grid_top["tile"] == grid_all["tile"]
    assert np.array_equal(top_pixels[:tile_h, :tile_w], all_pixels[:tile_h, left : left + tile_w])


def test_max_channels_and_top_are_exclusive(residual_path, red_image, tmp_path):
    with pytest.raises(FmonnxError, match="only one"):
        render(residual_path, [red_image], tmp_path / "x", RenderOptions(top=1, max_channels=1))
    outcome = CliRunner().invoke(cli, ["render", str(residual_path), str(red_image), "--top", "1",
                                       "--max-channels", "2", "-o", str(tmp_path / "y")])
    assert outcome.exit_code == 1 and "Error:" in outcome.output and not (tmp_path / "y").exists()


# --- many images -------------------------------------------------------------------------------------


def test_a_folder_of_images_gives_one_entry_each(residual_path, write_image, tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(5):
        Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(folder / f"p{index}.png")
    (folder / "notes.txt").write_text("not an image")
    calls = []
    out = tmp_path / "maps"
    options = RenderOptions(save_arrays=True)
    manifest = render(residual_path, [folder], out, options, progress=lambda *done_total: calls.append(done_total))
    images = manifest["images"]
    assert [os.path.basename(image["image"]) for image in images] == [f"p{index}.png" for index in range(5)]
    assert calls == [(done, 5) for done in range(1, 6)]
    folders = {image["layers"][0]["png"].split("/")[0] for image in images}
    assert len(folders) == 5
    for index, image in enumerate(images):
        assert len(image["layers"]) == 6 and (out / image["overview"]).exists()
        alone = activations(residual_path, folder / f"p{index}.png")
        # no mix-up between images
        assert np.array_equal(np.load(out / image["layers"][0]["array"]), alone["stem.conv"])


def test_cli_renders_a_folder_and_several_paths(residual_path, write_image, tmp_path):
    first = write_image(np.full((8, 10, 3), 200, np.uint8), "a.png")
    second = write_image(np.full((8, 10, 3), 50, np.uint8), "b.png")
    out = tmp_path / "o"
    outcome = CliRunner().invoke(cli, ["render", str(residual_path), str(first), str(second), "-o", str(out)])
    assert outcome.exit_code == 0, outcome.output
    assert "for 2 images" in outcome.output
    assert len(read_manifest(out)["images"]) == 2


# --- the warm process --------------------------------------------------------------------------------


def test_an_edited_model_is_read_again(tmp_path, red_image):
    path = save(residual_model(scale=1.0), tmp_path, "model.onnx")
    before = render(path, [red_image], tmp_path / "a", RenderOptions(report=False, save_arrays=True)).manifest
    save(residual_model(scale=3.0), tmp_path, "model.onnx")
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    after = render(path, [red_image], tmp_path / "b", RenderOptions(report=False, save_arrays=True)).manifest
    old = np.load(tmp_path / "a" / before["images"][0]["layers"][0]["array"])
    new = np.load(tmp_path / "b" / after["images"][0]["layers"][0]["array"])
    assert not np.allclose(old, new)


# --- drawing and writing -----------------------------------------------------------------------------


def test_png_round_trip_with_titles():
    rng = np.random.default_rng(2)
    picture = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    picture[10:20] = picture[9]  # repeated rows take the "Up" filter
    for title in (None, "conv1  [Conv]  64x112x112", "naïve → ünïcode"):
        image = Image.open(io.BytesIO(encode_png(picture, palette("magma"), title)))
        assert image.mode == "P" and np.array_equal(np.asarray(image), picture)
        assert image.info.get("Title") == title
        assert bytes(image.getpalette()[:768]) == palette("magma")


def test_a_long_belt_wraps_and_keeps_its_tiles_readable():
    channels = np.arange(2048, dtype=np.int64).reshape(2048, 1, 1).repeat(7, 1).repeat(7, 2) % 250
    grid = tile(channels.astype(np.uint8), "belt", padding=1)
    assert max(grid.image.shape) <= 8192 and grid.rows > 1
    assert grid.scale > 1  # tiles stay upscaled rather than shrinking to a 7-pixel strip
    k = 1500
    row, column = divmod(k, grid.columns)
    y, x = row * (grid.tile_height + 1), column * (grid.tile_width + 1)
    assert (grid.image[y : y + grid.tile_height, x : x + grid.tile_width] == k % 250).all()


def test_manifest_json_puts_flat_lists_on_one_line():
    manifest = {"a": [1, 2.5, None, True], "b": {"c": [[1, 2], [3]], "d": "x"}, "e": []}
    text = manifest_json(manifest)
    assert json.loads(text) == manifest
    assert '"a": [1, 2.5, null, true]' in text


def test_spilled_lists_are_written_in_place(tmp_path):
    with Spill(tmp_path) as spill:
        numbers, flags = spill.put(["[0.5,1e-05]", "[true,false]"])  # compact, as channel_columns writes them
        manifest = {"a": {"mean": numbers, "dead": flags}, "b": [1, 2], "c": "x, y"}
        text = manifest_json(manifest)
        assert json.loads(text) == {"a": {"mean": [0.5, 1e-05], "dead": [True, False]}, "b": [1, 2], "c": "x, y"}
        assert '"mean": [0.5,1e-05]' in text
        compact = "".join(json_pieces(manifest, indent=None, compact=True))
        assert compact == '{"a":{"mean":[0.5,1e-05],"dead":[true,false]},"b":[1,2],"c":"x, y"}'
    assert not (tmp_path / Spill.NAME).exists()


def test_the_writer_keeps_no_finished_results():
    with PictureWriter(jobs=1) as writer:
        first = writer.submit(1, lambda: np.zeros(10**6))
        first.result()
        writer.submit(1, lambda: None).result()
        assert first not in writer._futures  # its megabyte went with it


def test_many_images_keep_their_per_channel_numbers_on_disk(residual_path, write_image, tmp_path):
    out = tmp_path / "maps"
    photos = [write_image(np.full((6, 8, 3), value, np.uint8), f"{value}.png") for value in (10, 200)]
    result = render(residual_path, photos, out)
    assert all("channels" not in layer for image in result.outline["images"] for layer in image["layers"])
    assert not list(out.rglob(Spill.NAME))
    assert "2 image(s)" in repr(result) and result.index == out / "index.html"  # from the outline
    conv = result.layer(0, image=1)  # read from manifest.json
    assert len(conv["channels"]["mean"]) == conv["shape"][0]
    assert conv["channels"]["dead"] == [True] * 4  # a flat photo: every channel constant
    assert result.manifest == read_manifest(out)
    moved = render(residual_path, photos, tmp_path / "moved")
    (tmp_path / "moved").rename(tmp_path / "elsewhere")
    with pytest.raises(FmonnxError, match="moved or deleted"):
        _ = moved.manifest


def test_a_manifest_in_another_layout_is_still_recognised(residual_path, red_image, tmp_path):
    out = tmp_path / "maps"
    render(residual_path, [red_image], out, RenderOptions(report=False))
    manifest = read_manifest(out)
    (out / "manifest.json").write_text(json.dumps(manifest))  # one line: read whole, not line by line
    render(residual_path, [red_image], out, RenderOptions(report=False))
    manifest["files"] = manifest["files"][1:]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    with pytest.raises(FmonnxError, match="did not write"):
        render(residual_path, [red_image], out, RenderOptions(report=False))


def test_a_piece_that_gives_nothing_is_not_run():
    """A piece with nothing to show or hand on is skipped: onnxruntime refuses a run with no outputs
    (EfficientNetB7 in passes failed so)."""
    from fmonnx.stages.pieces import Piece, run_pieces

    nothing = Piece(0, 1, (), ("x",), (), 0)
    opened = []

    def open_session(model):
        opened.append(model)
        raise AssertionError("a piece that gives nothing was opened")

    assert list(run_pieces(["only"], [nothing], {"x": np.zeros(1, np.float32)}, open_session)) == []
    assert opened == []
