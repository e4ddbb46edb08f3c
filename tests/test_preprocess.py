import numpy as np
import pytest
from PIL import Image

from fmonnx.errors import ImageError
from fmonnx.stages.layout import Layout
from fmonnx.stages.preprocess import InputSpec, expand_image_paths, load_image, prepare_input, target_size

NCHW, NHWC = Layout(1, True), Layout(3, True)


def test_rgb_png_loads_exactly(write_image, gradient_rgb):
    assert np.array_equal(load_image(write_image(gradient_rgb)), gradient_rgb)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    source = Image.new("RGB", (5, 3), (200, 100, 50)).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        source = Image.fromarray(np.full((3, 5), 40000, np.uint16))
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    source.save(path)
    pixels = load_image(path)
    assert pixels.shape == (3, 5, 3) and pixels.dtype == np.uint8
    if mode == "I;16":
        assert pixels[0, 0, 0] == round(40000 / 65535 * 255)


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (6, 2), (10, 20, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).shape == (6, 2, 3)


def test_grayscale_and_rgba_models(write_image, gradient_rgb):
    path = write_image(gradient_rgb)
    assert load_image(path, channels=1).shape == (4, 6, 1)
    assert load_image(path, channels=4)[..., 3].min() == 255


def test_unreadable_and_truncated_images(tmp_path, write_image, gradient_rgb):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="not an image"):
        load_image(text)
    big = np.random.default_rng(0).integers(0, 255, (64, 64, 3))
    full = write_image(big, "full.jpg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:300])
    with pytest.raises(ImageError, match="truncated"):
        load_image(cut)
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize(
    "preset, first",
    [("unit", 10 / 255), ("tf", 10 / 127.5 - 1), ("raw", 10.0), ("imagenet", (10 / 255 - 0.485) / 0.229)],
)
def test_presets(preset, first):
    pixels = np.full((2, 2, 3), 10, np.uint8)
    tensor, record = prepare_input(pixels, InputSpec("x", 1, (1, 3, 2, 2)), NCHW, preset)
    assert tensor.shape == (1, 3, 2, 2) and tensor.dtype == np.float32
    assert tensor[0, 0, 0, 0] == pytest.approx(first, rel=1e-6)
    assert record["preset"] == preset


def test_caffe_is_bgr_minus_means():
    pixels = np.zeros((1, 1, 3), np.uint8)
    pixels[0, 0] = (10, 20, 30)
    tensor, record = prepare_input(pixels, InputSpec("x", 1, (1, 1, 1, 3)), NHWC, "caffe")
    assert tensor[0, 0, 0].tolist() == pytest.approx([30 - 103.939, 20 - 116.779, 10 - 123.68], rel=1e-5)
    assert record["channel_order"] == "BGR"


def test_resize_to_fixed_input_and_layouts(gradient_rgb):
    nchw, _ = prepare_input(gradient_rgb, InputSpec("x", 1, (1, 3, 8, 12)), NCHW)
    nhwc, record = prepare_input(gradient_rgb, InputSpec("x", 1, (1, 8, 12, 3)), NHWC)
    assert nchw.shape == (1, 3, 8, 12) and nhwc.shape == (1, 8, 12, 3)
    assert np.array_equal(nchw[0].transpose(1, 2, 0), nhwc[0])
    assert record["resize"] == [8, 12] and record["source_size"] == [4, 6]


def test_dynamic_size_uses_the_image_size_capped():
    assert target_size((1, 3, "h", "w"), NCHW, (400, 300), None) == (400, 300)
    assert target_size((1, 3, "h", "w"), NCHW, (4000, 2000), None) == (1024, 512)
    assert target_size((1, "h", "w", 3), NHWC, (4000, 2000), 100) == (100, 50)
    assert target_size((1, 3, 224, 224), NCHW, (4000, 2000), None) == (224, 224)


def test_folders_expand_to_sorted_images(tmp_path, write_image, gradient_rgb):
    write_image(gradient_rgb, "b.png")
    write_image(gradient_rgb, "a.jpg")
    (tmp_path / "readme.txt").write_text("x")
    assert [p.name for p in expand_image_paths([tmp_path])] == ["a.jpg", "b.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="no images"):
        expand_image_paths([empty])
