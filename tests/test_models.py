"""The shipped sample models, from real exporters, and models with external weights."""

import json

import numpy as np
import onnx
import onnxruntime as ort

from conftest import copy_model_nchw
from fmonnx import RenderOptions, activations, list_layers, render


def test_keras_tutorial_model_names_and_layout(models_dir):
    rows = list_layers(models_dir / "tutorial_cnn.onnx")
    assert [(row["name"], row["op"], row["shape"]) for row in rows] == [
        ("conv2d/Conv", "Conv", [8, 148, 148]),
        ("conv2d", "Relu", [8, 148, 148]),
        ("max_pooling2d", "MaxPool", [8, 74, 74]),
        ("conv2d_1/Conv", "Conv", [16, 72, 72]),
        ("conv2d_1", "Relu", [16, 72, 72]),
        ("max_pooling2d_1", "MaxPool", [16, 36, 36]),
        ("conv2d_2/Conv", "Conv", [32, 34, 34]),
        ("conv2d_2", "Relu", [32, 34, 34]),
        ("max_pooling2d_2", "MaxPool", [32, 17, 17]),
    ]
    assert all(row["channel_axis"] == 1 and row["layout_certain"] for row in rows)


def test_pytorch_model_names(models_dir):
    names = [row["name"] for row in list_layers(models_dir / "torch_cnn.onnx")]
    assert names == [
        "conv1", "relu", "maxpool",
        "layer1.0.conv1", "layer1.0.relu", "layer1.0.conv2", "layer1.0.relu#2",
        "layer2.0.downsample.0", "layer2.0.conv1", "layer2.0.relu", "layer2.0.conv2", "layer2.0.relu#2",
    ]


def test_keras_model_first_layer_matches_the_model_itself(models_dir, tmp_path):
    """The map labelled conv2d is the Relu output of the first conv, in channel order:
    checked against the original model's own graph run up to that tensor."""
    from fmonnx.stages.plan import demo_paths

    _, photo = demo_paths()
    options = RenderOptions(save_arrays=True)
    out = tmp_path / "maps"
    manifest = render(models_dir / "tutorial_cnn.onnx", [photo], out, options)
    image = manifest["images"][0]
    layer = next(entry for entry in image["layers"] if entry["name"] == "conv2d")
    fed = np.load(out / image["input_array"])
    assert fed.shape == (1, 150, 150, 3)

    model = onnx.load(str(models_dir / "tutorial_cnn.onnx"))
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(layer["tensor"], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, {session.get_inputs()[0].name: fed})
    assert np.allclose(np.load(out / layer["array"]), reference[0], rtol=1e-5, atol=1e-6)
    assert layer["shape"] == [8, 148, 148] and layer["dead_channels"] == 0


def test_pytorch_model_runs_at_the_photo_size(models_dir, write_image):
    photo = write_image(np.random.default_rng(2).integers(0, 255, (60, 80, 3)), "p.png")
    maps = activations(models_dir / "torch_cnn.onnx", photo, RenderOptions(preprocess="imagenet"))
    assert maps["conv1"].shape == (16, 60, 80)
    assert maps["layer2.0.relu#2"].shape == (32, 15, 20)


def test_external_data_model_is_run_from_its_folder(tmp_path, write_image, gradient_rgb):
    model = copy_model_nchw()
    folder = tmp_path / "big"
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert (folder / "weights.bin").exists()
    out = tmp_path / "maps"
    render(folder / "model.onnx", [write_image(gradient_rgb)], out, RenderOptions(save_arrays=True, preprocess="raw"))
    manifest = json.loads((out / "manifest.json").read_text())
    conv = manifest["images"][0]["layers"][0]
    assert np.array_equal(np.load(out / conv["array"])[0], gradient_rgb[..., 0].astype(np.float32))
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "weights.bin"]
