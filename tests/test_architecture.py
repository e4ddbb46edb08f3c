"""The package's layering, enforced: which part of fmonnx may import which (any import, lazy ones too).

    errors, choices, contract   leaves: the error types, the CLI's choices, the metadata contract
    options                     -> choices, errors
    stages                      -> leaves, options                    pure steps; never a source or a front-end
    sources                     -> leaves, options, stages            the converters use stages' graph tools
    report                      -> leaves, options, stages            pictures, pages and JSON records
    frontends                   -> all of the above, and one another  (scan renders its top images,
                                                                       render weighs channels with explain)
    cli                         -> everything; the only click user (tests/test_api.py)
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import fmonnx

PACKAGE = Path(fmonnx.__file__).parent
LEAVES = {"errors", "choices", "contract", "_version"}
ALLOWED = {
    "errors": set(),
    "choices": set(),
    "contract": {"errors"},
    "_version": set(),
    "options": {"choices", "errors"},
    "stages": LEAVES | {"options", "stages"},
    "sources": LEAVES | {"options", "stages", "sources"},
    "report": LEAVES | {"options", "stages", "report", "root"},
    "frontends": LEAVES | {"options", "stages", "sources", "report", "frontends", "root"},
    "cli": LEAVES | {"options", "stages", "sources", "report", "frontends", "root"},
    "__main__": {"cli"},
    "root": LEAVES,
}


def _part(module: str) -> str:
    """The layer of a dotted fmonnx module: its first part below fmonnx (``root`` for fmonnx itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def _imports(path: Path) -> list[tuple[str, int]]:
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.removesuffix(".__init__").split(".")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                targets = [".".join(base + [node.module])] if node.module else [
                    ".".join(base + [alias.name]) for alias in node.names]
            else:
                targets = [node.module or ""]
            found += [(target, node.lineno) for target in targets if target.split(".")[0] == "fmonnx"]
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "fmonnx"]
    return found


def test_every_import_follows_the_layering_table():
    wrong = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        source = _part(module)
        for target, line in _imports(path):
            destination = _part(target)
            if destination == "__version__":  # `from .. import __version__`: the package's own attribute
                destination = "root"
            if destination != source and destination not in ALLOWED[source]:
                wrong[f"{source} -> {destination}"].append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert not wrong, dict(wrong)


def test_the_table_covers_every_part():
    parts = {_part(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"))
             for path in PACKAGE.rglob("*.py")}
    assert parts <= set(ALLOWED), parts - set(ALLOWED)
