"""Floats rounded to 7 significant digits, and their JSON text, for whole arrays at once.

The manifest and the report page carry five numbers per channel: a
ResNet-50 has 49,000 channels, so 250,000 numbers an image. Rounding each
with ``float(f"{x:.7g}")`` and writing it with ``json.dumps`` costs about
0.11 s an image of Python work that holds the GIL; here both are numpy
operations on whole arrays (0.035 s, most of it without the GIL).

- ``round_significant``: values -> float64 values, each exactly
  ``float(f"{x:.7g}")``.
- ``json_numbers``: values -> the JSON text of the rounded values as a list,
  character for character what ``json.dumps`` writes for them (Python's
  shortest repr: ``0.1234568``, ``1.5e-05``, ``2.0``); non-finite values as
  fmonnx's JSON writes them everywhere (``nonfinite_json``): infinity as
  ``1e999`` (``json`` and a browser's ``JSON.parse`` read it back as
  infinity), NaN as ``null``.

How: ``|x| = m * 10**(e - 6)`` with ``m`` the 7-digit integer ``rint(|x| *
10**(6 - e))``. Powers of ten up to 10**22 are exact doubles, so ``m / 10**k``
is the double nearest the decimal, as ``float()`` of its text is. A product
within its own rounding error of a half (a tie, or nearly), values whose
scale needs a power beyond 10**22, and non-finite values go through Python's
own formatting instead.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np

__all__ = ["DIGITS", "INFINITY_JSON", "round_significant", "json_numbers", "json_lists", "nonfinite_json"]

DIGITS = 7  # float32 precision; more digits only make the JSON longer
_LOW, _HIGH = 10**6, 10**7  # a 7-digit mantissa m: _LOW <= m < _HIGH
_POWERS = 10.0 ** np.arange(23)  # 1 .. 1e22: every one an exact double
_BLOCK = 1 << 14  # numbers formatted at a time
# columns of each number's character table: 7 digits, then these
_ZERO, _POINT, _MINUS, _E, _EXPONENT_SIGN, _EXPONENT, _SEPARATOR = 7, 8, 9, 10, 11, 12, 15


def _decompose(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|values| rounded to 7 digits as ``mantissa * 10**(exponent - 6)``, and where that is exact.

    mantissa: int64 in [10**6, 10**7); exponent: int64, the power of ten of the first digit;
    exact: False where Python must round (zeros, ties, huge or tiny scales, non-finite values).
    """
    magnitude = np.abs(values)
    exact = np.isfinite(magnitude) & (magnitude > 0)
    safe = np.where(exact, magnitude, 1.0)
    exponent = np.floor(np.log10(safe)).astype(np.int64)
    shift = np.clip(DIGITS - 1 - exponent, -22, 22)
    exact &= shift == DIGITS - 1 - exponent
    with np.errstate(over="ignore"):  # where the scale is out of reach, exact is already False
        scaled = np.where(shift >= 0, safe * _POWERS[np.abs(shift)], safe / _POWERS[np.abs(shift)])
    mantissa = np.rint(scaled)
    # one rounding in the product: within 2**-50 of its size of a half, rint could go the other way
    exact &= np.abs(scaled - np.floor(scaled) - 0.5) > scaled * 2.0**-50
    # log10 a hair off next to a power of ten gives a mantissa of 6 or 8 digits: Python rounds those
    exact &= (scaled >= _LOW) & (mantissa <= _HIGH)
    carried = mantissa == _HIGH  # 9999999.5 rounds up to 10**7: one digit, one power more
    mantissa[carried] = _LOW
    exponent += carried
    exact &= DIGITS - 1 - exponent >= -22
    return np.where(exact, mantissa, _LOW).astype(np.int64), exponent, exact


INFINITY_JSON = "1e999"  # overflows to infinity when read: valid JSON, unlike json.dumps's Infinity


def nonfinite_json(value: float) -> str:
    """The JSON text of a non-finite float: ``1e999``, ``-1e999`` or ``null`` (NaN)."""
    if value != value:
        return "null"
    return INFINITY_JSON if value > 0 else f"-{INFINITY_JSON}"


def _python_rounded(value: float) -> float:
    return float(f"{value:.{DIGITS}g}")


def round_significant(values) -> np.ndarray:
    """float64 array of ``float(f"{x:.7g}")`` for each x of ``values`` (same shape)."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.ravel()
    mantissa, exponent, exact = _decompose(flat)
    shift = DIGITS - 1 - exponent
    power = _POWERS[np.clip(np.abs(shift), 0, 22)]
    rounded = np.where(shift >= 0, mantissa / power, mantissa * power)
    rounded = np.copysign(rounded, flat)
    for index in np.flatnonzero(~exact):
        rounded[index] = _python_rounded(float(flat[index]))
    return rounded.reshape(values.shape)


def _positional(point: int, shown: int) -> list[int]:
    """Python's repr layout of ``shown`` digits with ``point`` of them before the decimal point."""
    digits = list(range(shown))
    if point <= 0:
        return [_ZERO, _POINT] + [_ZERO] * -point + digits
    if point < shown:
        return digits[:point] + [_POINT] + digits[point:]
    return digits + [_ZERO] * (point - shown) + [_POINT, _ZERO]


_POINTS = range(-3, 17)  # repr writes these positions of the point positionally; others as d.ddde+XX
_FORMS = len(_POINTS) + 2  # then the two scientific forms: 2 and 3 exponent digits


@lru_cache(maxsize=4)
def _layouts(separator: int) -> tuple[np.ndarray, np.ndarray]:
    """Every text layout a number can take, as columns of its character table, and their lengths.

    Layout ``(negative * _FORMS + form) * DIGITS + shown - 1``; ``separator`` characters follow.
    """
    layouts = []
    for negative in (0, 1):
        for form in range(_FORMS):
            for shown in range(1, DIGITS + 1):
                if form < len(_POINTS):
                    text = _positional(_POINTS[form], shown)
                else:
                    mantissa = [0] if shown == 1 else _positional(1, shown)
                    text = mantissa + [_E, _EXPONENT_SIGN] + list(range(_EXPONENT, _EXPONENT + form - len(_POINTS) + 2))
                layouts.append([_MINUS] * negative + text + list(range(_SEPARATOR, _SEPARATOR + separator)))
    lengths = np.array([len(layout) for layout in layouts], dtype=np.int64)
    table = np.full((len(layouts), int(lengths.max())), _ZERO, dtype=np.int64)
    for row, layout in enumerate(layouts):
        table[row, : len(layout)] = layout
    return table, lengths


def json_numbers(values, separator: str = ", ") -> str:
    """``json.dumps([float(f"{x:.7g}") for x in values])``, text identical, without a Python loop.

    ``separator`` goes between the numbers (``json.dumps``'s default ``", "``; ``","`` is compact).
    Infinity is written ``1e999``, NaN ``null`` (``nonfinite_json``).
    """
    return json_lists(values, [np.size(values)], separator)[0]


def json_lists(values, lengths, separator: str = ", ") -> list[str]:
    """``json_numbers`` of consecutive runs of ``values`` (flattened), ``lengths[i]`` numbers in run i.

    One pass over all of them: numpy's cost per call, not per list, so short lists come cheap.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    ends = np.cumsum(lengths, dtype=np.int64)
    if ends.size and ends[-1] != flat.size:
        raise ValueError(f"the lengths add up to {int(ends[-1])}, not to the {flat.size} values")
    if not flat.size:
        return ["[]"] * len(ends)
    gap = len(separator)
    # a block at a time: the character tables take about 250 bytes a number
    blocks = [_joined(flat[start : start + _BLOCK], separator.encode("ascii")) for start in range(0, flat.size, _BLOCK)]
    text = "".join(block[0] for block in blocks)
    length, exact = (np.concatenate([block[index] for block in blocks]) for index in (1, 2))
    del blocks
    offsets = np.concatenate(([0], np.cumsum(length)))  # where each number's text starts
    python = np.flatnonzero(~exact)  # the few numbers Python rounds: their text is replaced
    result = []
    first = 0
    for last in ends.tolist():
        if last == first:
            result.append("[]")
            continue
        pieces, at = [], int(offsets[first])
        for position in python[(python >= first) & (python < last)].tolist():
            value = float(flat[position])
            number = json.dumps(_python_rounded(value)) if np.isfinite(value) else nonfinite_json(value)
            pieces += [text[at : int(offsets[position])], number]
            at = int(offsets[position + 1]) - gap
        pieces.append(text[at : int(offsets[last]) - gap])
        result.append(f"[{''.join(pieces)}]")
        first = last
    return result


def _joined(flat: np.ndarray, gap: bytes) -> tuple[str, np.ndarray, np.ndarray]:
    """The text of every number of ``flat``, each followed by ``gap``; each one's length (gap included);
    where the text is right (False: Python must write that number)."""
    count = flat.size
    mantissa, exponent, exact = _decompose(flat)
    zero = flat == 0
    exact |= zero
    mantissa[zero] = 0
    exponent[zero] = 0  # "0.0": the digit 0 before the point

    # each number's characters: its 7 digits, then 0 . - e, the exponent's sign and digits, the separator
    table = np.empty((count, _SEPARATOR + len(gap)), dtype=np.uint8)
    rest = mantissa.astype(np.int32)
    for place in range(DIGITS - 1, -1, -1):
        tens = rest // 10
        table[:, place] = rest - tens * 10 + ord("0")
        rest = tens
    table[:, _ZERO : _EXPONENT_SIGN] = np.frombuffer(b"0.-e", dtype=np.uint8)
    table[:, _EXPONENT_SIGN] = np.where(exponent < 0, ord("-"), ord("+"))
    power = np.abs(exponent).astype(np.int32)
    three = power >= 100
    table[:, _EXPONENT] = np.where(three, power // 100, power // 10 % 10) + ord("0")
    table[:, _EXPONENT + 1] = np.where(three, power // 10 % 10, power % 10) + ord("0")
    table[:, _EXPONENT + 2] = power % 10 + ord("0")
    table[:, _SEPARATOR:] = np.frombuffer(gap, dtype=np.uint8)

    shown = np.full(count, DIGITS, dtype=np.int64)  # the mantissa's trailing zeros are not written
    for place in range(DIGITS - 1, 0, -1):
        shown -= (shown == place + 1) & (table[:, place] == ord("0"))
    shown[zero] = 1
    point = exponent + 1
    form = np.where((point < _POINTS[0]) | (point > _POINTS[-1]), len(_POINTS) + three, point - _POINTS[0])
    layout = (np.signbit(flat) * _FORMS + form) * DIGITS + shown - 1
    layouts, lengths = _layouts(len(gap))
    length = lengths[layout]
    width = int(length.max())
    source = layouts[:, :width][layout]
    source += np.arange(0, table.size, table.shape[1])[:, None]  # row by row into the flat table
    characters = table.ravel()[source]
    text = characters[np.arange(width) < length[:, None]].tobytes().decode("ascii")
    return text, length, exact
