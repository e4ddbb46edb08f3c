"""Issue 13, hardening: an output folder is replaced only when all of it is fmonnx's (folders and
symlinks included, also what appears while fmonnx writes), and every collection a scan reads (lists
in any Unicode encoding, CSV, Parquet with nulls or the wrong types) gives images or one Error line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import copy_model_nchw, save
from fmonnx.errors import ImageError, OutputError
from fmonnx.stages.collection import list_collection
from fmonnx.stages.output_folder import staged_output

SIZE = 8


def fmonnx_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmonnx", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def assert_error(result: subprocess.CompletedProcess, *parts: str) -> str:
    """Exit 1, one ``Error:`` line on stderr holding every part, no traceback; the line."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def model(tmp_path) -> Path:
    return save(copy_model_nchw(size=(SIZE, SIZE)), tmp_path, "model.onnx")


@pytest.fixture
def images(tmp_path) -> list[Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for index in range(4):
        path = folder / f"{index:03d}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


# --- replacing an earlier output folder ----------------------------------------------------------

# (command, its record) for the three commands that write an output folder
COMMANDS = {"render": "manifest.json", "compare": "compare.json", "scan": "scan.json"}


def write_output(command: str, model: Path, image: Path, out: Path) -> subprocess.CompletedProcess:
    return fmonnx_cli(command, model, image, "-o", out)


@pytest.mark.parametrize("command", COMMANDS)
def test_an_earlier_output_holding_a_users_empty_folder_is_kept(command, model, images, tmp_path):
    out = tmp_path / "out"
    first = write_output(command, model, images[0], out)
    assert first.returncode == 0, first.stderr
    assert (out / COMMANDS[command]).is_file()
    (out / "mine").mkdir()
    nested = next(p for p in sorted(out.rglob("*")) if p.is_dir()) if command != "compare" else out
    (nested / "also mine").mkdir()
    again = write_output(command, model, images[1], out)
    assert_error(again, str(out), "did not write", "-o")
    assert (out / "mine").is_dir() and (nested / "also mine").is_dir()
    assert (out / COMMANDS[command]).is_file()  # the earlier output is untouched too


@pytest.mark.parametrize("listed", [True, False], ids=["named-as-a-listed-file", "unlisted"])
def test_a_symlink_in_an_earlier_output_is_never_fmonnxs(listed, model, images, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    out = tmp_path / "out"
    assert write_output("render", model, images[0], out).returncode == 0
    link = out / ("index.html" if listed else "shortcut")
    link.unlink(missing_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    again = write_output("render", model, images[1], out)
    assert_error(again, "did not write")
    assert link.is_symlink() and (outside / "precious.txt").read_text() == "keep"


def test_an_earlier_output_is_replaced_when_it_is_all_fmonnxs(model, images, tmp_path):
    out = tmp_path / "out"
    assert write_output("render", model, images[0], out).returncode == 0
    again = write_output("render", model, images[1], out)
    assert again.returncode == 0, again.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"][0]["image"].endswith("001.png")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # nothing left beside it


@pytest.mark.parametrize("added", ["file", "folder"])
def test_what_a_user_adds_while_fmonnx_writes_is_kept(added, tmp_path):
    target = tmp_path / "out"
    with staged_output(target) as staging:
        (staging / "a.png").write_bytes(b"picture")
        (staging / "manifest.json").write_text(json.dumps({"fmonnx_version": "0", "files": ["a.png"]}))
    with pytest.raises(OutputError, match="did not write"):
        with staged_output(target) as staging:
            (staging / "b.png").write_bytes(b"new")
            # a long render or scan: the user saves something into the old output meanwhile
            (target / "notes.txt").write_text("keep") if added == "file" else (target / "drafts").mkdir()
    assert (target / ("notes.txt" if added == "file" else "drafts")).exists()
    assert (target / "a.png").read_bytes() == b"picture" and not (target / "b.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or moved-aside folder left


def test_a_failed_output_leaves_no_folders_it_made(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_output(tmp_path / "new" / "deeper" / "out") as staging:
            (staging / "a.png").write_bytes(b"half")
            raise RuntimeError("the render failed")
    assert list(tmp_path.iterdir()) == []


# --- collections: lists --------------------------------------------------------------------------


def labels(data) -> list[str]:
    return [ref.label for ref in list_collection([data]).images]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig", "utf-32"])
def test_lists_with_a_byte_order_mark_name_the_same_images(encoding, images, tmp_path):
    names = [path.name for path in images]
    plain = images[0].parent / "plain.txt"
    plain.write_text("\n".join(names) + "\n", encoding="utf-8")
    listing = images[0].parent / "images.lst"
    text = "# made on Windows\r\n" + "\r\n".join(names) + "\r\n"
    bom = {"utf-16-be": "\ufeff"}.get(encoding, "")  # Python's utf-16-be writes no BOM of its own
    listing.write_bytes((bom + text).encode(encoding))
    assert labels(listing) == labels(plain) == [str(path) for path in images]


def test_cli_scans_a_utf16_list(model, images, tmp_path):
    listing = tmp_path / "images.lst"
    listing.write_text("\n".join(str(path) for path in images), encoding="utf-16")
    result = fmonnx_cli("scan", model, listing, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert record["images"] == len(images) and record["skipped"] == []


def test_an_undecodable_list_names_its_line_and_the_fix(model, images, tmp_path):
    listing = tmp_path / "images.txt"
    listing.write_bytes(b"images/000.png\nimages/001.png\nimages/caf\xe9.png\n")  # Latin-1
    assert_error(fmonnx_cli("scan", model, listing, "-o", tmp_path / "out"), str(listing), "line 3", "UTF-8")
    assert not (tmp_path / "out").exists()


def test_a_utf16_list_without_its_byte_order_mark_is_an_error(images, tmp_path):
    listing = tmp_path / "images.txt"
    listing.write_bytes("\n".join(str(path) for path in images).encode("utf-16-le"))
    with pytest.raises(ImageError, match="UTF-8"):
        list_collection([listing])


def test_a_list_line_naming_a_folder_is_an_error(model, images, tmp_path):
    listing = tmp_path / "images.txt"
    listing.write_text(f"{images[0]}\n\n{images[0].parent}\n")
    assert_error(fmonnx_cli("scan", model, listing, "-o", tmp_path / "out"), str(listing), "line 3", "folder")


def test_a_list_of_nothing_is_an_error_naming_it(images, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(ImageError, match="empty.txt"):
        list_collection([empty, images[0]])


def test_csv_with_a_header_and_quoted_commas(images, tmp_path):
    odd = images[0].parent / "a, b.png"
    images[1].rename(odd)
    listing = images[0].parent / "images.csv"
    listing.write_text(f'path,label\n{images[0].name},cat\n\n"{odd.name}",dog\n')
    assert labels(listing) == [str(images[0]), str(odd)]
    second = images[0].parent / "second.csv"  # the paths in a later column, some rows unlabelled
    second.write_text(f'label,file_name\n,{images[0].name}\ndog,"{odd.name}"\n')
    assert labels(second) == [str(images[0]), str(odd)]


# --- collections: Parquet ------------------------------------------------------------------------


def test_a_null_in_a_parquet_path_column_is_skipped_and_counted(model, images, tmp_path):
    pyarrow = pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install pyarrow")
    import pyarrow.parquet as pq

    paths = [str(images[0]), None, str(images[2]), ""]
    pq.write_table(pyarrow.table({"path": pyarrow.array(paths, pyarrow.string())}), tmp_path / "images.parquet")
    result = fmonnx_cli("scan", model, tmp_path / "images.parquet", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "Skipped 2" in result.stderr
    record = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert record["images"] == 2 and record["listed"] == 4
    skipped = {entry["image"]: entry["reason"] for entry in record["skipped"]}
    assert set(skipped) == {f"{tmp_path / 'images.parquet'}#1", f"{tmp_path / 'images.parquet'}#3"}
    assert all("holds no image" in reason for reason in skipped.values())


def test_parquet_problems_are_one_error_line(model, images, tmp_path):
    pyarrow = pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install pyarrow")
    import pyarrow.parquet as pq

    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pyarrow.table({"path": [1, 2, 3]}), numbers)
    assert_error(fmonnx_cli("scan", model, numbers, "-o", tmp_path / "a"), str(numbers), "'path'", "int64")
    fake = tmp_path / "fake.parquet"
    fake.write_text("path\nimages/000.png\n")
    assert_error(fmonnx_cli("scan", model, fake, "-o", tmp_path / "b"), str(fake), "Parquet")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pyarrow.table({"path": pyarrow.array([], pyarrow.string())}), empty)
    with pytest.raises(ImageError, match="empty.parquet"):
        list_collection([empty, images[0]])
    folder = tmp_path / "folder.parquet"
    pq.write_table(pyarrow.table({"path": [str(images[0]), str(images[0].parent)]}), folder)
    with pytest.raises(ImageError, match=r"row 1, column 'path', names a folder"):
        list_collection([folder])


def test_paths_too_long_for_the_file_system_are_one_error_line(model, images, tmp_path):
    """A list line or a Parquet row naming a 5,000-character path: the stat fails (not 'missing'), and
    the line or row is named."""
    pyarrow = pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install pyarrow")
    import pyarrow.parquet as pq

    listed = tmp_path / "long.lst"
    listed.write_text(f"{images[0]}\n{'x' * 5000}\n")
    assert_error(fmonnx_cli("scan", model, listed, "-o", tmp_path / "a"), f"{listed} line 2", "cannot look up")
    table = tmp_path / "long.parquet"
    pq.write_table(pyarrow.table({"path": [str(images[0]), "x" * 5000]}), table)
    assert_error(fmonnx_cli("scan", model, table, "-o", tmp_path / "b"), "row 1, column 'path'", "cannot look up")


# --- what the libraries print on their own ------------------------------------------------------------------


def test_onnxruntime_and_pillow_print_nothing_above_the_error_line(images, tmp_path):
    """onnxruntime logs a failed session to stderr itself, Pillow warns on damaged EXIF: the terminal shows
    fmonnx's one line only."""
    model = copy_model_nchw()
    weights = next(tensor for tensor in model.graph.initializer)
    del weights.dims[:]
    weights.dims.append(1)  # the data holds more values than the dims say: onnxruntime refuses the session
    broken = save(model, tmp_path, "broken.onnx")
    assert_error(fmonnx_cli("render", broken, images[0], "-o", tmp_path / "a"), "broken.onnx")
    tiff = tmp_path / "damaged.tif"
    Image.new("1", (2, 2)).save(tiff)
    tiff.write_bytes(tiff.read_bytes()[:47])  # its tags cut short: Pillow warns "Corrupt EXIF data", then fails
    result = fmonnx_cli("render", save(copy_model_nchw(), tmp_path, "m.onnx"), tiff, "-o", tmp_path / "b")
    assert_error(result, "damaged.tif")
    assert "Warning" not in result.stderr and "warnings.warn" not in result.stderr, result.stderr
