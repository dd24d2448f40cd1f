"""What the process runs with: the cores it may use, glibc's heap thresholds fixed for large arrays, and buffers
each thread reuses."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

_thread_buffers = threading.local()


def thread_buffer(name: str, size: int, dtype: np.dtype) -> np.ndarray:
    """``size`` items of this thread's buffer called ``name``, reused from call to call (grown by an eighth more
    than asked when it must grow): new memory of a shard's size costs a page fault per 4 KiB, and whoever first
    writes it pays them. Valid until the same thread asks for ``name`` again."""
    buffer: np.ndarray | None = getattr(_thread_buffers, name, None)
    if buffer is None or buffer.dtype != dtype or len(buffer) < size:
        buffer = np.empty(size + (size >> 3), dtype=dtype)
        setattr(_thread_buffers, name, buffer)
    return buffer[:size]


def steady_heap(threshold: int = 1 << 20, keep_free: int = 1 << 25) -> None:
    """Keep glibc's heap from creeping up window after window (for a process that runs ``pack``).

    glibc raises its mmap threshold each time a large block is freed, so later buffers of a few MB land on the
    heap, where freed space is rarely returned: peak memory then grows for the first dozen windows. A fixed
    threshold keeps it flat (measured in docs/benchmarks.md). Fixing it also fixes glibc's trim threshold at
    128 KiB, so the heap's free top was handed back and faulted in again all the time (the JSONL reader's
    buffers): up to ``keep_free`` bytes of it are kept instead. Does nothing where glibc's ``mallopt`` is absent.
    """
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(m_mmap_threshold, threshold)
        libc.mallopt(m_trim_threshold, keep_free)
    except (OSError, AttributeError):
        pass


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def arrow_threads(limit: int) -> Iterator[None]:
    """pyarrow's CPU thread pool (Parquet decoding, compute kernels) at most ``limit`` threads within the block.

    ``--workers N`` means at most N cores busy: without this, pyarrow decodes on one thread per core whatever N
    says. The previous size comes back afterwards (the pool is the process's, shared with a library caller).
    """
    import pyarrow as pa

    before = pa.cpu_count()
    if limit >= before:
        yield
        return
    pa.set_cpu_count(max(1, limit))
    try:
        yield
    finally:
        pa.set_cpu_count(before)
