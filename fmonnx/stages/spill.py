"""The spill file: per-channel numbers put aside as JSON text while rendering.

Per-channel numbers are JSON text put aside in a ``Spill`` (a scratch file in
the staging folder) while rendering and read back one list at a time when
the manifest and the page are written (``json_out.json_pieces``), so they do not pile
up in memory image after image (a ResNet-50: 2.7 MB of text an image, 12 MB
as Python lists of floats).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spill", "Spilled"]


class Spill:
    """An append-only scratch file of JSON texts: ``put`` stores some and returns their ``Spilled`` handles.

    Safe to ``put`` from several threads. ``close`` deletes the file; use as a context manager.
    """

    NAME = ".fmonnx-spill"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.NAME
        self._file = open(self.path, "w+b")  # noqa: SIM115 (closed by close())
        self._lock = threading.Lock()
        self._size = 0

    def put(self, texts: list[str]) -> list[Spilled]:
        """Store ``texts`` (in one write); their handles, in order."""
        data = [text.encode("utf-8") for text in texts]
        with self._lock:
            offset = self._size
            self._file.write(b"".join(data))
            self._size += sum(map(len, data))
        handles = []
        for item in data:
            handles.append(Spilled(self, offset, len(item)))
            offset += len(item)
        return handles

    def read(self, spilled: Spilled) -> str:
        with self._lock:
            self._file.flush()
            data = os.pread(self._file.fileno(), spilled.length, spilled.offset)
        return data.decode("utf-8")

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Spilled:
    """A compact JSON array (no spaces: ``json_out.number_lists``) kept in a ``Spill``; ``json_pieces``
    writes it in place, in the indented manifest and the compact page alike."""

    spill: Spill
    offset: int
    length: int

    def text(self) -> str:
        return self.spill.read(self)

