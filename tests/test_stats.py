"""Per-channel statistics: the records, the layer summary, the manifest fields and `fmonnx stats`."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fmonnx import RenderOptions, layer_stats, render
from fmonnx.cli import cli
from fmonnx.stages.normalize import channel_stats
from fmonnx.stages.stats import channel_records, format_table, layer_summary


def known_layer() -> np.ndarray:
    """3 channels of 2x2: [0, 1, 2, 3], a dead channel of 5s, [-1, 0, 0, 1]."""
    return np.array(
        [[[0, 1], [2, 3]], [[5, 5], [5, 5]], [[-1, 0], [0, 1]]],
        dtype=np.float32,
    )


def test_channel_records_are_columns_with_exact_values():
    records = channel_records(channel_stats(known_layer()))
    assert records["mean"] == [1.5, 5.0, 0.0]
    assert records["min"] == [0.0, 5.0, -1.0]
    assert records["max"] == [3.0, 5.0, 1.0]
    assert records["zero_fraction"] == [0.25, 0.0, 0.5]
    assert records["dead"] == [False, True, False]
    assert records["std"] == pytest.approx([np.std([0, 1, 2, 3]), 0.0, np.std([-1, 0, 0, 1])])


def test_layer_summary_pools_channels_like_the_whole_layer():
    values = known_layer()
    summary = layer_summary(channel_stats(values))
    assert summary["std"] == pytest.approx(float(values.std()))
    assert summary["mean"] == pytest.approx(float(values.mean()))
    assert (summary["min"], summary["max"]) == (-1.0, 5.0)
    assert summary["channels"] == 3
    assert summary["dead_channels"] == 1 and summary["dead_indices"] == [1]


def test_layer_stats_on_the_copy_model(copy_model_path, write_image, gradient_rgb):
    result = layer_stats(copy_model_path, write_image(gradient_rgb), RenderOptions(preprocess="raw"))
    layers = {layer["name"]: layer for layer in result["layers"]}
    assert list(layers) == ["conv", "relu", "pool"]
    red, green = gradient_rgb[..., 0].astype(np.float64), gradient_rgb[..., 1].astype(np.float64)
    conv = layers["conv"]["channels"]
    assert conv["mean"] == pytest.approx([red.mean(), -green.mean()])
    assert conv["max"] == [red.max(), -green.min()]
    relu = layers["relu"]
    assert relu["channels"]["dead"] == [False, True]
    assert relu["stats"]["dead_indices"] == [1]
    assert result["provider"] == "CPUExecutionProvider"


def test_table_flags_layers_with_dead_channels(copy_model_path, write_image, gradient_rgb):
    layers = layer_stats(copy_model_path, write_image(gradient_rgb))["layers"]
    lines = format_table(layers).splitlines()
    assert lines[0].split()[:3] == ["name", "op", "C"]
    relu = next(line for line in lines if line.startswith("relu"))
    conv = next(line for line in lines if line.startswith("conv"))
    assert "1/2 !" in relu and "dead: 1" in relu
    assert "!" not in conv
    assert lines[-1].startswith("3 layers; 2 dead channels in 2 layers")


def test_manifest_holds_per_channel_stats_and_layer_summaries(copy_model_path, write_image, gradient_rgb, tmp_path):
    out = tmp_path / "maps"
    render(copy_model_path, [write_image(gradient_rgb)], out, RenderOptions(preprocess="raw"))
    manifest = json.loads((out / "manifest.json").read_text())
    relu = next(layer for layer in manifest["images"][0]["layers"] if layer["name"] == "relu")
    assert set(relu["channels"]) == {"mean", "std", "min", "max", "zero_fraction", "dead"}
    assert relu["channels"]["dead"] == [False, True]
    assert relu["channels"]["zero_fraction"][1] == 1.0
    assert relu["dead_channels"] == 1  # the field of the render issue stays
    assert {"min", "max", "mean", "std", "zero_fraction", "dead_channels", "channels", "dead_indices"} <= set(
        relu["stats"]
    )


def test_stats_command_prints_a_table_and_json(copy_model_path, write_image, gradient_rgb):
    photo = write_image(gradient_rgb)
    table = CliRunner().invoke(cli, ["stats", str(copy_model_path), str(photo)])
    assert table.exit_code == 0, table.output
    assert "relu" in table.output and "1/2 !" in table.output
    as_json = CliRunner().invoke(cli, ["stats", str(copy_model_path), str(photo), "--json", "--preprocess", "raw"])
    assert as_json.exit_code == 0, as_json.output
    parsed = json.loads(as_json.output)
    assert [layer["name"] for layer in parsed["layers"]] == ["conv", "relu", "pool"]
    assert parsed["layers"][1]["channels"]["dead"] == [False, True]
    assert parsed["preprocess"]["preset"] == "raw"


def test_stats_command_reports_a_missing_image_cleanly(copy_model_path, tmp_path):
    result = CliRunner().invoke(cli, ["stats", str(copy_model_path), str(tmp_path / "nope.png")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "does not exist" in result.output
    assert "Traceback" not in result.output
