"""The picture thread pool: ``PictureWriter`` encodes and writes PNGs on worker threads.

zlib (and isal) release the GIL, so encoding overlaps drawing and the next image's inference;
a bound on the bytes waiting keeps a fast producer from filling memory.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .png import write_picture

__all__ = ["PictureWriter", "default_jobs"]


def default_jobs(jobs: int | None = None) -> int:
    """Threads that draw and encode: ``jobs``, else the cores, at most 4."""
    return jobs or min(4, os.cpu_count() or 1)


def _succeeded(future: Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


class PictureWriter:
    """Write palette PNGs on ``jobs`` threads; ``write`` returns at once.

    At most ``backlog`` bytes of pictures wait to be encoded (``write`` blocks
    beyond that), so a fast producer cannot fill memory. ``close`` waits for
    every picture and re-raises the first error. Use as a context manager.
    """

    def __init__(self, jobs: int | None = None, backlog: int = 128 * 2**20):
        self.jobs = default_jobs(jobs)
        self._pool = ThreadPoolExecutor(self.jobs, thread_name_prefix="fmonnx-png")
        self._backlog = backlog
        self._pending = 0
        self._ready = threading.Condition()
        self._futures: deque[Future] = deque()

    def submit(self, size: int, function, *args) -> Future:
        """Run ``function(*args)`` on a worker, counting ``size`` bytes against the backlog until it ends."""
        with self._ready:
            self._ready.wait_for(lambda: self._pending == 0 or self._pending + size <= self._backlog)
            self._pending += size
        future = self._pool.submit(function, *args)
        future.add_done_callback(lambda _: self._release(size))
        # a finished future holds its result (a layer's overview row, its manifest entry): drop those
        # that succeeded, oldest first, or every image's would stay in memory until close
        while self._futures and _succeeded(self._futures[0]):
            self._futures.popleft()
        self._futures.append(future)
        return future

    def write(self, path: Path, indices: np.ndarray, cmap: str, title: str | None = None) -> Future:
        """``write_picture`` on a worker thread."""
        return self.submit(indices.nbytes, write_picture, path, indices, cmap, title)

    def _release(self, size: int) -> None:
        with self._ready:
            self._pending -= size
            self._ready.notify_all()

    def drain(self) -> None:
        """Wait until everything submitted so far is written; re-raise the first error."""
        for future in list(self._futures):
            future.result()

    def close(self) -> None:
        try:
            for future in self._futures:
                future.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._futures.clear()

    def __enter__(self) -> PictureWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:  # an error is already on its way: stop the rest without masking it
            self._pool.shutdown(wait=True, cancel_futures=True)

