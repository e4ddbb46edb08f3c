"""Transformer tokens whose grid the graph proves are drawn as C maps of h x w (issue 14).

A tiny ViT (Conv patch embedding, class token, position embedding, two blocks of real multi-head
attention and MLP) exported with torch.onnx (dynamo): each block's output is shown by default under the
block's name, and its maps equal the torch block's output (forward hooks) with the class token dropped,
reshaped to (h, w, C). The attention probabilities are not feature maps: --all-spatial says why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from conftest import make_model, save

torch = pytest.importorskip("torch")
nn = torch.nn

DIM, PATCH = 8, 16
NOT_A_GRID = "its tokens are not a proven h x w grid"


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = nn.LayerNorm(dim), Attention(dim), nn.LayerNorm(dim), Mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """64x64 input -> 16x16 patches (4x4 grid of 8 channels) -> class token + position embedding -> 2 blocks."""

    def __init__(self, grid: int | None = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM))
        # a fixed-size position embedding ties the model to one input size; the dynamic model has none
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, DIM)) if grid else None
        self.blocks = nn.Sequential(Block(DIM), Block(DIM))
        self.norm = nn.LayerNorm(DIM)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]


def _vit(tmp_path: Path, dynamic: bool) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    module = ViT(None if dynamic else 4).eval()
    with torch.no_grad():  # norms that are not identities, so a layer one off cannot match
        for name, tensor in module.named_parameters():
            if "norm" in name:
                tensor.copy_(torch.rand(tensor.shape) + 0.5 if name.endswith("weight") else torch.randn(tensor.shape))
    path = tmp_path / ("vit_dynamic.onnx" if dynamic else "vit.onnx")
    shapes = ({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO},) if dynamic else None
    torch.onnx.export(module, (torch.randn(1, 3, 64, 64),), str(path), dynamo=True, dynamic_shapes=shapes)
    return module, path


def _photo(tmp_path: Path, height: int, width: int) -> Path:
    rows, cols = np.mgrid[0:height, 0:width]
    pixels = np.stack([rows * 3 % 256, cols * 5 % 256, (rows * cols) % 256], axis=-1).astype(np.uint8)
    path = tmp_path / f"photo_{height}x{width}.png"
    Image.fromarray(pixels).save(path)
    return path


def _fmonnx(*args, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "fmonnx", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _torch_block_maps(module: nn.Module, fed: np.ndarray) -> dict[str, np.ndarray]:
    """Each block's output (and the final norm's) from forward hooks: class token dropped, (C, h, w)."""
    grid = (fed.shape[2] // PATCH, fed.shape[3] // PATCH)
    captured = {}
    hooks = [getattr(module, path.split(".")[0])[int(path.split(".")[1])].register_forward_hook(
        lambda m, i, o, path=path: captured.__setitem__(path, o)) for path in ("blocks.0", "blocks.1")]
    hooks.append(module.norm.register_forward_hook(lambda m, i, o: captured.__setitem__("norm", o)))
    with torch.no_grad():
        module(torch.from_numpy(fed))
    for hook in hooks:
        hook.remove()
    return {name: out[0, 1:].reshape(*grid, DIM).permute(2, 0, 1).numpy() for name, out in captured.items()}


def _render_and_check(module, model: Path, photo: Path, out: Path, *extra) -> dict:
    _fmonnx("render", model, photo, "-o", out, "--save-arrays", "--no-report", *extra, cwd=out.parent)
    (image,) = json.loads((out / "manifest.json").read_text())["images"]
    layers = {layer["name"]: layer for layer in image["layers"]}
    fed = np.load(out / image["input_array"])
    truth = _torch_block_maps(module, fed)
    grid = [fed.shape[2] // PATCH, fed.shape[3] // PATCH]
    for name in ("blocks.0", "blocks.1", "norm"):
        layer = layers[name]
        assert layer["shape"] == [DIM, *grid] and layer["channel_axis"] == 3, layer
        drawn = np.load(out / layer["array"])
        assert np.allclose(drawn, truth[name], atol=1e-4), name
    return layers


def test_vit_blocks_are_shown_by_default_as_maps_equal_to_torch(tmp_path):
    module, model = _vit(tmp_path, dynamic=False)
    photo = _photo(tmp_path, 64, 64)
    layers = _render_and_check(module, model, photo, tmp_path / "maps")
    # one map set per block, named after it, plus the patch embedding and the final norm
    assert list(layers) == ["patch_embed", "blocks.0", "blocks.1", "norm"]
    # the manifest still says which graph tensor the maps come from
    assert all(layers[name]["tensor"].endswith("/token_maps") for name in ("blocks.0", "blocks.1", "norm"))
    assert all(layers[name]["layout_certain"] for name in layers)

    # the Python API computes the same numbers
    import fmonnx

    values = fmonnx.activations(model, photo)
    for name in ("blocks.0", "blocks.1", "norm"):
        assert np.allclose(values[name], np.load(tmp_path / "maps" / layers[name]["array"]), atol=1e-6)


def test_attention_softmax_is_set_aside_with_its_reason(tmp_path):
    _, model = _vit(tmp_path, dynamic=False)
    rows = json.loads(_fmonnx("layers", model, "--json", cwd=tmp_path))
    assert all(row["op"] != "Softmax" for row in rows)
    rows = json.loads(_fmonnx("layers", model, "--json", "--all-spatial", cwd=tmp_path))
    softmax = [row for row in rows if row["op"] == "Softmax"]
    assert len(softmax) == 2 and all(NOT_A_GRID in row["not_shown"] for row in softmax)
    shown = {row["name"] for row in rows if "not_shown" not in row}
    assert {"blocks.0", "blocks.1", "blocks.0.mlp.act", "norm"} <= shown


def test_dynamic_size_vit_draws_its_grid_at_each_size(tmp_path):
    module, model = _vit(tmp_path, dynamic=True)
    for height, width in ((64, 64), (48, 80)):
        photo = _photo(tmp_path, height, width)
        out = tmp_path / f"maps_{height}x{width}"
        layers = _render_and_check(module, model, photo, out, "--size", f"{height}x{width}")
        assert layers["blocks.1"]["shape"] == [DIM, height // PATCH, width // PATCH]


def test_square_token_count_without_a_proven_grid_is_not_drawn(tmp_path):
    """input [1,3,8,8] -> Conv -> Reshape [1,16,4] of a rank-3 side input: 16 tokens, but no grid proof."""
    weight = np.ones((4, 3, 1, 1), np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["conv"], name="conv"),
        helper.make_node("Flatten", ["conv"], ["flat"], name="flat", axis=1),  # (1, 256): the grid is lost
        helper.make_node("Reshape", ["flat", "shape"], ["tokens"], name="to_tokens"),  # (1, 64, 4): 64 is 8 x 8
        helper.make_node("Add", ["tokens", "tokens"], ["doubled"], name="residual"),
        helper.make_node("Relu", ["doubled"], ["output"], name="relu"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 64, 4])],
        [("w", weight), ("shape", np.array([1, 64, 4], np.int64))],
    )
    path = save(model, tmp_path, "square.onnx")
    for extra in ((), ("--all-spatial",)):
        rows = json.loads(_fmonnx("layers", path, "--json", *extra, cwd=tmp_path))
        assert [row["tensor"] for row in rows] == ["conv"], extra


def _swin_like(timm_mlp: bool) -> onnx.ModelProto:
    """Conv patch embed (1,4,4,4) -> Transpose to NHWC -> LayerNorm -> Reshape to 4 windows (4,2,2,4) ->
    MatMul -> Softmax (the attention) -> Reshape back (1,4,4,4) -> Add residual -> LayerNorm -> MatMul ->
    Gelu -> MatMul -> Add residual.

    ``timm_mlp``: the MLP half runs on tokens as timm's Swin does: Reshape [1, -1, 4] (1,16,4) before the
    LayerNorm, Reshape [1, 4, 4, 4] back after the residual Add.
    """
    rng = np.random.default_rng(3)
    weights = [
        ("w_embed", rng.normal(size=(4, 3, 2, 2)).astype(np.float32)),
        ("w_attn", rng.normal(size=(4, 4)).astype(np.float32)),
        ("w_fc1", rng.normal(size=(4, 8)).astype(np.float32)),
        ("w_fc2", rng.normal(size=(8, 4)).astype(np.float32)),
        ("scale", np.ones(4, np.float32)),
    ]
    shapes = [("windows_shape", [4, 2, 2, 4]), ("image_shape", [1, 4, 4, 4]), ("tokens_shape", [1, -1, 4])]
    nodes = [helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(np.array(v, np.int64)))
             for name, v in shapes]
    nodes += [
        helper.make_node("Conv", ["input", "w_embed"], ["embed"], name="patch_embed", strides=[2, 2]),
        helper.make_node("Transpose", ["embed"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["nhwc", "scale"], ["norm1"], name="norm1", axis=-1),
        helper.make_node("Reshape", ["norm1", "windows_shape"], ["windows"], name="to_windows"),
        helper.make_node("MatMul", ["windows", "w_attn"], ["scores"], name="attn"),
        helper.make_node("Softmax", ["scores"], ["attended"], name="attn_softmax", axis=-1),
        helper.make_node("Reshape", ["attended", "image_shape"], ["merged"], name="from_windows"),
        helper.make_node("Add", ["nhwc", "merged"], ["stage_attn"], name="attn_residual"),
    ]
    mlp_in, mlp_out = ("tokens", "stage_tokens") if timm_mlp else ("stage_attn", "output")
    if timm_mlp:
        nodes.append(helper.make_node("Reshape", ["stage_attn", "tokens_shape"], ["tokens"], name="to_tokens"))
    nodes += [
        helper.make_node("LayerNormalization", [mlp_in, "scale"], ["norm2"], name="norm2", axis=-1),
        helper.make_node("MatMul", ["norm2", "w_fc1"], ["fc1"], name="fc1"),
        helper.make_node("Gelu", ["fc1"], ["gelu"], name="gelu"),
        helper.make_node("MatMul", ["gelu", "w_fc2"], ["fc2"], name="fc2"),
        helper.make_node("Add", [mlp_in, "fc2"], [mlp_out], name="stage1"),
    ]
    if timm_mlp:
        nodes.append(helper.make_node("Reshape", ["stage_tokens", "image_shape"], ["output"], name="to_image"))
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 4, 4])],
        weights,
        opset=20,
    )


def test_swin_like_stage_output_is_shown_channels_last_by_default(tmp_path):
    path = save(_swin_like(timm_mlp=False), tmp_path, "swin.onnx")
    rows = {row["tensor"]: row for row in json.loads(_fmonnx("layers", path, "--json", cwd=tmp_path))}
    assert set(rows) == {"embed", "gelu", "output"}  # the window batch is not shown
    for tensor in ("output", "gelu"):
        assert (rows[tensor]["channel_axis"], rows[tensor]["layout_certain"]) == (3, True), tensor
    assert rows["output"]["shape"] == [4, 4, 4]


def test_swin_like_token_mlp_is_drawn_and_its_image_keeps_channels_last(tmp_path):
    model = _swin_like(timm_mlp=True)
    path = save(model, tmp_path, "swin_tokens.onnx")
    # by default the block's output: its MLP residual reshaped back to (1, 4, 4, 4), channels last, proven
    # (a Swin block's own output, so it carries the block's name), not the same values again as tokens
    rows = {row["tensor"]: row for row in json.loads(_fmonnx("layers", path, "--json", cwd=tmp_path))}
    assert "stage_tokens/token_maps" not in rows
    assert (rows["output"]["channel_axis"], rows["output"]["layout_certain"]) == (3, True)
    assert rows["output"]["shape"] == [4, 4, 4]
    rows = {row["tensor"]: row for row in json.loads(_fmonnx("layers", path, "--json", "--all-spatial",
                                                                    cwd=tmp_path))}
    assert rows["stage_tokens/token_maps"]["name"] == "stage1" and rows["stage_tokens/token_maps"]["shape"] == [4, 4, 4]

    # the drawn stage output equals onnxruntime's tokens of the unmodified graph, as (C, h, w)
    import onnxruntime as ort

    import fmonnx

    photo = _photo(tmp_path, 8, 8)
    out = tmp_path / "maps"
    _fmonnx("render", path, photo, "-o", out, "--save-arrays", "--no-report", "--all-spatial", cwd=tmp_path)
    (image,) = json.loads((out / "manifest.json").read_text())["images"]
    layer = next(entry for entry in image["layers"] if entry["name"] == "stage1")
    block = next(entry for entry in image["layers"] if entry["tensor"] == "output")
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(helper.make_tensor_value_info("stage_tokens", TensorProto.FLOAT, None))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    (truth,) = session.run(["stage_tokens"], {"input": np.load(out / image["input_array"])})
    assert np.allclose(np.load(out / layer["array"]), truth[0].reshape(4, 4, 4).transpose(2, 0, 1), atol=1e-5)
    assert np.allclose(np.load(out / block["array"]), truth[0].reshape(4, 4, 4).transpose(2, 0, 1), atol=1e-5)
    shown = fmonnx.activations(path, photo)
    assert np.allclose(shown[block["name"]], truth[0].reshape(4, 4, 4).transpose(2, 0, 1), atol=1e-5)


def test_token_maps_in_passes_and_scan(tmp_path):
    """A render cut into passes and a scan both run the nodes that draw tokens (they are not in the file)."""
    from fmonnx.options import RenderOptions
    from fmonnx.stages.pieces import plan_passes
    from fmonnx.stages.plan import plan_model
    from fmonnx.stages.runner import Runner, _sized, open_session

    _, model = _vit(tmp_path, dynamic=False)
    plan = plan_model(model)
    fed = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    types, sizes, exposed, sketch = _sized(plan, fed.shape)
    pieces = plan_passes(sketch, exposed, sizes, budget=0)  # one node per pass
    assert len(pieces) > 4
    got = dict(Runner(plan, RenderOptions()).run_in_passes(pieces, types, fed))
    session = open_session(plan)
    truth = dict(zip([o.name for o in session.get_outputs()], session.run(None, {plan.input.name: fed})))
    maps = [name for name in exposed if name.endswith("/token_maps")]
    assert len(maps) == 3
    for name in maps:
        assert got[name].shape == (1, 4, 4, DIM) and np.allclose(got[name], truth[name], atol=1e-6)

    folder = tmp_path / "images"
    folder.mkdir()
    for size in (64, 96):
        _photo(folder, size, size)
    _fmonnx("scan", model, folder, "-o", tmp_path / "scan", cwd=tmp_path)
    assert (tmp_path / "scan" / "scan.json").exists()
