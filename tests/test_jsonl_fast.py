"""The JSONL fast paths (msgspec, and the id texts read in groups by numpy) against the slow path (json.loads):
the same documents, the same errors.

``fast_line_parser`` may only ever say "I don't know" (None) or give exactly the array ``_parse_line`` gives; the
reader with and without it must hand on the same batches and raise the same one-line errors, for every line.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bestfit_cli.errors import InputError
from bestfit_cli.formats import json_depth, jsonl
from bestfit_cli.formats.json_depth import MAX_DEPTH
from bestfit_cli.formats.jsonl import _parse_line, fast_line_parser, raw_ids_decoder
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


def nested_line(depth: int, shape: str = "lists", ids: bytes = b"[1, 2]") -> bytes:
    """A line nested ``depth`` levels deep, its own object counted: field ``x`` holds ``depth - 1`` containers."""
    opener, closer = (b"[", b"]") if shape == "lists" else (b'{"a": ', b"}")
    return b'{"input_ids": ' + ids + b', "x": ' + opener * (depth - 1) + b"0" + closer * (depth - 1) + b"}"


def at_stack_depth(frames: int, call: Callable[[], Any]) -> Any:
    """``call()`` made ``frames`` Python frames deeper than here: the line parsers must not care."""
    return call() if frames <= 0 else at_stack_depth(frames - 1, call)


DEEPER = f"-:1: JSON nested deeper than {MAX_DEPTH} levels (flatten or remove this line, or pass --on-bad-record skip)"


@pytest.mark.parametrize("shape", ["lists", "objects"])
def test_every_path_takes_max_depth_and_refuses_one_level_more(shape: str) -> None:
    """msgspec and json.loads each stop where the caller's stack leaves them room (about 990 levels from a shallow
    stack); both must stop at MAX_DEPTH instead, the grouped id texts too."""
    fast, raw_ids = fast_line_parser("input_ids"), raw_ids_decoder("input_ids")
    assert raw_ids is not None
    deepest, deeper = nested_line(MAX_DEPTH, shape), nested_line(MAX_DEPTH + 1, shape)
    assert json.loads(deeper)  # Python itself reads it: only bestfit's limit refuses it
    for parse in (fast, _slow):
        assert parse(deepest).tolist() == [1, 2]  # type: ignore[union-attr]
    assert bytes(raw_ids(deepest)) == b"[1, 2]"
    assert fast(deeper) is None and raw_ids(deeper) is None
    assert _slow(deeper) == DEEPER
    big = nested_line(MAX_DEPTH + 1, shape, ids=b"[123456789]")  # ids of 9 digits: the grouped texts leave them
    assert fast(big) is None and _slow(big) == DEEPER


def test_brackets_in_strings_are_no_nesting() -> None:
    fast = fast_line_parser("input_ids")
    text = '"' + '[{\\\"' * 400 + '"'  # brackets, escaped quotes and backslashes inside one string
    raw = f'{{"text": {text}, "input_ids": [3], "y": ["{"[" * 900}"]}}'.encode()
    assert json.loads(raw)["input_ids"] == [3]
    assert fast(raw).tolist() == [3] and _slow(raw).tolist() == [3]  # type: ignore[union-attr]


@pytest.mark.parametrize("frames", [0, 800])
def test_the_limit_does_not_depend_on_the_callers_stack(frames: int) -> None:
    """Called 800 frames deep, json.loads alone gives up about 190 levels down; a line within MAX_DEPTH is still
    read, one deeper still refused, by the same test of the line."""
    deepest, deeper = nested_line(MAX_DEPTH), nested_line(MAX_DEPTH + 1)
    assert at_stack_depth(frames, lambda: _slow(deepest)).tolist() == [1, 2]
    assert at_stack_depth(frames, lambda: _slow(deeper)) == DEEPER
    fast = fast_line_parser("input_ids")
    assert at_stack_depth(frames, lambda: fast(deeper)) is None  # msgspec's room there, or the depth limit
    got = at_stack_depth(frames, lambda: fast(deepest))
    assert got is None or got.tolist() == [1, 2]  # no room there: the slow path above reads it


def test_a_read_from_a_deep_stack_reads_what_a_shallow_one_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b"\n".join([b'{"input_ids": [7]}', nested_line(MAX_DEPTH), nested_line(MAX_DEPTH + 1, "objects"),
                                 b'{"input_ids": [8]}']) + b"\n")
    skip, error = ReadOptions(on_bad_record="skip"), ReadOptions()
    for fast in (True, False):
        shallow = _read_all(path, skip, fast, monkeypatch)
        assert not isinstance(shallow, str) and shallow[0][2] == [7, 1, 2, 8], shallow
        assert "deep.jsonl:3 (JSON nested deeper than" in str(shallow[0][4])
        assert at_stack_depth(800, lambda fast=fast: _read_all(path, skip, fast, monkeypatch)) == shallow
        failed = at_stack_depth(800, lambda fast=fast: _read_all(path, error, fast, monkeypatch))
        assert isinstance(failed, str), failed
        assert failed.startswith(f"{path}:3: JSON nested deeper than {MAX_DEPTH} levels")


def _reference_depth(raw: bytes) -> int:
    """The deepest the line's containers nest, read one byte at a time (valid JSON only)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            in_string, escaped = (True, False) if escaped else (byte != 0x22, byte == 0x5C)
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


@st.composite
def deep_lines(draw: st.DrawFn) -> bytes:
    """Lines near MAX_DEPTH: nested fields, strings full of brackets, quotes and backslashes, a field named twice
    (the decoded object keeps only its last value), whitespace between fields."""
    fields = [b'"input_ids": [1]']
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["nested", "text", "number"]))
        if kind == "nested":
            depth = MAX_DEPTH + draw(st.sampled_from([0, -1, 1, -2, 2]))
            value = nested_line(depth, draw(st.sampled_from(["lists", "objects"])))
        elif kind == "text":
            text = draw(st.text(st.sampled_from('[]{}"\\a\n'), min_size=500, max_size=1500))
            value = json.dumps(text).encode()
        else:
            value = b"7"
        fields.append(b'"' + draw(st.sampled_from([b"x", b"input_ids", b"y"])) + b'":' + value)
    order = draw(st.permutations(fields))
    return b"{" + draw(st.sampled_from([b",", b", ", b" " * 1100 + b","])).join(order) + b"}"


@pytest.mark.parametrize("value_depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1])
@pytest.mark.parametrize("shape", ["plain", "named twice", "spaced", "no msgspec"])
def test_the_depth_test_at_the_limit(value_depth: int, shape: str) -> None:
    value = nested_line(value_depth, "objects")
    text = json.dumps("[{" * 600).encode()  # brackets in a string: no nesting
    raw = {"plain": b'{"text": ' + text + b', "x": ' + value + b"}",
           "named twice": b'{"x": ' + value + b', "text": ' + text + b', "x": 1}',
           "spaced": b'{"text": ' + text + b',' + b" " * 2000 + b'"x": ' + value + b"}",
           "no msgspec": b'{"text": ' + text + b', "x": ' + value + b"}"}[shape]
    assert _reference_depth(raw) == value_depth + 1
    with patch.object(json_depth, "_fields_decoder", (lambda: None) if shape == "no msgspec"
                      else json_depth._fields_decoder):
        assert json_depth.too_deep(raw) == (value_depth + 1 > MAX_DEPTH)


@given(deep_lines(), st.booleans())
@settings(deadline=None)
def test_the_depth_test_is_exact(raw: bytes, with_msgspec: bool) -> None:
    json.loads(raw)  # valid JSON, from any shallow stack
    if not with_msgspec:  # the fields' texts unknown: every string cut out of the whole line
        with patch.object(json_depth, "_fields_decoder", lambda: None):
            assert json_depth.too_deep(raw) == (_reference_depth(raw) > MAX_DEPTH)
    else:
        assert json_depth.too_deep(raw) == (_reference_depth(raw) > MAX_DEPTH)


def test_the_limit_is_documented() -> None:
    usage = (Path(__file__).parents[1] / "docs" / "usage.md").read_text()
    assert f"nested deeper than {MAX_DEPTH} levels" in usage


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
