"""crew.WindowCrew: each window read and packed by one thread, in turn; shards shared when a thread is idle."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from bestfit_cli.crew import WindowCrew


class _Windows:
    """Windows 0..n-1 that record who read each and fail if two threads read at once."""

    def __init__(self, n: int, read_seconds: float = 0.0, fail_at: int | None = None) -> None:
        self.n, self.read_seconds, self.fail_at = n, read_seconds, fail_at
        self.readers: dict[int, str] = {}
        self._inside = 0
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            with self._lock:
                self._inside += 1
                assert self._inside == 1, "two threads read at once"
            time.sleep(self.read_seconds)
            with self._lock:
                self._inside -= 1
            if i == self.fail_at:
                raise ValueError(f"bad window {i}")
            self.readers[i] = threading.current_thread().name
            yield i


def _crew(windows: _Windows, workers: int, pack_seconds: float = 0.02, read_here: bool = False, **kw):  # type: ignore[no-untyped-def]
    packers: dict[int, str] = {}
    held, most = [0], [0]
    order: list[int] = []
    lock = threading.Lock()

    def taken(w: int) -> None:
        order.append(w)
        with lock:
            held[0] += 1
            most[0] = max(most[0], held[0])

    def pack(w: int, crew: WindowCrew) -> str:
        packers[w] = threading.current_thread().name
        time.sleep(pack_seconds)
        return f"packed {w}"

    def done(w: int) -> None:
        with lock:
            held[0] -= 1

    crew = WindowCrew(workers, iter(windows), index=lambda w: w, pack=kw.get("pack", pack), taken=taken, done=done,
                      read_here=read_here)
    return crew, packers, order, most


def test_each_window_is_packed_by_the_thread_that_read_it_and_the_threads_take_turns() -> None:
    windows = _Windows(8, read_seconds=0.01)
    crew, packers, order, most = _crew(windows, 2, pack_seconds=0.05)
    assert crew.run() == [f"packed {i}" for i in range(8)]
    assert packers == windows.readers  # every window stayed on one thread, read to packed
    assert set(windows.readers.values()) == {"MainThread", "bestfit-1"}  # both read, in turn (never at once)
    assert order == list(range(8))  # taken in window order
    assert most[0] <= 2  # at most one window per thread held at once
    assert not [t for t in threading.enumerate() if t.name.startswith("bestfit-")]


def test_one_worker_is_the_calling_thread_alone() -> None:
    windows = _Windows(3)
    crew, packers, _, most = _crew(windows, 1)
    assert crew.run() == ["packed 0", "packed 1", "packed 2"]
    assert set(packers.values()) == {"MainThread"} and most[0] == 1


def test_the_only_windows_shards_use_every_thread_in_order() -> None:
    """A thread with nothing left to read runs shards of a window still being packed; the results keep their order."""
    ran: dict[int, str] = {}

    def shard(i: int) -> int:
        ran[i] = threading.current_thread().name
        time.sleep(0.05)
        return i * i

    def pack(w: int, crew: WindowCrew) -> list[int]:
        return list(crew.map(shard, range(6)))

    crew, *_ = _crew(_Windows(1), 2, pack=pack)
    assert crew.run() == [[0, 1, 4, 9, 16, 25]]
    assert set(ran.values()) == {"MainThread", "bestfit-1"}


def test_a_reading_error_stops_the_crew_and_is_raised() -> None:
    windows = _Windows(10, fail_at=4)
    crew, packers, _, _ = _crew(windows, 2)
    with pytest.raises(ValueError, match="bad window 4"):
        crew.run()
    assert set(packers) <= {0, 1, 2, 3}
    assert not [t for t in threading.enumerate() if t.name.startswith("bestfit-")]


def test_the_error_of_the_lowest_window_is_raised_whichever_came_first() -> None:
    def pack(w: int, crew: WindowCrew) -> str:
        if w == 0:
            time.sleep(0.3)  # fails last, but is the first window
            raise RuntimeError("window 0 failed")
        if w == 1:
            raise RuntimeError("window 1 failed")
        return "ok"

    crew, *_ = _crew(_Windows(4), 2, pack=pack)
    with pytest.raises(RuntimeError, match="window 0 failed"):
        crew.run()


def test_a_shard_that_fails_on_a_helper_is_raised_by_its_window() -> None:
    def shard(i: int) -> int:
        time.sleep(0.05)
        if i == 3:
            raise OSError("disk full writing shard 3")
        return i

    def pack(w: int, crew: WindowCrew) -> list[int]:
        return list(crew.map(shard, range(5)))

    crew, *_ = _crew(_Windows(1), 2, pack=pack)
    with pytest.raises(OSError, match="shard 3"):
        crew.run()


def test_read_here_reads_on_the_calling_thread_only_and_the_others_pack() -> None:
    """stdin and JSONL: the main thread reads every window (Ctrl-C interrupts its blocking read), the crew packs,
    still at most one window per thread held."""
    windows = _Windows(8, read_seconds=0.01)
    crew, packers, order, most = _crew(windows, 2, pack_seconds=0.05, read_here=True)
    assert crew.run() == [f"packed {i}" for i in range(8)]
    assert set(windows.readers.values()) == {"MainThread"}
    assert "bestfit-1" in packers.values()
    assert order == list(range(8)) and most[0] <= 2
