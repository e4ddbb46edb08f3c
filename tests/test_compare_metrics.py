"""compare's metric table (stages.metrics): figures against numpy over several images, the tolerance
reading typed figures, a new row reaching compare.json and the page, and the worst channels over
every image (not the first image's) on two hand-made models whose channels differ by known amounts."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper
from test_browser import browser, open_page  # noqa: F401  (fixtures)

import fmonnx
from conftest import make_model, save
from fmonnx.stages.agreement import Agreement
from fmonnx.stages.metrics import METRICS, Figures, Metric, Tolerance

SIZE = 8


def _truth(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """The figures by numpy, over every image at once, on the positions finite on both sides."""
    a = np.concatenate([first.astype(np.float64).ravel() for first, _ in pairs])
    b = np.concatenate([second.astype(np.float64).ravel() for _, second in pairs])
    both = np.isfinite(a) & np.isfinite(b)
    d = b[both] - a[both]
    return {
        "nonfinite_a": int((~np.isfinite(a)).sum()),
        "nonfinite_b": int((~np.isfinite(b)).sum()),
        "max_abs": np.abs(d).max(),
        "mean_abs": np.abs(d).mean(),
        "rmse": np.sqrt(np.mean(d**2)),
        "rel_l2": np.linalg.norm(d) / np.linalg.norm(a[both]),
        "cosine": a[both] @ b[both] / (np.linalg.norm(a[both]) * np.linalg.norm(b[both])),
        "sqnr_db": 10 * np.log10(np.sum(a[both] ** 2) / np.sum(d**2)),
        "ref_rms": np.sqrt(np.mean(a[both] ** 2)),
        "outside": int(np.count_nonzero(~np.isclose(b[both], a[both], rtol=0.05, atol=0.01))),
    }


def test_figures_over_several_images_match_numpy():
    rng = np.random.default_rng(0)
    pairs = []
    for image in range(3):
        a = rng.normal(0, 1 + image, (4, 5, 6)).astype(np.float32)
        b = (a + rng.normal(0, 0.05, a.shape)).astype(np.float32)
        if image == 1:
            a[0, 0, 0] = np.nan
            b[2, 1, 1] = np.inf
            b[3, 4, 5] = -np.inf
        pairs.append((a, b))
    agreement = Agreement(Tolerance(rtol=0.05, atol=0.01))
    for a, b in pairs:
        agreement.add(a, b)
    figures = agreement.figures()
    truth = _truth(pairs)
    assert isinstance(figures, Figures)
    for name in ("max_abs", "mean_abs", "rmse", "rel_l2", "cosine", "sqnr_db", "ref_rms"):
        assert getattr(figures, name) == pytest.approx(truth[name], rel=1e-9), name
    assert (figures.nonfinite_a, figures.nonfinite_b) == (1, 2)
    assert (figures.nonfinite_a, figures.nonfinite_b) == (truth["nonfinite_a"], truth["nonfinite_b"])
    assert figures.outside_tolerance == truth["outside"]  # numpy's isclose, counted while streaming
    assert not figures.within_tolerance  # B has non-finite values A does not
    record = figures.as_record()
    assert list(record) == [metric.name for metric in METRICS] + ["within_tolerance"]
    assert isinstance(record["nonfinite_b"], int) and isinstance(record["sqnr_db"], float)
    assert figures.noise_record() == {"max_abs": figures.max_abs, "sqnr_db": figures.sqnr_db}
    plain = Agreement()  # no rtol/atol: no outside_tolerance row
    plain.add(*pairs[0])
    assert "outside_tolerance" not in plain.figures().as_record()


def test_tolerance_reads_typed_figures():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (3, 4, 4)).astype(np.float32)
    b = (a * 1.01).astype(np.float32)  # SQNR 40 dB, every value within rtol 0.02
    agreement = Agreement(Tolerance(rtol=0.02))
    agreement.add(a, b)
    figures = agreement.figures()
    assert figures.sqnr_db == pytest.approx(40, abs=1e-3)
    assert Tolerance(min_sqnr=39).accepts(figures) and not Tolerance(min_sqnr=41).accepts(figures)
    assert Tolerance(rtol=0.02).accepts(figures) and figures.within_tolerance
    assert Tolerance(rtol=0.02).accepts(figures.as_record())  # a compare.json entry read back
    strict = Agreement(Tolerance(rtol=0.005))
    strict.add(a, b)
    assert strict.figures().outside_tolerance == np.count_nonzero(~np.isclose(b, a, rtol=0.005, atol=0))
    assert not strict.figures().within_tolerance
    with pytest.raises(AttributeError):
        figures.sqnr_db = 1.0  # read-only


def _two_models(tmp_path, scales: list[float]):
    """A: input (1,3,8,8) -> 1x1 Conv (out c0 = R, c1 = G, c2 = B, c3 = (R + G) / 2) -> Relu -> pool;
    B: the same with output channel c's weights times ``scales[c]``."""
    weights = np.zeros((4, 3, 1, 1), np.float32)
    weights[0, 0] = weights[1, 1] = weights[2, 2] = 1.0
    weights[3, :2] = 0.5
    paths = []
    for name, factors in (("a.onnx", [1.0] * 4), ("b.onnx", scales)):
        scaled = weights * np.asarray(factors, np.float32)[:, None, None, None]
        nodes = [
            helper.make_node("Conv", ["input", "w"], ["conv_out"], name="/conv/Conv"),
            helper.make_node("Relu", ["conv_out"], ["relu_out"], name="/relu/Relu"),
            helper.make_node("GlobalAveragePool", ["relu_out"], ["output"], name="/gap/GlobalAveragePool"),
        ]
        model = make_model(
            nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 1, 1])], [("w", scaled)],
            producer="pytorch",
        )
        paths.append(save(model, tmp_path, name))
    return paths, weights[:, :, 0, 0].astype(np.float64)


def test_worst_channels_over_every_image_not_the_first(tmp_path, write_image):
    rng = np.random.default_rng(3)
    first = np.stack([rng.integers(180, 220, (SIZE, SIZE)), rng.integers(10, 30, (SIZE, SIZE)),
                      rng.integers(40, 60, (SIZE, SIZE))], axis=-1)  # red: channel 0's error leads
    second = np.stack([rng.integers(0, 5, (SIZE, SIZE)), rng.integers(240, 256, (SIZE, SIZE)),
                       rng.integers(40, 60, (SIZE, SIZE))], axis=-1)  # green: channel 1's error dominates
    images = [write_image(first, "red.png"), write_image(second, "green.png")]
    scales = [1.1, 1.5, 1.0, 1.0]
    (path_a, path_b), weights = _two_models(tmp_path, scales)
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "fmonnx", "compare", str(path_a), str(path_b), *map(str, images), "-o", str(out),
         "--preprocess", "raw"],
        capture_output=True, text=True,
    )
    assert run.returncode == 3, run.stderr  # B diverges
    record = json.loads((out / "compare.json").read_text())
    # numpy: each channel's A and B over both images, from the pixels (raw: fed as they are)
    pixels = [np.asarray(image, np.float64).reshape(-1, 3) for image in (first, second)]
    a = np.concatenate([np.maximum(p @ weights.T, 0) for p in pixels])  # (positions, channel)
    b = a * np.asarray(scales)
    energy = ((b - a) ** 2).sum(axis=0)
    order = [int(c) for c in np.argsort(-energy, kind="stable") if energy[c] > 0]
    expected = [{"channel": c, "rel_l2": np.sqrt(energy[c] / (a[:, c] ** 2).sum())} for c in order]
    first_energy = ((pixels[0] @ weights.T) ** 2).sum(axis=0) * (np.asarray(scales) - 1) ** 2
    assert order == [1, 0] and int(np.argmax(first_energy)) == 0  # the test means something
    for name in ("conv", "relu"):
        layer = next(entry for entry in record["layers"] if entry["name"] == name)
        worst = layer["worst_channels_over_images"]
        assert [item["channel"] for item in worst] == [item["channel"] for item in expected]
        for got, want in zip(worst, expected):
            assert got["rel_l2"] == pytest.approx(want["rel_l2"], rel=1e-6)
        assert layer["worst_channels"][0] == 0  # the pictures: the first image's worst
    assert [row["name"] for row in record["metrics"]] == [metric.name for metric in METRICS]


def test_a_new_row_reaches_the_json_the_notebook_view_and_the_page(tmp_path, write_image, open_page):  # noqa: F811
    """One row in the table, nothing else touched: compare.json's layers and outputs carry it, the
    record lists it, the notebook view and the page show its column."""
    row = Metric("energy_ratio", "||b||^2 / ||a||^2", lambda s: s.test_energy / s.ref_energy if s.ref_energy else
                 math.inf, "energy B/A")
    (path_a, path_b), _ = _two_models(tmp_path, [2.0, 1.0, 1.0, 1.0])
    image = write_image(np.full((SIZE, SIZE, 3), 100), "flat.png")
    METRICS.append(row)
    try:
        result = fmonnx.compare(path_a, path_b, [image], out=tmp_path / "out",
                                options=fmonnx.RenderOptions(preprocess="raw"))
    finally:
        METRICS.remove(row)
    record = json.loads((tmp_path / "out" / "compare.json").read_text())
    conv = next(entry for entry in record["layers"] if entry["name"] == "conv")
    # channel 0 doubled, the three others equal: (4 + 1 + 1 + 1) / 4 of A's energy (every channel 100)
    assert conv["energy_ratio"] == pytest.approx(7 / 4, rel=1e-6)
    assert record["outputs"][0]["energy_ratio"] == pytest.approx(7 / 4, rel=1e-6)
    assert record["metrics"][-1] == {"name": "energy_ratio", "doc": "||b||^2 / ||a||^2", "column": "energy B/A",
                                     "style": "num"}
    assert "energy B/A" in result._repr_html_()
    opened = open_page(result.index)
    header = opened.page.locator("#layers thead").inner_text()
    assert "energy B/A" in header and "1.750" in opened.page.locator("#layers tbody").inner_text()
    assert opened.problems == []


def test_page_shows_the_selected_layers_worst_channels_over_images(tmp_path, write_image, open_page):  # noqa: F811
    (path_a, path_b), _ = _two_models(tmp_path, [1.5, 1.0, 1.2, 1.0])
    images = [write_image(np.full((SIZE, SIZE, 3), value), f"{value}.png") for value in (100, 200)]
    result = fmonnx.compare(path_a, path_b, images, out=tmp_path / "out",
                            options=fmonnx.RenderOptions(preprocess="raw"))
    opened = open_page(result.index)
    opened.page.locator('#layers tbody tr[data-layer="conv"]').click()
    detail = opened.page.locator("#detail-body").inner_text()
    assert "Worst channels over all 2 image(s): 0 (rel L2 0.5000), 2 (rel L2 0.2000)" in detail
    assert opened.problems == []
