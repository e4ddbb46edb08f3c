"""fmonnx scan: tiny models with hand-set weights over generated images, so the top images, their
positions and crops are known in advance; receptive fields by stride/kernel arithmetic; merges in any
order; resume after a real kill; corrupt images; the page in Chromium; the Ray engine on a local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from PIL import Image

import fmonnx
from conftest import make_model, save
from fmonnx.cli import cli
from fmonnx.errors import FmonnxError
from fmonnx.frontends.scan import checkpoint_path
from fmonnx.options import RenderOptions
from fmonnx.stages.collection import list_collection
from fmonnx.stages.plan import plan_model
from fmonnx.stages.receptive import Field, field_box, receptive_fields
from fmonnx.stages.scanner import Scanner
from fmonnx.stages.shapes import infer_types
from fmonnx.stages.tally import ScanTally

SIZE = 32


def square_model(size: int = SIZE, batch="N") -> onnx.ModelProto:
    """input (N, 3, size, size) -> Conv 3x3 (pad 1) -> Relu -> MaxPool 2x2 -> output.

    Channel 0 is the mean of the red channel over 3 x 3: its maximum is at the centre of a
    3 x 3 red square, value brightness / 255. Channel 1 is minus the green mean: dead on images.
    """
    weights = np.zeros((2, 3, 3, 3), np.float32)
    weights[0, 0] = 1 / 9
    weights[1, 1] = -1 / 9
    return make_model(
        [
            helper.make_node("Conv", ["input", "w"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
            helper.make_node("MaxPool", ["relu_out"], ["output"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 2, size // 2, size // 2])],
        [("w", weights)],
    )


def squares(count: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """(top, left, brightness) of each image's red square, distinct brightnesses, except the last two
    images, which repeat image 0's square (a tie the image id must break)."""
    rng = np.random.default_rng(seed)
    spots = []
    for index in range(count - 2):
        top, left = (int(v) for v in rng.integers(0, SIZE - 3, 2))
        spots.append((top, left, 60 + 3 * index))
    return spots + [spots[-1], spots[-1]]


def write_squares(folder: Path, spots, size: int = SIZE) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (top, left, brightness) in enumerate(spots):
        pixels = np.zeros((size, size, 3), np.uint8)
        scale = size // SIZE
        pixels[top * scale : (top + 3) * scale, left * scale : (left + 3) * scale, 0] = brightness
        path = folder / f"{index:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def collection(tmp_path):
    spots = squares(14)
    write_squares(tmp_path / "images", spots)
    return tmp_path / "images", spots


@pytest.fixture
def model_path(tmp_path):
    return save(square_model(), tmp_path, "squares.onnx")


def expected_top(spots, k):
    """Image ids by brightness, highest first, ties by id."""
    return sorted(range(len(spots)), key=lambda i: (-spots[i][2], i))[:k]


def test_top_images_positions_and_crops_are_the_squares(model_path, collection, tmp_path):
    folder, spots = collection
    result = fmonnx.scan(model_path, folder, tmp_path / "out", top=4, batch=3)
    relu = result.layer("relu")
    assert relu["shape"] == [2, SIZE, SIZE]
    assert relu["receptive_field"] == {"size": [3, 3], "stride": [1, 1], "offset": [-1, -1]}
    top = relu["channels"][0]["top"]
    ids = expected_top(spots, 4)
    assert [entry["image_id"] for entry in top] == ids
    assert ids[0] == 11 and ids[1:3] == [12, 13]  # the tie: the smaller id first
    for entry in top:
        square_top, square_left, brightness = spots[entry["image_id"]]
        assert (entry["y"], entry["x"]) == (square_top + 1, square_left + 1)  # the square's centre
        assert entry["value"] == pytest.approx(brightness / 255, rel=1e-5)
        assert entry["box"] == [square_left, square_top, square_left + 3, square_top + 3]  # the square itself
        assert entry["image"] == str(folder / f"{entry['image_id']:03d}.png")
    pool = result.layer("pool")["channels"][0]["top"][0]
    top_row, left_column = -1 + 2 * pool["y"], -1 + 2 * pool["x"]  # 2x2 pool of a 3x3 field: 4 pixels, 2 apart
    assert pool["box"] == [max(left_column, 0), max(top_row, 0), min(left_column + 4, SIZE), min(top_row + 4, SIZE)]
    dead = relu["channels"][1]
    assert dead["dead"] and dead["max"] == 0 and dead["zero_fraction"] == 1 and dead["fire_fraction"] == 0
    assert relu["dead_channels"] == 1
    # statistics over the whole collection, against numpy on the exact maps
    maps = np.stack([fmonnx.activations(model_path, folder / f"{i:03d}.png")["relu"][0] for i in range(14)])
    channel = relu["channels"][0]
    assert channel["mean"] == pytest.approx(float(maps.mean()), rel=1e-5)
    assert channel["std"] == pytest.approx(float(maps.std()), rel=1e-4)
    assert channel["zero_fraction"] == pytest.approx(float((maps == 0).mean()), rel=1e-6)
    assert result.record["images"] == 14 and result.record["skipped"] == []
    crops = Image.open(result.folder / relu["crops"])
    assert crops.size == (4 * 66 + 2, 2 * 66 + 2)  # k columns, C rows of 64-pixel cells
    first = np.asarray(crops)[2:66, 2:66]
    red = first[..., 0].astype(int)  # the red square, enlarged (a JPEG: within a few levels)
    assert abs(int(np.median(red[red > 30])) - spots[ids[0]][2]) <= 6 and first[..., 1].max() < 24
    on_disk = json.loads((result.folder / "scan.json").read_text())
    assert on_disk["layers"][1]["channels"][0]["top"] == top
    rows = result.table()
    assert len(rows) == 6 and rows[0]["layer"] == "conv" and "<table>" in result._repr_html_()


def test_images_of_other_sizes_are_resized_and_boxes_scaled(model_path, tmp_path):
    spots = [(4, 20, 200), (10, 2, 100)]
    write_squares(tmp_path / "big", spots, size=2 * SIZE)  # 64 x 64: fed at 32 x 32
    result = fmonnx.scan(model_path, tmp_path / "big", tmp_path / "out", top=2)
    entry = result.top("relu", 0)[0]
    assert (entry["y"], entry["x"]) == (5, 21)
    assert entry["box"] == [40, 8, 46, 14]  # in the 64 x 64 image's pixels
    assert result.record["input"]["size"] == [SIZE, SIZE]


def test_a_field_covering_the_image_shows_the_map_over_the_image(tmp_path):
    weights = np.zeros((1, 3, 31, 31), np.float32)
    weights[0, 0, 15, 15] = 1.0  # the red pixel at the centre: a 31 x 31 field that sees one pixel
    model = make_model(
        [helper.make_node("Conv", ["input", "w"], ["conv_out"], name="wide", pads=[15] * 4)],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [("w", weights)],
    )
    write_squares(tmp_path / "images", [(3, 5, 250), (20, 20, 90)])
    result = fmonnx.scan(save(model, tmp_path, "wide.onnx"), tmp_path / "images", tmp_path / "out", top=2)
    layer = result.layer("wide")
    assert layer["receptive_field"]["size"] == [31, 31] and layer["crops_show"] == "activation"
    assert layer["channels"][0]["top"][0]["box"] == [0, 0, SIZE, SIZE]
    cell = np.asarray(Image.open(result.folder / layer["crops"]))[2:66, 2:66].astype(int)
    assert cell[6:14, 10:22, 0].mean() > 4 * cell[40:60, 40:60, 0].mean()  # bright over the square only


def test_crops_sheet_puts_each_cell_where_its_grid_says():
    from fmonnx.stages.crops import sheet

    channels, k, size = 37, 3, 8
    thumbnails = np.zeros((channels, k, size, size, 3), np.uint8)
    for channel in range(channels):
        for rank in range(k):
            thumbnails[channel, rank] = (channel, rank, 200)
    picture, grid = sheet(thumbnails)
    assert grid["rows"] < channels and picture.shape[0] < 2 * picture.shape[1]  # wrapped, near square
    for channel in range(channels):
        for rank in range(k):
            left = grid["padding"] + (channel // grid["rows"]) * grid["group_step"] + rank * grid["step"]
            top = grid["padding"] + (channel % grid["rows"]) * grid["step"]
            assert (picture[top : top + size, left : left + size] == (channel, rank, 200)).all()


# --- receptive fields, by stride / kernel arithmetic ---------------------------------------------


def _conv(name, x, kernel, stride=1, pad=0, dilation=1, out=None):
    return helper.make_node("Conv", [x, f"{name}.w"], [out or name], name=name, kernel_shape=[kernel, kernel],
                            strides=[stride, stride], pads=[pad] * 4, dilations=[dilation, dilation])


def _graph_fields(nodes, size=224, weights=()):
    inits = [helper.make_tensor(f"{node.name}.w", TensorProto.FLOAT, [1, 1, 1, 1], [1.0])
             for node in nodes if node.op_type == "Conv"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                        [1, 1, size, size])], [], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return receptive_fields(model, "input", infer_types(model))


def test_vgg16_fields_match_the_published_values():
    nodes, x = [], "input"
    for block, convs in enumerate((2, 2, 3, 3, 3), start=1):
        for index in range(1, convs + 1):
            name = f"conv{block}_{index}"
            nodes.append(_conv(name, x, 3, pad=1))
            x = name
        nodes.append(helper.make_node("MaxPool", [x], [f"pool{block}"], name=f"pool{block}", kernel_shape=[2, 2],
                                      strides=[2, 2]))
        x = f"pool{block}"
    fields = _graph_fields(nodes)
    # Araujo et al., Distill 2019, table of VGG-16: conv5_3 r = 196, pool5 r = 212, stride 32
    assert fields["conv5_3"] == Field((196, 196), (16, 16), (-90, -90))
    assert fields["pool5"] == Field((212, 212), (32, 32), (-90, -90))
    assert fields["conv1_1"] == Field((3, 3), (1, 1), (-1, -1))


def test_alexnet_stem_dilation_same_padding_union_and_global():
    nodes = [
        _conv("conv1", "input", 11, stride=4, pad=2),
        helper.make_node("MaxPool", ["conv1"], ["pool1"], name="pool1", kernel_shape=[3, 3], strides=[2, 2]),
        _conv("dilated", "pool1", 3, dilation=2, pad=2),
        helper.make_node("Conv", ["pool1", "same.w"], ["same"], name="same", kernel_shape=[3, 3], strides=[2, 2],
                         auto_pad="SAME_UPPER"),
        _conv("branch", "pool1", 1),
        helper.make_node("Add", ["dilated", "branch"], ["sum"], name="sum"),
        helper.make_node("Relu", ["sum"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"], name="gap"),
        helper.make_node("Mul", ["relu", "gap"], ["scaled"], name="scaled"),
    ]
    fields = _graph_fields(nodes)
    assert fields["conv1"] == Field((11, 11), (4, 4), (-2, -2))  # 11 pixels, 4 apart, 2 of padding
    assert fields["pool1"] == Field((19, 19), (8, 8), (-2, -2))  # 11 + (3 - 1) * 4
    assert fields["dilated"] == Field((51, 51), (8, 8), (-18, -18))  # kernel 3 dilated 2: 5 taps 8 apart
    # SAME_UPPER, stride 2 on 55 x 55: 28 out, total padding 27 * 2 + 3 - 55 = 2, 1 before
    assert fields["same"] == Field((35, 35), (16, 16), (-10, -10))
    assert fields["sum"] == fields["relu"] == fields["dilated"]  # the union: the 1x1 branch is inside
    assert fields["gap"] is None and fields["scaled"] is None  # global: the whole image
    assert field_box(fields["conv1"], 0, 0, (224, 224)) == (0, 0, 9, 9)  # clamped to the image
    assert field_box(None, 3, 3, (10, 12)) == (0, 0, 10, 12)


def test_resnet50_stem_fields(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    try:
        from models import build_resnet50
    finally:
        sys.path.pop(0)
    model = build_resnet50()
    fields = receptive_fields(model, model.graph.input[0].name, infer_types(model))
    by_node = {node.name: fields[node.output[0]] for node in model.graph.node}
    assert by_node["/conv1/Conv"] == Field((7, 7), (2, 2), (-3, -3))
    assert by_node["/maxpool/MaxPool"] == Field((11, 11), (4, 4), (-5, -5))
    last = [node for node in model.graph.node if node.op_type == "Relu"][-1]
    assert fields[last.output[0]].stride == (32, 32)
    # v1.5 (stride on each stage's first 3x3): 11 after the stem, then each 3x3 adds 2 x its input's stride:
    # layer1 3 x 8 -> 35; layer2 8 + 3 x 16 -> 91; layer3 16 + 5 x 32 -> 267; layer4 32 + 2 x 64 -> 427
    assert fields[last.output[0]].size == (427, 427)


# --- the state: merges in any order equal one pass ----------------------------------------------


def test_partial_states_merged_in_any_order_equal_one_pass(model_path, collection):
    folder, spots = collection
    plan = plan_model(model_path)
    scanner = Scanner(plan, RenderOptions(), batch=4)
    refs = list_collection([folder]).images
    channels = [layer.channels for layer in scanner.layers]
    deltas = []
    for at in range(0, len(refs), 4):
        ids, tensors, skipped = scanner.read_batch(refs[at : at + 4])
        deltas.append(scanner.run(ids, tensors, skipped))
    one = ScanTally.empty(channels, 3, len(refs))
    for delta in deltas:
        one.apply(delta)
    for order in ([3, 1, 0, 2], [2, 3, 1, 0]):
        parts = [ScanTally.empty(channels, 3, len(refs)) for _ in range(2)]
        for position, index in enumerate(order):
            parts[position % 2].apply(deltas[index])
        merged = ScanTally.empty(channels, 3, len(refs))
        merged.merge(parts[1])
        merged.merge(parts[0])
        assert merged.done.all() and merged.scanned == len(refs)
        for mine, theirs in zip(one.layers, merged.layers):
            for name in ("top_value", "top_image", "top_y", "top_x", "minimum", "maximum", "zeros", "fires", "count"):
                np.testing.assert_array_equal(getattr(mine, name), getattr(theirs, name), err_msg=name)
            np.testing.assert_allclose(mine.mean, theirs.mean, rtol=1e-12)
            np.testing.assert_allclose(mine.m2, theirs.m2, rtol=1e-12)
    # an actor's filtered deltas (only the candidates that entered its own lists) merge to the same state
    actor = ScanTally.empty(channels, 3, len(refs))
    driver = ScanTally.empty(channels, 3, len(refs))
    for delta in deltas:
        driver.apply(type(delta)([a.filtered(d) for a, d in zip(actor.layers, delta.layers)], delta.ids, delta.skipped))
    for mine, theirs in zip(one.layers, driver.layers):
        np.testing.assert_array_equal(mine.top_image, theirs.top_image)
        np.testing.assert_array_equal(mine.top_value, theirs.top_value)
    restored, meta = ScanTally.from_bytes(one.to_bytes({"k": 3}))
    assert meta["k"] == 3 and restored.scanned == one.scanned
    np.testing.assert_array_equal(restored.layers[1].top_image, one.layers[1].top_image)


# --- bad images, sources -------------------------------------------------------------------------


def test_corrupt_images_are_skipped_counted_and_listed(model_path, collection, tmp_path):
    folder, spots = collection
    good = (folder / "000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "text.jpg").write_text("not a picture")
    (folder / "empty.png").write_bytes(b"")
    result = fmonnx.scan(model_path, folder, tmp_path / "out", top=3, batch=4)
    reasons = {Path(entry["image"]).name: entry["reason"] for entry in result.record["skipped"]}
    assert set(reasons) == {"truncated.png", "text.jpg", "empty.png"}
    assert result.record["images"] == len(spots) and result.record["listed"] == len(spots) + 3
    assert [entry["image_id"] for entry in result.top("relu", 0)] == expected_top(spots, 3)


def test_list_files_and_parquet_name_the_same_images(model_path, collection, tmp_path):
    pyarrow = pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install pyarrow")
    import pyarrow.parquet as pq

    folder, spots = collection
    names = [f"{i:03d}.png" for i in range(len(spots))]
    listing = folder / "list.txt"
    listing.write_text("# the collection\n" + "\n".join(names) + "\n\n")
    table = pyarrow.table({"image": [(folder / name).read_bytes() for name in names], "label": names})
    pq.write_table(table, tmp_path / "images.parquet", row_group_size=5)
    from_list = fmonnx.scan(model_path, listing, tmp_path / "a", top=3)
    from_parquet = fmonnx.scan(model_path, tmp_path / "images.parquet", tmp_path / "b", top=3)
    for result in (from_list, from_parquet):
        assert [entry["image_id"] for entry in result.top("relu", 0)] == expected_top(spots, 3)
    assert from_parquet.top("relu", 0)[0]["image"] == f"{tmp_path / 'images.parquet'}#11"
    assert from_parquet.top("relu", 0)[0]["box"] == from_list.top("relu", 0)[0]["box"]


def test_cli_scan_and_its_errors(model_path, collection, tmp_path):
    folder, spots = collection
    runner = CliRunner()
    result = runner.invoke(cli, ["scan", str(model_path), str(folder), "-o", str(tmp_path / "out"), "--top", "2"])
    assert result.exit_code == 0, result.output
    assert "Scanned 14 images" in result.output
    again = runner.invoke(cli, ["scan", str(model_path), str(folder), "-o", str(tmp_path / "out")])
    assert again.exit_code == 0, again.output  # an earlier scan output is replaced
    missing = runner.invoke(cli, ["scan", str(model_path), str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")])
    assert missing.exit_code == 1 and missing.output.startswith("Error: ") and "Traceback" not in missing.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    foreign = runner.invoke(cli, ["scan", str(model_path), str(folder), "-o", str(tmp_path / "mine")])
    assert foreign.exit_code == 1 and "did not write" in foreign.output
    assert runner.invoke(cli, ["scan", "--help"]).exit_code == 0
    with pytest.raises(FmonnxError, match="unknown engine"):
        fmonnx.scan(model_path, folder, tmp_path / "y", engine="spark")


def test_a_fixed_batch_of_one_model_is_batched(tmp_path, collection):
    folder, spots = collection
    fixed = save(square_model(batch=1), tmp_path, "fixed.onnx")
    scanner = Scanner(plan_model(fixed), RenderOptions(), batch=5)
    assert scanner.batch == 5
    result = fmonnx.scan(fixed, folder, tmp_path / "out", top=3, batch=5)
    assert result.record["batch"] == 5
    assert [entry["image_id"] for entry in result.top("relu", 0)] == expected_top(spots, 3)


def test_older_opsets_and_channels_last_tensors(tmp_path, collection):
    from conftest import rgb_identity_model_nhwc

    folder, spots = collection
    results = []
    for opset in (11, 13, 17, 18):
        model = square_model()
        model.opset_import[0].version = opset
        results.append(fmonnx.scan(save(model, tmp_path, f"op{opset}.onnx"), folder, tmp_path / f"o{opset}", top=3))
    for result in results[1:]:
        assert result.record["layers"] == results[0].record["layers"]
    # relu_nhwc is N,H,W,C (after a Transpose): reduced over the right axis
    write_squares(tmp_path / "small", [(0, 0, 250)], size=SIZE)
    Image.fromarray(np.full((5, 6, 3), (10, 200, 30), np.uint8)).save(tmp_path / "small" / "green.png")
    nhwc = fmonnx.scan(save(rgb_identity_model_nhwc(), tmp_path, "nhwc.onnx"), tmp_path / "small",
                       tmp_path / "nhwc", top=2)
    layer = nhwc.layer("relu_nhwc")
    assert layer["shape"] == [3, 5, 6]
    assert [entry["image"] for entry in layer["channels"][0]["top"]][0].endswith("000.png")
    assert [entry["image"] for entry in layer["channels"][1]["top"]][0].endswith("green.png")
    assert layer["channels"][1]["max"] == pytest.approx(200 / 255, rel=1e-6)


# --- resume after a kill ---------------------------------------------------------------------------


_SLOW_SCAN = textwrap.dedent(
    """
    import sys, time
    import fmonnx
    def slow(done, total):
        time.sleep(0.15)  # so the test can kill it mid-scan
    fmonnx.scan(sys.argv[1], sys.argv[2], sys.argv[3], top=3, batch=2, checkpoint_every=4, progress=slow)
    """
)


def test_resume_after_a_kill_equals_an_uninterrupted_scan(model_path, tmp_path):
    spots = squares(40, seed=3)
    write_squares(tmp_path / "images", spots)
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", _SLOW_SCAN, str(model_path), str(tmp_path / "images"),
                                str(out)], cwd=tmp_path)
    checkpoint = checkpoint_path(out)
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.4)
    assert process.poll() is None, "the scan ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)  # as the OOM killer does: no cleanup runs
    process.wait()
    assert checkpoint.exists() and not out.exists()
    resumed = fmonnx.scan(model_path, tmp_path / "images", out, top=3, batch=2, checkpoint_every=4, resume=True)
    assert 0 < resumed.record["resumed_from"] < 40
    assert not checkpoint.exists()
    whole = fmonnx.scan(model_path, tmp_path / "images", tmp_path / "whole", top=3, batch=2)
    assert resumed.record["images"] == whole.record["images"] == 40
    assert resumed.record["layers"] == whole.record["layers"]
    with pytest.raises(FmonnxError, match="another scan"):
        checkpoint.write_bytes(ScanTally.empty([2, 2, 2], 5, 40).to_bytes({"top": 5}))
        fmonnx.scan(model_path, tmp_path / "images", out, top=3, resume=True)


# --- the page in Chromium --------------------------------------------------------------------------


def test_scan_page_in_chromium_sorts_hides_dead_and_shows_crops(model_path, collection, tmp_path):
    from test_browser import CHROMIUM, FLAGS, Opened

    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install playwright")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    folder, spots = collection
    result = fmonnx.scan(model_path, folder, tmp_path / "out", top=3, renders=1)
    # one render: the image that is the top image of most channels (id 0, first of the dead channels' ties)
    assert result.record["renders"] == {str(folder / "000.png"): "renders/000_000/index.html"}
    assert (result.folder / "renders/000_000/index.html").is_file()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        opened = Opened(browser, result.index)
        page = opened.page
        assert page.locator("#layers button").count() == 3
        page.locator("#layers button[data-layer='relu']").click()
        assert page.locator(".channel").count() == 2
        assert page.locator(".channel").first.locator(".crop").count() == 3
        title = page.locator(".channel").first.locator(".crop").first.get_attribute("title")
        assert title.startswith(f"#1 {folder / '011.png'}")
        assert "data:image/jpeg;base64," in page.locator(".crop").first.get_attribute("style")
        page.locator("#hide-dead").check()
        assert page.locator(".channel").count() == 1
        page.locator("#hide-dead").uncheck()
        page.select_option("#sort", "mean")
        assert page.locator(".channel").evaluate_all("(c) => c.map((x) => x.dataset.channel)") == ["0", "1"]
        assert "fmonnx render" in page.locator(".command").first.text_content()  # channel 0: not rendered
        link = page.locator(".channel[data-channel='1'] a.render")
        assert link.get_attribute("href") == "renders/000_000/index.html"
        link.click()
        page.wait_for_url("**/renders/000_000/index.html")
        assert page.locator("section.layer").count() == 3  # the render's own page
        page.go_back()
        page.locator("#layers button[data-layer='relu']").click()
        page.keyboard.press("ArrowDown")
        assert "pool" in page.locator("#layer-title").text_content()
        if os.environ.get("FMONNX_SCAN_SCREENSHOT"):
            page.screenshot(path=os.environ["FMONNX_SCAN_SCREENSHOT"])
        assert opened.problems == []
        opened.close()
        browser.close()


# --- the Ray engine --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install -e '.[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ray_engine_gives_the_local_engines_result(local_ray, model_path, tmp_path):
    import pyarrow
    import pyarrow.parquet as pq

    spots = squares(30, seed=5)
    paths = write_squares(tmp_path / "images", spots)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    # half of the images again as Parquet bytes, one row null: folders and Parquet in one collection
    table = pyarrow.table({"image": [path.read_bytes() for path in paths[:15]] + [None]})
    pq.write_table(table, tmp_path / "more.parquet", row_group_size=4)
    # a list naming one file twice: Ray reads it once, and both ids get its bytes
    (tmp_path / "again.lst").write_text(f"{paths[0]}\n{paths[1]}\n{paths[0]}\n")
    data = [tmp_path / "images", tmp_path / "more.parquet", tmp_path / "again.lst"]
    local = fmonnx.scan(model_path, data, tmp_path / "local", top=5, batch=4)
    distributed = fmonnx.scan(model_path, data, tmp_path / "ray", top=5, batch=4, engine="ray")
    assert local.record["images"] == distributed.record["images"] == 48
    assert local.record["skipped"] == distributed.record["skipped"] and len(local.record["skipped"]) == 2
    assert local.record["layers"] == distributed.record["layers"]
    assert distributed.record["engine"] == "ray" and "ray_start" in distributed.record["seconds"]
    brightest = [entry["image"] for entry in distributed.top("relu", 0)[:2]]
    assert brightest[0].endswith("027.png")  # the last distinct square; its repeats tie behind it by id

