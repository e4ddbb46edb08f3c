"""JSON numbers (json_out.number_lists, which replaced decimals.py): float32's shortest text through orjson,
checked against json's reading of it and numpy's own shortest float32 text."""

import json
import re

import numpy as np
import pytest

from fmonnx.stages.json_out import number_lists
from fmonnx.stages.normalize import channel_stats
from fmonnx.stages.stats import CHANNEL_FIELDS, channel_columns, channel_records

NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")  # JSON's number grammar (RFC 8259)


def samples() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {f"normal x {scale:g}": (rng.standard_normal(2000) * scale).astype(np.float32)
              for scale in (1e-40, 1e-30, 1e-6, 1e-4, 1.0, 7.0, 1e3, 1e9, 1e16, 1e17, 1e30)}
    arrays["float64 means, as numpy's stats are"] = rng.standard_normal(2000)
    arrays["zero fractions"] = rng.integers(0, 50176, 2000) / 50176
    arrays["integers past float32's 24 bits"] = rng.integers(0, 10**9, 2000).astype(np.float32)
    arrays["edges"] = np.array(
        [0.0, -0.0, 1.0, -1.0, 0.1, 1e-5, 1e-4, 16777216.0, 16777217.0, 0.5, 2 / 3, 1e16, 1e-45, 1.4e-45,
         1.17549435e-38, 3.4028235e38, -3.4028235e38], np.float32
    )
    return arrays


@pytest.mark.parametrize("name", list(samples()))
def test_numbers_are_float32s_shortest_text(name):
    values = samples()[name]
    (text,) = number_lists([values])
    assert " " not in text
    items = text[1:-1].split(",")
    assert all(NUMBER.fullmatch(item) for item in items)  # valid JSON for a browser too, not only for Python
    read = np.array(json.loads(text))
    narrow = values.astype(np.float32)
    # exact: each number reads back to the float32 value, sign of zero included
    assert np.array_equal(read.astype(np.float32).view(np.uint32), narrow.view(np.uint32))
    # shortest: the same decimal as numpy's shortest float32 text (a different algorithm, Dragon4)
    assert read.tolist() == [float(str(value)) for value in narrow]


def test_lists_empty_lists_and_non_finite_values():
    values = [np.array([1.5, np.inf], np.float32), np.zeros(0, np.float32), np.array([np.nan, -np.inf, 0.25]),
              np.array([1e300, -1e300, 2.0])]  # past float32's range: float64's own text, not infinity
    texts = number_lists(values)
    assert texts == ["[1.5,1e999]", "[]", "[null,-1e999,0.25]", "[1e+300,-1e+300,2.0]"]
    assert [json.loads(text) for text in texts] == [[1.5, np.inf], [], [None, -np.inf, 0.25], [1e300, -1e300, 2.0]]
    assert number_lists([]) == []


def test_channel_columns_and_records_hold_the_float32_statistics():
    rng = np.random.default_rng(3)
    layers = [rng.standard_normal((6, 5, 7)).astype(np.float32) * 3, np.maximum(rng.standard_normal((3, 4, 4)), 0)]
    layers[1][1] = 2.5  # a dead channel
    stats = [channel_stats(np.asarray(layer, np.float32)) for layer in layers]
    for layer, columns, one in zip(layers, channel_columns(stats), stats):
        assert list(columns) == [*CHANNEL_FIELDS, "dead"]
        flat = layer.reshape(layer.shape[0], -1).astype(np.float64)
        truth = {"mean": flat.mean(1), "std": flat.std(1), "min": flat.min(1), "max": flat.max(1),
                 "zero_fraction": (flat == 0).mean(1)}
        records = channel_records(one)
        for name in CHANNEL_FIELDS:
            read = json.loads(columns[name])
            assert read == records[name]  # fmonnx stats and the manifest agree to the digit
            assert np.allclose(read, truth[name], rtol=1e-6, atol=1e-7)
            assert np.array_equal(np.float32(read), np.float32(getattr(one, name)))
        assert json.loads(columns["dead"]) == records["dead"] == [bool(v) for v in flat.min(1) == flat.max(1)]
