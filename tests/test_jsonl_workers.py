"""JSONL parsed on worker processes (``formats/jsonl_workers.py``) against the one-process read (``read_jsonl``):
the same documents in the same order, the same skipped lines, the same first error, the same content hash.

Parts are made tiny here (tens of bytes), so a file of a few lines is cut into many parts and every path is taken:
parts parsed by workers, parts parsed again in the reading process (a bad line), a line too long to cut (the rest
of the file read in order), a failed read, workers that died.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bestfit_cli import PackOptions, pack
from bestfit_cli import read as read_module
from bestfit_cli.errors import BestfitError
from bestfit_cli.formats import jsonl
from bestfit_cli.formats import jsonl_workers as workers_module
from bestfit_cli.formats.json_depth import MAX_DEPTH
from bestfit_cli.formats.jsonl import read_jsonl
from bestfit_cli.formats.jsonl_workers import PARSE_WORKERS, read_jsonl_parallel
from bestfit_cli.fs import resolve_inputs
from bestfit_cli.read import DocBatch, ReadOptions, Skipped
from bestfit_cli.stats import read_corpus_lengths

from .test_jsonl_fast import FIXED, at_stack_depth, lines, nested_line

BESTFIT = [sys.executable, "-m", "bestfit_cli"]


@pytest.fixture
def tiny_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts of about 48 bytes, read 16 bytes at a time, and workers for any file of two parts."""
    monkeypatch.setattr(workers_module, "PART_BYTES", 48)
    monkeypatch.setattr(workers_module, "MIN_PART_BYTES", 48)
    monkeypatch.setattr(jsonl, "READ_BYTES", 16)


def _outcome(batches: Iterator[DocBatch]) -> tuple[Any, ...] | str:
    """What a read hands on, whatever its batches: every document's ids in order, the skipped lines, the hash;
    or its error. Checks that batches are numbered without gaps."""
    tokens, lengths, skipped, sha = [], [], Skipped(), None
    row = 0
    try:
        for batch in batches:
            assert batch.first_row == row, (batch.first_row, row)
            row += batch.n_docs
            tokens.append(batch.tokens)
            lengths.append(batch.lengths)
            skipped += batch.skipped  # as the run's tally adds them up
            sha = batch.content_sha256 or sha
            assert 0.0 <= batch.fraction_done <= 1.0
    except BestfitError as exc:
        return str(exc)
    ids = np.concatenate(tokens)
    return (ids.tolist(), str(ids.dtype), np.concatenate(lengths).tolist(), skipped.count, list(skipped.where), sha)


def _both(path: Path, opts: ReadOptions) -> tuple[Any, Any]:
    [file] = resolve_inputs([str(path)])
    one = _outcome(read_jsonl(file, 0, opts))
    two = _outcome(read_jsonl_parallel(file, 0, replace(opts, parse_workers=2)))
    return one, two


@given(st.lists(lines() | st.sampled_from([*FIXED, b"", b"   ", b" " * 70, b'{"input_ids": [7, 8, 9]}']),
                min_size=1, max_size=12),
       st.sampled_from(["error", "skip"]), st.booleans(), st.sampled_from([1 << 16, 60]))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
def test_workers_read_what_one_process_reads(tmp_path: Path, tiny_parts: None, file_lines: list[bytes], policy: str,
                                             compressed: bool, max_line_bytes: int) -> None:
    """Any lines, good or bad, compressed or not; a 60-byte line limit makes lines too long to cut into a part."""
    path = tmp_path / ("in.jsonl.gz" if compressed else "in.jsonl")
    data = b'{"input_ids": [1, 2]}\n' * 4 + b"\n".join(file_lines) + b"\n"
    path.write_bytes(gzip.compress(data) if compressed else data)
    one, two = _both(path, ReadOptions(on_bad_record=policy, max_line_bytes=max_line_bytes))
    assert one == two
    if not isinstance(one, str):
        assert one[-1] == hashlib.sha256(data).hexdigest()


def _clean_file(path: Path, n: int = 300, most_ids: int = 12) -> bytes:
    rng = np.random.default_rng(n)
    data = b"".join(
        f'{{"id": "d{i}", "input_ids": {rng.integers(0, 50_000, rng.integers(0, most_ids)).tolist()}}}\n'.encode()
        for i in range(n))
    path.write_bytes(data)
    return data


def test_clean_parts_are_parsed_by_the_workers(tmp_path: Path, tiny_parts: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A test of sameness alone would pass if every part were parsed in the reading process."""
    path = tmp_path / "clean.jsonl"
    _clean_file(path)
    opts = ReadOptions()
    [file] = resolve_inputs([str(path)])
    expected = _outcome(read_jsonl(file, 0, opts))

    def here(self: Any, part: Any) -> Iterator[DocBatch]:
        raise AssertionError("a clean part was parsed in the reading process")

    monkeypatch.setattr(workers_module._Numbering, "here", here)
    assert _outcome(read_jsonl_parallel(file, 0, replace(opts, parse_workers=2))) == expected


def test_bad_line_is_named_as_one_process_names_it(tmp_path: Path, tiny_parts: None) -> None:
    path = tmp_path / "bad.jsonl"
    data = _clean_file(path)
    lines_ = data.split(b"\n")
    lines_[200] = b'{"input_ids": [1, -5]}'
    lines_[250] = b'{"input_ids": [1, 2'
    path.write_bytes(b"\n".join(lines_))
    one, two = _both(path, ReadOptions())
    assert isinstance(two, str) and "bad.jsonl:201: " in two and "negative token id -5" in two
    assert one == two
    one, two = _both(path, ReadOptions(on_bad_record="skip"))
    assert not isinstance(two, str) and two[3] == 2 and "bad.jsonl:201 " in two[4][0] and "bad.jsonl:251 " in two[4][1]
    assert one == two


@pytest.mark.parametrize("frames", [0, 800])
def test_the_nesting_limit_is_the_same_on_the_workers(tmp_path: Path, tiny_parts: None, frames: int) -> None:
    """A worker parses on a fresh stack, the reading process on whatever stack its caller has: a line within
    MAX_DEPTH is read by both, one deeper refused by both (here also when the reading process is 800 frames deep)."""
    path = tmp_path / "deep.jsonl"
    lines_ = _clean_file(path, 40).split(b"\n")
    lines_[10], lines_[30] = nested_line(MAX_DEPTH), nested_line(MAX_DEPTH + 1)
    path.write_bytes(b"\n".join(lines_))
    deeper = f"deep.jsonl:31: JSON nested deeper than {MAX_DEPTH} levels"
    one, two = at_stack_depth(frames, lambda: _both(path, ReadOptions()))
    assert isinstance(two, str) and deeper in two, two
    assert one == two
    one, two = at_stack_depth(frames, lambda: _both(path, ReadOptions(on_bad_record="skip")))
    assert not isinstance(two, str) and two[3] == 1 and "deep.jsonl:31 " in two[4][0]
    assert one == two
    lines_[30] = b'{"input_ids": [9]}'  # only the deepest line left: read by the workers, not the reading process
    path.write_bytes(b"\n".join(lines_))
    one, two = at_stack_depth(frames, lambda: _both(path, ReadOptions()))
    assert not isinstance(two, str) and one == two
    ids, lengths = two[0], two[2]
    assert lengths[10] == 2 and ids[sum(lengths[:10]):][:2] == [1, 2]  # line 11, the deepest, read


def test_carried_columns_go_with_their_documents(tmp_path: Path, tiny_parts: None) -> None:
    path = tmp_path / "keep.jsonl"
    _clean_file(path)
    opts = ReadOptions(keep=("id",))
    [file] = resolve_inputs([str(path)])

    def ids(batches: Iterator[DocBatch]) -> list[Any]:
        return [v for b in batches for v in b.columns["id"].to_pylist()]

    expected = ids(read_jsonl(file, 0, opts))
    assert expected[:2] == ["d0", "d1"] and len(expected) == 300
    assert ids(read_jsonl_parallel(file, 0, replace(opts, parse_workers=2))) == expected


def test_dead_workers_leave_their_parts_to_the_reader(tmp_path: Path, tiny_parts: None) -> None:
    path = tmp_path / "clean.jsonl"
    _clean_file(path)
    [file] = resolve_inputs([str(path)])
    opts = ReadOptions()
    expected = _outcome(read_jsonl(file, 0, opts))
    with PARSE_WORKERS.take(2) as taken:
        assert taken is not None
        for worker in taken:
            worker.process.kill()
            worker.process.wait()
    assert _outcome(read_jsonl_parallel(file, 0, replace(opts, parse_workers=2))) == expected
    with PARSE_WORKERS.take(2) as taken:  # the dead ones were replaced
        assert taken is not None and all(w.process.poll() is None for w in taken)


def test_a_read_that_stops_early_leaves_the_workers_reusable(tmp_path: Path, tiny_parts: None) -> None:
    path = tmp_path / "clean.jsonl"
    _clean_file(path, 2000)
    [file] = resolve_inputs([str(path)])
    opts = replace(ReadOptions(), parse_workers=2)
    reader = read_jsonl_parallel(file, 0, opts)
    next(reader)  # workers now hold parts whose results nobody reads
    reader.close()
    expected = _outcome(read_jsonl(file, 0, ReadOptions()))
    assert _outcome(read_jsonl_parallel(file, 0, opts)) == expected


def test_pack_is_byte_identical_with_one_or_two_workers(tmp_path: Path, tiny_parts: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Through pack, with carried columns and several windows: parse workers never change the output."""
    monkeypatch.setattr(read_module, "PARALLEL_JSONL_BYTES", 0)
    path = tmp_path / "in.jsonl"
    _clean_file(path, 3000)
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        pack([str(path)], str(out), PackOptions(ctx=16, eos_id=0, workers=workers, window_tokens=2000, keep=("id",)))
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert len([n for n in outs[0] if n.endswith(".parquet")]) > 1
    assert outs[0] == outs[1]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _gone(pids: list[int], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                   for pid in pids):
            return True
        time.sleep(0.05)
    return False


def test_workers_end_when_the_reading_process_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import os, signal
        from bestfit_cli.formats.jsonl_workers import PARSE_WORKERS
        with PARSE_WORKERS.take(2) as workers:
            print(" ".join(str(w.process.pid) for w in workers), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == -signal.SIGKILL
    pids = [int(p) for p in run.stdout.split()]
    assert len(pids) == 2
    assert _gone(pids), "a parse worker outlived the process it read for"
    assert "Traceback" not in run.stderr


def test_ctrl_c_during_a_parallel_read_exits_130_in_one_line(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group: workers ignore it, pack reports it once and stops them."""
    path = tmp_path / "big.jsonl"
    line = b'{"input_ids": [' + b", ".join(b"%d" % (i * 7919 % 50_000) for i in range(900)) + b"]}\n"
    path.write_bytes(line * (80 * 2**20 // len(line)))  # 80 MiB: seconds of parsing, on two workers
    proc = subprocess.Popen([*BESTFIT, "pack", str(path), str(tmp_path / "out"), "--ctx", "2048", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    workers = _children(proc.pid)
    assert len(workers) >= 2, "pack started no parse workers"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert _gone(workers)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_part_sizes() -> None:
    mib = 1 << 20
    assert workers_module.part_bytes(None, 2) == 8 * mib  # stdin, a compressed file: the text's size is unknown
    assert workers_module.part_bytes(1 << 30, 2) == 8 * mib
    assert workers_module.part_bytes(10 * mib, 2) == 10 * mib // 8  # four parts a worker
    assert workers_module.part_bytes(3 * mib, 2) == mib


def test_a_file_of_a_few_mib_is_parsed_on_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the real part sizes: a file of a little over 3 MiB is four parts of 1 MiB or less, all parsed by the
    workers."""
    path = tmp_path / "small.jsonl"
    line = b'{"input_ids": [' + b", ".join(b"%d" % (i * 31 % 50_000) for i in range(400)) + b"]}\n"
    path.write_bytes(line * (3 * 2**20 // len(line) + 1))
    [file] = resolve_inputs([str(path)])
    expected = _outcome(read_jsonl(file, 0, ReadOptions()))
    sent: list[int] = []
    real_send = workers_module._Worker.send
    monkeypatch.setattr(workers_module._Numbering, "here", lambda self, part: pytest.fail("parsed in the reader"))

    def send(self: Any, task: Any) -> bool:
        sent.append(1)
        return real_send(self, task)

    monkeypatch.setattr(workers_module._Worker, "send", send)
    assert _outcome(read_jsonl_parallel(file, 0, ReadOptions(parse_workers=2))) == expected
    assert len(sent) == 4


class _FailingAfter:
    """A file stream whose reads fail once ``limit`` bytes are read (a disk or a network that goes away)."""

    def __init__(self, stream: Any, limit: int) -> None:
        self.stream, self.limit, self.read_so_far = stream, limit, 0

    def read(self, size: int = -1) -> bytes:
        if self.read_so_far + size > self.limit:
            raise OSError(5, "Input/output error")
        chunk = self.stream.read(size)
        self.read_so_far += len(chunk)
        return bytes(chunk)

    def close(self) -> None:
        self.stream.close()

    @property
    def closed(self) -> bool:
        return bool(self.stream.closed)


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_a_read_that_fails_midway_fails_as_in_one_process(tmp_path: Path, tiny_parts: None, policy: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The lines before the failure are read, then the one-line error; the line the failure cut short is not read
    as a line (it would be bad JSON, a different error)."""
    path = tmp_path / "in.jsonl"
    data = _clean_file(path, 400)
    real_open = jsonl._open_text

    def failing_open(file: Any) -> Any:
        stream, position = real_open(file)
        return _FailingAfter(stream, len(data) * 2 // 3), position

    monkeypatch.setattr(jsonl, "_open_text", failing_open)
    monkeypatch.setattr(workers_module, "_open_text", failing_open)
    one, two = _both(path, ReadOptions(on_bad_record=policy))
    assert isinstance(two, str) and "Input/output error" in two, two
    assert one == two


def test_no_worker_to_be_had_reads_in_one_process(tmp_path: Path, tiny_parts: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "clean.jsonl"
    _clean_file(path)
    [file] = resolve_inputs([str(path)])
    expected = _outcome(read_jsonl(file, 0, ReadOptions()))
    PARSE_WORKERS.close()

    def no_process(self: Any) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(workers_module._Worker, "__init__", no_process)
    assert _outcome(read_jsonl_parallel(file, 0, ReadOptions(parse_workers=2))) == expected


def test_a_run_of_little_jsonl_starts_no_worker(tmp_path: Path, tiny_parts: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting workers costs more than they save on a small run: pack and stats read it in one process."""
    path = tmp_path / "in.jsonl"
    _clean_file(path, 3000)

    def no_start(self: Any) -> None:
        raise AssertionError("a parse worker was started for a small run")

    monkeypatch.setattr(workers_module._Worker, "__init__", no_start)
    pack([str(path)], str(tmp_path / "out"), PackOptions(ctx=16, workers=2))
    [file] = resolve_inputs([str(path)])
    opts = ReadOptions(parse_workers=2)
    assert read_corpus_lengths([file], opts).histogram.documents == 3000
    assert read_module.run_read_options([file], opts).parse_workers == 1
    monkeypatch.setattr(read_module, "PARALLEL_JSONL_BYTES", path.stat().st_size)
    assert read_module.run_read_options([file], opts).parse_workers == 2
    [stdin] = resolve_inputs(["-"])
    assert read_module.run_read_options([stdin], opts).parse_workers == 2
