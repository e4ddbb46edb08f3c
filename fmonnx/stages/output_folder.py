"""The atomic output folder: written in a staging folder, moved into place at the end.

A render is written into a hidden staging folder beside the target and moved
into place at the end, so a failure leaves nothing half-written. An existing
target is replaced only when it is an earlier fmonnx output holding nothing
but the files its manifest lists; a user's other files are never deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError
from .json_out import MANIFEST

__all__ = ["staged_output", "replaceable", "written_by_fmonnx"]


_TOP_LEVEL = re.compile(r'^ "(files|schema|fmonnx_version)": (.*?),?$')


def _manifest_files(path: Path) -> tuple[bool, list]:
    """Whether ``path`` is a manifest fmonnx wrote, and the files it lists.

    ``write_manifest`` puts each top-level key on a line of its own, indented by one space (a list
    of file names on one line), so those two lines are read without parsing every image's
    per-channel numbers (hundreds of MB for many images); any other layout is parsed whole.
    """
    found = {}
    with open(path, encoding="utf-8") as file:
        if file.readline().rstrip("\n") == "{":
            for line in file:
                match = _TOP_LEVEL.match(line)
                if match:
                    found[match.group(1)] = json.loads(match.group(2))
    if "files" not in found:
        found = json.loads(path.read_text(encoding="utf-8"))
    return written_by_fmonnx(found), found["files"]


def written_by_fmonnx(record: dict) -> bool:
    """Whether a JSON record is one fmonnx wrote: its ``schema`` (contract.SCHEMA), or the
    ``fmonnx_version`` that outputs made before the schema field carry."""
    return isinstance(record.get("schema"), int) or "fmonnx_version" in record


def _fmonnx_entries(record: str, files) -> tuple[set[str], set[str]]:
    """The files and folders (relative POSIX paths) an output whose record lists ``files`` consists of:
    the listed names and the record, and the folders above them (fmonnx makes no others)."""
    if not isinstance(files, list):
        raise TypeError("files is not a list")
    names = {name for name in files if isinstance(name, str)} | {record}
    folders = set(names)  # a listed name may be a folder
    for name in names:
        folders.update(parent.as_posix() for parent in Path(name).parents)
    return names, folders


def _walk(target: Path) -> tuple[list[tuple[str, str]], str | None]:
    """Everything under ``target``: (relative POSIX path, "folder" | "file" | "other") with a symlink
    "other", never followed; and the first folder that could not be listed (its contents unknown), if any.
    DirEntry's types come with the listing, so a large output costs no stat per file."""
    found: list[tuple[str, str]] = []
    pending = [("", target)]
    while pending:
        base, folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    relative = f"{base}{entry.name}"
                    if entry.is_dir(follow_symlinks=False):
                        found.append((relative, "folder"))
                        pending.append((f"{relative}/", Path(entry.path)))
                    else:
                        found.append((relative, "file" if entry.is_file(follow_symlinks=False) else "other"))
        except OSError as exc:
            return found, f"{base.rstrip('/') or 'the folder itself'}, which cannot be listed ({exc.strerror or exc})"
    return found, None


def _foreign_entry(target: Path, record: str = MANIFEST) -> str | None:
    """The first thing in folder ``target`` that fmonnx did not write, as a path relative to it; None
    when it is empty or all fmonnx's. Folders count (an empty one too) and so do symlinks, which are
    never fmonnx's: replacing ``target`` deletes all of it, so everything in it must be accounted for."""
    entries, unreadable = _walk(target)
    if unreadable is not None:
        return unreadable
    if not entries:
        return None
    if (record, "file") not in entries:  # missing, or a link or FIFO, which is neither fmonnx's nor safe to open
        return next((relative for relative, _ in entries if relative != record), record)
    try:
        ok, files = _manifest_files(target / record)
        names, folders = _fmonnx_entries(record, files)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # no record, or not one fmonnx wrote
        ok = False
    if not ok:
        return next((relative for relative, _ in entries if relative != record), record)
    for relative, kind in entries:
        if relative not in (folders if kind == "folder" else names) or kind == "other":
            return relative
    return None


def _foreign_message(target: Path, example: str) -> str:
    return (
        f"output folder {target} already holds files fmonnx did not write (e.g. {example}); "
        "choose another folder with -o, or empty it"
    )


def replaceable(target: Path, record: str = MANIFEST) -> None:
    """Raise OutputError unless ``target`` may be replaced by a new output (``record``: the JSON file
    listing an earlier output's ``files``: manifest.json, compare.json for compare, scan.json for scan)."""
    example = _foreign_entry(target, record)
    if example is not None:
        raise OutputError(_foreign_message(target, example))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _make_parents(folder: Path) -> list[Path]:
    """``folder.mkdir(parents=True)``; the folders it made, deepest first (for ``_remove_made``)."""
    missing = [parent for parent in [folder, *folder.parents] if not parent.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_made(made: list[Path]) -> None:
    for folder in made:  # deepest first; rmdir leaves one that something else has put a file in since
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def staged_output(target: str | os.PathLike, record: str = MANIFEST):
    """Yield a staging folder; on success it becomes ``target`` (replacing an earlier fmonnx
    output there, whose ``record`` lists its files), on error it is removed and ``target`` is as it was
    (folders made above it are removed too)."""
    target = Path(target).resolve()
    if target.exists() and not target.is_dir():
        raise OutputError(f"output path {target} is a file; pass a folder with -o")
    if target.is_dir():
        replaceable(target, record)
        if Path.cwd().resolve().is_relative_to(target):
            raise OutputError(f"{target} holds the current folder and cannot be replaced; choose another -o")
    made: list[Path] = []
    try:
        made = _make_parents(target.parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.fmonnx-", dir=target.parent))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; the result is an ordinary folder
    except OSError as exc:
        _remove_made(made)
        raise OutputError(
            f"cannot write to {target.parent} ({exc.strerror or exc}); choose a writable folder with -o"
        ) from None
    try:
        try:
            yield staging
        except OSError as exc:  # disk full, file too large, permissions changed under us
            raise OutputError(
                f"cannot write into {target} ({exc.strerror or exc}); check free space and permissions"
            ) from None
        _swap_into_place(staging, target, record)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_made(made)
        raise


def _swap_into_place(staging: Path, target: Path, record: str = MANIFEST) -> None:
    """Move ``staging`` to ``target``. An earlier output there is moved aside first and checked again
    (``record`` lists its files): what a user put into it while fmonnx was writing (a scan takes hours)
    is never deleted; it is put back, as on any failure."""
    old = None
    try:
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "previous")
            # checked where no one writes by path any more; before the move a file could still appear
            example = _foreign_entry(old / "previous", record)
            if example is not None:
                os.replace(old / "previous", target)
                old.rmdir()
                raise OutputError(_foreign_message(target, example))
        os.replace(staging, target)
    except OSError as exc:
        if old is not None and (old / "previous").exists() and not target.exists():
            os.replace(old / "previous", target)
        if old is not None and not (old / "previous").exists():  # never delete the earlier output itself
            shutil.rmtree(old, ignore_errors=True)
        raise OutputError(f"cannot move the new output into {target} ({exc.strerror or exc})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
