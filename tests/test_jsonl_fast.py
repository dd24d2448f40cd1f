"""The JSONL fast paths (msgspec, and the id texts read in groups by numpy) against the slow path (json.loads):
the same documents, the same errors.

``fast_line_parser`` may only ever say "I don't know" (None) or give exactly the array ``_parse_line`` gives; the
reader with and without it must hand on the same batches and raise the same one-line errors, for every line.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bestfit_cli.errors import InputError
from bestfit_cli.formats import jsonl
from bestfit_cli.formats.jsonl import _parse_line, fast_line_parser
from bestfit_cli.fs import resolve_inputs
from bestfit_cli.read import ReadOptions, read_file

from .test_fuzz_hostile import json_values, jsonl_lines

ids_values = st.lists(st.integers(0, 200_000) | st.integers(-(2**65), 2**65) | st.booleans() | st.none()
                      | st.floats(allow_nan=False) | st.just(0), max_size=6)


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    """Lines near the common shape: other fields before and after, duplicate keys, odd separators, non-ASCII,
    then a few bytes mutated; and the hostile lines of the fuzz suite."""
    kind = draw(st.sampled_from(["near", "mutated", "hostile"]))
    if kind == "hostile":
        return draw(jsonl_lines())
    fields: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(0, 3))):
        fields.append((draw(st.sampled_from(["id", "text", "input_ids", "x"])), draw(json_values)))
    fields.insert(draw(st.integers(0, len(fields))), ("input_ids", draw(ids_values)))
    separator = draw(st.sampled_from([", ", ",", " , "]))
    body = separator.join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=draw(st.booleans()))}" for k, v in fields)
    line = bytearray(("{" + body + "}").encode())
    if kind == "mutated":
        interesting = b'"\\[],:0-.e+ t\xff\xc3\x00\tnE'
        for _ in range(draw(st.integers(1, 3))):
            position = draw(st.integers(0, len(line) - 1))
            if draw(st.booleans()):
                line[position] = interesting[draw(st.integers(0, len(interesting) - 1))]
            else:
                del line[position]
    return bytes(line).replace(b"\n", b" ")


FIXED = [b'{"x":"\xff","input_ids":[1]}', b'\xef\xbb\xbf{"input_ids":[1]}', b'{"x":"\\ud800","input_ids":[1]}',
         b'{"x":NaN,"input_ids":[1]}', b'{"input_ids":[1],"input_ids":[2]}', b'{"input_ids":[2],"input_ids":5}',
         b'{"input_ids":[18446744073709551616]}', b'{"input_ids":[9223372036854775807, -9223372036854775808]}',
         b'{"input_ids":[9223372036854775808]}', b'{"input_ids":[true]}', b'{"input_ids":[1.0]}',
         b'{"input_ids":[1e2]}', b'{"input_ids":[-0]}', b'{"input_ids":[]}', b'{"input_ids":null}', b'[1, 2]',
         b'{"x":' + b"[" * 3000 + b"]" * 3000 + b',"input_ids":[1]}', b'{"input_ids":[1]}\r', b'{"input_ids":[1]} x',
         b'{"input_ids":[1,]}', b'{"input_ids":[01]}', b'{"x":"\t","input_ids":[1]}',
         b'{"x": 1.5e999, "input_ids":[3]}', b'{"x":"\xc3\xa9","input_ids":[4]}',
         b'{"input_ids": [5] }', b' {"input_ids":[6]}']


def _slow(raw: bytes) -> np.ndarray | str:
    [file] = resolve_inputs(["-"])  # only its name is used
    try:
        return _parse_line(file, 1, raw, "input_ids", "int64")
    except InputError as exc:
        return str(exc)


def _check_line(raw: bytes) -> None:
    fast = fast_line_parser("input_ids")(raw)
    slow = _slow(raw)
    if fast is None:
        return
    assert isinstance(slow, np.ndarray), (raw, slow)
    assert fast.dtype == slow.dtype == np.int64 or (slow.size == 0 and fast.size == 0), (raw, fast, slow)
    assert fast.tolist() == slow.tolist(), raw


@pytest.mark.parametrize("raw", FIXED)
def test_fast_line_parser_agrees_on_known_traps(raw: bytes) -> None:
    _check_line(raw)


def test_fast_line_parser_takes_the_common_line() -> None:
    """The fast path is taken at all (a test of the equivalence alone would pass with a parser that never is)."""
    parse = fast_line_parser("tokens")
    assert parse(b'{"id": "a/b.rs", "tokens": [3, 0, 100257]}').tolist() == [3, 0, 100257]
    assert parse(b'{"tokens":[],"text":"caf\xc3\xa9"}').tolist() == []
    assert parse(b'{"input_ids": [1]}') is None  # no field 'tokens': the slow path names the fields


@given(lines())
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_fast_line_parser_agrees_with_json(raw: bytes) -> None:
    _check_line(raw)


def _read_all(path: Path, opts: ReadOptions, fast: bool, monkeypatch: pytest.MonkeyPatch) -> list[Any] | str:
    monkeypatch.setattr(jsonl, "FAST_JSONL", fast)
    [file] = resolve_inputs([str(path)])
    try:
        return [(b.first_row, b.offsets.tolist(), b.tokens.tolist(), str(b.tokens.dtype), b.skipped, b.content_sha256)
                for b in read_file(file, 0, opts)]
    except InputError as exc:
        return str(exc)


@given(st.lists(lines() | st.sampled_from(FIXED + [b"", b"   "]), min_size=1, max_size=8),
       st.sampled_from(["error", "skip"]), st.sampled_from(["uint16", "int32", "int64"]), st.booleans(),
       st.sampled_from([8, 1 << 17]))
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
def test_reader_with_and_without_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               file_lines: list[bytes], policy: str, dtype: str,
                                               compressed: bool, deferred_bytes: int) -> None:
    monkeypatch.setattr(jsonl, "DEFERRED_BYTES", deferred_bytes)  # 8: id texts read in groups of one or two
    path = tmp_path / ("in.jsonl.gz" if compressed else "in.jsonl")
    data = b'{"input_ids": [1, 2]}\n' + b"\n".join(file_lines) + b"\n"
    path.write_bytes(gzip.compress(data) if compressed else data)
    opts = ReadOptions(dtype=dtype, on_bad_record=policy, max_line_bytes=1 << 16)
    assert _read_all(path, opts, True, monkeypatch) == _read_all(path, opts, False, monkeypatch)
