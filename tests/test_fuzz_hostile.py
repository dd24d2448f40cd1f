"""Fuzzing hostile input: random JSONL lines, mutated Parquet footers and mutated manifests.

Every outcome must be success or a one-line ``BestfitError``: never another exception, never a hang, never memory
without bound. Each example runs in a forked child with an address-space limit and a time limit, so a footer that
would allocate terabytes or a read that would hang fails the test instead of taking the machine down.

CI runs the ``ci`` hypothesis profile (a bounded number of examples); ``make fuzz`` runs the ``fuzz`` profile.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import select
import signal
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bestfit_cli import PackOptions, pack
from bestfit_cli.errors import BestfitError
from bestfit_cli.fs import resolve_inputs
from bestfit_cli.read import ReadOptions, read_file, read_lengths
from bestfit_cli.verify import verify

from . import parquet_footer as footer
from .synthetic import documents, write_parquet

TIME_LIMIT = 60  # seconds an example may take; far more than any honest one needs
MEMORY_HEADROOM = 3 << 30  # bytes of address space a child may add to what it inherits

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to bound memory and time")


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def bounded(action: Callable[[], object]) -> tuple[str, str]:
    """Run ``action`` in a forked child, with bounded memory and time: ``("ok", "")``, ``("error", message)`` for a
    BestfitError, or ``("crash", traceback)`` for anything else, a hang or a child that died."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        try:
            limit = _address_space() + MEMORY_HEADROOM
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            action()
            outcome = ("ok", "")
        except BestfitError as exc:
            outcome = ("error", str(exc))
        except BaseException:  # noqa: BLE001 -- every other exception is what this test looks for
            outcome = ("crash", traceback.format_exc())
        os.write(write_end, pickle.dumps(outcome))
        os._exit(0)
    os.close(write_end)
    data = b""
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], TIME_LIMIT)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                return "crash", f"no result within {TIME_LIMIT} s (a hang?)"
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    if not data:
        return "crash", f"the child died (wait status {status})"
    result: tuple[str, str] = pickle.loads(data)
    return result


def assert_clean(outcome: tuple[str, str]) -> None:
    kind, detail = outcome
    assert kind != "crash", detail
    if kind == "error":
        assert "\n" not in detail and detail.strip(), repr(detail)


# --------------------------------------------------------------------------------------------- JSONL lines

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12)


@st.composite
def jsonl_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["record", "value", "bytes", "deep", "mutated", "long"]))
    if kind == "record":
        return json.dumps({draw(st.sampled_from(["input_ids", "ids", ""])): draw(json_values)}).encode()
    if kind == "value":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=40)).replace(b"\n", b" ")
    if kind == "deep":
        depth = draw(st.integers(1, 3000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return ('{"input_ids": [1], "x": ' + opener * depth + "1" + closer * depth + "}").encode()
    if kind == "long":
        return b'{"input_ids": [' + b"7, " * draw(st.integers(0, 20000)) + b"7]}"
    line = bytearray(json.dumps({"input_ids": draw(st.lists(st.integers(0, 70000), max_size=8))}).encode())
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(line) - 1))
        line[position] = draw(st.integers(0, 255))
    return bytes(line).replace(b"\n", b" ")


@given(st.lists(jsonl_lines(), min_size=1, max_size=6), st.sampled_from(["error", "skip"]),
       st.sampled_from(["uint16", "int32", "int64"]), st.sampled_from([".jsonl", ".jsonl.gz"]))
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_jsonl_lines(lines: list[bytes], policy: str, dtype: str, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        data = b'{"input_ids": [1, 2]}\n' + b"\n".join(lines) + b"\n"
        if suffix.endswith(".gz"):
            import gzip

            data = gzip.compress(data)
        path.write_bytes(data)
        [file] = resolve_inputs([str(path)])
        opts = ReadOptions(dtype=dtype, on_bad_record=policy, max_line_bytes=1 << 16)
        assert_clean(bounded(lambda: list(read_file(file, 0, opts))))
        assert_clean(bounded(lambda: list(read_lengths(file, 0, opts))))


# --------------------------------------------------------------------------------------------- Parquet footers

EDGES = [-1, 0, 1, 2, 3, 7, 8, 100, 2**31 - 1, 2**31, 2**40, 2**62]  # enum ends and size claims
INT_KINDS = (footer.I16, footer.I32, footer.I64)


def _int_fields(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every integer field of a decoded footer."""
    found: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for field_id, (kind, value) in node.items():
            if kind in INT_KINDS:
                found.append((*path, field_id))
            elif kind == footer.STRUCT:
                found += _int_fields(value, (*path, field_id))
            elif kind in (footer.LIST, footer.SET) and value[0] == footer.STRUCT:
                for index, item in enumerate(value[1]):
                    found += _int_fields(item, (*path, field_id, index))
    return found


def _resolve(node: Any, path: tuple[Any, ...]) -> tuple[dict[int, tuple[int, Any]], int]:
    """The struct holding the field at ``path``, and the field's id."""
    for step in range(len(path) - 1):
        key = path[step]
        if isinstance(node, dict):
            node = node[key][1]
        else:
            node = node[1][key]
    return node, path[-1]


@st.composite
def footer_edits(draw: st.DrawFn) -> list[tuple[int, int]]:
    return draw(st.lists(st.tuples(st.integers(0, 10**6), st.one_of(st.sampled_from(EDGES),
                                                                      st.integers(-(2**63), 2**63 - 1))),
                         min_size=1, max_size=3))


@given(footer_edits(), st.sampled_from(["error", "skip"]))
def test_parquet_footers(edits: list[tuple[int, int]], policy: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_parquet(Path(tmp) / "fuzz.parquet", documents([3, 0, 40, 7] * 30), row_group_size=32)
        body, meta = footer.read_footer(path)
        # Every integer field: the claims of sizes and places, and the enums (a schema element's repetition type
        # of -1 aborted the process inside pyarrow until parquet_footer.py checked footers first).
        fields = _int_fields(meta)
        for which, value in edits:
            holder, field_id = _resolve(meta, fields[which % len(fields)])
            kind, _ = holder[field_id]
            bits = {footer.I16: 15, footer.I32: 31, footer.I64: 63}[kind]
            holder[field_id] = (kind, max(-(2**bits), min(value, 2**bits - 1)))
        footer.write_footer(path, body, meta)
        [file] = resolve_inputs([str(path)])
        opts = ReadOptions(on_bad_record=policy)
        assert_clean(bounded(lambda: list(read_file(file, 0, opts))))
        assert_clean(bounded(lambda: list(read_lengths(file, 0, opts))))


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))
@settings(max_examples=max(settings.default.max_examples // 3, 1))  # a third: two forked reads an example
def test_parquet_footer_bytes(flips: list[tuple[int, int]]) -> None:
    """Random bytes of the footer's Thrift encoding replaced, the trailer kept: field types, ids, lengths and
    nesting change too, not only integer values. The read and verify's decoding of a shard: success or one line."""
    from bestfit_cli.formats.parquet import ParquetFormat

    with tempfile.TemporaryDirectory() as tmp:
        path = write_parquet(Path(tmp) / "fuzz.parquet", documents([3, 0, 40, 7] * 30), row_group_size=32)
        data = bytearray(path.read_bytes())
        length = int.from_bytes(data[-8:-4], "little")
        start = len(data) - 8 - length
        for where, value in flips:
            data[start + where % length] = value
        path.write_bytes(bytes(data))
        [file] = resolve_inputs([str(path)])
        assert_clean(bounded(lambda: list(read_file(file, 0, ReadOptions()))))

        def decode() -> None:
            try:
                ParquetFormat().decode(bytes(data), {})
            except (ValueError, pa.ArrowException, OSError) as exc:  # what verify reports as a damaged shard
                raise BestfitError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None

        assert_clean(bounded(decode))


# --------------------------------------------------------------------------------------------- manifests


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every value of a manifest, down to depth 6 (a manifest's own fields are at most 4 deep, so an edit
    that nested a value 1,500 deep is not walked into)."""
    found = [path]
    if len(path) >= 6:
        return found
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*path, index))
    return found


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


hostile_values = st.one_of(json_values, st.sampled_from([-1, 0, 2**31, 2**63, 2**64, 10**30, "", "../x", "/etc",
                                                         "part-99999-9999.parquet", 1e308, []]),
                           st.integers(1, 1500).map(lambda depth: _nested(depth)))


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    folder = tmp_path_factory.mktemp("manifest-fuzz")
    source = write_parquet(folder / "in.parquet", documents([3, 9, 0, 20, 5] * 8))
    out = folder / "out"
    pack([str(source)], str(out), PackOptions(ctx=8, rows_per_shard=4, window_tokens=40, workers=1))
    return source, out, (out / "manifest.json").read_bytes()


@given(st.lists(st.tuples(st.integers(0, 10**6), hostile_values), min_size=1, max_size=3), st.booleans())
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_manifests(packed: tuple[Path, Path, bytes], edits: list[tuple[int, Any]], delete: bool) -> None:
    source, out, original = packed
    manifest = json.loads(original)
    for which, value in edits:
        paths = _paths(manifest)[1:]
        *parents, last = paths[which % len(paths)]
        holder = manifest
        for key in parents:
            holder = holder[key]
        if delete and isinstance(holder, dict):
            del holder[last]
        else:
            holder[last] = value
    try:
        text = json.dumps(manifest)
    except (RecursionError, ValueError):
        return
    (out / "manifest.json").write_text(text)
    try:
        assert_clean(bounded(lambda: verify([str(source)], str(out))))
    finally:
        (out / "manifest.json").write_bytes(original)


def _verify_summary(source: Path, out: Path) -> None:
    """Verify, raising its summary as a BestfitError so a bounded child reports it."""
    result = verify([str(source)], str(out))
    raise BestfitError(result.summary())


@pytest.mark.parametrize(("edit", "expected"), [
    ({"windows.0.tokens": 2**31}, "more than its window_tokens 40 allow"),
    ({"windows.0.dropped_tokens": 2**40}, "more than its window_tokens 40 allow"),
    ({"windows.0.documents": 2**31}, "more than its window_documents"),
    # A lie told consistently (the window limit and the totals edited with it): only the inputs' real size
    # bounds what verify reserves, and the shards still disagree.
    ({"windows.0.tokens": 2**40, "options.window_tokens": 2**41, "tokens": 2**40},
     "stats.json: says tokens = 296, manifest.json 1099511627776"),
    ({"windows.1.index": 2**62}, "window 4611686018427387904 is number 1"),
])
def test_manifest_claims_are_not_allocated(packed: tuple[Path, Path, bytes], edit: dict[str, int],
                                           expected: str) -> None:
    """verify reserves memory by what its inputs can hold, never by what a manifest claims (each of these reserved
    the claim before, and failed with MemoryError under a 3 GiB address-space limit)."""
    source, out, original = packed
    manifest = json.loads(original)
    for dotted, value in edit.items():
        *parents, last = dotted.split(".")
        holder = manifest
        for key in parents:
            holder = holder[int(key)] if isinstance(holder, list) else holder[key]
        holder[last] = value
    (out / "manifest.json").write_text(json.dumps(manifest))
    try:
        kind, message = bounded(lambda: _verify_summary(source, out))
    finally:
        (out / "manifest.json").write_bytes(original)
    assert kind == "error", message
    assert "verification failed" in message and expected in message, message
