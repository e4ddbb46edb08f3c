"""decimals.py: 7-digit rounding and its JSON text, against Python's own ``float(f"{x:.7g}")`` and json."""

import json

import numpy as np
import pytest

from fmonnx.stages.decimals import json_lists, json_numbers, round_significant


def python_text(values, separators=None) -> str:
    rounded = [float(f"{value:.7g}") for value in np.asarray(values, dtype=np.float64).ravel().tolist()]
    return json.dumps(rounded, separators=separators)


def samples() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {f"normal x {scale:g}": rng.standard_normal(2000) * scale
              for scale in (1e-300, 1e-30, 1e-6, 1e-4, 1.0, 7.0, 1e3, 1e9, 1e16, 1e17, 1e30, 1e300)}
    arrays["float32, as the stats are"] = rng.standard_normal(2000).astype(np.float32).astype(np.float64)
    arrays["zero fractions"] = rng.integers(0, 50176, 2000) / 50176
    arrays["integers past 7 digits: exact ties"] = rng.integers(0, 10**9, 2000).astype(np.float64)
    arrays["edges"] = np.array(
        [0.0, -0.0, 1.0, -1.0, 0.1, 1e-5, 1e-4, 0.00012345, 9999999.5, 9999999.4, 99999995.0, 123456785.0,
         0.5, 2 / 3, 1e16, 9.99e15, 1.5e16, 1e22, 1e-22, 5e-324, 1.7976931348623157e308]
    )
    return arrays


@pytest.mark.parametrize("name", list(samples()))
def test_text_and_values_are_pythons(name):
    values = samples()[name]
    assert json_numbers(values) == python_text(values)
    assert json_numbers(values, ",") == python_text(values, (",", ":"))
    rounded = round_significant(values)
    assert rounded.dtype == np.float64 and rounded.tolist() == json.loads(python_text(values))


def test_lists_are_cut_from_one_run_of_values():
    values = [1.0, 2.5, 3.0, 1e-30, 0.1234567891]
    assert json_lists(values, [0, 2, 0, 3, 0]) == ["[]", "[1.0, 2.5]", "[]", "[3.0, 1e-30, 0.1234568]", "[]"]
    assert json_lists([], [0, 0]) == ["[]", "[]"] and json_numbers([]) == "[]"
    with pytest.raises(ValueError, match="add up to 2"):
        json_lists(values, [1, 1])


def test_blocks_join_seamlessly(monkeypatch):
    import fmonnx.stages.decimals as decimals

    monkeypatch.setattr(decimals, "_BLOCK", 7)  # lists, blocks and Python's few numbers all cut differently
    values = np.concatenate([samples()["edges"], np.random.default_rng(1).standard_normal(40)])
    lengths = [5, 0, 13, 1, values.size - 19]
    starts = np.cumsum([0, *lengths])
    expected = [python_text(values[start:end]) for start, end in zip(starts[:-1], starts[1:])]
    assert json_lists(values, lengths) == expected


@pytest.mark.parametrize(("value", "text"), [(np.nan, "null"), (np.inf, "1e999"), (-np.inf, "-1e999")])
def test_non_finite_values_are_written_as_valid_json(value, text):
    assert json_numbers([1.0, value]) == f"[1.0, {text}]"
