"""End to end through onnxruntime on models whose activations are known exactly."""

import json

import numpy as np
import pytest
from conftest import dynamic_rgb_model, rgb_identity_model_nhwc, save
from PIL import Image

from fmonnx import RenderOptions, activations, list_layers, render
from fmonnx.stages.normalize import normalize


def read_manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_copy_model_activations_are_exact(copy_model_path, write_image, gradient_rgb):
    maps = activations(copy_model_path, write_image(gradient_rgb), RenderOptions(preprocess="raw"))
    assert list(maps) == ["conv", "relu", "pool"]
    conv, relu, pool = maps.values()
    red, green = gradient_rgb[..., 0].astype(np.float32), gradient_rgb[..., 1].astype(np.float32)
    assert np.array_equal(conv[0], red) and np.array_equal(conv[1], -green)
    assert np.array_equal(relu[0], red) and not relu[1].any()
    assert np.array_equal(pool[0], red.reshape(2, 2, 3, 2).max(axis=(1, 3)))


def test_manifest_contract_and_arrays(copy_model_path, write_image, gradient_rgb, tmp_path):
    out = tmp_path / "maps"
    render(copy_model_path, [write_image(gradient_rgb, "photo.png")], out, RenderOptions(save_arrays=True))
    manifest = read_manifest(out)
    assert manifest["provider"] == "CPUExecutionProvider"
    assert manifest["fmonnx_version"] and manifest["model"].endswith("copy.onnx")
    (image,) = manifest["images"]
    assert image["image"].endswith("photo.png")
    assert image["input_shape"] == [1, 3, 4, 6] and image["input_layout"] == "NCHW"
    assert image["preprocess"]["preset"] == "unit"
    fed = np.load(out / image["input_array"])
    assert np.allclose(fed[0].transpose(1, 2, 0), gradient_rgb / 255.0)
    by_name = {layer["name"]: layer for layer in image["layers"]}
    relu = by_name["relu"]
    assert relu["tensor"] == "relu_out" and relu["op"] == "Relu"
    assert relu["shape"] == [2, 4, 6] and relu["channel_axis"] == 1 and relu["dead_channels"] == 1
    values = np.load(out / relu["array"])
    assert values.shape == (2, 4, 6) and values.dtype == np.float32
    assert np.allclose(values[0], gradient_rgb[..., 0] / 255.0)
    for layer in image["layers"]:
        assert (out / layer["png"]).exists()
    assert set(manifest["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {
        "manifest.json"
    }


def test_png_pixels_are_the_normalized_channels(copy_model_path, write_image, gradient_rgb, tmp_path):
    out = tmp_path / "maps"
    render(copy_model_path, [write_image(gradient_rgb)], out, RenderOptions(cmap="gray", preprocess="raw"))
    layer = next(entry for entry in read_manifest(out)["images"][0]["layers"] if entry["name"] == "relu")
    picture = Image.open(out / layer["png"])
    assert picture.mode == "P"
    indices = np.asarray(picture)
    scale = layer["grid"]["scale"]
    tile = indices[20 : 20 + 4 * scale : scale, 0 : 6 * scale : scale]  # below the 20-pixel title bar
    expected = normalize(gradient_rgb[None, ..., 0].astype(np.float32))[0]
    assert np.abs(tile.astype(int) - np.round(expected.astype(int) * 253 / 255)).max() <= 1
    palette = np.array(picture.getpalette()[: 3 * 256]).reshape(256, 3)
    assert palette[0].tolist() == [0, 0, 0] and palette[253].tolist() == [255, 255, 255]


def test_nhwc_tensors_are_drawn_channels_first(tmp_path, write_image):
    path = save(rgb_identity_model_nhwc(), tmp_path, "nhwc.onnx")
    pixels = np.zeros((5, 6, 3), np.uint8)
    pixels[..., 2] = 255  # only blue
    out = tmp_path / "maps"
    render(path, [write_image(pixels)], out, RenderOptions(ops=("Relu",), save_arrays=True))
    image = read_manifest(out)["images"][0]
    assert image["input_layout"] == "NHWC"
    by_name = {layer["name"]: layer for layer in image["layers"]}
    nhwc = by_name["relu_nhwc"]
    assert nhwc["channel_axis"] == 3 and nhwc["shape"] == [3, 5, 6] and nhwc["layout_certain"]
    values = np.load(out / nhwc["array"])
    assert values[2].min() == 1.0 and not values[:2].any()
    assert by_name["relu"]["channel_axis"] == 1


def test_dynamic_model_runs_at_the_image_size(tmp_path, write_image):
    path = save(dynamic_rgb_model(), tmp_path, "dynamic.onnx")
    photo = write_image(np.full((40, 30, 3), 128, np.uint8))
    maps = activations(path, photo)
    assert maps["relu"].shape == (3, 40, 30)
    capped = activations(path, photo, RenderOptions(max_size=20))
    assert capped["relu"].shape == (3, 20, 15)
    forced = activations(path, photo, RenderOptions(size=(8, 9)))
    assert forced["relu"].shape == (3, 8, 9)


def test_several_images_get_a_subfolder_each(copy_model_path, write_image, gradient_rgb, tmp_path):
    first = write_image(gradient_rgb, "a.png")
    second = write_image(255 - gradient_rgb, "b.png")
    out = tmp_path / "maps"
    manifest = render(copy_model_path, [first, second], out)
    assert [image["image"] for image in manifest["images"]] == [str(first), str(second)]
    folders = {image["layers"][0]["png"].split("/")[0] for image in manifest["images"]}
    assert len(folders) == 2
    for folder in folders:
        assert (out / folder / "overview.png").exists()


def test_rerender_replaces_own_output_but_not_foreign_files(copy_model_path, write_image, gradient_rgb, tmp_path):
    out = tmp_path / "maps"
    photo = write_image(gradient_rgb)
    render(copy_model_path, [photo], out)
    render(copy_model_path, [photo], out, RenderOptions(layout="belt"))
    assert read_manifest(out)["options"]["layout"] == "belt"
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(Exception, match="did not write"):
        render(copy_model_path, [photo], out)
    assert (out / "my_notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_list_layers_needs_no_image(copy_model_path):
    rows = list_layers(copy_model_path)
    assert [(row["name"], row["op"], row["shape"]) for row in rows] == [
        ("conv", "Conv", [2, 4, 6]),
        ("relu", "Relu", [2, 4, 6]),
        ("pool", "MaxPool", [2, 2, 3]),
    ]
