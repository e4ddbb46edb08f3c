"""Every CLI choice and default is fmonnx/choices.py's, and the stages use the same values."""

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
