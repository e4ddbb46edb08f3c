"""fmonnx explain on a tiny YOLO-like detector built with onnx.helper (no ultralytics): box targets, and
every layer's gradient against torch autograd on a re-implementation of the same graph and weights."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper

import fmonnx
from conftest import make_model, save

TOLERANCE = 1e-2
CLASSES, ANCHORS = 2, 16


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    shapes = {"w1": (4, 3, 3, 3), "b1": (4,), "w2": (6, 4, 3, 3), "b2": (6,), "w3": (6, 6, 3, 3), "b3": (6,),
              "wbox": (4, 6, 1, 1), "bbox": (4,), "wcls": (CLASSES, 6, 1, 1), "bcls": (CLASSES,)}
    # small enough that the class Sigmoid is not saturated (its gradient would be float32 noise)
    return {name: rng.normal(0, 0.3, shape).astype(np.float32) for name, shape in shapes.items()}


def detector(folder, metadata: bool = True):
    """input (1,3,32,32) -> three stride-2 Conv+Relu (to 4x4 = 16 anchors); a box branch (1x1 Conv, scaled to
    pixels) and a class branch (1x1 Conv, Sigmoid), each Reshaped to (1, n, 16), Concatenated: (1, 4+2, 16)."""
    conv = {"pads": [1, 1, 1, 1], "strides": [2, 2]}
    shapes = [helper.make_node("Constant", [], [name], name=name, value=helper.make_tensor(
        name, TensorProto.INT64, [3], [1, size, ANCHORS])) for name, size in (("box_shape", 4), ("cls_shape", CLASSES))]
    nodes = [
        *shapes,
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="act1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="act2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", **conv),
        helper.make_node("Relu", ["c3"], ["r3"], name="act3"),
        helper.make_node("Conv", ["r3", "wbox", "bbox"], ["box_raw"], name="box_conv"),
        helper.make_node("Mul", ["box_raw", "scale"], ["box_scaled"], name="box_scale"),
        helper.make_node("Add", ["box_scaled", "offset"], ["box_px"], name="box_offset"),
        helper.make_node("Reshape", ["box_px", "box_shape"], ["box"], name="box_reshape"),
        helper.make_node("Conv", ["r3", "wcls", "bcls"], ["cls_raw"], name="cls_conv"),
        helper.make_node("Sigmoid", ["cls_raw"], ["cls_sig"], name="cls_sigmoid"),
        helper.make_node("Reshape", ["cls_sig", "cls_shape"], ["cls"], name="cls_reshape"),
        helper.make_node("Concat", ["box", "cls"], ["output0"], name="concat", axis=1),
    ]
    initializers = [*weights().items(), ("scale", np.float32(4.0)), ("offset", np.float32(16.0))]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + CLASSES, ANCHORS])],
        initializers,
    )
    for key, value in ({"task": "detect", "names": "{0: 'cat', 1: 'dog'}", "stride": "[8]",
                        "imgsz": "[32, 32]"} if metadata else {}).items():
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, key: value})
    return save(model, folder, "detector.onnx")


def torch_forward(torch, x: np.ndarray):
    """The same graph in torch (float64): (output, {ONNX tensor name: tensor})."""
    F = torch.nn.functional
    w = {name: torch.from_numpy(value.astype(np.float64)) for name, value in weights().items()}
    tensors = {}
    h = torch.from_numpy(x.astype(np.float64)).requires_grad_()  # so the intermediates have a grad_fn
    for i, (wn, bn) in enumerate([("w1", "b1"), ("w2", "b2"), ("w3", "b3")], start=1):
        c = F.conv2d(h, w[wn], w[bn], stride=2, padding=1)
        h = torch.relu(c)
        tensors[f"c{i}"], tensors[f"r{i}"] = c, h
    box = F.conv2d(h, w["wbox"], w["bbox"]) * 4.0 + 16.0
    cls = torch.sigmoid(F.conv2d(h, w["wcls"], w["bcls"]))
    return torch.cat([box.reshape(1, 4, ANCHORS), cls.reshape(1, CLASSES, ANCHORS)], 1), tensors


@pytest.fixture
def photo(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def test_box_target_and_gradients_equal_autograd(tmp_path, photo):
    torch = pytest.importorskip("torch")
    path = detector(tmp_path)
    ex = fmonnx.explain(path, photo, layers="all")
    target = ex.target
    assert target["kind"] == "box"
    scores = [box["score"] for box in ex.boxes]
    assert scores == sorted(scores, reverse=True) and len(ex.boxes) >= 2
    first = ex.boxes[0]
    assert target["index"] == [[0, 4 + first["class"], first["anchor"]]]
    assert target["label"] == ["cat", "dog"][first["class"]] and target["box"] == first["box"]

    output, tensors = torch_forward(torch, ex.input)
    # the boxes are the output decoded: the best class score of each anchor, box 0 the best of all
    classes = output[0, 4:].detach().numpy()
    assert first["score"] == pytest.approx(classes.max(), rel=1e-5)
    score = output[tuple(target["index"][0])]
    assert target["score"] == pytest.approx(float(score.detach()), rel=1e-5)
    grads = torch.autograd.grad(score, list(tensors.values()))
    gradients = {name: g.numpy()[0] for name, g in zip(tensors, grads)}
    compared = 0
    for layer in ex.layers:
        if layer.tensor not in gradients:
            continue
        assert relative(layer.activation, tensors[layer.tensor].detach().numpy()[0]) < 1e-5, layer.name
        assert relative(layer.gradient, gradients[layer.tensor]) < TOLERANCE, layer.name
        compared += 1
    assert compared >= 5, [(layer.name, layer.tensor) for layer in ex.layers]

    second = fmonnx.explain(path, photo, target="box:1")
    box = ex.boxes[1]
    assert second.target["index"] == [[0, 4 + box["class"], box["anchor"]]]
    assert second.target["box"] == box["box"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fmonnx", "explain", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_cli_box_out_of_range_is_one_error_line_and_writes_nothing(tmp_path, photo):
    path = detector(tmp_path)
    out = tmp_path / "out"
    result = _cli(path, photo, "--target", "box:99", "-o", out)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("Error: box:99 does not exist"), result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_cli_writes_boxes_and_their_picture(tmp_path, photo):
    path = detector(tmp_path)
    out = tmp_path / "out"
    result = _cli(path, photo, "-o", out, "--no-report")
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "explain.json").read_text())
    (image,) = data["images"]
    assert image["target"]["kind"] == "box"
    assert len(image["boxes"]) >= 2 and image["boxes"][0]["label"] in ("cat", "dog")
    assert (out / image["boxes_picture"]).is_file()


def test_detector_without_metadata_is_taken_by_its_shape_and_says_so(tmp_path, photo):
    """A module converted by fmonnx carries no ultralytics metadata: an output (1, 4 + classes, anchors) with
    more anchors than rows is still a detector's, its classes unnamed, and the explanation says why."""
    with_names = fmonnx.explain(detector(tmp_path), photo)
    (tmp_path / "bare").mkdir()
    bare = fmonnx.explain(detector(tmp_path / "bare", metadata=False), photo)
    assert bare.target["kind"] == "box" and bare.target["index"] == with_names.target["index"]
    assert bare.target["label"] == f"class {with_names.boxes[0]['class']}"
    assert any("from its shape alone" in problem for problem in bare.explained.problems)
    np.testing.assert_allclose(bare.layers[0].gradient, with_names.layers[0].gradient)


def test_default_layer_is_behind_the_class_convolution(tmp_path, photo):
    """The class convolution is the score's own map (Grad-CAM there weighs the target's channel alone): the
    default layer is the last one that reaches the score through a weighted op."""
    path = detector(tmp_path)
    every = [layer.name for layer in fmonnx.explain(path, photo, layers="all").layers]
    assert every[-1] == "cls_conv"
    (layer,) = fmonnx.explain(path, photo).layers
    assert layer.name == "act3" and layer.depends
