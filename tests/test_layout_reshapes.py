"""Images reshaped through tensors of higher rank and back keep a proven channel axis (issue 14).

Swin's patch merging is a space-to-depth by Reshape (1,H,W,C) -> (1,H/2,2,W/2,2,C), Transpose
(0,1,3,4,2,5), Reshape (1,H/2,W/2,4C); its window partition and reverse go through a window batch and
back to the image. The graph's static sizes prove which image axis each output axis holds (axes.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from conftest import make_model, save
from fmonnx.stages.layout import Layout, channel_axes
from fmonnx.stages.shapes import infer_types

C, H, W = 4, 8, 12  # H != W, so a wrong-way reshape cannot pass for the image
RNG = np.random.default_rng(14)
CONV_W = RNG.normal(size=(C, 3, 3, 3)).astype(np.float32)


def _constant(name: str, values) -> onnx.NodeProto:
    array = numpy_helper.from_array(np.array(values, np.int64))
    return helper.make_node("Constant", [], [name], name=name, value=array)


def _output(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["d0", "d1", "d2", "d3"])


def _stem(height=H) -> tuple[list, list, list]:
    """image (1,3,H,W) -> Conv -> Transpose: ``nhwc`` (1,H,W,C) channels-last."""
    nodes = [
        helper.make_node("Conv", ["image", "conv_w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["conv"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
    ]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, height, W])]
    return nodes, inputs, [("conv_w", CONV_W)]


def patch_merging_model(height=H, merged_shape=(1, H // 2, W // 2, 4 * C)) -> onnx.ModelProto:
    """Swin's PatchMerging after the stem, plus Reshapes that are not the image: ``wrong`` (1,H,W,C) ->
    (1,W,H,C) relabels sizes (not a transpose), ``folded`` (1,2H,W/2,C) puts half of each row's columns
    on the rows' axis."""
    nodes, inputs, weights = _stem(height)
    nodes += [
        _constant("split_shape", [1, -1, 2, W // 2, 2, C]),
        _constant("merged_shape", list(merged_shape)),
        _constant("wrong_shape", [1, W, -1, C]),
        _constant("folded_shape", [1, -1, W // 2, C]),
        helper.make_node("Reshape", ["nhwc", "split_shape"], ["split"], name="split"),
        helper.make_node("Transpose", ["split"], ["offsets"], name="offsets", perm=[0, 1, 3, 4, 2, 5]),
        helper.make_node("Reshape", ["offsets", "merged_shape"], ["merged"], name="merge"),
        helper.make_node("LayerNormalization", ["merged", "ln_scale", "ln_bias"], ["merged_ln"], name="norm", axis=-1),
        helper.make_node("MatMul", ["merged_ln", "reduction_w"], ["reduced"], name="reduction"),
        helper.make_node("Reshape", ["nhwc", "wrong_shape"], ["wrong"], name="wrong"),
        helper.make_node("Relu", ["wrong"], ["wrong_relu"], name="wrong_relu"),
        helper.make_node("Reshape", ["nhwc", "folded_shape"], ["folded"], name="folded"),
    ]
    weights += [("ln_scale", RNG.uniform(0.5, 1.5, 4 * C)), ("ln_bias", RNG.normal(size=4 * C)),
                ("reduction_w", RNG.normal(size=(4 * C, 2 * C)))]
    return make_model(nodes, inputs, [_output(name) for name in ("reduced", "wrong_relu", "folded")], weights)


def window_model(window=4) -> onnx.ModelProto:
    """Swin's window partition to (windows, ws, ws, C), tokens (windows, ws*ws, C), and its reverse."""
    nh, nw = H // window, W // window
    nodes, inputs, weights = _stem()
    nodes += [
        _constant("part_shape", [1, nh, window, nw, window, C]),
        _constant("windows_shape", [-1, window, window, C]),
        _constant("tokens_shape", [-1, window * window, C]),
        _constant("back_shape", [1, nh, nw, window, window, C]),
        _constant("image_shape", [1, H, W, C]),
        helper.make_node("Relu", ["nhwc"], ["nhwc_relu"], name="relu"),
        helper.make_node("Reshape", ["nhwc_relu", "part_shape"], ["part"], name="part"),
        helper.make_node("Transpose", ["part"], ["part_t"], name="part_t", perm=[0, 1, 3, 2, 4, 5]),
        helper.make_node("Reshape", ["part_t", "windows_shape"], ["windows"], name="windows"),
        helper.make_node("Reshape", ["windows", "tokens_shape"], ["tokens"], name="tokens"),
        helper.make_node("Relu", ["tokens"], ["tokens_relu"], name="tokens_relu"),
        helper.make_node("Reshape", ["tokens_relu", "back_shape"], ["back"], name="back"),
        helper.make_node("Transpose", ["back"], ["back_t"], name="back_t", perm=[0, 1, 3, 2, 4, 5]),
        helper.make_node("Reshape", ["back_t", "image_shape"], ["restored"], name="restored"),
        helper.make_node("Sigmoid", ["restored"], ["out"], name="out"),
    ]
    return make_model(nodes, inputs, [_output("out")], weights)


def _fmonnx(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmonnx", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _rows(path) -> dict:
    done = _fmonnx("layers", path, "--json", "--all-spatial")
    assert done.returncode == 0, done.stderr
    return {row["tensor"]: row for row in json.loads(done.stdout)}


def _onnxruntime(model: onnx.ModelProto, names: list[str], image: np.ndarray) -> dict[str, np.ndarray]:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {"image": image})))


def _layouts(model: onnx.ModelProto) -> dict[str, Layout]:
    return channel_axes(model, infer_types(model), Layout(1, True))


def test_patch_merging_is_channels_last_and_holds_each_offset(tmp_path):
    model = patch_merging_model()
    rows = _rows(save(model, tmp_path, "merging.onnx"))
    for tensor, channels in (("merged", 4 * C), ("merged_ln", 4 * C), ("reduced", 2 * C)):
        row = rows[tensor]
        assert (row["channel_axis"], row["layout_certain"]) == (3, True), tensor
        assert row["shape"] == [channels, H // 2, W // 2], tensor
    layouts = _layouts(model)
    assert "wrong_relu" not in layouts and "folded" not in layouts

    # Truth: the merged tensor onnxruntime computes holds, at channel (dw*2 + dh)*C + c, pixel (2i+dh, 2j+dw)
    image = RNG.normal(size=(1, 3, H, W)).astype(np.float32)
    got = _onnxruntime(model, ["nhwc", "merged"], image)
    nhwc, merged = got["nhwc"][0], got["merged"][0]
    want = np.empty((H // 2, W // 2, 4 * C), np.float32)
    for i in range(H // 2):
        for j in range(W // 2):
            for dh in range(2):
                for dw in range(2):
                    want[i, j, (dw * 2 + dh) * C:(dw * 2 + dh + 1) * C] = nhwc[2 * i + dh, 2 * j + dw]
    np.testing.assert_array_equal(merged, want)


def test_patch_merging_renders_on_the_channel_axis(tmp_path):
    model = patch_merging_model()
    path = save(model, tmp_path, "merging.onnx")
    pixels = np.random.default_rng(3).integers(0, 256, size=(H, W, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    out = tmp_path / "maps"
    done = _fmonnx("render", path, tmp_path / "photo.png", "-o", out, "--all-spatial", "--save-arrays")
    assert done.returncode == 0, done.stderr
    (shown,) = json.loads((out / "manifest.json").read_text())["images"]
    layers = {layer["tensor"]: layer for layer in shown["layers"]}
    truth = _onnxruntime(model, ["merged", "reduced"], np.load(out / shown["input_array"]))
    for tensor in ("merged", "reduced"):
        assert layers[tensor]["layout_certain"] is True
        drawn = np.load(out / layers[tensor]["array"])
        np.testing.assert_allclose(drawn, truth[tensor][0].transpose(2, 0, 1), rtol=1e-5, atol=1e-5)


def test_window_reverse_is_the_image_again_and_windows_are_not(tmp_path):
    model = window_model()
    path = save(model, tmp_path, "windows.onnx")
    rows = _rows(path)
    layouts = _layouts(model)
    assert "windows" not in layouts  # (windows, ws, ws, C): the rows are on the window axis
    assert (rows["restored"]["channel_axis"], rows["restored"]["layout_certain"]) == (3, True)
    assert rows["restored"]["shape"] == [C, H, W]
    assert layouts["out"] == Layout(3, True)
    image = RNG.normal(size=(1, 3, H, W)).astype(np.float32)
    got = _onnxruntime(model, ["nhwc_relu", "restored"], image)
    np.testing.assert_array_equal(got["restored"], got["nhwc_relu"])


def test_a_cut_that_does_not_divide_or_a_symbolic_size_proves_nothing():
    """Control first: static sizes prove the merge; a symbolic height or a cut across sizes that do not
    divide (H/2 x W/2 x 4C read as (1, W/2, H/2, 4C) with 4 rows not dividing 6) leave it unproven."""
    assert _layouts(patch_merging_model())["merged"] == Layout(3, True)
    assert "merged" not in _layouts(patch_merging_model(merged_shape=(1, W // 2, H // 2, 4 * C)))
    assert "merged" not in _layouts(patch_merging_model(height="h"))


def test_torch_patch_merging_renders_as_torch_computes_it(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class PatchMerging(nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            self.norm = nn.LayerNorm(4 * channels)
            self.reduction = nn.Linear(4 * channels, 2 * channels, bias=False)

        def forward(self, x):
            b, h, w, c = x.shape
            x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
            return self.reduction(self.norm(x))

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 4, stride=4)
            self.merge = PatchMerging(8)

        def forward(self, x):
            return self.merge(self.stem(x).permute(0, 2, 3, 1))

    torch.manual_seed(0)
    module = Tiny().eval()
    x = torch.rand(1, 3, 32, 48)
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(module, (x,), str(path), dynamo=True)

    pixels = np.random.default_rng(5).integers(0, 256, size=(32, 48, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    out = tmp_path / "maps"
    done = _fmonnx("render", path, tmp_path / "photo.png", "-o", out, "--all-spatial", "--save-arrays")
    assert done.returncode == 0, done.stderr
    (shown,) = json.loads((out / "manifest.json").read_text())["images"]
    fed = torch.from_numpy(np.load(out / shown["input_array"]))
    hooked = {}
    module.merge.reduction.register_forward_hook(lambda _m, _i, output: hooked.setdefault("reduced", output))
    with torch.no_grad():
        module(fed)
    want = hooked["reduced"][0].numpy()  # (4, 6, 16) channels last
    layers = {layer["name"]: layer for layer in shown["layers"]}
    reduced = layers["merge.reduction"]
    assert (reduced["channel_axis"], reduced["layout_certain"]) == (3, True)
    assert reduced["shape"] == [16, 4, 6]  # 16 features of 4 x 6 pixels, not 6 features of 4 x 16
    drawn = np.load(out / reduced["array"])
    np.testing.assert_allclose(drawn, want.transpose(2, 0, 1), rtol=1e-4, atol=1e-5)


def mobilevit_model(patch=2) -> onnx.ModelProto:
    """MobileViT's unfold of (1,C,H,W) into (patch_area, patches, C) tokens, a residual token MLP whose
    weight is the identity (so the tokens come back doubled), and the fold back to (1,C,H,W)."""
    nh, nw, area = H // patch, W // patch, patch * patch
    shapes = {
        "u1": [C * nh, patch, nw, patch], "u2": [1, C, nh * nw, area], "u3": [area, nh * nw, C],
        "f1": [1, area, nh * nw, C], "f2": [C * nh, nw, patch, patch], "f3": [1, C, H, W],
    }
    nodes = [_constant(name + "_shape", values) for name, values in shapes.items()]
    nodes += [
        helper.make_node("Conv", ["image", "conv_w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["nchw"], name="relu"),
        helper.make_node("Reshape", ["nchw", "u1_shape"], ["u1"], name="u1"),
        helper.make_node("Transpose", ["u1"], ["u1_t"], name="u1_t", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["u1_t", "u2_shape"], ["u2"], name="u2"),
        helper.make_node("Transpose", ["u2"], ["patches"], name="patches", perm=[0, 3, 2, 1]),
        helper.make_node("Reshape", ["patches", "u3_shape"], ["tokens"], name="tokens"),
        helper.make_node("MatMul", ["tokens", "eye"], ["mlp"], name="mlp"),
        helper.make_node("Add", ["tokens", "mlp"], ["residual"], name="residual"),
        helper.make_node("Reshape", ["residual", "f1_shape"], ["f1"], name="f1"),
        helper.make_node("Transpose", ["f1"], ["f1_t"], name="f1_t", perm=[0, 3, 2, 1]),
        helper.make_node("Reshape", ["f1_t", "f2_shape"], ["f2"], name="f2"),
        helper.make_node("Transpose", ["f2"], ["f2_t"], name="f2_t", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["f2_t", "f3_shape"], ["folded"], name="folded"),
        helper.make_node("Sigmoid", ["folded"], ["out"], name="out"),
    ]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, H, W])]
    return make_model(nodes, inputs, [_output("out")], [("conv_w", CONV_W), ("eye", np.eye(C))])


def test_mobilevit_fold_is_the_image_again(tmp_path):
    model = mobilevit_model()
    rows = _rows(save(model, tmp_path, "mobilevit.onnx"))
    assert (rows["folded"]["channel_axis"], rows["folded"]["layout_certain"]) == (1, True)
    assert rows["folded"]["shape"] == [C, H, W]
    layouts = _layouts(model)
    assert "patches" not in layouts and "f1" not in layouts  # (1, patch_area, patches, C): not an image
    got = _onnxruntime(model, ["nchw", "folded"], RNG.normal(size=(1, 3, H, W)).astype(np.float32))
    np.testing.assert_allclose(got["folded"], 2 * got["nchw"], rtol=1e-6)
