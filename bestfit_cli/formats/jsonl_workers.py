"""JSON Lines read on every core: the file cut into parts of whole lines, each part parsed by a worker process.

Parsing is what a JSONL read spends its time on (msgspec and ``json_ids``, one core each), and threads cannot share
it (the GIL). So the reading process only reads the bytes, in order: it decompresses them, hashes them for the
input's content fingerprint, and cuts them after the last newline of about a part's size. Workers parse the parts
with the reader of ``jsonl.py``, each part read as the whole file's read would read it (``jsonl._lines`` is told
where the part starts), and hand back its batches; the reading process hands them on in the file's order,
numbered by the lines and records of the parts before them.

A part whose read is not clean (any bad line, skipped or not, a line too long, anything raised) is parsed again
in the reading process, numbered from its true first line and row, so every error and every skipped line says
exactly what the one-process read says, in the same order. A line longer than ``max_line_bytes`` cannot be cut
into a part; the rest of the file from it is read in the reading process. Output is the same whatever the number
of workers: the same documents in the same order (batches end elsewhere, which nothing downstream depends on).
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import io
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from ..fs import InputFile
from ..read import DocBatch, ReadOptions, unreadable
from ..resources import steady_heap
from . import jsonl
from .jsonl import Readable, _open_text, read_lines

# Bytes of whole lines a worker parses at a time, at most: about 0.15 s of parsing, and the parts in flight (one a
# worker, one read ahead) stay a small share of pack's memory. A smaller file is cut into smaller parts, at least
# four a worker, so that it keeps every worker busy too; but no part is smaller than ``MIN_PART_BYTES`` (a part
# costs a round trip through the pipes), and a file of less than two is parsed in the reading process.
PART_BYTES = 1 << 23
MIN_PART_BYTES = 1 << 20


def part_bytes(file_bytes: int | None, workers: int) -> int:
    """The size of the parts a file of ``file_bytes`` (None: unknown, stdin) is cut into."""
    if file_bytes is None:
        return PART_BYTES
    return max(MIN_PART_BYTES, min(PART_BYTES, file_bytes // (4 * workers)))
# A worker's batches are small, so the arrays the reading process receives fit under pack's mmap threshold
# (``resources.steady_heap``): heap memory used again part after part, not fresh pages to fault in.
WORKER_BATCH_TOKENS = 1 << 16


@dataclass(frozen=True)
class _Part:
    """Bytes ``offset .. offset + size`` of the text, the first ``size`` bytes of ``buffer``: whole lines, the last
    ending in a newline (except at the text's end). ``rest``: the text goes on unread after them (a line too long
    to cut), to be read on in the reading process; ``failure``: reading the text failed after them. ``done``: share
    of the file read."""

    offset: int
    buffer: bytearray
    size: int
    done: float
    rest: IO[bytes] | None = None
    failure: BaseException | None = None

    @property
    def data(self) -> memoryview:
        return memoryview(self.buffer)[:self.size]

    @property
    def newlines(self) -> int:
        return self.buffer.count(b"\n", 0, self.size)


class _Buffers:
    """Part buffers handed back once their part is handed on: the next parts fill them again, instead of fresh
    memory the kernel must map page by page (a fifth of the reading process's time, measured)."""

    def __init__(self, part: int) -> None:
        self.part = part  # the bytes a part is cut at
        self.size = part + jsonl.READ_BYTES  # room for a part and the read that fills it
        self.free: list[bytearray] = []

    def take(self) -> bytearray:
        return self.free.pop() if self.free else bytearray(self.size)

    def give(self, part: _Part) -> None:
        if len(part.buffer) == self.size:  # not one grown for a long line
            self.free.append(part.buffer)


def _parts(stream: IO[bytes], digest: Any, max_line_bytes: int, done: Callable[[], float], buffers: _Buffers
           ) -> Iterator[_Part]:
    """The text of ``stream`` in parts of whole lines, each hashed into ``digest`` as it is read."""
    buffer, size, offset = buffers.take(), 0, 0
    while True:
        try:
            chunk = stream.read(jsonl.READ_BYTES)
        except (pa.ArrowException, OSError, EOFError) as exc:  # the lines before it are read, as they are in order
            yield _Part(offset, buffer, buffer.rfind(b"\n", 0, size) + 1, done(), failure=exc)
            return
        if not chunk:
            break
        digest.update(chunk)
        if size + len(chunk) > len(buffer):  # a line longer than a part: the buffer grows for it
            buffer.extend(bytes(size + len(chunk) - len(buffer)))
        buffer[size:size + len(chunk)] = chunk
        size += len(chunk)
        if size < buffers.part:
            continue
        cut = buffer.rfind(b"\n", 0, size) + 1
        if cut:
            following = buffers.take()
            following[:size - cut] = memoryview(buffer)[cut:size]  # the unfinished line starts the next part
            if len(following) < buffers.size:
                following.extend(bytes(buffers.size - len(following)))
            yield _Part(offset, buffer, cut, done())
            buffer, size, offset = following, size - cut, offset + cut
        elif size > max_line_bytes:  # one line longer than any part may be: the rest is read on in order
            yield _Part(offset, buffer, size, done(), rest=stream)
            return
    if size:
        yield _Part(offset, buffer, size, done())


class _Prefixed(io.RawIOBase):
    """``prefix`` (already hashed), then the rest of ``stream``, each byte of it hashed into ``digest``."""

    def __init__(self, prefix: bytes | memoryview, stream: IO[bytes], digest: Any) -> None:
        super().__init__()
        self.prefix, self.stream, self.digest = memoryview(prefix), stream, digest

    def read(self, size: int = -1) -> bytes:
        """``size`` bytes (fewer only at the end), as the stream's own reads give them."""
        n = len(self.prefix) if size < 0 else min(size, len(self.prefix))
        head, self.prefix = bytes(self.prefix[:n]), self.prefix[n:]
        if size >= 0 and n == size:
            return head
        more = bytes(self.stream.read(size - n if size >= 0 else -1))
        self.digest.update(more)
        return head + more

    def readable(self) -> bool:
        return True


_PartResult = tuple[list[DocBatch], int] | None  # the part's batches (rows from 0) and newlines; None: parse again


class _View(io.RawIOBase):
    """A stream over a buffer, without copying it whole first (``io.BytesIO`` copies all but ``bytes``)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        super().__init__()
        self.view, self.at = memoryview(data), 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.view) if size < 0 else min(len(self.view), self.at + size)
        chunk, self.at = bytes(self.view[self.at:end]), end
        return chunk

    def readable(self) -> bool:
        return True


def _parse_part(file: InputFile, opts: ReadOptions, offset: int, data: bytes | bytearray | memoryview,
                read_bytes: int) -> _PartResult:
    """What a worker does with a part (its bytes as the pipe gave them): its batches if every line was read
    cleanly, else None. ``read_bytes``: the reading process's, so lines are split as its own read splits them."""
    view = memoryview(data)
    try:
        batches = list(read_lines(file, 0, opts, _View(view), offset=offset, read_bytes=read_bytes,
                                  batch_tokens=WORKER_BATCH_TOKENS))
    except Exception:  # noqa: BLE001 - whatever it was, the reading process parses the part again and says it
        return None
    if any(b.skipped.count or b.notes for b in batches):
        return None
    return batches, bytes(view).count(b"\n") if isinstance(data, memoryview) else data.count(b"\n")


# ----------------------------------------------------------------------------------------------- the workers
#
# Plain child processes (``python -c``), not ``multiprocessing``: a fork of a process whose other threads may hold
# locks (pack's shard threads, pyarrow's pools) is unsafe, and spawn or forkserver children run the caller's main
# script again, which a library must not ask of its callers. Messages are pickles (protocol 5) whose buffers, the
# token arrays above all, go through the pipe as they are, without a copy into the pickle.

_FRAME = struct.Struct("<QI")  # a message: its pickle's size and how many buffers follow it, then each one's size
_SIZE = struct.Struct("<Q")
WORKER_MMAP_THRESHOLD = 4 * PART_BYTES


def _write(out: IO[bytes], obj: Any) -> None:
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    head = _FRAME.pack(len(data), len(raws)) + b"".join(_SIZE.pack(r.nbytes) for r in raws)
    for view in (memoryview(head), memoryview(data), *raws):
        while view:  # a raw pipe may take part of a large write
            view = view[out.write(view) or 0:]


def _read_exactly(source: IO[bytes], n: int) -> bytearray:
    buffer = bytearray(n)
    view, got = memoryview(buffer), 0
    while got < n:
        step = source.readinto(view[got:])  # type: ignore[attr-defined]  # raw pipes have readinto
        if not step:
            raise EOFError("the other end of the pipe closed")
        got += step
    return buffer


def _read(source: IO[bytes]) -> Any:
    size, n_buffers = _FRAME.unpack(_read_exactly(source, _FRAME.size))
    sizes = [_SIZE.unpack_from(head, 0)[0] for head in
             (_read_exactly(source, _SIZE.size) for _ in range(n_buffers))]
    data = _read_exactly(source, size)
    return pickle.loads(data, buffers=[_read_exactly(source, n) for n in sizes])


def serve() -> None:
    """A worker's life: parts in on stdin, results out on stdout, until stdin closes (the reading process is done,
    or gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a SIGINT sent to it alone, too: the reading process decides
    # Parts and their arrays are a few MB each, part after part: from the heap, reused, not fresh mapped pages.
    steady_heap(threshold=WORKER_MMAP_THRESHOLD, keep_free=2 * WORKER_MMAP_THRESHOLD)
    source, out = io.FileIO(0, "rb", closefd=False), io.FileIO(os.dup(1), "wb")
    os.dup2(2, 1)  # nothing printed, by Python or a library, may land in the result pipe
    sys.stdout = sys.stderr
    try:
        while True:
            _write(out, _parse_part(*_read(source)))
    except (EOFError, OSError):
        pass


PIPE_BYTES = 1 << 20  # Linux's default most for a pipe: a part crosses in 8 writes, not 128 of 64 KiB


def _widen(fd: int) -> None:
    """Let the pipe hold ``PIPE_BYTES`` (fewer wake-ups of either side a part); where it cannot, it stays as is."""
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except OSError:
        pass


class _Worker:
    """One worker process and its two pipes. ``busy``: it holds a part whose result is not read yet; ``dead``: it
    failed (or was stopped holding a part) and is never used again."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # where bestfit_cli is imported from, installed or not
        code = f"import sys; sys.path.insert(0, {root!r}); from {__name__} import serve; serve()"
        # Its own process group: a Ctrl-C at the terminal is the reading process's to handle and report (it then
        # closes the pipes); a worker that saw it too would die with a traceback, even while still starting.
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        bufsize=0, close_fds=True, start_new_session=True)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.tasks, self.results = self.process.stdin, self.process.stdout
        for pipe in (self.tasks, self.results):
            _widen(pipe.fileno())
        self.busy = self.dead = False

    def fileno(self) -> int:
        return self.results.fileno()

    def send(self, task: Any) -> bool:
        """Hand it a part; False if it is dead."""
        try:
            _write(self.tasks, task)
            self.busy = True
        except OSError:
            self.dead = True
        return not self.dead

    def receive(self) -> _PartResult:
        """Its part's result (None, to parse the part again, if it died)."""
        try:
            return _read(self.results)  # type: ignore[no-any-return]  # what _parse_part returned
        except (EOFError, OSError, pickle.UnpicklingError):
            self.dead = True
            return None
        finally:
            self.busy = False

    def settle(self, timeout: float) -> None:
        """A read ended early (an error, a reader that stopped): drop its part's result, to be reused; a worker
        still parsing after ``timeout`` seconds (a huge line) is stopped instead."""
        if self.busy and not self.dead:
            ready, _, _ = select.select([self], [], [], timeout)
            if ready:
                self.receive()
            else:
                self.dead = True

    def close(self) -> None:
        for pipe in (self.tasks, self.results):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:  # still parsing a part nobody needs now
            self.process.kill()
            self.process.wait()


class ParseWorkers:
    """Worker processes, started when first needed and kept for later files and reads until ``close``, each
    holding at most one part, so neither side of a pipe can block the other. One reader at a time uses them
    (``take``); a reader that finds them taken reads in its own process."""

    SETTLE_SECONDS = 2.0

    def __init__(self) -> None:
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()

    @contextmanager
    def take(self, n: int) -> Iterator[list[_Worker] | None]:
        if not self.lock.acquire(blocking=False):
            yield None
            return
        try:
            self._prune()
            try:
                while len(self.workers) < n:
                    self.workers.append(_Worker())
            except OSError:  # no process to be had (a process limit, no memory): parse with what there is
                pass
            yield self.workers[:n] or None
        finally:
            for worker in self.workers:
                worker.settle(self.SETTLE_SECONDS)
            self._prune()
            self.lock.release()

    def _prune(self) -> None:
        for worker in [w for w in self.workers if w.dead]:
            worker.close()
            self.workers.remove(worker)

    def close(self) -> None:
        """Stop every worker (the end of a run's reading: ``read.close_readers``)."""
        with self.lock:
            workers, self.workers = self.workers, []
            for worker in workers:
                worker.close()


PARSE_WORKERS = ParseWorkers()
atexit.register(PARSE_WORKERS.close)


class _Numbering:
    """Hands batches on in the file's order, numbered by the lines and records before them; keeps the last one
    back, for the content hash."""

    def __init__(self, file: InputFile, file_index: int, opts: ReadOptions, digest: Any) -> None:
        self.file, self.file_index, self.opts, self.digest = file, file_index, opts, digest
        self.line, self.row = 1, 0
        self.held: DocBatch | None = None
        self.buffers = _Buffers(part_bytes(file.size if not file.format_compressed else None, opts.parse_workers))

    def _emit(self, batch: DocBatch) -> Iterator[DocBatch]:
        if batch.n_docs == 0 and not batch.skipped.count and not batch.notes:
            return  # the empty last batch of a part: only the file's last one is handed on
        if self.held is not None:
            yield self.held
        self.held = batch
        self.row = batch.first_row + batch.n_docs

    def parsed(self, part: _Part, result: _PartResult) -> Iterator[DocBatch]:
        """A part a worker parsed: its batches renumbered (or, not clean, the part parsed here)."""
        if result is None:
            yield from self.here(part)
            return
        batches, newlines = result
        row = self.row
        for batch in batches:
            yield from self._emit(replace(batch, file_index=self.file_index, first_row=row + batch.first_row,
                                          fraction_done=part.done))
        self.line += newlines
        self.buffers.give(part)

    def here(self, part: _Part) -> Iterator[DocBatch]:
        """A part parsed in this process, from its true first line and row."""
        stream: Readable = _View(part.data) if part.rest is None else _Prefixed(part.data, part.rest, self.digest)
        for batch in read_lines(self.file, self.file_index, self.opts, stream, first_line=self.line, row=self.row,
                                offset=part.offset, done=lambda: part.done, read_bytes=jsonl.READ_BYTES):
            yield from self._emit(batch)  # its lines are copies: the part's buffer may be filled again
        self.line += part.newlines
        self.buffers.give(part)
        if part.failure is not None:
            raise unreadable(self.file, part.failure, "cannot read", "check the file and its compression")

    def last(self) -> DocBatch:
        """The file's last batch, with its content hash (an empty one, as the one-process read's, if none is)."""
        batch = self.held
        if batch is None:
            batch = next(read_lines(self.file, self.file_index, self.opts, io.BytesIO(b""), row=self.row))
        return replace(batch, content_sha256=self.digest.hexdigest(), fraction_done=1.0)


def read_jsonl_parallel(file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
    """``jsonl.read_jsonl`` with the parsing on ``opts.parse_workers`` processes: the same batches' documents,
    the same errors."""
    stream, file_position = _open_text(file)
    size = file.size

    def done() -> float:
        return min(file_position() / size, 1.0) if size else 0.0

    digest = hashlib.sha256()
    numbering = _Numbering(file, file_index, opts, digest)
    try:
        parts = _parts(stream, digest, opts.max_line_bytes, done, numbering.buffers)
        head: list[_Part] = []
        for part in parts:
            head.append(part)
            if len(head) == 2 or part.rest or part.failure:
                break
        with PARSE_WORKERS.take(opts.parse_workers) as workers:
            if workers is None or len(head) < 2 or head[-1].rest is not None or head[-1].failure is not None:
                for part in [*head, *parts]:  # a small text, or the workers busy with another read: this process
                    yield from numbering.here(part)
            else:
                yield from _in_order(workers, file, opts, iter([*head, *parts]), numbering)
        yield numbering.last()
    finally:
        if not file.is_stdin:
            stream.close()


def _in_order(workers: list[_Worker], file: InputFile, opts: ReadOptions, parts: Iterator[_Part],
              numbering: _Numbering) -> Iterator[DocBatch]:
    """Every part to the next idle worker (the next part read while they parse), the results in order. A part
    whose worker died is parsed here."""
    idle = list(workers)
    busy: dict[_Worker, int] = {}
    sent: dict[int, _Part] = {}
    results: dict[int, _PartResult] = {}
    next_sent = next_out = 0
    upcoming = next(parts, None)
    while True:
        while idle and upcoming is not None and upcoming.rest is None and upcoming.failure is None:
            worker = idle.pop()
            sent[next_sent] = upcoming
            if worker.send((file, opts, upcoming.offset, pickle.PickleBuffer(upcoming.data), jsonl.READ_BYTES)):
                busy[worker] = next_sent
            else:
                results[next_sent] = None
            next_sent += 1
            upcoming = next(parts, None)
        while next_out in results:
            yield from numbering.parsed(sent.pop(next_out), results.pop(next_out))
            next_out += 1
        if busy:
            ready, _, _ = select.select(list(busy), [], [])
            for worker in ready:
                results[busy.pop(worker)] = worker.receive()
                if not worker.dead:
                    idle.append(worker)
        elif upcoming is None:
            return
        elif upcoming.rest is not None or upcoming.failure is not None:
            yield from numbering.here(upcoming)  # a line too long to cut, a failed read: all before it handed on
            return
        else:  # every worker died: the rest is parsed here
            yield from numbering.here(upcoming)
            upcoming = next(parts, None)
