"""The explain pictures, files and page, from synthetic explanations (no model: computing and drawing are
separate steps). The browser tests use Debian's headless Chromium through Playwright, as test_browser.py."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmonnx.report.explain_write import MAX_INDEX_ENTRIES, write_explanation
from fmonnx.stages.colormap import lookup_table
from fmonnx.stages.explained import ExplainedLayer, ImageExplanation, TargetChoice
from fmonnx.stages.overlay import MID_GREY, channel_picture, draw_boxes, heat_overlay, heat_picture

H, W = 32, 40


def photo(value=128):
    return np.full((H, W, 3), value, np.uint8)


def spot(y, x, radius=4):
    cam = np.zeros((H, W), np.float32)
    cam[max(0, y - radius) : y + radius, max(0, x - radius) : x + radius] = 1.0
    return cam


def layer(name, channels, top, cam, depends=True, raw_max=1.0, side=8):
    """A layer whose channel ``top`` has the largest weight; channel c's map is a ramp times (c + 1)."""
    activation = np.stack([np.arange(side * side, dtype=np.float32).reshape(side, side) * (c + 1)
                           for c in range(channels)])
    weights = np.linspace(0.1, 0.5, channels).astype(np.float32)
    weights[top] = 1.0
    raw = np.full((side, side), raw_max, np.float32)
    return ExplainedLayer(name, f"{name}_out", "gradcam", activation, activation * 0.5, weights, raw, cam,
                          depends=depends, op="Conv")


def explanation(image="cat.png", boxes=(), target=None, choices=None):
    layers = [
        layer("conv1", 4, 2, spot(8, 8)),
        layer("conv2", 6, 5, spot(16, 20)),
        layer("head", 3, 0, np.zeros((H, W), np.float32), depends=False, raw_max=0.0, side=2),
    ]
    target = target or {"output": "logits", "index": [[0, 3]], "score": np.float32(2.5), "kind": "class",
                        "label": "cat", "class": 3}
    if choices is None:
        choices = [TargetChoice(target, spot(16, 20)),
                   TargetChoice({"output": "logits", "index": [[0, 7]], "score": 1.0, "kind": "class",
                                 "label": "dog", "class": 7}, spot(24, 32))]
    return ImageExplanation(Path(image), np.zeros((1, 3, H, W), np.float32), photo(), target, layers, "conv2",
                            choices=choices, boxes=list(boxes), preprocess={"resize": [H, W]},
                            problems=["a note </script> for the page"])


def strict(path):
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")
    return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=refuse)


# the pictures


def test_cold_map_leaves_the_photo_and_a_hot_spot_turns_red_where_it_is():
    picture = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert np.array_equal(heat_overlay(picture, np.zeros((H, W))), picture)
    hot = heat_overlay(photo(), spot(8, 30, radius=3))
    red, green, blue = (hot[..., k].astype(int) for k in range(3))
    inside = (slice(6, 10), slice(28, 32))
    assert (red[inside] > green[inside] + 40).all() and (red[inside] > blue[inside] + 40).all()
    assert (hot[:, :20] == 128).all()  # far from the spot, the photo as it was
    jet = lookup_table("jet")
    expected = np.round(128 * 0.5 + jet[255].astype(float) * 0.5)
    assert np.array_equal(hot[8, 30], expected.astype(np.uint8))
    assert np.array_equal(heat_picture(np.array([[0.0, 1.0]])), jet[[0, 255]][None])
    assert heat_overlay(photo(), np.full((4, 5), np.nan)).tolist() == photo().tolist()  # resized, NaN as 0


def test_boxes_are_drawn_where_they_are_and_the_highlighted_one_thicker():
    boxes = [{"box": [4, 4, 15, 15]}, {"box": [22, 10, 36, 28], "label": ""}]
    drawn = draw_boxes(photo(0), boxes, highlight=1)
    changed = (drawn != 0).any(axis=2)
    assert changed[4, 4:16].all() and changed[4:16, 15].all()  # box 0's outline
    assert not changed[8:12, 8:12].any()  # its inside untouched
    assert changed[10:29, 22].all()
    thick = int(np.argmin(changed[14:24, 22:40].any(axis=0)))  # box 1's left edge: columns until its inside
    assert thick > int(np.argmin(changed[8:12, 4:16].any(axis=0))) == 1
    assert not changed[0:3, :].any() and not changed[30:, :].any()
    big = np.zeros((120, 160, 3), np.uint8)
    labelled = draw_boxes(big, [{"box": [40, 50, 100, 110], "score": 0.87, "label": "cat"}])
    label = (labelled[:50] != 0).any(axis=2)  # above the box
    assert label[30:50, 40:70].any() and not label[:, :38].any() and not (labelled[60:100, 50:90] != 0).any()


def test_channel_picture_normalises_per_channel_and_a_flat_one_is_mid_grey():
    ramp = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    gray = channel_picture(ramp * 1000, cmap="gray")
    assert gray[0, 0].tolist() == [0, 0, 0] and gray[1, 1].tolist() == [255, 255, 255]
    assert np.array_equal(channel_picture(ramp, cmap="gray"), gray)  # scale-free
    flat = channel_picture(np.full((3, 3), 7.0), (6, 6))
    assert flat.shape == (6, 6, 3) and (flat == MID_GREY).all()
    assert (channel_picture(np.zeros((3, 3))) == MID_GREY).all()
    assert (channel_picture(np.full((2, 2), np.nan)) == MID_GREY).all()
    big = channel_picture(ramp, 96)
    assert big.shape == (96, 96, 3) and np.array_equal(big[:48, :48], np.broadcast_to(big[0, 0], (48, 48, 3)))


# the files


def test_write_explanation_files_and_strict_json(tmp_path):
    record = write_explanation(tmp_path, [explanation()], {"model": "m.onnx", "provider": "CPU", "method": "gradcam",
                                                          "fmonnx_version": "x", "nan": float("nan")},
                               save_arrays=True)
    saved = strict(tmp_path / "explain.json")
    assert saved == record
    assert saved["model"] == "m.onnx" and saved["nan"] is None
    for file in saved["files"]:
        assert (tmp_path / file).is_file(), file
    assert {"explain.json", "index.html", "input.png", "boxes.png"} - set(saved["files"]) == {"boxes.png"}
    image = saved["images"][0]
    assert image["folder"] == "" and image["input_shape"] == [1, 3, H, W] and image["chosen"] == "conv2"
    assert image["target"] == {"output": "logits", "index": [[0, 3]], "score": 2.5, "kind": "class", "label": "cat",
                               "class": 3}
    assert [layer["name"] for layer in image["layers"]] == ["conv1", "conv2", "head"]
    conv2 = image["layers"][1]
    assert conv2["tensor"] == "conv2_out" and conv2["method"] == "gradcam" and conv2["shape"] == [6, 8, 8]
    assert [entry["channel"] for entry in conv2["top_channels"]][:2] == [5, 4]
    assert conv2["top_channels"][0]["weight"] == 1.0 and len(conv2["top_channels"]) == 6
    head = image["layers"][2]
    assert head["depends"] is False and head["raw_max"] == 0.0
    overlay = np.asarray(Image.open(tmp_path / conv2["overlay"]))
    assert overlay.shape == (H, W, 3) and overlay[16, 20, 0] > overlay[16, 20, 2] + 40
    assert (np.asarray(Image.open(tmp_path / head["overlay"])) == 128).all()
    picture = np.asarray(Image.open(tmp_path / conv2["top_channels"][0]["picture"]))
    assert picture.shape == (96, 96, 3)
    assert np.array_equal(np.load(tmp_path / conv2["array"]["cam"]), spot(16, 20))
    assert np.load(tmp_path / image["array"]).shape == (1, 3, H, W)
    dog = np.asarray(Image.open(tmp_path / image["choices"][1]["overlay"]))
    assert dog[24, 32, 0] > dog[24, 32, 2] + 40 and (dog[:10] == 128).all()
    assert image["choices"][1]["target"]["label"] == "dog"
    assert image["problems"] == ["a note </script> for the page"]


def test_several_images_get_folders_and_masks_and_boxes(tmp_path):
    mask = np.zeros((H, W), bool)
    mask[2:30, 2:38] = True  # 28 * 36 elements: too many to list
    index = np.argwhere(mask).tolist()
    segment = {"output": "masks", "index": index, "score": 3.0, "kind": "mask", "label": "road", "class": 1,
               "mask": mask}
    boxes = [{"box": np.array([4.0, 4, 15, 15]), "score": np.float32(0.9), "class": 0, "label": "cat"},
             {"box": [22, 10, 36, 28], "score": 0.5, "class": 1, "label": "dog"}]
    detect = {"output": "out", "index": [[0, 4, 7]], "score": 0.5, "kind": "box", "label": "dog", "class": 1,
              "box": [22, 10, 36, 28]}
    images = [explanation("a.png", target=segment, choices=[TargetChoice(segment, spot(4, 4))]),
              explanation("a.png", boxes=boxes, target=detect, choices=[TargetChoice(detect, spot(16, 28))])]
    record = write_explanation(tmp_path, images, {"model": "m.onnx"}, report=False)
    assert "index.html" not in record["files"] and not (tmp_path / "index.html").exists()
    first, second = record["images"]
    assert first["folder"] == "000_a" and second["folder"] == "001_a"
    assert first["target"]["index"] is None and first["target"]["index_count"] == len(index) > MAX_INDEX_ENTRIES
    assert np.array_equal(np.asarray(Image.open(tmp_path / first["target"]["mask"])) > 0, mask)
    assert first["target"]["mask"].startswith("000_a/")
    assert second["boxes"][0]["box"] == [4.0, 4.0, 15.0, 15.0]
    drawn = np.asarray(Image.open(tmp_path / second["boxes_picture"]))
    highlight = np.abs(drawn.astype(int) - 128).sum(axis=2) > 0
    assert highlight[10:29, 22].all() and highlight[4:16, 4].all()  # the boxes' left edges
    assert not highlight[29:].any()  # nothing below them (labels sit at their tops)
    assert strict(tmp_path / "explain.json") == record


def test_an_earlier_explanation_is_replaced_but_a_foreign_file_is_kept(tmp_path):
    from fmonnx.errors import OutputError
    from fmonnx.report.explain_write import EXPLAIN_JSON
    from fmonnx.stages.output_folder import staged_output

    out = tmp_path / "out"
    for save_arrays in (True, False):  # fewer files the second time: the arrays go
        with staged_output(out, record=EXPLAIN_JSON) as staging:
            record = write_explanation(staging, [explanation("a.png"), explanation("b.png")],
                                       {"model": "m.onnx", "fmonnx_version": "x"}, save_arrays=save_arrays)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(record["files"])
    (out / "001_b" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"), staged_output(out, record=EXPLAIN_JSON):
        pass


# the page, in a real browser

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install playwright")
    import shutil

    chromium = shutil.which("chromium") or CHROMIUM
    if not Path(chromium).exists():
        pytest.skip(f"no Chromium at {chromium}: apt-get install chromium")
    from test_browser import FLAGS

    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
        yield instance
        instance.close()


@pytest.fixture
def open_page(browser):
    from test_browser import Opened

    opened = []

    def open_(index: Path):
        opened.append(Opened(browser, index))
        return opened[-1]

    yield open_
    for page in opened:
        page.close()


def test_page_strip_ranked_channels_and_picker(open_page, tmp_path):
    write_explanation(tmp_path, [explanation()], {"model": "m.onnx", "method": "gradcam"})
    assert 'a note \\u003c/script> for' in (tmp_path / "index.html").read_text(encoding="utf-8")  # escaped
    opened = open_page(tmp_path / "index.html")
    page = opened.page
    assert page.title() == "fmonnx explain: m.onnx"
    section = page.locator('section.image[data-index="0"]')
    strip = section.locator(".strip-item")
    assert strip.evaluate_all("(s) => s.map((x) => x.dataset.layer)") == ["conv1", "conv2", "head"]
    ranked = section.locator(".ranked")
    channels = "(r) => [...r.querySelectorAll('figure.channel')].map((f) => Number(f.dataset.channel))"
    assert ranked.get_attribute("data-layer") == "conv2"  # the chosen layer first
    assert ranked.evaluate(channels)[:2] == [5, 4]
    strip.nth(0).click()
    assert ranked.get_attribute("data-layer") == "conv1" and ranked.evaluate(channels)[:2] == [2, 3]
    assert not ranked.locator(".note").count()
    strip.nth(2).click()
    assert "does not depend" in ranked.locator(".note").inner_text()
    assert "problems" in section.evaluate("(s) => s.innerHTML") and "</script>" in section.inner_text()

    main = section.locator("img.main-overlay")
    assert main.get_attribute("src") == "choices/00.png"
    section.locator('.picker button[data-choice="1"]').click()
    assert main.get_attribute("src") == "choices/01.png" and "dog" in section.locator(".main-caption").inner_text()
    page.wait_for_function("(img) => img.complete && img.naturalWidth === 40", arg=main.element_handle())
    loaded = "(imgs) => imgs.every((img) => img.complete && img.naturalWidth > 0)"
    page.wait_for_function(f"() => ({loaded})([...document.images])")
    assert opened.problems == []


def test_page_of_several_images_loads_their_pictures_and_notes_a_zero_map(open_page, tmp_path):
    second = explanation("b.png")
    second.layers[0].raw[:] = 0  # the score depends on conv1, but it holds no positive evidence
    write_explanation(tmp_path, [explanation("a.png"), second], {"model": "m.onnx"})
    opened = open_page(tmp_path / "index.html")
    page = opened.page
    assert page.locator("section.image").count() == 2
    section = page.locator('section.image[data-index="1"]')
    assert section.locator("img.main-overlay").get_attribute("src") == "001_b/choices/00.png"
    assert section.locator(".strip-item.zero").evaluate_all("(s) => s.map((x) => x.dataset.layer)") == ["conv1", "head"]
    section.locator(".strip-item").nth(0).click()
    assert "all zero" in section.locator(".ranked .note").inner_text()
    page.wait_for_function("() => [...document.images].every((img) => img.complete && img.naturalWidth > 0)")
    assert opened.problems == []
