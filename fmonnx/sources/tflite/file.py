"""Tell a TFLite model file by its header, without TensorFlow.

A TFLite model is a FlatBuffer whose file identifier, bytes 4..8, is ``TFL3``
(bytes 0..4 are the offset of the root table).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["is_tflite_file", "TFLITE_SUFFIXES", "TFLITE_IDENTIFIER"]

TFLITE_SUFFIXES = (".tflite",)
TFLITE_IDENTIFIER = b"TFL3"


def is_tflite_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file whose header carries the TFLite identifier.

    Cheap: reads 8 bytes and imports nothing heavy. A missing or unreadable file is not one.
    """
    try:
        with open(Path(path), "rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] == TFLITE_IDENTIFIER
