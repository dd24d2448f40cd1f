"""JSONL lines parsed ahead on worker processes: the fast path of ``jsonl.fast_line_parser`` on more than one core.

msgspec and ``np.fromiter`` hold the GIL, so threads cannot share the parse; processes can (forked ones, ``_pool``).
The reader still splits the lines and walks them one by one in order (line numbers, blank lines, long lines, every
error and ``--on-bad-record skip`` stay exactly as in one process); only the fast parse of each group of lines runs
on a worker, a few groups ahead, and comes back as one array of ids and the length of each line's (-1 where the fast
path did not take the line, which then goes through the exact slow path in the reader, as without workers). So the
batches handed on are the same whatever the number of workers (tests/test_jsonl_parallel.py).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

GROUP_BYTES = 1 << 22  # lines sent to a worker at once (4 MiB): a few dozen tasks per GB, little memory in flight
_INT32_MAX = int(np.iinfo(np.int32).max)

_parsers: dict[str, Callable[[bytes | bytearray], np.ndarray | None]] = {}


def parse_group(column: str, lines: list[bytes | bytearray]) -> tuple[np.ndarray, np.ndarray]:
    """The fast parse of ``lines``: each line's id count (-1: not taken, or blank) and all taken ids, in order.

    Ids that fit int32 travel as int32 (half the bytes between processes); the reader's range check and cast give
    the same values either way.
    """
    parse = _parsers.get(column)
    if parse is None:
        from .jsonl import fast_line_parser

        parse = _parsers[column] = fast_line_parser(column)
    lengths = np.full(len(lines), -1, dtype=np.int64)
    arrays = []
    for i, raw in enumerate(lines):
        if not raw or raw.isspace():
            continue
        ids = parse(raw)
        if ids is not None:
            lengths[i] = len(ids)
            arrays.append(ids)
    flat = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)
    if flat.size and 0 <= flat.min() and flat.max() <= _INT32_MAX:
        flat = flat.astype(np.int32)
    return lengths, flat


def _pool(workers: int) -> ProcessPoolExecutor | None:
    """Worker processes forked from this one, or None where fork is not available (the lines are then parsed in
    the reader's process, only slower).

    Forked, not started fresh (spawn, forkserver): a fresh process imports bestfit and pyarrow again (about a second
    of CPU, and the reader waits for it), and re-runs the ``__main__`` of a script that calls ``pack`` without a
    ``__name__`` guard. A forked worker only runs msgspec and numpy on the lines it is sent, never pyarrow, whose
    threads' locks it may inherit.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    try:
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    except (OSError, ValueError):
        return None


def parsed_ahead(lines: Iterable[bytes | bytearray], column: str, workers: int
                 ) -> Iterator[tuple[bytes | bytearray, np.ndarray | None]]:
    """Each line of ``lines`` with its fast-parsed ids (None where the fast path does not take it), in order.

    Groups of about ``GROUP_BYTES`` are parsed on ``workers`` processes, at most two groups a worker in flight, so
    memory stays a few tens of MB whatever the file. An exception of ``lines`` (a line too long) is raised after
    every line before it is yielded, where reading line by line would raise it. A worker that dies (killed, out of
    memory) only costs speed: its groups are parsed here.
    """
    pool = _pool(workers)
    in_flight: deque[tuple[list[bytes | bytearray], Future[tuple[np.ndarray, np.ndarray]] | None]] = deque()
    source = iter(lines)
    failure: BaseException | None = None

    def submit(group: list[bytes | bytearray]) -> None:
        nonlocal pool
        future = None
        if pool is not None:
            try:
                future = pool.submit(parse_group, column, group)
            except (BrokenProcessPool, RuntimeError, OSError):
                pool.shutdown(wait=False, cancel_futures=True)
                pool = None
        in_flight.append((group, future))

    def results(group: list[bytes | bytearray], future: Future[tuple[np.ndarray, np.ndarray]] | None
                ) -> Iterator[tuple[bytes | bytearray, np.ndarray | None]]:
        try:
            lengths, flat = future.result() if future is not None else parse_group(column, group)
        except (BrokenProcessPool, OSError):
            lengths, flat = parse_group(column, group)
        position = 0
        for raw, n in zip(group, lengths.tolist(), strict=True):
            if n < 0:
                yield raw, None
            else:
                yield raw, flat[position:position + n]
                position += n

    try:
        while failure is None:
            group: list[bytes | bytearray] = []
            size = 0
            try:
                for raw in source:
                    group.append(raw)
                    size += len(raw)
                    if size >= GROUP_BYTES:
                        break
            except Exception as exc:  # noqa: BLE001 -- re-raised below, after the lines before it
                failure = exc
            if not group and failure is None:
                break
            if group:
                submit(group)
            while in_flight and (len(in_flight) > 2 * workers or failure is not None or not group):
                yield from results(*in_flight.popleft())
            if failure is None and size < GROUP_BYTES:
                break  # the lines ran out
        while in_flight:
            yield from results(*in_flight.popleft())
        if failure is not None:
            raise failure
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
