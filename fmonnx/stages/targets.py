"""What the explained score is: a class, a detector's box, a segmentation class or any output element.

Each target function returns the target (a dict: ``output``, ``index`` the list of index lists of the
output elements summed into the score, ``score``, ``kind``, ``label``, as ``ImageExplanation.target``)
and a ``seed``, an array of the output's shape with ones on those elements, so ``sum(seed * output) ==
score`` and the backward pass starts from ``seed``. Scores are taken from the logits given (before a
final Softmax, as Grad-CAM does: the caller passes the tensor before it).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

import numpy as np

from fmonnx.errors import FmonnxError

__all__ = [
    "TargetSpec", "YoloInfo", "parse_target", "class_target", "yolo_info", "decode_boxes", "box_target",
    "mask_target", "mask_choices", "element_target", "labels_from", "TARGET_FORMS",
]

TARGET_FORMS = "K (a class), class:K or class (segmentation), box:K (a detection), output:NAME[i,j,...]"
TOP_CHOICES = 5
# Metadata is untrusted text: longer values are ignored rather than parsed.
_MAX_METADATA = 1_000_000
_MAX_CLASSES = 100_000


@dataclass(frozen=True)
class TargetSpec:
    """A parsed ``--target``: ``kind`` None (the default), "class", "box", "mask" or "element";
    ``index`` the class/box number (None: the default one); ``output`` and ``element`` for "element"."""

    kind: str | None = None
    index: int | None = None
    output: str | None = None
    element: tuple[int, ...] = ()


@dataclass(frozen=True)
class YoloInfo:
    """A YOLO-style output (1, 4 + classes, anchors): cx, cy, w, h in input pixels, then class scores."""

    classes: int
    anchors: int
    names: dict[int, str] | None = None
    stride: tuple[int, ...] | None = None
    imgsz: tuple[int, ...] | None = None

    def label(self, cls: int) -> str:
        return (self.names or {}).get(cls, f"class {cls}")


_ELEMENT = re.compile(r"^output:(?P<name>.+)\[(?P<index>\s*-?\d+\s*(,\s*-?\d+\s*)*)\]$")


def _bad(text) -> FmonnxError:
    return FmonnxError(f"--target {text!r} is not understood; use one of: {TARGET_FORMS}")


def _int(text: str, whole) -> int:
    if not re.fullmatch(r"\s*\d+\s*", text):
        raise _bad(whole)
    return int(text)


def parse_target(text) -> TargetSpec:
    """Parse ``--target``: None, K, "class", "class:K", "box:K" or "output:NAME[i,j,...]" (NAME may hold
    ':' '/' '.'; indices may be negative)."""
    if text is None:
        return TargetSpec()
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        if text < 0:
            raise _bad(text)
        return TargetSpec("class", int(text))
    if not isinstance(text, str):
        raise _bad(text)
    stripped = text.strip()
    match = _ELEMENT.match(stripped)
    if match:
        element = tuple(int(x) for x in match["index"].split(","))
        return TargetSpec("element", output=match["name"], element=element)
    if stripped == "class":
        return TargetSpec("mask")
    if stripped.startswith("class:"):
        return TargetSpec("mask", _int(stripped[6:], text))
    if stripped.startswith("box:"):
        return TargetSpec("box", _int(stripped[4:], text))
    return TargetSpec("class", _int(stripped, text))


def _label(labels, cls: int) -> str:
    if labels is not None and 0 <= cls < len(labels):
        return str(labels[cls])
    return f"class {cls}"


def class_target(logits, spec: TargetSpec | None = None, labels=None, output: str = "output"):
    """A classifier's target: ``(target, seed, choices)``. ``logits`` (1, classes) or (classes,);
    the class is ``spec.index`` or the top-1; ``choices`` the top-5 classes' targets, best first."""
    logits = np.asarray(logits)
    flat = logits.reshape(-1)
    if logits.ndim > 2 or (logits.ndim == 2 and logits.shape[0] != 1):
        raise FmonnxError(f"output {output!r} of shape {logits.shape} is not a classifier's (1, classes); "
                          "use --target 'output:NAME[i,j,...]'")

    def target_of(cls: int) -> dict:
        index = [0, cls] if logits.ndim == 2 else [cls]
        return {"output": output, "index": [index], "score": float(flat[cls]), "kind": "class",
                "label": _label(labels, cls)}

    if spec is not None and spec.index is not None:
        cls = spec.index
        if not 0 <= cls < flat.size:
            raise FmonnxError(
                f"class {cls} does not exist: output {output!r} has {flat.size} classes (0..{flat.size - 1})"
            )
    else:
        cls = int(np.argmax(flat))
    order = np.argsort(-flat, kind="stable")[:TOP_CHOICES]
    choices = [target_of(cls)] + [target_of(int(c)) for c in order if int(c) != cls]
    seed = np.zeros(logits.shape, np.float32)
    seed.reshape(-1)[cls] = 1
    return target_of(cls), seed, choices[:TOP_CHOICES]


def _literal(text):
    if not isinstance(text, str) or len(text) > _MAX_METADATA:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _int_tuple(value, lengths) -> tuple[int, ...] | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) not in lengths:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1e6 for x in value):
        return None
    return tuple(int(x) for x in value)


def _names(text) -> dict[int, str] | None:
    """ultralytics' ``names`` ("{0: 'person', ...}") read safely; None unless a dict {int: str}."""
    names = _literal(text)
    if isinstance(names, dict) and 0 < len(names) <= _MAX_CLASSES and all(
        isinstance(k, int) and not isinstance(k, bool) and isinstance(v, str) for k, v in names.items()
    ):
        return {int(k): v[:200] for k, v in names.items()}
    return None


def labels_from(metadata: dict[str, str] | None) -> list[str] | None:
    """Class labels from the model's metadata_props (ultralytics' ``names``), indexed by class; None when
    absent or not the classes 0..N-1 (untrusted text, read as ``yolo_info`` reads it)."""
    names = _names((metadata or {}).get("names"))
    if names is None or sorted(names) != list(range(len(names))):
        return None
    return [names[k] for k in range(len(names))]


def yolo_info(shape, metadata: dict[str, str] | None = None, force: bool = False) -> YoloInfo | None:
    """Recognise a YOLO-style output (1, 4 + classes, anchors) from its shape and ultralytics' metadata
    (``task`` "detect", ``names`` a dict literal {int: str}, ``stride``, ``imgsz``); None if it is not one.

    Metadata is untrusted: it is read with ``ast.literal_eval`` only, and a value of the wrong type or size
    is treated as absent. Without metadata, ``force`` still takes the shape as a detector's."""
    metadata = metadata or {}
    # the anchors (and an exported batch) may be symbolic: a model exported for any input size
    if len(shape) != 3 or shape[0] not in (1, None) and not isinstance(shape[0], str) \
            or not isinstance(shape[1], (int, np.integer)):
        return None
    classes = int(shape[1]) - 4
    anchors = int(shape[2]) if isinstance(shape[2], (int, np.integer)) else 0
    if classes < 1 or isinstance(shape[2], (int, np.integer)) and anchors < 1:
        return None
    task = metadata.get("task")
    names = _names(metadata.get("names"))
    if names is not None and (len(names) != classes or not all(0 <= k < classes for k in names)):
        # names for another number of classes: this output is not the detections (or the names are wrong)
        if not force:
            return None
        names = None
    if task != "detect" and not force:
        return None
    stride = _int_tuple(_literal(metadata.get("stride")), range(1, 9))
    imgsz = _int_tuple(_literal(metadata.get("imgsz")), (1, 2))
    return YoloInfo(classes, anchors, names, stride, imgsz)


def _iou(box, boxes) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def decode_boxes(output, info: YoloInfo, iou: float = 0.45, max_det: int = 300) -> list[dict]:
    """A YOLO output (1, 4 + classes, anchors) decoded: boxes xyxy in input pixels from (cx, cy, w, h),
    score = the best class score, then class-aware NMS. Every box is kept whatever its score (an untrained
    model's scores are tiny, and ``box:0`` must exist), ranked by score, best first."""
    rows = np.asarray(output, dtype=np.float64).reshape(4 + info.classes, info.anchors)
    cx, cy, w, h = rows[:4]
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    scores = rows[4:]
    classes = scores.argmax(axis=0)
    best = scores[classes, np.arange(info.anchors)]
    order = np.argsort(-best, kind="stable")
    kept: list[int] = []
    suppressed = np.zeros(info.anchors, bool)
    for anchor in order:
        if suppressed[anchor]:
            continue
        kept.append(int(anchor))
        if len(kept) >= max_det:
            break
        same = classes == classes[anchor]
        suppressed |= same & (_iou(xyxy[anchor], xyxy) > iou)
    return [
        {"box": [float(x) for x in xyxy[a]], "score": float(best[a]), "class": int(classes[a]),
         "label": info.label(int(classes[a])), "anchor": a}
        for a in kept
    ]


def box_target(output, boxes: list[dict], k: int, output_name: str):
    """The K-th decoded box's target: its anchor's class-score element ``[0, 4 + class, anchor]``.
    Returns ``(target, seed)``."""
    if not 0 <= k < len(boxes):
        raise FmonnxError(f"box:{k} does not exist: the detector found {len(boxes)} boxes"
                          + (f" (box:0..box:{len(boxes) - 1})" if boxes else ""))
    box = boxes[k]
    index = [0, 4 + box["class"], box["anchor"]]
    output = np.asarray(output)
    seed = np.zeros(output.shape, np.float32)
    seed[tuple(index)] = 1
    target = {"output": output_name, "index": [index], "score": float(output[tuple(index)]), "kind": "box",
              "label": box["label"], "box": list(box["box"]), "class": box["class"]}
    return target, seed


def _winners(logits) -> np.ndarray:
    logits = np.asarray(logits)
    if logits.ndim != 4 or logits.shape[0] != 1:
        raise FmonnxError(f"a segmentation target needs an output (1, classes, H, W), not {logits.shape}")
    return logits[0].argmax(axis=0)


def mask_target(logits, k: int | None = None, background: int = 0, labels=None, output: str = "output"):
    """A segmentation target (pytorch-grad-cam's SemanticSegmentationTarget): the sum of class K's logits
    over the pixels where K wins. Without K, the most frequent winning class other than ``background``
    (the background itself if nothing else wins). Returns ``(target, seed)``; the target also holds
    ``class`` and ``mask`` (H, W) bool."""
    logits = np.asarray(logits)
    winners = _winners(logits)
    classes = logits.shape[1]
    if k is None:
        counts = np.bincount(winners.reshape(-1), minlength=classes)
        if 0 <= background < classes and counts.sum() > counts[background]:
            counts[background] = -1
        k = int(np.argmax(counts))
    elif not 0 <= k < classes:
        raise FmonnxError(f"class:{k} does not exist: output {output!r} has {classes} classes (0..{classes - 1})")
    mask = winners == k
    seed = np.zeros(logits.shape, np.float32)
    seed[0, k][mask] = 1
    index = [[0, k, int(i), int(j)] for i, j in zip(*np.nonzero(mask))]
    score = float(logits[0, k][mask].astype(np.float64).sum())
    target = {"output": output, "index": index, "score": score, "kind": "mask", "label": _label(labels, k),
              "class": k, "mask": mask}
    return target, seed


def mask_choices(logits, labels=None, output: str = "output") -> list[dict]:
    """The classes present in a segmentation output (up to 5, by pixel count, most first), as targets."""
    counts = np.bincount(_winners(logits).reshape(-1), minlength=np.asarray(logits).shape[1])
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0][:TOP_CHOICES]
    return [mask_target(logits, c, labels=labels, output=output)[0] for c in present]


def element_target(output_name: str, array, index):
    """Any element of any output: ``(target, seed)``; negative indices count from the end."""
    array = np.asarray(array)
    index = tuple(int(i) for i in index)
    if len(index) != array.ndim or not all(-n <= i < n for i, n in zip(index, array.shape)):
        raise FmonnxError(f"output:{output_name}[{','.join(map(str, index))}] is out of range: "
                          f"{output_name!r} has shape {list(array.shape)}")
    index = tuple(i % n for i, n in zip(index, array.shape))
    seed = np.zeros(array.shape, np.float32)
    seed[index] = 1
    target = {"output": output_name, "index": [list(index)], "score": float(array[index]), "kind": "element",
              "label": f"{output_name}[{','.join(map(str, index))}]"}
    return target, seed
