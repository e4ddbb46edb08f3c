"""fmonnx compare: real onnxruntime sessions on models built here with known weights, and their variants
(a planted fault, fp16 through Casts, int8 QDQ through DequantizeLinear, optimization levels)."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from test_browser import browser, open_page  # noqa: F401  (fixtures)

import fmonnx
from conftest import make_model, save
from fmonnx.cli import cli
from fmonnx.errors import FmonnxError
from fmonnx.stages.agreement import Agreement, Tolerance

SIZE = 16
LAYER_FIELDS = {
    "name", "a_tensor", "b_tensor", "shape", "max_abs", "mean_abs", "rmse", "rel_l2", "cosine", "sqnr_db",
    "nonfinite_a", "nonfinite_b", "within_tolerance",
}


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32),
        "b1": rng.normal(0, 0.1, 8).astype(np.float32),
        "w2": rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32),
        "w3": rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32),
    }


def cnn(values: dict[str, np.ndarray] | None = None, prefix: str = "") -> onnx.ModelProto:
    """input (1,3,16,16) -> c1 -> r1 -> c2 -> r2 -> p (MaxPool 2x2) -> c3 -> GlobalAveragePool -> output.

    Node names are PyTorch-like (``/c1/Conv``), so the display names are c1, r1, c2, r2, p, c3;
    ``prefix`` renames every tensor (not the nodes).
    """
    values = values or weights()
    t = lambda name: prefix + name  # noqa: E731
    nodes = [
        helper.make_node("Conv", [t("input"), "w1", "b1"], [t("c1_out")], name="/c1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", [t("c1_out")], [t("r1_out")], name="/r1/Relu"),
        helper.make_node("Conv", [t("r1_out"), "w2"], [t("c2_out")], name="/c2/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", [t("c2_out")], [t("r2_out")], name="/r2/Relu"),
        helper.make_node("MaxPool", [t("r2_out")], [t("p_out")], name="/p/MaxPool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", [t("p_out"), "w3"], [t("c3_out")], name="/c3/Conv"),
        helper.make_node("GlobalAveragePool", [t("c3_out")], [t("output")], name="/gap/GlobalAveragePool"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info(t("input"), TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(t("output"), TensorProto.FLOAT, [1, 4, 1, 1])],
        list(values.items()),
        producer="pytorch",
    )


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An fp16 copy with float32 input and output (what onnxconverter-common's keep_io_types does):
    weights and every tensor in float16, a Cast after the input and a Cast making the output."""
    graph = model.graph
    input_name, output_name = graph.input[0].name, graph.output[0].name
    nodes = [helper.make_node("Cast", [input_name], [input_name + "_fp16"], name="input_cast", to=TensorProto.FLOAT16)]
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [name + "_fp16" if name == input_name else name for name in copy.input]
        copy.output[:] = [name + "_fp16" if name == output_name else name for name in copy.output]
        nodes.append(copy)
    nodes.append(helper.make_node("Cast", [output_name + "_fp16"], [output_name], name="output_cast",
                                  to=TensorProto.FLOAT))
    initializers = [numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name)
                    for tensor in graph.initializer]
    converted = helper.make_graph(nodes, "fp16", list(graph.input), list(graph.output), initializer=initializers)
    result = helper.make_model(converted, producer_name=model.producer_name, opset_imports=list(model.opset_import))
    result.ir_version = model.ir_version
    onnx.checker.check_model(result)
    return result


def quantized(source, target, keep_activations: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Calibration(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.feeds = iter([{"input": rng.random((1, 3, SIZE, SIZE), dtype=np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(
        str(source), str(target), Calibration(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8, extra_options={"QDQKeepRemovableActivations": keep_activations},
    )


@pytest.fixture
def photo(write_image):
    rng = np.random.default_rng(2)
    return write_image(rng.integers(0, 256, (SIZE, SIZE, 3)), "photo.png")


@pytest.fixture
def model_a(tmp_path):
    return save(cnn(), tmp_path, "a.onnx")


@pytest.fixture
def faulty(tmp_path):
    values = weights()
    values["w2"] = values["w2"].copy()
    values["w2"][3] *= -1.5  # one output channel of c2 planted wrong
    return save(cnn(values), tmp_path, "faulty.onnx")


def test_planted_fault_is_the_first_divergence_and_the_layers_before_it_agree_exactly(model_a, faulty, photo,
                                                                                     tmp_path):
    result = fmonnx.compare(model_a, faulty, [photo], out=tmp_path / "out")
    names = [layer["name"] for layer in result.layers]
    assert names == ["c1", "r1", "c2", "r2", "p", "c3"]
    assert result.first_divergence == "c2" and not result.within_tolerance
    by_name = {layer["name"]: layer for layer in result.layers}
    assert by_name["c1"]["sqnr_db"] == math.inf and by_name["r1"]["sqnr_db"] == math.inf
    assert by_name["c1"]["max_abs"] == 0 and by_name["c1"]["cosine"] == 1.0
    assert by_name["c2"]["sqnr_db"] < 30 and by_name["c2"]["worst_channels"][0] == 3
    assert result.unpaired == []
    record = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert record["first_divergence"] == "c2"
    assert record["layers"][0]["sqnr_db"] == math.inf  # 1e999 in the file: json reads it back as infinity
    assert "1e999" in (tmp_path / "out" / "compare.json").read_text()
    assert all(LAYER_FIELDS <= set(layer) for layer in record["layers"])
    assert record["layers"][2]["shape"] == [8, SIZE, SIZE] and record["layers"][4]["shape"] == [8, 8, 8]
    assert {"unpaired", "outputs", "first_divergence"} <= set(record)
    assert record["outputs"][0]["name"] == "output" and record["outputs"][0]["sqnr_db"] < 30
    files = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert files == sorted([*record["files"], "compare.json"])
    assert "002_c2.png" in files and "index.html" in files


def test_figures_aggregate_over_images(model_a, faulty, write_image, tmp_path):
    rng = np.random.default_rng(3)
    images = [write_image(rng.integers(0, 256, (SIZE, SIZE, 3)), f"{index}.png") for index in range(3)]
    one = fmonnx.compare(model_a, faulty, images[:1], out=tmp_path / "one").layer("c2")
    three = fmonnx.compare(model_a, faulty, images, out=tmp_path / "three")
    assert three.record["images"] == [str(image) for image in images]
    assert three.layer("c2")["max_abs"] >= one["max_abs"]
    assert three.layer("c1")["sqnr_db"] == math.inf


def test_fp16_model_pairs_through_its_casts(model_a, photo, tmp_path):
    half = save(to_fp16(cnn()), tmp_path, "half.onnx")
    result = fmonnx.compare(model_a, half, [photo], out=tmp_path / "out")
    assert result.unpaired == []
    assert [layer["name"] for layer in result.layers] == ["c1", "r1", "c2", "r2", "p", "c3"]
    assert all(layer["paired_by"] == "tensor name" for layer in result.layers)
    for layer in result.layers:
        assert 40 < layer["sqnr_db"] < math.inf and layer["nonfinite_b"] == 0, layer
    assert result.within_tolerance and result.first_divergence is None
    assert result.outputs[0]["b_tensor"] == "output" and result.outputs[0]["sqnr_db"] > 40


def test_fp16_overflow_is_the_first_layer_with_inf(photo, tmp_path):
    values = weights()
    values["w2"] = values["w2"] * 1e4  # c2 passes float16's 65504
    reference = save(cnn(values), tmp_path, "big.onnx")
    half = save(to_fp16(cnn(values)), tmp_path, "big_half.onnx")
    result = fmonnx.compare(reference, half, [photo], out=tmp_path / "out")
    assert result.first_divergence == "c2"
    layer = result.layer("c2")
    assert layer["nonfinite_a"] == 0 and layer["nonfinite_b"] > 0 and not layer["within_tolerance"]
    assert result.layer("c1")["nonfinite_b"] == 0


def test_int8_qdq_every_float_tensor_paired_through_its_dequantize(model_a, photo, tmp_path):
    int8 = tmp_path / "int8.onnx"
    quantized(model_a, int8, keep_activations=True)
    graph = onnx.load(str(int8)).graph
    made_by = {output: node.op_type for node in graph.node for output in node.output}
    result = fmonnx.compare(model_a, int8, [photo], out=tmp_path / "out")
    assert result.unpaired == []
    assert [layer["name"] for layer in result.layers] == ["c1", "r1", "c2", "r2", "p", "c3"]
    for layer in result.layers:
        assert made_by[layer["b_tensor"]] == "DequantizeLinear", layer
        assert layer["b_source"] == layer["a_tensor"] and layer["paired_by"] == "tensor name + QDQ"
        assert layer["sqnr_db"] < math.inf
    # the quantizer gives a Conv followed by a Relu the Relu's range: its negative half is clipped
    assert result.first_divergence == "c1" and result.layer("c1")["sqnr_db"] < 10
    assert all(result.layer(name)["sqnr_db"] > 30 for name in ("r1", "r2", "p", "c3"))
    assert result.outputs[0]["sqnr_db"] > 30


def test_int8_qdq_with_relus_folded_lists_the_fused_convs_as_unpaired(model_a, photo, tmp_path):
    int8 = tmp_path / "int8.onnx"
    quantized(model_a, int8, keep_activations=False)  # the quantizer's default: Relu folded into the Conv
    result = fmonnx.compare(model_a, int8, [photo], out=tmp_path / "out", min_sqnr=10)
    assert [layer["name"] for layer in result.layers] == ["r1", "r2", "p", "c3"]
    unpaired = {item["name"]: item for item in result.unpaired}
    assert set(unpaired) == {"c1", "c2"}
    assert all(item["side"] == "a" and item["reason"].startswith("fused away in B") for item in unpaired.values())
    assert "writes r1_out" in unpaired["c1"]["reason"]


def test_optimization_levels_on_one_model(model_a, photo, tmp_path):
    result = fmonnx.compare(model_a, None, [photo], out=tmp_path / "out", optimization_a="disable",
                            optimization_b="all")
    record = result.record
    assert record["a"]["optimization"] == "disable" and record["b"]["optimization"] == "all"
    assert record["a"]["model"] == record["b"]["model"]
    assert result.unpaired == [] and len(result.layers) == 6
    assert all(layer["sqnr_db"] > 60 for layer in result.layers)
    assert result.within_tolerance


def test_repeat_reports_each_sides_noise_floor(model_a, photo, tmp_path):
    """What a CUDA side gets (run twice); the CPU is deterministic, so the floor is infinite."""
    result = fmonnx.compare(model_a, None, [photo], out=tmp_path / "out", repeat=True)
    for layer in result.layers:
        assert layer["noise_a"]["sqnr_db"] == math.inf and layer["noise_b"]["max_abs"] == 0


def test_display_names_pair_two_exports_with_different_tensor_names(model_a, photo, tmp_path):
    renamed = save(cnn(prefix="export2_"), tmp_path, "renamed.onnx")
    result = fmonnx.compare(model_a, renamed, [photo], out=tmp_path / "out")
    assert [layer["paired_by"] for layer in result.layers] == ["display name"] * 6
    assert all(layer["sqnr_db"] == math.inf for layer in result.layers)
    assert result.layers[0]["b_tensor"] == "export2_c1_out"
    assert result.outputs[0]["b_tensor"] == "export2_output"  # outputs pair by position when names differ


def test_unpaired_tensors_are_listed_with_the_reason_never_matched_by_position(model_a, photo, tmp_path):
    values = weights()
    model = cnn(values)
    nodes = list(model.graph.node)
    extra = helper.make_node("Relu", ["c3_out"], ["c3_relu"], name="/extra/Relu")
    nodes[-1] = helper.make_node("GlobalAveragePool", ["c3_relu"], ["output"], name="/gap/GlobalAveragePool")
    nodes.insert(6, extra)
    nodes[1].name = "/renamed/Relu"
    nodes[1].output[0] = "renamed_out"
    nodes[2].input[0] = "renamed_out"
    changed = make_model(nodes, list(model.graph.input), list(model.graph.output), list(values.items()),
                         producer="pytorch")
    result = fmonnx.compare(model_a, save(changed, tmp_path, "changed.onnx"), [photo], out=tmp_path / "out")
    assert [layer["name"] for layer in result.layers] == ["c1", "c2", "r2", "p", "c3"]
    unpaired = {(item["side"], item["name"]): item["reason"] for item in result.unpaired}
    assert set(unpaired) == {("a", "r1"), ("b", "renamed"), ("b", "extra")}
    assert "absent from B" in unpaired[("a", "r1")]
    assert "A has no tensor" in unpaired[("b", "extra")]


def test_models_with_different_inputs_are_refused_before_any_run(model_a, photo, tmp_path):
    other = make_model(
        [helper.make_node("Relu", ["input"], ["output"], name="/r/Relu")],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    with pytest.raises(FmonnxError, match=r"different inputs \(shape \[1, 3, 16, 16\] vs \[1, 3, 8, 8\]\)"):
        fmonnx.compare(model_a, save(other, tmp_path, "other.onnx"), [photo], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    half_input = make_model(
        [helper.make_node("Relu", ["input"], ["output"], name="/r/Relu")],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT16, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT16, [1, 3, SIZE, SIZE])],
    )
    with pytest.raises(FmonnxError, match=r"type FLOAT vs FLOAT16.*keep_io_types"):
        fmonnx.compare(model_a, save(half_input, tmp_path, "half_input.onnx"), [photo], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_exit_codes(model_a, faulty, photo, tmp_path):
    runner = CliRunner()
    same = runner.invoke(cli, ["compare", str(model_a), str(photo), "-o", str(tmp_path / "same"), "--channels", "2"])
    assert same.exit_code == 0, same.output
    assert json.loads((tmp_path / "same" / "compare.json").read_text())["layers"][0]["worst_channels"] == [0, 1]
    assert "Within tolerance" in same.output
    diverged = runner.invoke(cli, ["compare", str(model_a), str(faulty), str(photo), "-o", str(tmp_path / "bad")])
    assert diverged.exit_code == 3, diverged.output
    assert [line for line in diverged.output.splitlines() if line.startswith("Diverged")] == [
        line for line in diverged.output.splitlines() if "first diverging layer: c2 (" in line
    ]
    again = runner.invoke(cli, ["compare", str(model_a), str(faulty), str(photo), "-o", str(tmp_path / "bad")])
    assert again.exit_code == 3, again.output  # an earlier compare's folder is replaced
    loose = runner.invoke(cli, ["compare", str(model_a), str(faulty), str(photo), "-o", str(tmp_path / "loose"),
                                "--min-sqnr", "-100"])
    assert loose.exit_code == 0, loose.output
    tolerant = runner.invoke(cli, ["compare", str(model_a), str(faulty), str(photo), "-o", str(tmp_path / "atol"),
                                   "--atol", "1e6"])
    assert tolerant.exit_code == 0, tolerant.output
    missing = runner.invoke(cli, ["compare", str(tmp_path / "nope.onnx"), str(photo), "-o", str(tmp_path / "x")])
    assert missing.exit_code == 1 and missing.output.startswith("Error: ")
    assert "Traceback" not in missing.output and not (tmp_path / "x").exists()
    assert runner.invoke(cli, ["compare", "--help"]).exit_code == 0


def test_agreement_figures_on_known_arrays():
    a = np.ones((2, 3, 3), np.float32)
    same = Agreement()
    same.add(a, a.copy())
    figures = same.figures()
    assert figures["sqnr_db"] == math.inf and figures["rel_l2"] == 0 and figures["cosine"] == 1.0
    off = Agreement()
    off.add(a, a * 1.1)  # error 0.1 everywhere: SQNR 10 log10(1 / 0.01) = 20 dB
    figures = off.figures()
    assert figures["sqnr_db"] == pytest.approx(20, abs=1e-4) and figures["max_abs"] == pytest.approx(0.1, rel=1e-5)
    assert figures["rel_l2"] == pytest.approx(0.1, rel=1e-5) and not figures["within_tolerance"]
    assert Tolerance(min_sqnr=19).accepts(figures) and not Tolerance(rtol=0.05).accepts({**figures, "sqnr_db": 99,
                                                                                        "outside_tolerance": 18})
    broken = Agreement()
    b = a.copy()
    b[1, 0, 0] = np.inf
    broken.add(a, b)
    figures = broken.figures()
    assert figures["nonfinite_b"] == 1 and figures["nonfinite_a"] == 0 and not figures["within_tolerance"]
    assert figures["sqnr_db"] == math.inf  # over the positions finite on both sides
    assert broken.worst_channels(1) == [0] or broken.worst_channels(1) == [1]


def test_notebook_view_and_public_name(model_a, faulty, photo, tmp_path):
    assert "compare" in fmonnx.__all__
    result = fmonnx.compare(model_a, faulty, [photo], out=tmp_path / "out")
    view = result._repr_html_()
    assert "c2" in view and "NOT within tolerance" in view and "data:image/png;base64," in view
    assert "first diverging layer: c2" in repr(result)


def test_page_ranks_layers_and_opens_one_side_by_side(open_page, model_a, faulty, photo, tmp_path):  # noqa: F811
    result = fmonnx.compare(model_a, faulty, [photo], out=tmp_path / "out")
    opened = open_page(result.index)
    page = opened.page
    assert page.title() == "fmonnx compare: a.onnx vs faulty.onnx"
    assert "First diverging layer: c2" in page.locator("#verdict").inner_text()
    rows = page.locator("#layers tbody tr")
    ranked = rows.evaluate_all("(rows) => rows.map((row) => row.dataset.layer)")
    expected = sorted(result.layers, key=lambda layer: (layer["sqnr_db"], result.layers.index(layer)))
    assert ranked == [layer["name"] for layer in expected]
    page.locator('#layers tbody tr[data-layer="c2"]').click()
    detail = page.locator("#detail")
    detail.wait_for()
    assert detail.locator("h2").inner_text() == "c2"
    picture = detail.locator("img")
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=picture.element_handle())
    page.keyboard.press("Escape")
    assert detail.is_hidden()
    page.select_option("#sort", "graph")
    assert rows.evaluate_all("(rows) => rows.map((row) => row.dataset.layer)") == [
        layer["name"] for layer in result.layers
    ]
    page.check("#failing")
    assert page.locator("#layers tbody tr").count() == sum(not layer["within_tolerance"] for layer in result.layers)
    assert "every shown tensor" in page.locator("#unpaired").inner_text()
    assert opened.problems == []


def test_in_passes_the_figures_are_those_of_one_run(model_a, faulty, photo, tmp_path, unholdable_bounds):
    """A memory bound that forces passes on both sides: pairs are consumed in step as the passes run,
    and the final outputs come from a plain run; the figures do not change."""
    whole = fmonnx.compare(model_a, faulty, [photo], out=tmp_path / "whole")
    passed = fmonnx.compare(model_a, faulty, [photo], out=tmp_path / "passes",
                            options=fmonnx.RenderOptions(max_memory=2**20))
    assert [layer["name"] for layer in passed.layers] == [layer["name"] for layer in whole.layers]
    for one, other in zip(whole.layers + whole.outputs, passed.layers + passed.outputs):
        assert other["sqnr_db"] == pytest.approx(one["sqnr_db"], rel=1e-6)
        assert other["max_abs"] == pytest.approx(one["max_abs"], rel=1e-6)
    assert passed.first_divergence == "c2"
    assert passed.record["a"]["passes"]["count"] > 1 and passed.record["b"]["passes"]["count"] > 1
    assert passed.record["a"]["passes"]["max_memory"] <= 2**19  # the bound is shared: half each
    assert "passes" not in whole.record["a"]


@pytest.mark.keras
def test_keras_file_against_its_onnx_conversion(photo, tmp_path):
    """``fmonnx compare cnn.h5``: Keras's own layer outputs (NHWC, transposed) against the converted model's."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    keras = pytest.importorskip("keras")
    layers = keras.layers
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        layers.Conv2D(4, 3, activation="relu", name="conv"),
        layers.MaxPooling2D(2, name="pool"),
        layers.Conv2D(2, 1, name="head"),
        layers.GlobalAveragePooling2D(name="gap"),
    ], name="small")
    path = tmp_path / "cnn.h5"
    model.save(path)
    result = fmonnx.compare(path, None, [photo], out=tmp_path / "out")
    assert [layer["name"] for layer in result.layers] == ["conv", "pool", "head"]
    assert all(layer["paired_by"] == "layer output" for layer in result.layers)
    assert result.layers[0]["shape"] == [4, SIZE - 2, SIZE - 2]
    assert all(layer["sqnr_db"] > 80 for layer in result.layers), result.layers
    assert result.outputs[0]["sqnr_db"] > 80 and result.within_tolerance
    assert result.record["a"]["provider"].startswith("Keras ")
    assert [(item["side"], item["name"]) for item in result.unpaired] == [("b", "conv/Conv")]
    assert "inner tensor of Keras layer conv" in result.unpaired[0]["reason"]
    cli_run = CliRunner().invoke(cli, ["compare", str(path), str(photo), "-o", str(tmp_path / "cli")])
    assert cli_run.exit_code == 0, cli_run.output


def test_mixed_precision_tensor_is_compared_after_its_cast(model_a, photo, tmp_path):
    """B runs c1 in float16 and casts its output back to float32 (as mixed-precision converters do):
    c1 is compared at the Cast's output."""
    values = weights()
    nodes = [
        helper.make_node("Cast", ["input"], ["input_fp16"], name="input_cast", to=TensorProto.FLOAT16),
        helper.make_node("Conv", ["input_fp16", "w1_fp16", "b1_fp16"], ["c1_out"], name="/c1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["c1_out"], ["c1_out_fp32"], name="c1_cast", to=TensorProto.FLOAT),
        *list(cnn(values).graph.node)[1:],
    ]
    nodes[3].input[0] = "c1_out_fp32"
    initializers = [numpy_helper.from_array(values["w1"].astype(np.float16), "w1_fp16"),
                    numpy_helper.from_array(values["b1"].astype(np.float16), "b1_fp16")]
    initializers += [numpy_helper.from_array(values[name], name) for name in ("w2", "w3")]
    graph = helper.make_graph(nodes, "mixed", list(cnn().graph.input), list(cnn().graph.output),
                              initializer=initializers)
    mixed = helper.make_model(graph, producer_name="pytorch", opset_imports=[helper.make_opsetid("", 17)])
    mixed.ir_version = 8
    onnx.checker.check_model(mixed)
    result = fmonnx.compare(model_a, save(mixed, tmp_path, "mixed.onnx"), [photo], out=tmp_path / "out")
    c1 = result.layer("c1")
    assert c1["paired_by"] == "tensor name + Cast" and c1["b_tensor"] == "c1_out_fp32" and c1["b_source"] == "c1_out"
    assert 40 < c1["sqnr_db"] < math.inf and result.unpaired == []
