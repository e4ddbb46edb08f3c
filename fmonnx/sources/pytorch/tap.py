"""Record every module call of a PyTorch model, and return each call's output beside the model's own.

``tapped(torch, model)`` wraps ``model`` in a module whose forward runs the
model with a forward hook on every submodule and returns::

    (*model outputs (tensors, pytree order), *each recorded call's output)

so that ``torch.export`` makes each module's output a graph output (the ONNX
optimizer can then fold nothing away: a BatchNorm stays after its Conv).

Naming: a call is named by its module path (``layer1.0.conv1``); the first
call of a module takes the bare path, later calls ``<path>#2``, ``<path>#3``...
(a ResNet BasicBlock's shared ``relu``: ``layer1.0.relu`` then ``layer1.0.relu#2``),
the scheme of ``fmonnx.contract.call_name``, as naming uses for ONNX files exported by torch.
Every call counts, recorded or not, so the number is the call's place in order.

A module reachable by several paths (ultralytics shares one ``SiLU`` among all
its Conv blocks) is named by the path it was called through: the path whose
parent is the module whose forward is running (pre-hooks keep a stack of the
running calls), so ``blocks.2.act`` rather than ``blocks.0.act#3``. Its own
name, the first path with its call number among all its calls, goes into
``also_output_of`` where it differs. A module with one path keeps that path.

A call is recorded when its output is a 4-D floating tensor that no earlier
call returned unchanged. A container that returns its last child's output
(``layer1``, ``layer1.0``) is not a layer of its own: its name is kept as an
``also_output_of`` of the call that made the tensor (hooks fire child first, so the
innermost call owns the tensor). A module that returns its input unchanged
(``nn.Identity`` on the image) records nothing. In-place ops are handled: a
tensor changed in place since an earlier call counts as a new tensor
(``_version``), so ``bn1`` followed by ``ReLU(inplace=True)`` gives two
layers with their own values. The first run copies every output when its
hook fires; later runs (the traced one among them) copy only the outputs
the first run saw changed in place, and return the others as they are: a
copy per call doubled the traced graph and the export's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fmonnx.contract import call_name

__all__ = ["ModuleCall", "tapped"]


@dataclass
class ModuleCall:
    """One recorded module call: its ``layer`` name, module path, call number and class.

    ``call`` counts from 1. ``output`` is the index of its tensor in the tapped
    module's returned tuple; ``also_output_of`` names the later calls (containers)
    that returned the same tensor, innermost first.
    """

    layer: str
    module: str
    call: int
    class_name: str
    output: int = -1
    also_output_of: list[str] = field(default_factory=list)


class RunRecord:
    """The calls and output count of the tapped module's last forward.

    Kept in an object of its own because torch.export restores a module's
    plain attributes (lists included) after tracing, while an object that is
    not a container is restored as itself: the calls of the traced run, the
    ones the exported graph's outputs follow, stay readable.
    """

    def __init__(self):
        self.calls: list[ModuleCall] = []
        self.output_count = 0


_CLASSES: dict = {}


def tapped(torch, model, classes: dict[str, str] | None = None):
    """``model`` wrapped to return every module call's 4-D output (see the module docstring).

    ``classes`` maps module paths to class names when the modules' own types
    do not tell (an unflattened ExportedProgram's InterpreterModules). After
    each forward, the wrapper's ``calls`` lists the recorded ModuleCalls and
    ``output_count`` the number of the model's own output tensors.
    """
    if "Tap" not in _CLASSES:
        _CLASSES["Tap"] = _tap_class(torch)
    return _CLASSES["Tap"](model, classes or {})


def _tap_class(torch):
    from torch.utils._pytree import tree_leaves

    class Tap(torch.nn.Module):
        def __init__(self, model, classes):
            super().__init__()
            self.model = model
            self.classes = classes
            self.last_run = RunRecord()
            self.copied: set[tuple[str, int]] | None = None  # calls whose output changes in place; None: all
            # each submodule once, with all its paths, the first being the one named_modules() keeps. Found here,
            # not in forward: under torch.export every attribute access makes a new proxy, so none looks shared
            found: dict[int, tuple[object, list[str]]] = {}
            for path, module in model.named_modules(remove_duplicate=False):
                if path:
                    found.setdefault(id(module), (module, []))[1].append(path)
            self.modules_and_paths = list(found.values())

        def forward(self, *inputs):
            seen: list[tuple[str, int, object, int, object, str]] = []  # path, call, tensor, version, copy, own
            copied = self.copied
            counts: dict[str, int] = {}
            own_counts: dict[str, int] = {}  # calls of each module instance by its first path, whatever the path
            running: list[str] = []  # paths of the module calls whose forward is running, outermost first

            def hooks(paths):
                def enter(module, args):
                    caller = running[-1] if running else ""
                    running.append(paths[0] if len(paths) == 1 else _reached_by(paths, caller))

                def record(module, args, output):
                    path = running.pop()
                    call = counts.get(path, 0) + 1
                    counts[path] = call
                    own_counts[paths[0]] = own = own_counts.get(paths[0], 0) + 1
                    if isinstance(output, torch.Tensor) and output.dim() == 4 and output.is_floating_point():
                        own_name = call_name(paths[0], own)
                        copy = output.clone() if copied is None or (path, call) in copied else None
                        seen.append((path, call, output, output._version, copy, own_name))

                return enter, record

            handles = []
            for module, paths in self.modules_and_paths:
                enter, record = hooks(paths)
                handles.append(module.register_forward_pre_hook(enter))
                handles.append(module.register_forward_hook(record))
            try:
                result = self.model(*inputs)
            finally:
                for handle in handles:
                    handle.remove()
            outputs = [leaf for leaf in tree_leaves(result) if isinstance(leaf, torch.Tensor)]
            calls: list[ModuleCall] = []
            owners: list[tuple[object, int, ModuleCall]] = []  # tensor, version, the call that made it
            copies = []
            for path, call, tensor, version, copy, own_name in seen:
                if any(tensor is given for given in inputs):
                    continue
                name = call_name(path, call)
                aliases = [name] if own_name == name else [name, own_name]
                owner = next((c for t, v, c in owners if t is tensor and v == version), None)
                if owner is not None:
                    owner.also_output_of.extend(aliases)
                    continue
                entry = ModuleCall(name, path, call, self.class_of(path), also_output_of=aliases[1:])
                owners.append((tensor, version, entry))
                unchanged = tensor._version == version
                index = next((i for i, out in enumerate(outputs) if out is tensor and unchanged), None)
                if index is None:
                    if copy is None and not unchanged:
                        raise RuntimeError(f"{name}'s output was changed in place in this run only")
                    copies.append(tensor if copy is None else copy)
                    index = -len(copies)  # fixed below, once the outputs are counted
                entry.output = index
                calls.append(entry)
            for entry in calls:
                if entry.output < 0:
                    entry.output = len(outputs) + (-entry.output - 1)
            if self.copied is None:
                self.copied = {(path, call) for path, call, tensor, version, _, _ in seen if tensor._version != version}
            self.last_run.calls = calls
            self.last_run.output_count = len(outputs)
            return (*outputs, *copies)

        @property
        def calls(self) -> list[ModuleCall]:
            return self.last_run.calls

        @property
        def output_count(self) -> int:
            return self.last_run.output_count

        def class_of(self, path: str) -> str:
            """The class name of the submodule at ``path`` (``Conv2d``)."""
            if path in self.classes:
                return self.classes[path]
            return type(self.model.get_submodule(path)).__name__

    return Tap


def _reached_by(paths: list[str], caller: str) -> str:
    """Which of a shared module's ``paths`` a call from the module at ``caller`` went through.

    The path whose parent is the caller, else the first one under the caller
    (called from further up), else the first path.
    """
    direct = next((path for path in paths if path.rpartition(".")[0] == caller), None)
    if direct is not None:
        return direct
    prefix = caller + "." if caller else ""
    return next((path for path in paths if path.startswith(prefix)), paths[0])
