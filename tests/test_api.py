"""The public Python API the way a notebook user meets it: a fresh interpreter and a bare ``import fmonnx``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fmonnx

PACKAGE = Path(fmonnx.__file__).parent


def _fresh(code: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={"MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_is_light_and_every_public_name_resolves(tmp_path):
    out = _fresh(
        "import sys, json, fmonnx\n"
        "heavy = [m for m in ('numpy', 'onnx', 'onnxruntime', 'matplotlib', 'click') if m in sys.modules]\n"
        "names = {n: type(getattr(fmonnx, n)).__name__ for n in fmonnx.__all__}\n"
        "print(json.dumps([heavy, names, sorted(set(fmonnx.__all__) - set(dir(fmonnx)))]))\n",
        tmp_path,
    )
    heavy, names, missing_from_dir = json.loads(out)
    assert heavy == []
    assert missing_from_dir == []
    # functions stay functions: no submodule may replace one on the package (the old RecursionError)
    for name in ("render", "activations", "list_layers", "layer_stats"):
        assert names[name] == "function", names
    assert names["RenderOptions"] == "type" and names["FmonnxError"] == "type"


def test_documented_calls_in_a_fresh_interpreter(tmp_path):
    """The package docstring's example, in the order a user types it; the layer names are the model's."""
    from fmonnx.stages.plan import demo_paths

    tutorial_path, photo = demo_paths()
    out = _fresh(
        "import json, fmonnx\n"
        f"layers = fmonnx.list_layers({str(tutorial_path)!r})\n"
        f"maps = fmonnx.activations({str(tutorial_path)!r}, {str(photo)!r})\n"
        f"result = fmonnx.render({str(tutorial_path)!r}, [{str(photo)!r}], out='maps',\n"
        "                       options=fmonnx.RenderOptions(normalization='layer', cmap='gray'))\n"
        "figure = result.plot_layer(layers[0]['name'])\n"
        "print(json.dumps({'layers': [row['name'] for row in layers],\n"
        "                  'maps': {name: list(values.shape) for name, values in maps.items()},\n"
        "                  'manifest': [entry['name'] for entry in result.manifest['images'][0]['layers']],\n"
        "                  'figure': type(figure).__name__}))\n",
        tmp_path,
    )
    shown = json.loads(out)
    assert shown["layers"] == list(shown["maps"]) == shown["manifest"]
    assert shown["layers"][:2] == ["conv2d/Conv", "conv2d"] and len(shown["layers"]) >= 3
    assert all(len(shape) == 3 for shape in shown["maps"].values())
    assert shown["figure"] == "Figure"
    assert (tmp_path / "maps" / "manifest.json").is_file() and (tmp_path / "maps" / "index.html").is_file()


def test_errors_are_catchable_as_the_public_error(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    out = _fresh(
        "import fmonnx\n"
        "try:\n"
        "    fmonnx.list_layers('broken.onnx')\n"
        "except fmonnx.FmonnxError as error:\n"
        "    print('caught', error)\n",
        tmp_path,
    )
    assert out.startswith("caught ") and "broken.onnx" in out


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        fmonnx.nonsense  # noqa: B018


def _module_imports(path: Path) -> list[tuple[str, int]]:
    """The fmonnx modules a module imports at its top level (not inside functions), as dotted names."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    if path.name == "__init__.py":
        module = module.removesuffix(".__init__")
        package = module.split(".")
    found = []
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.If):  # TYPE_CHECKING blocks do not run
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("fmonnx"):
                found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("fmonnx")]
    return found


def test_no_import_cycles_and_the_library_never_imports_click():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target, _ in _module_imports(path):
            while target and target not in modules:  # `from .pkg import module` names a module or a package
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    # a package's __init__ importing its children is not a cycle of stages
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and modules[t].name == "__init__.py")}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            assert state.get(target) != 1, "import cycle: " + " -> ".join([*trail, name, target])
            if target not in state:
                visit(target, [*trail, name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    clicky = [name for name, path in modules.items() if name != "fmonnx.cli" and "import click" in path.read_text()]
    assert clicky == []
