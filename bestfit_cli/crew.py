"""The local engine's threads: each window read and packed whole by one thread, shards shared only when idle.

A window's tokens are touched three times after pyarrow decodes them: copied into the window's buffer, gathered
into its shards' rows, encoded. When each step ran on a thread of its own (a reading thread, the thread filling
windows, a pool of shard threads), the data crossed cores at every step, and the same copies cost more than when
one core does all of them (``--workers 2`` spent 2 s more CPU than ``--workers 1`` on the same work, in the copies
that follow another core's writes; docs/benchmarks.md §2). So a crew thread takes the input's reading in turn,
reads one window (decoding included), hands the reading on and packs that window itself while the next thread
reads the next window. Reading stays in input order, one window at a time; with as many threads as windows in
flight, memory is what it was.

A thread that cannot read (another is reading, or the input is used up) takes shards of the windows still being
packed, oldest first, so a run's last window, or the only one, still uses every core. A thread never waits for a
window's shards while it could read, so the crew cannot starve itself.

Errors: the first one stops the crew (threads finish the step they are in); ``run`` raises the one of the lowest
window, reading errors counting as the window being read, so the error a run reports does not depend on timing
where windows fail on their own. Interrupted in the main thread (which is one of the crew), the others are told to
stop and waited for, then the interruption goes on.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")
W = TypeVar("W")
Result = TypeVar("Result")

_OPEN, _TAKEN, _DONE = 0, 1, 2


class Mapper(Protocol):
    """What runs a window's shards: ``map(fn, items)`` gives ``fn(item)`` for each item, in order (an Executor
    does, and so does ``WindowCrew``)."""

    def map(self, fn: Callable[[T], R], items: Iterable[T], /) -> Iterable[R]: ...


class _Part(Generic[T, R]):
    __slots__ = ("fn", "item", "state", "result", "error")

    def __init__(self, fn: Callable[[T], R], item: T) -> None:
        self.fn, self.item = fn, item
        self.state = _OPEN
        self.result: R | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn(self.item)
        except BaseException as exc:  # raised by the window's own thread, in the parts' order
            self.error = exc


class WindowCrew(Generic[W, Result]):
    """``workers`` threads (the calling one included) that read ``windows`` in turn and ``pack`` each themselves.

    ``taken(window)`` runs right after each window is read, before the next is, so in window order;
    ``pack(window, crew)`` packs it, running its shards through ``crew.map``; ``done(window)`` runs once it is packed.
    ``index(window)`` is the window's number, by which ``run`` returns the results and picks the error to raise.
    """

    def __init__(self, workers: int, windows: Iterator[W], *, index: Callable[[W], int],
                 pack: Callable[[W, WindowCrew[W, Result]], Result], taken: Callable[[W], None] = lambda w: None,
                 done: Callable[[W], None] = lambda w: None, read_here: bool = False) -> None:
        self.workers = max(1, workers)
        # Only the calling thread reads (stdin, whose blocking read only the main thread's Ctrl-C interrupts; JSONL,
        # whose reader feeds parse workers and should not wait for a window's packing); the others pack.
        self.read_here = read_here and self.workers > 1
        self._windows, self._index, self._pack, self._taken, self._done = windows, index, pack, taken, done
        self._cond = threading.Condition()
        self._open: collections.deque[_Part] = collections.deque()  # shards any idle thread may take
        self._reading = False  # one thread reads at a time
        self._exhausted = False
        self._held = 0  # windows read and not yet packed
        self._handed: collections.deque[W] = collections.deque()  # read_here: windows read, for the others to pack
        self._caller = threading.get_ident()  # the thread that calls ``run``
        self.joined = True  # False while crew threads may still be running (``run`` left by a second interrupt)
        self._read = 0  # windows read so far: the number of the one being read
        self._stopping = False
        self._errors: list[tuple[int, BaseException]] = []
        self._results: dict[int, Result] = {}

    def run(self) -> list[Result]:
        """Every window packed; the results in window order."""
        self._caller = threading.get_ident()
        threads = [threading.Thread(target=self._work, name=f"bestfit-{i}", daemon=True)
                   for i in range(1, self.workers)]
        self.joined = not threads
        for thread in threads:
            thread.start()
        try:
            self._work()
        finally:
            self._stop()
            for thread in threads:  # each ends after the step it is in; a second Ctrl-C stops the waiting
                thread.join()
            self.joined = True
        if self._errors:
            raise min(self._errors, key=lambda e: e[0])[1]
        return [self._results[i] for i in sorted(self._results)]

    def map(self, fn: Callable[[T], R], items: Iterable[T], /) -> list[R]:
        """``fn(item)`` for each item, on this thread, but for the ones an idle crew thread took first."""
        parts = [_Part(fn, item) for item in items]
        if len(parts) > 1:
            with self._cond:
                self._open.extend(parts[1:])
                self._cond.notify_all()
        failed = False
        for part in parts:
            with self._cond:
                if part.state != _OPEN:
                    continue
                part.state = _TAKEN if not failed else _DONE
            if failed:
                continue
            part.run()
            with self._cond:
                part.state = _DONE
                self._cond.notify_all()
            failed = part.error is not None
        with self._cond:
            while any(p.state != _DONE for p in parts):
                self._cond.wait()
        error = next((p.error for p in parts if p.error is not None), None)
        if error is not None:
            raise error
        return [p.result for p in parts]  # type: ignore[misc]

    # ------------------------------------------------------------------------------------------ the threads

    def _work(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:  # an interruption between steps, in the main thread
            self._fail(self._read, exc)
            raise

    def _step(self) -> bool:
        """One step of a crew thread: read a window (and pack it), pack a window the reader handed on, or run one
        shard; False when there is nothing left to do."""
        here = threading.get_ident() == self._caller
        with self._cond:
            while True:
                if self._stopping:
                    return False
                if (here or not self.read_here) and not self._reading and not self._exhausted \
                        and self._held < self.workers:
                    self._reading = True
                    window, part = None, None
                    break
                if self._handed and not here:
                    window, part = self._handed.popleft(), None
                    break
                part = self._take_part()
                if part is not None:
                    break
                if self._exhausted and not self._held and not self._reading:
                    return False
                self._cond.wait()
        if part is not None:
            part.run()
            with self._cond:
                part.state = _DONE
                self._cond.notify_all()
            return True
        if window is None:
            window = self._read_window()
            if window is None or self.read_here:
                return window is not None or (self._exhausted and not self._stopping)
        try:
            result = self._pack(window, self)
            self._results[self._index(window)] = result
            self._done(window)
        except BaseException as exc:
            self._fail(self._index(window), exc)
            return False
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()
        return True

    def _read_window(self) -> W | None:
        """The next window, read on this thread (``None`` at the end or on an error); handed on under ``read_here``."""
        number = self._read
        try:
            window = next(self._windows)
            self._taken(window)
        except StopIteration:
            with self._cond:
                self._exhausted = True
                self._reading = False
                self._cond.notify_all()
            return None
        except BaseException as exc:
            with self._cond:
                self._reading = False
            self._fail(number, exc)
            return None
        with self._cond:
            self._read += 1
            self._reading = False
            if self._stopping:  # another thread failed, or Ctrl-C: not worth packing
                self._cond.notify_all()
                return None
            self._held += 1
            if self.read_here:
                self._handed.append(window)
            self._cond.notify_all()
        return window

    def _take_part(self) -> _Part | None:
        while self._open:
            part = self._open.popleft()
            if part.state == _OPEN:
                part.state = _TAKEN
                return part
        return None

    def _fail(self, number: int, exc: BaseException) -> None:
        with self._cond:
            if not any(e is exc for _, e in self._errors):
                self._errors.append((number, exc))
            self._stopping = True
            self._cond.notify_all()

    def _stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
