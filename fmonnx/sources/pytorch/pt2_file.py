"""Read a ``torch.export.save`` file (.pt2) without running code stored in it.

``torch.export.load`` is NOT safe on untrusted files (torch 2.13; its own
docstring says "uses pickle under the hood ... never load data from an
untrusted source"). Reading its source, loading and then running a .pt2 can
run code stored in the file in these ways:

- weights and constants saved with ``use_pickle`` (tensor subclasses) are read
  with ``torch.load(weights_only=False)``; torchbind objects with
  ``torch._C._pickle_load_obj``; opaque objects with ``pickle.loads``;
- the example inputs are read with ``torch.load(weights_only=True)``, and on
  failure again with ``weights_only=False``;
- ``data/aotinductor/`` holds compiled shared libraries, which are loaded;
- legacy layouts (``serialized_*.pt``, ``data/weights/<model>.pt``) are unpickled,
  also when the current reader fails on a file that carries them as well;
- node targets are resolved by attribute walks from ``torch``, ``_operator``
  and ``math`` (``torch.os.system`` resolves) and called when the program runs;
- symbolic shape expressions go through ``sympy.sympify`` (``eval``), and the
  ``guards_code`` strings are compiled (``exec``) by ``ExportedProgram.module()``
  and run on every call: a guard ``__import__('os').system(...)`` put into a
  saved file runs when the loaded program runs (tried with torch 2.13).

``read_pt2`` therefore reads the archive into memory once and vets it first,
reading every entry through torch's own reader (``torch._C.PyTorchFileReader``,
the one ``torch.export.load`` uses), after refusing archives on which that
reader and Python's ``zipfile`` could disagree (repeated names, names equal but
for case, ``..``, absolute names, entries outside the single top folder).
It admits
only raw tensor payloads, example inputs that load with ``weights_only=True``,
node targets of the form ``torch.ops.<namespace>.<op>[.<overload>]`` (plus
``operator``/``math``/``torch.sym_*`` arithmetic), and shape expressions and
guards made only of arithmetic on sizes. Anything else is refused with
ModelError, before torch sees the file; ``load_exported_program`` then hands
torch exactly the vetted bytes.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import zipfile
from pathlib import Path

from fmonnx.errors import ModelError

__all__ = ["PT2_SUFFIX", "is_pt2_file", "read_pt2", "load_exported_program", "SAVE_HINT"]


PT2_SUFFIX = ".pt2"
SAVE_HINT = "save it with torch.export.save(torch.export.export(model, (example_input,)), 'model.pt2')"
_CODE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")
_OPERATOR_TARGETS = frozenset({
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "eq", "ne", "lt", "le",
    "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift", "matmul",
})
_MATH_NAMES = frozenset({"floor", "ceil", "trunc", "sqrt", "isnan", "isinf", "log2", "exp", "log", "pow"})
_TORCH_SYM = frozenset({
    "sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sum", "sym_sqrt", "_sym_sqrt",
})
_OP_PART = re.compile(r"^(?!__)[A-Za-z_][A-Za-z0-9_]*$")
_SYMBOL = re.compile(r"^[a-z]+[0-9]+$")
# Raw tensor payloads as torch.export.save names them (weight_0, tensor_3); anything else is unpickled.
_PAYLOAD_NAME = re.compile(r"^(weight|tensor)_[0-9]+$")
# Names a shape expression (sympy srepr, evaluated by sympify) may call.
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality",
    "And", "Or", "Not", "true", "false", "oo", "zoo", "nan", "Infinity", "NegativeInfinity", "One", "Zero",
    "NegativeOne", "Half", "floor", "ceiling", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv",
    "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "IntTrueDiv",
    "FloatTrueDiv", "ToFloat", "TruncToInt", "TruncToFloat", "RoundToInt", "RoundDecimal", "Identity",
    "IsNonOverlappingAndDenseIndicator", "Piecewise", "ExprCondPair", "BooleanTrue", "BooleanFalse", "True", "False",
})
_SYMBOL_KEYWORDS = frozenset({"positive", "integer", "real", "nonnegative", "finite", "negative", "nonzero"})
# Names a guard (Python exec-ed by ExportedProgram.module()) may use; attributes it may read.
_GUARD_NAMES = frozenset({"L", "inf", "math", "max", "min", "abs", "int", "float", "bool", "True", "False"})
_GUARD_ATTRIBUTES = frozenset({"size", "stride", "storage_offset", "dim", "numel"}) | _MATH_NAMES
_ARITHMETIC = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.operator, ast.unaryop, ast.boolop,
    ast.cmpop, ast.Load, ast.Tuple,
)


def is_pt2_file(path: str | os.PathLike) -> bool:
    """True when ``path`` ends in .pt2 (a torch.export file, or claimed to be one)."""
    return Path(path).suffix.lower() == PT2_SUFFIX


def _refuse(path: Path, reason: str) -> ModelError:
    return ModelError(f"{path} {reason}; fmonnx refuses it so that no code stored in the file runs")


def _safe_sympy(text: str) -> bool:
    """A sympy srepr expression made only of numbers, symbols and the arithmetic classes above."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _SYMPY_NAMES):
                return False
            if any(keyword.arg not in _SYMBOL_KEYWORDS for keyword in node.keywords):
                return False
        elif isinstance(node, ast.Name):
            if node.id not in _SYMPY_NAMES and not _SYMBOL.match(node.id):
                return False
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str) and not _SYMBOL.match(node.value):
                return False
        elif not isinstance(node, (*_ARITHMETIC, ast.keyword)):
            return False
    return True


def _safe_guard(text: str) -> bool:
    """A guard such as ``L['x'].size()[2] >= 3``: comparisons and arithmetic on input sizes only."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in _GUARD_NAMES:
                return False
        elif isinstance(node, ast.Attribute):
            if node.attr not in _GUARD_ATTRIBUTES:
                return False
        elif isinstance(node, ast.Call):
            if node.keywords:
                return False
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, str)) or (isinstance(node.value, str) and "__" in node.value):
                return False
        elif not isinstance(node, (*_ARITHMETIC, ast.Subscript, ast.IfExp)):
            return False
    return True


def _safe_target(target: str, torch_ops_attributes: frozenset[str]) -> bool:
    parts = target.split(".")
    if parts[0] == "torch" and len(parts) >= 4 and parts[1] == "ops":
        return (
            len(parts) <= 5
            and all(_OP_PART.match(part) for part in parts[2:])
            and parts[2] not in torch_ops_attributes
        )
    if len(parts) == 2:
        module, name = parts
        return (
            (module == "_operator" and name in _OPERATOR_TARGETS)
            or (module == "math" and name in _MATH_NAMES)
            or (module == "torch" and name in _TORCH_SYM)
        )
    return False


def _walk(value, key=None):
    """Every (key, value) pair in a JSON document, depth first."""
    if isinstance(value, dict):
        for child_key, child in value.items():
            yield child_key, child
            yield from _walk(child, child_key)
    elif isinstance(value, list):
        for child in value:
            yield from _walk(child, key)


def _vet_program(path: Path, name: str, program: dict, torch_ops_attributes: frozenset[str]) -> None:
    for key, value in _walk(program):
        if key == "target" and isinstance(value, str) and not _safe_target(value, torch_ops_attributes):
            raise _refuse(path, f"calls {value!r} in model {name!r}, which is not a torch operator")
        if key == "expr_str" and isinstance(value, str) and not _safe_sympy(value):
            raise _refuse(path, f"has a shape expression that is not plain arithmetic ({value[:80]!r})")
    for symbol in program.get("range_constraints", {}) or {}:
        if not _safe_sympy(symbol):
            raise _refuse(path, f"has a shape symbol that is not plain arithmetic ({symbol[:80]!r})")
    for guard in program.get("guards_code", []) or []:
        if not isinstance(guard, str) or not _safe_guard(guard):
            raise _refuse(path, f"has an input guard that is not plain arithmetic on sizes ({str(guard)[:80]!r})")


def _vet_entry_names(path: Path, infos: list[zipfile.ZipInfo]) -> str:
    """The archive's single top folder (``model/``), after refusing every name on which Python's ``zipfile``
    and torch's reader could disagree: repeated names (zipfile keeps the last, torch may take another),
    names equal but for case (torch looks names up regardless of case), ``..``, ``.``, absolute or
    backslashed names, and entries outside the one top folder."""
    seen: dict[str, str] = {}
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if (name.startswith("/") or "\\" in name or ":" in parts[0] or len(parts) < 2
                or any(part in ("", ".", "..") for part in parts)):
            raise _refuse(path, f"has an entry named {name[:80]!r}, which torch and fmonnx's check could read "
                                "differently")
        key = name.casefold()
        if key in seen:
            same = "twice" if seen[key] == name else f"twice, differing only in case ({seen[key][:80]!r})"
            raise _refuse(path, f"has the entry {name[:80]!r} {same}, so torch could read another copy than "
                                "the one checked")
        seen[key] = name
    tops = {info.filename.split("/", 1)[0] for info in infos}
    if len(tops) != 1:
        raise _refuse(path, f"has entries under several top folders ({', '.join(sorted(tops)[:3])}); "
                            "a torch.export file keeps everything in one")
    return tops.pop() + "/"


class _TorchArchive:
    """The archive as torch's own reader (``torch._C.PyTorchFileReader``, which ``torch.export.load`` uses)
    sees it: the bytes vetted are exactly the bytes torch will load."""

    def __init__(self, torch, data: bytes):
        self._reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        self.names = list(self._reader.get_all_records())

    def read(self, name: str) -> bytes:
        return self._reader.get_record(name)


def _vet_payloads(path: Path, archive: _TorchArchive, name: str, kind: str) -> None:
    config_name = f"data/{kind}/{name}_{kind}_config.json"
    if f"data/{kind}/{name}.pt" in archive.names:
        raise _refuse(path, f"keeps its {kind} in the legacy pickled format; {SAVE_HINT} with a current torch")
    if config_name not in archive.names:
        raise ModelError(f"{path} lacks {config_name}: it is truncated or not a torch.export file; {SAVE_HINT}")
    config = json.loads(archive.read(config_name)).get("config", {})
    for fqn, meta in config.items():
        if meta.get("use_pickle") or not _PAYLOAD_NAME.match(str(meta.get("path_name", ""))):
            raise _refuse(path, f"stores {kind[:-1]} {fqn!r} as a pickled Python object")


def _vet_sample_inputs(torch, path: Path, archive: _TorchArchive, name: str) -> None:
    blob = archive.read(f"data/sample_inputs/{name}.pt")
    if not blob:
        return
    try:
        torch.load(io.BytesIO(blob), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means torch would retry with weights_only=False
        raise _refuse(path, "has example inputs that are not plain tensors (torch would unpickle them)") from exc


def _program_names(path: Path, names: list[str]) -> list[str]:
    """The model names torch derives from ``models/`` entries: it takes every entry there as a program
    and cuts five characters (``.json``) off its name, so anything but ``models/<name>.json`` is refused."""
    programs = [name for name in names if name.startswith("models/")]
    odd = [name for name in programs if not name.endswith(".json") or "/" in name[len("models/"):]]
    if odd:
        raise _refuse(path, f"has {odd[0][:80]!r} among its programs, which is not a program torch writes")
    return [name[len("models/"): -len(".json")] for name in programs]


def read_pt2(torch, path: str | os.PathLike) -> bytes:
    """The bytes of the .pt2 file ``path``, after vetting them (see the module docstring).

    The entry names are vetted with Python's ``zipfile`` (which lists every entry, repeated ones too)
    and torch's legacy fallback reader; every entry torch will load is then read and vetted through
    torch's own reader, the one ``torch.export.load`` uses.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; check the path")
    data = path.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as listing:
            infos = listing.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise ModelError(f"{path} is not a torch.export file (not a zip archive, or a truncated one); {SAVE_HINT}") \
            from None
    names = [info.filename for info in infos]
    if not any(n.rsplit("/", 1)[-1] == "archive_format" and n.count("/") <= 1 for n in names):
        if any(n.endswith("serialized_exported_program.json") for n in names):
            raise _refuse(path, f"is in the torch<2.6 export format, whose loading unpickles; {SAVE_HINT}")
        raise ModelError(f"{path} is not a torch.export file (it has no archive_format entry); {SAVE_HINT}")
    # torch falls back to the legacy reader (which unpickles) when the pt2 reader fails on a file
    # that also has a root "version" entry
    legacy = [n for n in names if n.casefold() == "version"]
    if legacy:
        raise _refuse(path, f"holds a pickle or legacy entry ({legacy[0]}) that torch may unpickle")
    root = _vet_entry_names(path, infos)
    try:
        archive = _TorchArchive(torch, data)
        if sorted(archive.names) != sorted(n[len(root):] for n in names):
            raise _refuse(path, "lists other entries to torch's reader than to Python's zipfile")
        if archive.read("archive_format").decode().strip() != "pt2":
            raise ModelError(f"{path} is a zip archive but not a torch.export file; {SAVE_HINT}")
        folded = [n.casefold() for n in archive.names]
        code = [n for n, key in zip(archive.names, folded) if key.startswith(_CODE_DIRS)]
        if code:
            raise _refuse(path, f"holds compiled code ({code[0]}), which loading would run")
        # the only pickles torch reads from a current archive are the example inputs, vetted below
        legacy = [n for n, key in zip(archive.names, folded) if key.endswith(".pt")
                  and not key.startswith("data/sample_inputs/")]
        if legacy:
            raise _refuse(path, f"holds a pickle or legacy entry ({legacy[0]}) that torch may unpickle")
        models = _program_names(path, archive.names)
        if "model" not in models:
            raise ModelError(f"{path} holds no exported program (models/model.json); {SAVE_HINT}")
        operator_attributes = frozenset(dir(type(torch.ops)))
        for name in models:
            program = json.loads(archive.read(f"models/{name}.json"))
            _vet_program(path, name, program, operator_attributes)
            _vet_payloads(path, archive, name, "weights")
            _vet_payloads(path, archive, name, "constants")
            _vet_sample_inputs(torch, path, archive, name)
    except (KeyError, ValueError, OSError, AttributeError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{path} is a damaged torch.export file ({type(exc).__name__}); {SAVE_HINT}") from None
    return data


def load_exported_program(torch, path: str | os.PathLike, *, unsafe: bool = False):
    """The ExportedProgram in ``path``: vetted by ``read_pt2`` unless ``unsafe``, then ``torch.export.load``."""
    from fmonnx.sources.pytorch.export import first_line, quiet

    path = Path(path)
    data = path.read_bytes() if unsafe and path.is_file() else read_pt2(torch, path)
    try:
        with quiet():
            return torch.export.load(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - torch raises anything on a bad archive; the user needs the reason
        raise ModelError(
            f"torch.export.load could not read {path}: {first_line(exc)}; {SAVE_HINT} with this torch version"
        ) from exc
