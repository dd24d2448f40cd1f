"""read.ReadAhead: batches read on a thread of their own, in order, bounded, errors in place, stopped on close."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bestfit_cli import InputError, PackOptions, pack
from bestfit_cli import read as read_module
from bestfit_cli.read import DocBatch, ReadAhead, batch_bytes

from .conftest import EOS, SAMPLES, record_decode_threads


def _batch(index: int, tokens: int = 100) -> DocBatch:
    return DocBatch(0, index, np.array([0, tokens], dtype=np.int64), np.full(tokens, index, dtype=np.int32))


class _Source:
    """Batches 0..n-1 (then ``error``, if given), recording how far it was read and in which thread."""

    def __init__(self, n: int, error: BaseException | None = None) -> None:
        self.n, self.error = n, error
        self.produced = 0
        self.threads: set[str] = set()
        self.closed_in: str | None = None
        self.more = threading.Event()  # set after each batch is made

    def __iter__(self) -> Iterator[DocBatch]:
        try:
            for i in range(self.n):
                self.threads.add(threading.current_thread().name)
                self.produced += 1
                self.more.set()
                yield _batch(i)
            if self.error is not None:
                raise self.error
        finally:
            self.closed_in = threading.current_thread().name


@pytest.mark.parametrize("limit", [1, 250, 1 << 30])
def test_batches_come_in_order_from_another_thread(limit: int) -> None:
    source = _Source(50)
    ahead = ReadAhead(iter(source), limit)
    got = [int(b.tokens[0]) for b in ahead]
    ahead.close()
    assert got == list(range(50))
    assert source.threads == {"bestfit-read"} and source.closed_in == "bestfit-read"


def test_reading_stays_within_the_limit_ahead_of_the_consumer() -> None:
    """With room for two batches, the thread is never more than two batches (plus the one it is making) ahead."""
    source = _Source(1000)
    size = batch_bytes(_batch(0))
    ahead = ReadAhead(iter(source), 2 * size)
    taken = 0
    for _ in range(20):
        next(ahead)
        taken += 1
        source.more.wait(1)
        assert source.produced <= taken + 3
    # Left alone, it fills the room and stops there.
    source.more.clear()
    source.more.wait(0.5)
    assert source.produced <= taken + 3
    ahead.close()
    assert source.produced < 1000 and source.closed_in == "bestfit-read"


def test_an_error_comes_after_every_batch_before_it() -> None:
    failure = InputError("b.parquet", "corrupt Parquet data", fix="re-create it")
    ahead = ReadAhead(iter(_Source(5, failure)), 1 << 30)
    got = []
    with pytest.raises(InputError) as caught:
        for batch in ahead:
            got.append(int(batch.tokens[0]))
    ahead.close()
    assert got == [0, 1, 2, 3, 4] and caught.value is failure


def test_close_stops_the_thread_and_runs_the_sources_clean_up() -> None:
    source = _Source(10**9)
    ahead = ReadAhead(iter(source), 1 << 20)
    next(ahead)
    ahead.close()
    assert not any(t.name == "bestfit-read" for t in threading.enumerate())
    assert source.closed_in == "bestfit-read"
    produced = source.produced
    time.sleep(0.2)
    assert source.produced == produced  # nothing read after close


def _reader_threads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    threads: set[str] = set()
    real = read_module.read_file

    def recording(file, file_index, opts):  # type: ignore[no-untyped-def]
        for batch in real(file, file_index, opts):
            threads.add(threading.current_thread().name)
            yield batch

    monkeypatch.setattr(read_module, "read_file", recording)
    return threads


@pytest.mark.parametrize(("workers", "inputs", "thread"), [
    (2, ["code.parquet"], "bestfit-read"),
    (1, ["code.parquet"], "MainThread"),  # --workers 1: one core, one reading thread
    (2, ["code.parquet", "nl.jsonl"], "MainThread"),  # JSONL has its own parse workers: no read-ahead
])
def test_pack_reads_ahead_with_more_than_one_worker_and_only_formats_that_may(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, inputs: list[str], thread: str) -> None:
    threads = _reader_threads(monkeypatch)
    pack([str(SAMPLES / name) for name in inputs], str(tmp_path / "out"),
         PackOptions(ctx=512, eos_id=EOS, workers=workers, window_tokens=1 << 16))
    assert threads == {thread}


def test_a_corrupt_file_read_ahead_fails_as_it_does_without(tmp_path: Path) -> None:
    """The second file's damage is found by the reading thread and reported as the same one-line error, once the
    first file's documents were all taken."""
    good = tmp_path / "a.parquet"
    pq.write_table(pq.read_table(SAMPLES / "code.parquet"), good)
    bad = tmp_path / "b.parquet"
    ids = pa.array([[1, 2, 3]] * 5000, type=pa.list_(pa.int32()))
    pq.write_table(pa.table({"input_ids": ids}), bad, row_group_size=1000, compression="none")
    data = bytearray(bad.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = b"\xff" * 2000
    bad.write_bytes(bytes(data))
    messages = []
    for workers in (1, 2):
        with pytest.raises(InputError) as caught:
            pack([str(good), str(bad)], str(tmp_path / f"out{workers}"),
                 PackOptions(ctx=512, eos_id=EOS, workers=workers))
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "b.parquet" in messages[0]


@pytest.mark.parametrize(("cores", "thread"), [(2, "bestfit-read"), (1, "MainThread")])
def test_verify_reads_ahead_when_it_has_more_than_one_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          cores: int, thread: str) -> None:
    from bestfit_cli import verify as verify_module

    out = tmp_path / "out"
    inputs = [str(SAMPLES / "code.parquet")]
    pack(inputs, str(out), PackOptions(ctx=512, eos_id=EOS, window_tokens=1 << 16))
    monkeypatch.setattr(verify_module, "usable_cores", lambda: cores)
    threads = _reader_threads(monkeypatch)
    assert verify_module.verify(inputs, str(out)).ok
    assert threads == {thread}


def _reading_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "bestfit-read"]


@pytest.mark.parametrize("command", ["pack", "pack while filling a window", "verify"])
def test_the_reading_thread_is_gone_when_a_run_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     command: str) -> None:
    """A run that fails part way (its second window, or a signal's exception raised while a window is being filled)
    stops its reading thread before the error leaves it. The error's traceback keeps the frames it passed through
    alive, and with them the reading generators, so the thread read on until the interpreter's exit, whose clean-up
    then ran the generators' own (``sys.meta_path is None``, and once in CI a SIGTERM'd pack that aborted instead of
    exiting 143)."""
    from bestfit_cli import pipeline, window
    from bestfit_cli import verify as verify_module
    from bestfit_cli.errors import OutputError

    # 8M tokens in 8 files: more than verify reads ahead (16 MiB), so the reading is under way when the run fails.
    rng = np.random.default_rng(3)
    inputs = []
    for i in range(8):
        ids = pa.array(rng.integers(0, 50_000, 1 << 20, dtype=np.int32))
        docs = pa.ListArray.from_arrays(pa.array(np.arange(0, (1 << 20) + 1, 1 << 10, dtype=np.int32)), ids)
        pq.write_table(pa.table({"input_ids": docs}), tmp_path / f"part-{i}.parquet", row_group_size=128)
        inputs.append(str(tmp_path / f"part-{i}.parquet"))
    out = tmp_path / "out"
    opts = PackOptions(ctx=1024, eos_id=EOS, workers=2, window_tokens=1 << 18)
    if command == "verify":
        pack(inputs, str(out), opts)
        monkeypatch.setattr(verify_module, "usable_cores", lambda: 2)
    module, name = {"pack": (pipeline, "pack_window"), "verify": (verify_module, "_check_window"),
                    "pack while filling a window": (window.WindowBuffer, "add")}[command]
    real = getattr(module, name)
    calls = []

    def fails_second(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise OutputError("the second window failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, fails_second)
    with pytest.raises(OutputError) as caught:
        if command.startswith("pack"):
            pack(inputs, str(tmp_path / "out2"), opts)
        else:
            verify_module.verify(inputs, str(out))
    assert caught.value is not None  # the traceback is alive here, as it is in the CLI until the process exits
    assert _reading_threads() == []


@pytest.mark.parametrize(("workers", "keep"), [(1, ()), (2, ()), (2, ("id",))])
def test_pack_decodes_one_local_column_on_the_thread_that_reads_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, keep: tuple[str, ...]) -> None:
    """One token column of a local file is decoded where it is read (the reading thread, or --workers 1's only
    one); with carried columns pyarrow's threads decode the columns side by side. The output is the same bytes."""
    seen = record_decode_threads(monkeypatch)
    opts = PackOptions(ctx=512, eos_id=EOS, workers=workers, window_tokens=1 << 16, keep=keep)
    pack([str(SAMPLES / "code.parquet")], str(tmp_path / "out"), opts)
    assert seen and set(seen) == {bool(keep)}
    monkeypatch.setattr("bestfit_cli.formats.parquet.pack_decode_threads", lambda file, opts: True)
    pack([str(SAMPLES / "code.parquet")], str(tmp_path / "threads"), opts)
    assert set(seen[-1:]) == {True}
    for shard in sorted((tmp_path / "out").iterdir()):
        assert shard.read_bytes() == (tmp_path / "threads" / shard.name).read_bytes()


def test_stats_reads_lengths_on_pyarrows_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """``stats`` has no reading thread of its own: its lengths are decoded on pyarrow's threads."""
    from bestfit_cli.stats import StatsOptions, run_stats

    seen = record_decode_threads(monkeypatch)
    run_stats([str(SAMPLES / "code.parquet")], StatsOptions(ctx=(512,)))
    assert seen and set(seen) == {True}
