"""A bounded slice of benchmarks/fuzz.py: seeded bad inputs through the real CLI.

Every case must end in exit 0 or one clean ``Error:`` line: no traceback, no hang, nothing
half-written, no side effect. A failing case is kept under the test's tmp folder
(``failures/<case>/repro.sh``); ``python benchmarks/fuzz.py --seed 13 --cases 40 --targets
models,images,lists`` gives the same cases.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import fuzz  # noqa: E402  (benchmarks/fuzz.py)

SEED = 13


def _report(summary: dict) -> str:
    lines = [fuzz.table(summary)]
    for problem in summary["problems"]:
        for example in problem["examples"]:
            lines.append(f"  {problem['outcome']}: {problem['key']}\n    {example['mutation']}\n"
                         f"    {' '.join(example['command'] or [])}\n    kept in {example['kept']}")
    return "\n".join(lines)


def _assert_clean(summary: dict) -> None:
    bad = {outcome: count for outcome, count in summary["totals"].items() if outcome in fuzz.BAD}
    assert summary["cases"] > 0
    assert "harness error" not in summary["totals"], _report(summary)
    assert not bad, _report(summary)
    # nothing of onnxruntime's, Pillow's or TensorFlow's own above the one line
    assert summary["clean_errors_with_more_lines"] == [], summary["clean_errors_with_more_lines"][:3]


def _needs(*modules: str) -> None:
    # find_spec, not importorskip: importing TensorFlow here would only slow the test down.
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def test_classify_outcomes():
    traceback = (
        'Traceback (most recent call last):\n  File "/x/fmonnx/stages/load.py", line 3, in read\n'
        '  File "/v/lib/python3.11/site-packages/onnx/__init__.py", line 9, in load\nValueError: bad\n'
    )
    assert fuzz.classify(0, "", False, True, [], False, []) == ("ok", "")
    assert fuzz.classify(1, "Error: x.onnx is corrupt; export it again\n", False, False, [], False, [])[0] == (
        "clean error")
    assert fuzz.classify(1, "something\n", False, False, [], False, [])[0] == "unclear error"
    outcome, key = fuzz.classify(1, traceback, False, False, [], False, [])
    assert outcome == "traceback"
    assert key == "ValueError at fmonnx/stages/load.py:read (raised in site-packages/onnx/__init__.py:load)"
    assert fuzz.classify(-11, "", False, False, [], False, []) == ("traceback", "killed by SIGSEGV")
    assert fuzz.classify(1, "Error: x\n", False, True, [], False, [])[0] == "half-written"
    assert fuzz.classify(1, "Error: x\n", False, False, [".out.fmonnx-ab12"], False, [])[0] == "half-written"
    assert fuzz.classify(None, "", True, False, [], False, [])[0] == "hang"
    assert fuzz.classify(0, "", False, False, [], True, [])[0] == "side effect"


@pytest.mark.timeout(600)
def test_cheap_targets_give_clean_errors(tmp_path):
    """40 cases of ONNX models, images and scan lists (Parquet with pyarrow); no TensorFlow, no torch."""
    summary = fuzz.run(SEED, 40, ["models", "images", "lists"], tmp_path, timeout=60, jobs=2)
    _assert_clean(summary)


@pytest.mark.keras
@pytest.mark.timeout(900)
def test_keras_zips_give_clean_errors(tmp_path):
    """A few mutated .keras files through fmonnx convert (each loads TensorFlow, so only 4)."""
    _needs("tensorflow", "tf2onnx", "keras")
    summary = fuzz.run(SEED, 4, ["keras_zips"], tmp_path, heavy_timeout=300, jobs=2, max_heavy=4)
    assert summary["targets_run"] == ["keras_zips"], summary
    _assert_clean(summary)


@pytest.mark.torch
@pytest.mark.timeout(900)
def test_pt2_files_give_clean_errors(tmp_path):
    """A few .pt2 files with duplicated, case-folded and ``..`` entries: refused, nothing run or extracted."""
    _needs("torch", "onnxscript")
    summary = fuzz.run(SEED, 4, ["pt2"], tmp_path, heavy_timeout=300, jobs=2, max_heavy=4)
    assert summary["targets_run"] == ["pt2"], summary
    _assert_clean(summary)
