"""The vectorised JSONL path: ``json_ids.flat_id_arrays`` reads exactly what it takes, and the reader that defers
common lines to it hands on the documents and errors of parsing line by line, in line order."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bestfit_cli.errors import InputError
from bestfit_cli.formats import jsonl
from bestfit_cli.formats.json_ids import flat_id_arrays
from bestfit_cli.fs import resolve_inputs
from bestfit_cli.read import ReadOptions, read_file

from .test_fuzz_hostile import json_values

small_ids = st.lists(st.integers(0, 10**8 - 1) | st.sampled_from([0, 9, 10, 99_999_999]), max_size=12)
any_ids = st.lists(st.integers(-(2**70), 2**70) | st.booleans() | st.none() | st.floats(allow_nan=False)
                   | st.text(max_size=3) | st.lists(st.integers(0, 9), max_size=2), max_size=6)
separators = st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : "), (",\t", ":")])


def _text(value: Any, separator: tuple[str, str]) -> bytes:
    return json.dumps(value, separators=separator).encode()


@given(st.lists(small_ids, min_size=1, max_size=8), separators)
def test_flat_arrays_of_short_ids_are_read_exactly(arrays: list[list[int]], separator: tuple[str, str]) -> None:
    read = flat_id_arrays([_text(a, separator) for a in arrays])
    assert read is not None  # taken: a test of agreement alone would pass with a reader that never takes
    ids, counts = read
    assert ids.dtype == counts.dtype == np.int64
    assert counts.tolist() == [len(a) for a in arrays]
    assert ids.tolist() == [i for a in arrays for i in a]


@given(st.lists(small_ids | any_ids | json_values, min_size=1, max_size=6), separators)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_anything_else_is_refused_or_read_exactly(values: list[Any], separator: tuple[str, str]) -> None:
    read = flat_id_arrays([_text(v, separator) for v in values])
    flat = all(isinstance(v, list) and all(type(i) is int and 0 <= i < 10**8 for i in v) for v in values)
    if read is None:
        assert not flat
        return
    assert flat, values
    assert read[1].tolist() == [len(v) for v in values]
    assert read[0].tolist() == [i for v in values for i in v]


@pytest.mark.parametrize("text", [b"[1,-2]", b"[1.5]", b"[1e5]", b"[true]", b"[null]", b"[[1]]", b"[[1],[2]]",
                                  b'"[1]"', b"5", b'{"a":[1]}', b"[123456789]", b"[99999999,100000000]"])
def test_what_is_no_flat_array_of_short_ids_is_refused(text: bytes) -> None:
    assert flat_id_arrays([b"[1, 2]", text]) is None
    assert flat_id_arrays([b"[99999999, 0,  12 ]", b"[ ]", b"[]"]) is not None


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _read(path: Path, opts: ReadOptions) -> tuple[list[int], list[int], list[str]] | str:
    [file] = resolve_inputs([str(path)])
    try:
        batches = list(read_file(file, 0, opts))
    except InputError as exc:
        return str(exc)
    tokens = [t for b in batches for t in b.tokens.tolist()]
    lengths = [n for b in batches for n in np.diff(b.offsets).tolist()]
    return tokens, lengths, [w for b in batches for w in b.skipped.where]


def test_common_lines_are_never_parsed_line_by_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl, "DEFERRED_BYTES", 64)  # many groups of texts
    docs = [list(range(n, 3 * n)) for n in range(40)]
    path = _write(tmp_path / "common.jsonl", [json.dumps({"id": f"d{i}", "input_ids": d, "x": [1.5, "a,]"]},
                                                         separators=(",", ": ") if i % 2 else (", ", ": ")).encode()
                                              + (b"\r" if i % 3 == 0 else b"") for i, d in enumerate(docs)])

    def refuse(*_: Any) -> None:
        raise AssertionError("a common line was parsed line by line")

    monkeypatch.setattr(jsonl, "_parse_line", refuse)
    monkeypatch.setattr(jsonl, "fast_line_parser", lambda column: refuse)
    assert _read(path, ReadOptions()) == ([t for d in docs for t in d], [len(d) for d in docs], [])


@pytest.mark.parametrize("deferred_bytes", [8, 1 << 17])
def test_errors_come_in_line_order_whichever_way_a_line_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 deferred_bytes: int) -> None:
    """A line that only the batch read refuses ([true] is valid JSON) comes before a line that fails at once."""
    monkeypatch.setattr(jsonl, "DEFERRED_BYTES", deferred_bytes)
    lines = [b'{"input_ids": [1, 2]}', b'{"input_ids": [true]}', b"not json", b'{"input_ids": [123456789012]}',
             b'{"input_ids": [3]}', b'{"input_ids": [99999999999999999999]}', b'{"input_ids": [4]}']
    path = _write(tmp_path / "mixed.jsonl", lines)
    message = _read(path, ReadOptions(dtype="int64"))
    assert isinstance(message, str) and "mixed.jsonl:2:" in message and "bool" in message, message
    skipped = _read(path, ReadOptions(dtype="int64", on_bad_record="skip"))
    assert not isinstance(skipped, str)
    tokens, lengths, where = skipped
    assert tokens == [1, 2, 123456789012, 3, 4] and lengths == [2, 0, 0, 1, 1, 0, 1]
    assert [re.search(r"mixed\.jsonl:(\d+)", w).group(1) for w in where] == ["2", "3", "6"], where  # type: ignore[union-attr]
    monkeypatch.setattr(jsonl, "FAST_JSONL", False)
    slow = (_read(path, ReadOptions(dtype="int64")), _read(path, ReadOptions(dtype="int64", on_bad_record="skip")))
    assert (message, skipped) == slow


def test_a_bad_line_before_a_too_long_line_is_the_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "long.jsonl", [b'{"input_ids": [1]}', b'{"input_ids": [false]}',
                                            b'{"input_ids": [' + b"1, " * 400 + b"1]}"])
    message = _read(path, ReadOptions(max_line_bytes=1000))
    assert isinstance(message, str) and "long.jsonl:2:" in message and "longer than" not in message, message
    message = _read(path, ReadOptions(max_line_bytes=1000, on_bad_record="skip"))
    assert isinstance(message, str) and "long.jsonl:3:" in message and "longer than" in message, message


def test_lines_with_large_other_fields_end_a_batch_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deferred lines are kept whole until their batch is handed on, so a batch ends once they hold HELD_BYTES,
    however few ids they carry (memory stays what parsing line by line would hold)."""
    monkeypatch.setattr(jsonl, "HELD_BYTES", 10_000)
    lines = [json.dumps({"text": "x" * 1000, "input_ids": [i]}).encode() for i in range(100)]
    path = _write(tmp_path / "wide.jsonl", lines)
    [file] = resolve_inputs([str(path)])
    batches = [b for b in read_file(file, 0, ReadOptions()) if b.n_docs]
    assert len(batches) >= 9 and max(b.n_docs for b in batches) <= 10
    assert [t for b in batches for t in b.tokens.tolist()] == list(range(100))
