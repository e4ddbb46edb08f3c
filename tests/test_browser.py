"""The report page in a real browser: Debian's headless Chromium driven by Playwright, network blocked.

Needs ``apt-get install chromium`` and ``pip install playwright`` (no ``playwright install``:
the system Chromium is used); skipped with the reason when either is missing.
``FMONNX_SCREENSHOT=docs/report.png`` also saves the README's screenshot there.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmonnx import RenderOptions, render
from fmonnx.stages.normalize import normalize

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install playwright")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield instance
        instance.close()


class Opened:
    """A page opened from disk, with everything that went wrong on it collected in ``problems``."""

    def __init__(self, browser, index: Path):
        self.context = browser.new_context(viewport={"width": 1280, "height": 860})
        self.problems: list[str] = []
        self.context.route("**/*", self._only_files)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("requestfailed", lambda request: self.problems.append(f"failed: {request.url[:120]}"))
        self.page.goto(index.resolve().as_uri())

    def _only_files(self, route):
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            self.problems.append(f"network request: {url[:120]}")
            route.abort()

    def _console(self, message):
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def close(self):
        self.context.close()


@pytest.fixture
def open_page(browser):
    opened = []

    def open_(index: Path) -> Opened:
        opened.append(Opened(browser, index))
        return opened[-1]

    yield open_
    for page in opened:
        page.close()


def wait_drawn(page, index: int):
    section = page.locator(f'section.layer[data-index="{index}"]')
    section.scroll_into_view_if_needed()
    section.locator(".frame.ready").first.wait_for()


def click_channel(page, index: int, column: int = 0):
    """Click tile ``column`` of the first row in layer ``index``'s first grid."""
    canvas = page.locator(f'section.layer[data-index="{index}"] .frame canvas').first
    box = canvas.bounding_box()
    columns = page.evaluate("(c) => c.parentNode.grid.geo.cols", canvas.element_handle())
    canvas.click(position={"x": box["width"] * (column + 0.5) / columns, "y": 3})


def test_demo_page_shows_every_layer_and_opens_a_channel(open_page, tmp_path):
    result = render(out=tmp_path / "demo")
    layers = [layer["name"] for layer in result.manifest["images"][0]["layers"]]
    opened = open_page(result.index)
    page = opened.page
    assert page.title() == "fmonnx: tutorial_cnn.onnx"
    assert page.locator("section.layer").evaluate_all("(s) => s.map((x) => x.dataset.name)") == layers
    for index in range(len(layers)):
        wait_drawn(page, index)
    assert "tensorflow" in page.locator("#meta").inner_text()
    assert page.locator("#inputs img").evaluate("(img) => img.complete && img.naturalWidth") == 150

    page.locator('section.layer[data-index="0"]').scroll_into_view_if_needed()
    click_channel(page, 1, column=2)
    detail = page.locator("#detail")
    detail.wait_for()
    assert detail.get_attribute("data-mode") == "channel" and detail.get_attribute("data-channel") == "2"
    assert detail.get_attribute("data-layer") == layers[1]
    assert f"{layers[1]} · channel 2" in detail.locator("h2").inner_text()
    assert "mean" in detail.locator("table.stats").inner_text()
    full = detail.locator("canvas.map-px")
    page.wait_for_function("(c) => c.width > 0", arg=full.element_handle())
    assert full.evaluate("(c) => [c.width, c.height]") == [148, 148]  # the channel at full resolution
    page.mouse.move(0, 0)
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(200)
    screenshot = tmp_path / "report.png"
    page.screenshot(path=str(screenshot))
    if os.environ.get("FMONNX_SCREENSHOT"):  # a 256-colour PNG: a third of the size, same look
        with Image.open(screenshot) as shot:
            shot.convert("RGB").quantize(256).save(os.environ["FMONNX_SCREENSHOT"], optimize=True)

    page.keyboard.press("ArrowRight")
    assert detail.get_attribute("data-channel") == "3"
    page.keyboard.press("ArrowDown")
    assert detail.get_attribute("data-layer") == layers[2]
    page.keyboard.press("Escape")
    assert detail.is_hidden()
    page.keyboard.press("Enter")
    assert detail.get_attribute("data-mode") == "layer" and detail.get_attribute("data-layer") == layers[2]
    detail.locator(".frame.ready").first.wait_for()  # the layer's grid, large
    page.keyboard.press("ArrowRight")
    assert detail.get_attribute("data-mode") == "channel" and detail.get_attribute("data-channel") == "0"
    assert opened.problems == []


def test_page_draws_what_the_library_computes(open_page, copy_model_path, write_image, gradient_rgb, tmp_path):
    result = render(copy_model_path, [write_image(gradient_rgb)], tmp_path / "maps",
                    RenderOptions(save_arrays=True, preprocess="raw"))
    values = np.load(result.folder / result.layer("conv")["array"])
    opened = open_page(result.index)
    page = opened.page
    wait_drawn(page, 0)
    for method in ("standardize", "minmax", "layer"):
        page.select_option("#norm", method)
        drawn = page.evaluate("fmonnxReport.channelValues(0, 'conv', 0)")
        expected = normalize(values, method)[0].ravel().astype(int)
        # the page works from per-channel min-max uint8 levels: half a level off, then truncated
        step = (values[0].max() - values[0].min()) / 255
        tolerance = {"standardize": step / 2 / values[0].std() * 64, "minmax": 0, "layer": 0.5}[method] + 1
        assert np.abs(np.array(drawn["values"]) - expected).max() <= tolerance, method
    assert opened.problems == []


def test_several_images_hide_dead_and_top_images(open_page, copy_model_path, write_image, gradient_rgb, tmp_path):
    images = [write_image(gradient_rgb, "a.png"), write_image(255 - gradient_rgb, "b.png")]
    result = render(copy_model_path, images, tmp_path / "maps")
    opened = open_page(result.index)
    page = opened.page
    relu = page.locator('section.layer[data-name="relu"]')
    assert relu.locator("figure.map").count() == 2  # the same channels for both images, side by side
    assert page.locator("#image-choice").is_visible()
    wait_drawn(page, 1)
    frame = relu.locator(".frame").first
    assert frame.evaluate("(f) => f.style.aspectRatio") == "13 / 4"  # 2 channels of 4x6
    page.check("#hide-dead")
    frame = relu.locator(".frame").first
    assert frame.evaluate("(f) => f.style.aspectRatio") == "6 / 4"  # channel 1 is dead in both images
    page.select_option("#sort", "mean")
    page.select_option("#cmap", "gray")

    wait_drawn(page, 0)
    click_channel(page, 0)
    detail = page.locator("#detail")
    detail.wait_for()
    ranked = detail.locator(".top-images figcaption").all_inner_texts()
    assert [caption.split(" ·")[0] for caption in ranked] == ["b.png", "a.png"]  # b is brighter in red
    assert detail.locator(".channel-row").count() == 2
    assert opened.problems == []


def test_resnet50_page_shows_every_layer_and_a_2048_channel_layer(open_page, tmp_path):
    """The benchmark's ResNet-50 (random weights, built in a second): 103 layers, up to 2048 channels."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import models as benchmark_models

    path = tmp_path / "resnet50.onnx"
    path.write_bytes(benchmark_models.build_resnet50().SerializeToString())
    result = render(path, None, tmp_path / "maps", RenderOptions(preprocess="imagenet"))
    layers = result.manifest["images"][0]["layers"]
    assert len(layers) == 103 and max(layer["shape"][0] for layer in layers) == 2048
    opened = open_page(result.index)
    page = opened.page
    assert page.locator("section.layer").count() == 103
    widest = max(range(len(layers)), key=lambda index: layers[index]["shape"][0])
    for index in (0, widest, len(layers) - 1):
        wait_drawn(page, index)
    click_channel(page, widest, column=5)
    detail = page.locator("#detail")
    detail.wait_for()
    assert detail.get_attribute("data-layer") == layers[widest]["name"]
    assert detail.get_attribute("data-channel") == "5"
    assert opened.problems == []


def test_page_says_which_conv_holds_a_folded_batchnorm(open_page, write_image, gradient_rgb, tmp_path):
    """A TorchScript export folds BatchNorm into the Conv: the page says so beside that layer, and only there."""
    torch = pytest.importorskip("torch", reason="the torch extra is not installed: pip install -e '.[torch]'")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    path = tmp_path / "folded.onnx"
    torch.onnx.export(model, (torch.rand(1, 3, 24, 24),), str(path), dynamo=False)
    result = render(path, [write_image(gradient_rgb)], tmp_path / "maps")
    assert any("BatchNorm folded in" in problem for problem in result.manifest["images"][0]["problems"])
    opened = open_page(result.index)
    page = opened.page
    notes = page.locator("section.layer").evaluate_all(
        "(s) => s.map((x) => { const n = x.querySelector('.layer-note'); return n ? n.textContent : ''; })"
    )
    assert notes == ["Conv + BatchNorm folded in by the exporter", ""]
    page.locator('section.layer[data-index="0"] h2 button').click()
    assert "BatchNorm folded in" in page.locator("#detail .layer-note").inner_text()
    assert opened.problems == []
