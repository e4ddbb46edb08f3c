"""Targets: parsing --target, classifier/detector/segmentation/element scores and their seeds."""

from __future__ import annotations

import numpy as np
import pytest

from fmonnx.errors import FmonnxError
from fmonnx.stages.targets import (
    TargetSpec,
    YoloInfo,
    box_target,
    class_target,
    decode_boxes,
    element_target,
    labels_from,
    mask_choices,
    mask_target,
    parse_target,
    yolo_info,
)


@pytest.mark.parametrize("text, spec", [
    (None, TargetSpec()),
    (3, TargetSpec("class", 3)),
    ("281", TargetSpec("class", 281)),
    (" 7 ", TargetSpec("class", 7)),
    ("box:0", TargetSpec("box", 0)),
    ("class:12", TargetSpec("mask", 12)),
    ("class", TargetSpec("mask")),
    ("output:logits[0,5]", TargetSpec("element", output="logits", element=(0, 5))),
    ("output:/model/head/Conv_output_0:1[0, -1, 2]",
     TargetSpec("element", output="/model/head/Conv_output_0:1", element=(0, -1, 2))),
    ("output:a.b[4]", TargetSpec("element", output="a.b", element=(4,))),
])
def test_parse_good(text, spec):
    assert parse_target(text) == spec


@pytest.mark.parametrize("text", ["", "-1", "box", "box:", "box:-2", "box:x", "class:a", "klass:1", "output:x",
                                  "output:x[]", "output:[1]", "output:x[1,]", "1.5", -1, 2.0, True, "output:x[a]"])
def test_parse_bad_says_the_forms(text):
    with pytest.raises(FmonnxError) as error:
        parse_target(text)
    message = str(error.value)
    assert "\n" not in message and "box:K" in message and "output:NAME" in message


def test_class_target_top1_choice_and_seed():
    logits = np.array([[0.1, 2.0, -1.0, 5.0, 0.3, 0.2, 4.0]], np.float32)
    target, seed, choices = class_target(logits, None, labels=["a", "b", "c", "d", "e", "f", "g"], output="out")
    assert target == {"output": "out", "index": [[0, 3]], "score": 5.0, "kind": "class", "label": "d"}
    assert float((seed * logits).sum()) == target["score"]
    assert [c["index"][0][1] for c in choices] == [3, 6, 1, 4, 5]
    target, seed, choices = class_target(logits, parse_target("2"))
    assert target["label"] == "class 2" and target["score"] == -1.0 and choices[0] == target
    assert np.isclose((seed * logits).sum(), -1.0) and len(choices) == 5
    with pytest.raises(FmonnxError, match="7 classes"):
        class_target(logits, parse_target(9))


def _yolo_output(boxes, classes=3):
    """boxes: (cx, cy, w, h, class, score) per anchor."""
    out = np.full((1, 4 + classes, len(boxes)), 1e-4, np.float32)
    for a, (cx, cy, w, h, cls, score) in enumerate(boxes):
        out[0, :4, a] = (cx, cy, w, h)
        out[0, 4 + cls, a] = score
    return out


def test_decode_nms_and_ranking():
    out = _yolo_output([
        (50, 50, 20, 20, 0, 0.6),   # 0: suppressed by 1 (same class, IoU 0.68)
        (52, 50, 20, 20, 0, 0.9),   # 1: best
        (50, 50, 20, 20, 1, 0.3),   # 2: overlaps 1 but another class: kept
        (200, 100, 10, 40, 0, 0.5),  # 3: far away: kept
        (10, 10, 4, 4, 2, 0.001),   # 4: tiny score: still kept, last
    ])
    info = yolo_info(out.shape, {"task": "detect", "names": "{0: 'cat', 1: 'dog', 2: 'car'}"})
    boxes = decode_boxes(out, info)
    assert [b["anchor"] for b in boxes] == [1, 3, 2, 4]
    assert [b["label"] for b in boxes] == ["cat", "cat", "dog", "car"]
    np.testing.assert_allclose(boxes[0]["box"], [42, 40, 62, 60])
    np.testing.assert_allclose(boxes[1]["box"], [195, 80, 205, 120])
    assert np.isclose(boxes[0]["score"], 0.9) and boxes[-1]["class"] == 2
    assert len(decode_boxes(out, info, max_det=2)) == 2
    target, seed = box_target(out, boxes, 1, "output0")
    assert target["index"] == [[0, 4, 3]] and target["kind"] == "box" and target["box"] == boxes[1]["box"]
    assert np.isclose(float((seed * out).sum()), target["score"]) and np.isclose(target["score"], 0.5)
    with pytest.raises(FmonnxError, match="found 4 boxes"):
        box_target(out, boxes, 4, "output0")


def test_untrained_detector_still_has_box_zero():
    out = np.random.default_rng(0).uniform(0, 1e-3, size=(1, 6, 10)).astype(np.float32)
    boxes = decode_boxes(out, yolo_info(out.shape, {}, force=True))
    assert boxes and boxes[0]["score"] == max(b["score"] for b in boxes)


@pytest.mark.parametrize("names", [
    "__import__('os').system('echo hi')", "['cat', 'dog', 'car']", "{'a': 'cat'}", "{0: 1, 1: 2, 2: 3}",
    "{0: 'x'}" + " " * 2_000_000, "{" * 5000, "x" * 100, "{0: 'cat', 1: 'dog', 2: 'car', 3: 'extra'}", None, "",
])
def test_hostile_metadata_is_absent_never_a_crash(names):
    metadata = {"task": "detect", "names": names, "stride": "__import__('os')", "imgsz": "[1e99, 'a']"}
    info = yolo_info((1, 7, 8), metadata)
    if info is not None:
        assert info.names is None and info.stride is None and info.imgsz is None and info.classes == 3
    else:
        assert names == "{0: 'cat', 1: 'dog', 2: 'car', 3: 'extra'}"  # 4 names for 3 classes: not this output


def test_yolo_info_recognition():
    good = {"task": "detect", "names": "{0: 'a', 1: 'b'}", "stride": "[8, 16, 32]", "imgsz": "[64, 64]"}
    assert yolo_info((1, 6, 84), good) == YoloInfo(2, 84, {0: "a", 1: "b"}, (8, 16, 32), (64, 64))
    assert yolo_info((1, 6, 84), {}) is None  # no metadata: not assumed
    assert yolo_info((1, 6, 84), {}, force=True) == YoloInfo(2, 84)
    assert yolo_info((1, 6, 84), {"task": "segment"}) is None
    assert yolo_info((1, 1000, 6, 84), good) is None and yolo_info((2, 6, 84), good) is None
    assert yolo_info((1, "classes", 84), good) is None
    wrong = {**good, "names": "{0: 'a', 5: 'b'}"}
    assert yolo_info((1, 6, 84), wrong) is None and yolo_info((1, 6, 84), wrong, force=True).names is None


def test_mask_target_against_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(1, 4, 6, 5)).astype(np.float32)
    logits[0, 0, :3] += 5  # background wins the top half
    logits[0, 2, 3:, :4] += 5  # class 2 wins most of the rest
    winners = logits[0].argmax(0)
    counts = np.bincount(winners.ravel(), minlength=4)
    expected_class = int(np.argmax(np.where(np.arange(4) == 0, -1, counts)))
    target, seed = mask_target(logits, labels=["bg", "a", "b", "c"])
    assert target["class"] == expected_class == 2 and target["label"] == "b" and target["kind"] == "mask"
    mask = winners == 2
    np.testing.assert_array_equal(target["mask"], mask)
    direct = sum(float(logits[0, 2, i, j]) for i in range(6) for j in range(5) if winners[i, j] == 2)
    assert np.isclose(target["score"], direct) and np.isclose(float((seed * logits).sum()), direct, rtol=1e-6)
    assert sorted(map(tuple, target["index"])) == [(0, 2, i, j) for i, j in zip(*np.nonzero(mask))]
    explicit, _ = mask_target(logits, 0)
    assert explicit["class"] == 0 and explicit["mask"].sum() == counts[0]
    choices = mask_choices(logits)
    assert [c["class"] for c in choices] == [int(c) for c in np.argsort(-counts, kind="stable") if counts[c]][:5]
    with pytest.raises(FmonnxError, match="4 classes"):
        mask_target(logits, 4)
    only_background = np.zeros((1, 3, 2, 2), np.float32)
    only_background[0, 0] = 1
    assert mask_target(only_background)[0]["class"] == 0


def test_element_target():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    target, seed = element_target("out:1", array, (1, -1, 2))
    assert target["index"] == [[1, 2, 2]] and target["score"] == 22.0 and target["kind"] == "element"
    assert float((seed * array).sum()) == 22.0
    for bad in [(2, 0, 0), (0, -4, 0), (0, 0)]:
        with pytest.raises(FmonnxError, match=r"shape \[2, 3, 4\]"):
            element_target("out:1", array, bad)


def test_labels_from_metadata():
    assert labels_from({"names": "{1: 'dog', 0: 'cat'}"}) == ["cat", "dog"]
    for hostile in ["{0: 'cat', 2: 'car'}", "__import__('os')", "['cat']", "{0: 1}", "{" * 5000, None]:
        assert labels_from({"names": hostile}) is None
    assert labels_from(None) is None and labels_from({}) is None
