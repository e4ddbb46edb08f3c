"""Contracts defined once: every CLI choice and default is fmonnx/choices.py's (the stages use the same values), and
every JSON file carries contract.SCHEMA."""

from __future__ import annotations

import inspect

import click

from fmonnx import choices
from fmonnx.cli import cli
from fmonnx.options import RenderOptions


def _tuples() -> list[tuple]:
    return [value for name, value in vars(choices).items() if name.isupper() and isinstance(value, tuple)]


def test_every_cli_choice_is_a_defined_one():
    defined = [tuple(value) for value in _tuples()]
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param.type, click.Choice):
                assert tuple(param.type.choices) in defined, (name, param.name)


def test_the_stages_read_the_same_values():
    from fmonnx.frontends.scan import ENGINES
    from fmonnx.stages import cam, colormap, normalize, preprocess, run, tile

    assert normalize.METHODS == choices.NORMALIZATIONS and normalize.DEFAULT_METHOD == choices.DEFAULT_NORMALIZATION
    assert tile.LAYOUTS == choices.LAYOUTS and tile.DEFAULT_LAYOUT == choices.DEFAULT_LAYOUT
    assert run.PROVIDERS == choices.PROVIDERS and run.OPTIMIZATIONS == choices.OPTIMIZATIONS
    assert run.DEFAULT_OPTIMIZATION == choices.DEFAULT_OPTIMIZATION
    assert tuple(preprocess.PRESETS) == choices.PRESETS and preprocess.DEFAULT_PRESET == choices.DEFAULT_PRESET
    assert cam.METHODS == choices.EXPLAIN_METHODS and colormap.DEFAULT_CMAP == choices.DEFAULT_CMAP
    assert tuple(ENGINES) == choices.ENGINES


def test_cli_defaults_are_the_library_defaults():
    from fmonnx.frontends.compare import compare
    from fmonnx.frontends.explain import explain
    from fmonnx.frontends.scan import scan

    render = {param.name: param.default for param in cli.commands["render"].params}
    options = RenderOptions()
    for name in ("provider", "normalization", "layout", "cmap"):
        assert render[name] == getattr(options, name), name
    compare_cli = {param.name: param.default for param in cli.commands["compare"].params}
    assert compare_cli["channels"] == inspect.signature(compare).parameters["channels"].default
    scan_cli = {param.name: param.default for param in cli.commands["scan"].params}
    assert scan_cli["top"] == inspect.signature(scan).parameters["top"].default
    explain_cli = {param.name: param.default for param in cli.commands["explain"].params}
    assert explain_cli["method"] == inspect.signature(explain).parameters["method"].default


def test_json_files_carry_the_schema_and_a_newer_one_is_refused(tmp_path, copy_model_path, write_image,
                                                                 gradient_rgb):
    import json

    import pytest

    import fmonnx
    from fmonnx.contract import SCHEMA

    image = write_image(gradient_rgb, "image.png")
    result = fmonnx.render(copy_model_path, [image], out=tmp_path / "maps")
    manifest = json.loads((tmp_path / "maps" / "manifest.json").read_text())
    assert manifest["schema"] == SCHEMA and list(manifest)[0] == "schema"
    explained = fmonnx.frontends.explain.explain_images(copy_model_path, [image], tmp_path / "why")
    assert explained["schema"] == SCHEMA
    assert json.loads((tmp_path / "why" / "explain.json").read_text())["schema"] == SCHEMA
    # a folder written by a newer fmonnx is not misread
    manifest["schema"] = SCHEMA + 1
    (tmp_path / "maps" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(fmonnx.FmonnxError, match="schema"):
        type(result)(tmp_path / "maps", outline=None).manifest
    # and an earlier output is still replaced in place
    fmonnx.render(copy_model_path, [image], out=tmp_path / "maps")


def test_compare_and_scan_records_carry_the_schema(tmp_path, copy_model_path, write_image, gradient_rgb):
    import json

    import fmonnx
    from fmonnx.contract import SCHEMA

    image = write_image(gradient_rgb, "image.png")
    fmonnx.compare(copy_model_path, copy_model_path, [image], tmp_path / "compare")
    fmonnx.scan(copy_model_path, [image], tmp_path / "scan")
    for record in (tmp_path / "compare" / "compare.json", tmp_path / "scan" / "scan.json"):
        assert json.loads(record.read_text())["schema"] == SCHEMA, record
