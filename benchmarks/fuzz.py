"""Fuzz fmonnx's command line with seeded mutations of its inputs.

    python benchmarks/fuzz.py --seed 1 --cases 300 --targets models,images,lists --timeout 60 --out fuzz-out

Targets (benchmarks/fuzz_inputs.py makes the inputs):

- ``models``: the shipped ONNX models with bit flips and byte changes, or structured changes made with
  onnx (dims huge, zero, negative; dtypes; ``fmonnx.layers``/``fmonnx.source`` metadata of wrong types;
  node attributes; truncated initializers; outputs, inputs, nodes removed; external data paths);
- ``images``: modes (L, LA, RGBA, P, 1, I;16, I, F, CMYK, YCbCr, 16-bit PNGs), 1x1 images, EXIF
  orientations, several frames, truncated files, wrong magic, headers declaring huge sizes;
- ``lists``: ``fmonnx scan`` lists (``.lst``/``.txt``/``.csv``: encodings, empty lines, missing files,
  folders, very long lines) and Parquet collections (nulls, wrong column types, no image column);
- ``keras_zips``: a small ``.keras`` file (built once, cached under OUT/cache) with its config.json
  mutated (wrong types for ``layers``, Lambda layers under any key, missing keys) or its zip altered
  (compression methods, unknown method ids, duplicate entries, truncation); ``fmonnx convert`` loads
  TensorFlow, so these run with ``--heavy-timeout`` and at most ``--max-heavy`` cases;
- ``pt2``: a small ``torch.export.save`` file with entries duplicated, case-folded, or named with ``..``.

Each case runs the real CLI (``python -m fmonnx ...``) in its own folder under OUT/work and is
classified as ``ok`` (exit 0), ``clean error`` (exit 1 or 2, a line starting ``Error:``, no
traceback), ``unclear error`` (exit 1 or 2 without such a line), ``traceback`` (a traceback on stderr,
or an exit code outside 0-3: a signal), ``hang`` (past the timeout), ``half-written`` (failed and the
output exists, or a staging folder/file was left beside it) or ``side effect`` (a marker file that
code or a ``..`` path in the input tried to create exists, or an input file was changed). Every case
that is not ``ok``/``clean error`` is kept in OUT/failures/<case>/ with ``repro.sh``; OUT/summary.json
holds the counts and the tracebacks, deduplicated by exception type and place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from random import Random

sys.path.insert(0, str(Path(__file__).parent))

from fuzz_inputs import MAKERS, marker_name  # noqa: E402  (benchmarks/fuzz_inputs.py)

ROOT = Path(__file__).resolve().parent.parent
CHEAP = ("models", "images", "lists")
HEAVY = ("keras_zips", "pt2")
OUTCOMES = ("ok", "clean error", "unclear error", "traceback", "hang", "half-written", "side effect")
BAD = frozenset(OUTCOMES[2:])
_STAGING = re.compile(r"\.(fmonnx-|old-)|\.tmp$")
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (.+)$')

_KERAS_SCRIPT = r"""
import json, os, sys, zipfile
import keras
keras.utils.set_random_seed(0)
L = keras.layers
model = keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(4, 3, activation="relu", name="conv2d"),
                          L.MaxPooling2D(2, name="pool"), L.Flatten(name="flatten"), L.Dense(2, name="dense")])
model.save(sys.argv[1])
os.environ["FMONNX_FUZZ_MARKER"] = os.devnull
touch = lambda x: (open(__import__('os').environ['FMONNX_FUZZ_MARKER'], 'w'), x)[1]
probe = keras.Sequential([keras.Input((16, 16, 3)), L.Lambda(touch, name="touch")])
probe.save(sys.argv[2] + ".keras")
with zipfile.ZipFile(sys.argv[2] + ".keras") as archive:
    layer = [l for l in json.loads(archive.read("config.json"))["config"]["layers"] if l["class_name"] == "Lambda"]
open(sys.argv[2], "w").write(json.dumps(layer[0]))
"""

_TORCH_SCRIPT = r"""
import sys, torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2)).eval()
torch.export.save(torch.export.export(model, (torch.rand(1, 3, 16, 16),)), sys.argv[1])
"""


# ---------------------------------------------------------------- assets, built once and cached


def prepare_assets(out: Path, targets: list[str]) -> tuple[dict, list[str]]:
    """The base inputs the mutations start from; returns (assets, targets that can run)."""
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    assets = {
        "tutorial_cnn.onnx": str(ROOT / "models" / "tutorial_cnn.onnx"),
        "torch_cnn.onnx": str(ROOT / "models" / "torch_cnn.onnx"),
    }
    photo = cache / "small_photo.jpg"
    if not photo.exists():
        from PIL import Image

        from fmonnx.stages.plan import demo_paths

        with Image.open(demo_paths()[1]) as image:
            image.convert("RGB").resize((160, 120)).save(photo, quality=90)
    assets["small_photo"] = str(photo)
    try:
        import pyarrow.parquet  # noqa: F401

        assets["pyarrow"] = True
    except ImportError:
        assets["pyarrow"] = False
    runnable = []
    for target in targets:
        try:
            if target == "keras_zips":
                assets.update(_cached(cache, ["base.keras", "lambda_layer.json"], _KERAS_SCRIPT))
            elif target == "pt2":
                assets.update(_cached(cache, ["base.pt2"], _TORCH_SCRIPT))
        except RuntimeError as exc:
            print(f"skipping {target}: {exc}", file=sys.stderr)
            continue
        runnable.append(target)
    return assets, runnable


def _cached(cache: Path, names: list[str], script: str) -> dict:
    paths = [cache / name for name in names]
    if not all(path.exists() for path in paths):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True, text=True,
                              env=env, timeout=600)
        if done.returncode != 0 or not all(path.exists() for path in paths):
            raise RuntimeError(f"could not build {names}: {done.stderr.strip().splitlines()[-1:]}")
    return {name: str(path) for name, path in zip(names, paths)}


# ---------------------------------------------------------------- planning and running cases


def plan(targets: list[str], cases: int, max_heavy: int) -> list[str]:
    """The target of every case: heavy targets capped at ``max_heavy`` each, the rest shared evenly."""
    counts = dict.fromkeys(targets, 0)
    total = 0
    while total < cases:
        grew = False
        for target in targets:
            if total < cases and (target not in HEAVY or counts[target] < max_heavy):
                counts[target] += 1
                total += 1
                grew = True
        if not grew:
            break
    result, cursor = [], dict.fromkeys(targets, 0)
    while len(result) < sum(counts.values()):
        for target in targets:
            if cursor[target] < counts[target]:
                cursor[target] += 1
                result.append(target)
    return result


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    except OSError:
        return None


def _limit_memory(limit: int) -> None:
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_case(job: dict) -> dict:
    """Make case ``job['index']``, run it, classify it; keep it under failures/ when it is bad."""
    out = Path(job["out"])
    target, index = job["target"], job["index"]
    case_dir = out / "work" / f"{index:05d}-{target}"
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)
    rng = Random(f"{job['seed']}:{index}:{target}")
    try:
        case = MAKERS[target](rng, case_dir, job["assets"])
    except Exception as exc:  # a harness bug must not stop the run; it is reported as such
        return {"index": index, "target": target, "outcome": "harness error", "detail": repr(exc)}
    marker = Path(case.marker or f"/tmp/{marker_name(case_dir)}")
    before = {name: _digest(case_dir / name) for name in case.inputs}
    timeout = job["heavy_timeout"] if case.heavy else job["timeout"]
    env = {**os.environ, "FMONNX_FUZZ_MARKER": str(marker), "MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-m", "fmonnx", *case.argv]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=case_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True,
                               preexec_fn=lambda: _limit_memory(0 if case.heavy else job["memory_limit"]))
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    stderr_text = stderr.decode("utf-8", "replace")
    rc = process.returncode
    out_path = case_dir / case.out if case.out else None
    leftovers = sorted(p.name for p in case_dir.iterdir() if p.name.startswith(".") and _STAGING.search(p.name))
    marker_hit = marker.exists() or any(case_dir.rglob(marker.name))
    changed = [name for name, digest in before.items() if _digest(case_dir / name) != digest]
    if marker.exists():
        marker.unlink()
    outcome, detail = classify(rc, stderr_text, timed_out, bool(out_path and out_path.exists()), leftovers,
                               marker_hit, changed)
    record = {
        "index": index, "target": target, "mutation": case.mutation, "command": ["fmonnx", *case.argv],
        "rc": rc, "seconds": round(seconds, 2), "outcome": outcome, "detail": detail,
        "error": next((line for line in stderr_text.splitlines() if line.startswith("Error:")), None),
        "stderr_lines": len([line for line in stderr_text.splitlines() if line.strip()]),
    }
    if outcome == "clean error" and record["stderr_lines"] > 1:
        record["stderr_tail"] = stderr_text[-1000:]  # more than the one line the error should be
    if outcome in BAD:
        kept = out / "failures" / case_dir.name
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(case_dir, kept, symlinks=True)
        record["kept"] = str(kept)
        record["stderr_tail"] = stderr_text[-4000:]
        (kept / "repro.sh").write_text(
            "#!/bin/sh\n# " + case.mutation.replace("\n", " ")[:300] + "\n"
            f'cd "$(dirname "$0")" && FMONNX_FUZZ_MARKER={marker} {sys.executable} -m fmonnx '
            + " ".join(_quote(a) for a in case.argv) + "\n"
        )
        (kept / "case.json").write_text(json.dumps({**record, "stdout_tail": stdout.decode("utf-8", "replace")[-2000:]},
                                                   indent=1))
    shutil.rmtree(case_dir, ignore_errors=True)
    return record


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def classify(rc: int, stderr: str, timed_out: bool, out_exists: bool, leftovers: list[str], marker_hit: bool,
             changed: list[str]) -> tuple[str, str]:
    """The outcome of one run and a short detail (the traceback's key, the leftovers...)."""
    if marker_hit or changed:
        return "side effect", "marker file created" if marker_hit else f"input changed: {changed}"
    if timed_out:
        return "hang", "killed at the timeout"
    if "Traceback" in stderr:
        return "traceback", traceback_key(stderr)
    if rc not in (0, 1, 2, 3):
        name = signal.Signals(-rc).name if rc < 0 and -rc in signal.Signals._value2member_map_ else f"exit {rc}"
        return "traceback", f"killed by {name}" if rc < 0 else f"exit code {rc}"
    if (rc != 0 and out_exists) or leftovers:
        return "half-written", f"exit {rc}; output exists: {out_exists}; left beside it: {leftovers}"
    if rc == 0:
        return "ok", ""
    if any(line.startswith("Error:") for line in stderr.splitlines()):
        return "clean error", ""
    return "unclear error", f"exit {rc}; stderr: {stderr.strip()[-200:]!r}"


def traceback_key(stderr: str) -> str:
    """``ExceptionType at fmonnx/file.py:function (raised in lib/file.py:function)`` of the last traceback."""
    block = stderr[stderr.rfind("Traceback (most recent call last):"):].splitlines()[1:]
    frames = [match.groups() for line in block if (match := _FRAME.match(line))]
    exception = next((line for line in reversed(block) if line and not line.startswith(" ")), "?")
    exc_type = exception.split(":", 1)[0].strip()

    def short(frame):
        path = frame[0]
        for anchor in ("/fmonnx/", "/site-packages/", "/lib/python"):
            if anchor in path:
                path = path[path.rfind(anchor) + 1:]
                break
        return f"{path}:{frame[2]}"

    own = [frame for frame in frames if "/fmonnx/" in frame[0] and "site-packages" not in frame[0]]
    where = short(own[-1]) if own else "outside fmonnx"
    raised = short(frames[-1]) if frames else "?"
    return f"{exc_type} at {where}" + (f" (raised in {raised})" if raised != where else "")


# ---------------------------------------------------------------- the run and its summary


def run(seed: int, cases: int, targets: list[str], out: Path, timeout: float = 60, heavy_timeout: float = 300,
        jobs: int = 2, max_heavy: int = 20, memory_limit: int = 6 * 2**30, progress: bool = False) -> dict:
    """Run ``cases`` cases and write OUT/summary.json; returns the summary."""
    out = Path(out).resolve()
    started = time.perf_counter()
    assets, runnable = prepare_assets(out, targets)
    schedule = plan(runnable, cases, max_heavy)
    jobs_list = [{"seed": seed, "index": i, "target": t, "assets": assets, "out": str(out), "timeout": timeout,
                  "heavy_timeout": heavy_timeout, "memory_limit": memory_limit} for i, t in enumerate(schedule)]
    records = []
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, 2))) as pool:
        for record in pool.map(run_case, jobs_list):
            records.append(record)
            if progress:
                print(f"[{len(records)}/{len(jobs_list)}] case {record['index']} {record['target']:<10} "
                      f"{record['outcome']:<13} "
                      f"{record.get('seconds', 0):6.1f} s  {record.get('mutation', '')[:90]}", file=sys.stderr,
                      flush=True)
    shutil.rmtree(out / "work", ignore_errors=True)
    summary = summarize(records, seed, targets, runnable, time.perf_counter() - started)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "cases.json").write_text(json.dumps(records, indent=1))
    return summary


def summarize(records: list[dict], seed: int, asked: list[str], runnable: list[str], seconds: float) -> dict:
    per_target = {target: Counter() for target in runnable}
    for record in records:
        per_target[record["target"]][record["outcome"]] += 1
    grouped = defaultdict(list)
    for record in records:
        if record["outcome"] in BAD or record["outcome"] == "harness error":
            grouped[(record["outcome"], record.get("detail", ""))].append(record)
    problems = [
        {"outcome": outcome, "key": key, "count": len(group), "targets": sorted({r["target"] for r in group}),
         "cases": [r["index"] for r in group][:20],
         "examples": [{"mutation": r.get("mutation"), "command": r.get("command"), "kept": r.get("kept")}
                      for r in group[:3]]}
        for (outcome, key), group in sorted(grouped.items(), key=lambda item: (item[0][0], -len(item[1])))
    ]
    errors = Counter((r["target"], r["error"][:100]) for r in records if r.get("error"))
    wordy = [{"index": r["index"], "target": r["target"], "mutation": r["mutation"], "stderr": r["stderr_tail"]}
             for r in records if r["outcome"] == "clean error" and r.get("stderr_lines", 0) > 1]
    return {
        "seed": seed, "cases": len(records), "seconds": round(seconds, 1), "targets_asked": asked,
        "targets_run": runnable,
        "per_target": {target: dict(counts) for target, counts in per_target.items()},
        "totals": dict(sum(per_target.values(), Counter())),
        "problems": problems,
        "clean_errors": [{"target": t, "error": e, "count": n} for (t, e), n in errors.most_common(40)],
        "clean_errors_with_more_lines": wordy[:40],
    }


def table(summary: dict) -> str:
    columns = [outcome for outcome in (*OUTCOMES, "harness error") if outcome in summary["totals"]
               or outcome in ("ok", "clean error", "traceback", "hang", "half-written")]
    rows = [["target", "cases", *columns]]
    for target, counts in {**summary["per_target"], "all": summary["totals"]}.items():
        rows.append([target, str(sum(counts.values())), *(str(counts.get(c, 0)) for c in columns)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in
                       enumerate(zip(row, widths))) for row in rows]
    for problem in summary["problems"]:
        targets = ", ".join(problem["targets"])
        lines.append(f"{problem['count']:4d} x {problem['outcome']}: {problem['key']}  [{targets}]"
                     f"  e.g. {(problem['examples'][0]['mutation'] or '')[:100]!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--targets", default=",".join(CHEAP + HEAVY),
                        help=f"comma-separated, of {', '.join(MAKERS)} [default: all]")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per case [default: 60]")
    parser.add_argument("--heavy-timeout", type=float, default=300,
                        help="seconds per case that loads TensorFlow or torch [default: 300]")
    parser.add_argument("--max-heavy", type=int, default=20, help="cases per heavy target at most [default: 20]")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (2 at most) [default: 2]")
    parser.add_argument("--memory-limit", type=float, default=6, help="GiB of address space per cheap case; 0: none")
    parser.add_argument("--out", default="fuzz-out", help="output folder [default: fuzz-out]")
    parser.add_argument("--quiet", action="store_true", help="no line per case")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in MAKERS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(MAKERS)}")
    summary = run(args.seed, args.cases, targets, Path(args.out), args.timeout, args.heavy_timeout, args.jobs,
                  args.max_heavy, int(args.memory_limit * 2**30), progress=not args.quiet)
    print(table(summary))
    print(f"{summary['cases']} cases in {summary['seconds']} s; summary in {Path(args.out) / 'summary.json'}")
    return 1 if any(summary["totals"].get(outcome) for outcome in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())
