"""JSONL lines parsed ahead on worker processes (formats/jsonl_parallel.py): the same batches, errors, line numbers
and packed bytes as parsing in the reader's own process."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bestfit_cli.cli import cli
from bestfit_cli.errors import InputError
from bestfit_cli.formats import jsonl, jsonl_parallel
from bestfit_cli.fs import resolve_inputs
from bestfit_cli.read import ReadOptions, read_file

from .test_jsonl_fast import FIXED, lines


def _read_all(path: Path, opts: ReadOptions) -> list[Any] | str:
    [file] = resolve_inputs([str(path)])
    try:
        return [(b.first_row, b.offsets.tolist(), b.tokens.tolist(), str(b.tokens.dtype), b.skipped, b.content_sha256)
                for b in read_file(file, 0, opts)]
    except InputError as exc:
        return str(exc)


@pytest.fixture
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups of a few lines, so that even a small file is many tasks, several in flight at once."""
    monkeypatch.setattr(jsonl_parallel, "GROUP_BYTES", 64)


@given(st.lists(lines() | st.sampled_from(FIXED + [b"", b"   "]), min_size=1, max_size=30),
       st.sampled_from(["error", "skip"]), st.sampled_from(["uint16", "int32", "int64"]), st.booleans())
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
def test_reader_with_and_without_parse_workers(tmp_path: Path, small_groups: None, file_lines: list[bytes],
                                               policy: str, dtype: str, compressed: bool) -> None:
    path = tmp_path / ("in.jsonl.gz" if compressed else "in.jsonl")
    data = b'{"input_ids": [1, 2]}\n' + b"\n".join(file_lines) + b"\n"
    path.write_bytes(gzip.compress(data) if compressed else data)
    one = ReadOptions(dtype=dtype, on_bad_record=policy, max_line_bytes=1 << 16)
    two = ReadOptions(dtype=dtype, on_bad_record=policy, max_line_bytes=1 << 16, parse_workers=2)
    assert _read_all(path, two) == _read_all(path, one)


def _bad_file(tmp_path: Path) -> Path:
    good = [json.dumps({"input_ids": list(range(i, i + 40))}).encode() for i in range(300)]
    good[170] = b'{"input_ids": [1, "two"]}'
    good[230] = b'{"input_ids": [-1]}'
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(good) + b"\n")
    return path


def test_errors_name_the_same_line_with_parse_workers(tmp_path: Path, small_groups: None) -> None:
    path = _bad_file(tmp_path)
    got = _read_all(path, ReadOptions(parse_workers=2))
    assert isinstance(got, str) and "bad.jsonl:171:" in got and got == _read_all(path, ReadOptions())
    skipped = _read_all(path, ReadOptions(parse_workers=2, on_bad_record="skip"))
    assert skipped == _read_all(path, ReadOptions(on_bad_record="skip"))
    assert sum(b[4].count for b in skipped) == 2  # type: ignore[union-attr]


def test_a_line_too_long_is_raised_after_the_lines_before_it(tmp_path: Path, small_groups: None) -> None:
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"input_ids": [1]}\n' * 50 + b'{"input_ids": [' + b"7," * 4000 + b'7]}\n{"input_ids": [2]}\n')
    got = _read_all(path, ReadOptions(parse_workers=2, max_line_bytes=1000))
    assert isinstance(got, str) and "long.jsonl:51:" in got and got == _read_all(path, ReadOptions(max_line_bytes=1000))
    path.write_bytes(b"[oops\n" + b'{"input_ids": [1]}\n' * 50 + b"x" * 2000 + b"\n")  # the earlier error first
    got = _read_all(path, ReadOptions(parse_workers=2, max_line_bytes=1000))
    assert isinstance(got, str) and "long.jsonl:1:" in got and "not valid JSON" in got


def test_the_workers_parse_the_lines(tmp_path: Path, small_groups: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parallel path is taken (a test of equal results alone would pass if it never were), and its parse comes
    back from the workers: with the reader's own fast path switched off, taken lines still arrive parsed."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(json.dumps({"input_ids": [i, i + 1]}).encode() + b"\n" for i in range(500)))
    calls = []
    original = jsonl.parsed_ahead

    def counting(*args: Any) -> Any:
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(jsonl, "parsed_ahead", counting)
    seen = []
    for raw, ids in jsonl_parallel.parsed_ahead(iter(path.read_bytes().splitlines()), "input_ids", 2):
        seen.append(ids is not None and ids.tolist() == json.loads(raw)["input_ids"])
    assert len(seen) == 500 and all(seen)
    assert _read_all(path, ReadOptions(parse_workers=2)) == _read_all(path, ReadOptions())
    assert len(calls) == 1


def test_no_worker_processes_means_the_same_parse_here(tmp_path: Path, small_groups: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = _bad_file(tmp_path)
    expected = _read_all(path, ReadOptions(on_bad_record="skip"))
    monkeypatch.setattr(jsonl_parallel, "_pool", lambda workers: None)
    assert _read_all(path, ReadOptions(on_bad_record="skip", parse_workers=2)) == expected


def test_parse_group_marks_what_it_does_not_take() -> None:
    lengths, flat = jsonl_parallel.parse_group("input_ids", [b'{"input_ids": [5, 6]}', b"", b"  ", b"[1]",
                                                             b'{"input_ids": [70000000000]}', b'{"input_ids": []}'])
    assert lengths.tolist() == [2, -1, -1, -1, 1, 0]
    assert flat.tolist() == [5, 6, 70000000000] and flat.dtype == np.int64
    assert jsonl_parallel.parse_group("input_ids", [b'{"input_ids": [5]}'])[1].dtype == np.int32


@pytest.mark.parametrize("dtype", ["int32", "uint16"])
def test_pack_bytes_do_not_depend_on_workers(tmp_path: Path, small_groups: None, dtype: str) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "in.jsonl"
    with path.open("wb") as out:
        for i in range(400):
            ids = rng.integers(0, 60_000, int(rng.integers(0, 300))).tolist()
            out.write(json.dumps({"id": i, "input_ids": ids}).encode() + b"\n")
            if i % 97 == 0:
                out.write(b"\n   \n")
    outputs = []
    for workers in (1, 2):
        out_dir = tmp_path / f"out{workers}"
        result = CliRunner().invoke(cli, ["pack", str(path), str(out_dir), "--ctx", "256", "--eos-id", "0",
                                          "--dtype", dtype, "--rows-per-shard", "64", "--window-tokens", "20000",
                                          "--workers", str(workers), "--quiet"])
        assert result.exit_code == 0, result.stderr
        outputs.append({p.name: p.read_bytes() for p in sorted(out_dir.iterdir()) if p.is_file()})
    assert len(outputs[0]) > 3 and outputs[0] == outputs[1]
