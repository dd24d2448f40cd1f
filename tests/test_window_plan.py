"""Windows planned before reading (``window.plan_windows``) are the windows the local engine finds while reading.

The Ray engine plans from Parquet footers and reads the lengths only of row groups a window ends inside; these
tests pin that the plan equals ``windows`` on any lengths and any blocking, that footers count ids exactly, that a
range of rows reads as the same slice of the whole file, and that typed errors survive pickling (a task's error
is raised on the driver).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bestfit_cli.carry import TokenColumn
from bestfit_cli.errors import InputError, OptionError, OutputError
from bestfit_cli.formats.parquet import parquet_lengths, parquet_row_groups
from bestfit_cli.fs import resolve_inputs
from bestfit_cli.read import DocBatch, ReadOptions, read_file, read_rows
from bestfit_cli.window import Block, plan_windows, window_bounds, windows


def _blocks(lengths: list[int], cuts: list[int], known: list[bool]) -> list[Block]:
    edges = sorted({0, len(lengths), *(c % (len(lengths) + 1) for c in cuts)})
    blocks = []
    for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False)):
        tokens = sum(lengths[a:b]) if known[i % len(known)] else None
        blocks.append(Block(0, a, b - a, tokens))
    return blocks


@given(st.lists(st.sampled_from([0, 1, 2, 3, 7, 20, 60]), max_size=60), st.lists(st.integers(0, 60), max_size=8),
       st.lists(st.booleans(), min_size=1, max_size=4), st.integers(1, 50), st.sampled_from([None, 1, 2, 5]))
def test_plan_equals_the_windows_found_while_reading(lengths: list[int], cuts: list[int], known: list[bool],
                                                      window_tokens: int, window_documents: int | None) -> None:
    array = np.array(lengths, dtype=np.int64)
    read: list[tuple[int, int]] = []

    def lengths_of(block: Block) -> np.ndarray:
        read.append((block.first_row, block.rows))
        return array[block.first_row:block.first_row + block.rows]

    blocks = _blocks(lengths, cuts, known)
    plan = plan_windows(blocks, window_tokens, window_documents, lengths_of)
    offsets = np.concatenate([[0], np.cumsum(array)]).astype(np.int64)
    batch = DocBatch(0, 0, offsets, np.zeros(int(offsets[-1]), dtype=np.int32))
    found = list(windows([batch], window_tokens, window_documents))
    assert [(s.first_doc, s.n_docs, s.n_tokens) for s in plan.windows] == [
        (w.first_doc, w.n_docs, w.n_tokens) for w in found]
    assert [(s.first_doc, s.first_doc + s.n_docs) for s in plan.windows] == window_bounds(
        array, window_tokens, window_documents)
    # A block whose total is known is read only where a window ends inside it or at its start.
    starts = {s.first_doc for s in plan.windows}
    for block in blocks:
        if block.tokens is not None and (block.first_row, block.rows) in read:
            assert starts & set(range(block.first_row, block.first_row + block.rows))


def test_an_error_while_planning_comes_after_the_windows_before_it() -> None:
    def lengths_of(block: Block) -> np.ndarray:
        if block.file_index == 1:
            raise InputError("b.parquet", "'input_ids' is null", row=7)
        return np.full(block.rows, 5)

    plan = plan_windows([Block(0, 0, 10, 50), Block(1, 0, 10, None)], 20, None, lengths_of)
    assert isinstance(plan.error, InputError) and plan.error.row == 7
    assert sum(s.n_docs for s in plan.windows) == 10  # the first file's documents are still packed (and checked)


def _parquet(path: Path, docs: list[list[int] | None], row_group_size: int) -> Path:
    pq.write_table(pa.table({"input_ids": pa.array(docs, pa.list_(pa.int32()))}), path,
                   row_group_size=row_group_size)
    return path


def test_footers_count_the_ids_of_each_row_group(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    docs: list[list[int] | None] = [rng.integers(0, 9, int(n)).tolist() for n in rng.integers(0, 30, 250)]
    docs[17] = None  # a null row holds no ids, as an empty one
    file = resolve_inputs([str(_parquet(tmp_path / "a.parquet", docs, 40))])[0]
    groups = parquet_row_groups(file, ReadOptions())
    assert [(first, rows) for first, rows, _ in groups] == [(i, min(40, 250 - i)) for i in range(0, 250, 40)]
    assert [tokens for _, _, tokens in groups] == [sum(len(d or []) for d in docs[i:i + 40])
                                                  for i in range(0, 250, 40)]


def test_a_range_of_rows_reads_as_that_slice_of_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 99, int(n)).tolist() for n in rng.integers(0, 50, 300)]
    parquet = _parquet(tmp_path / "a.parquet", docs, 64)  # type: ignore[arg-type]
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("".join(json.dumps({"input_ids": d}) + "\n" for d in docs))
    opts = ReadOptions()
    for file in resolve_inputs([str(parquet), str(jsonl)]):
        for lo, hi in [(0, 300), (63, 64), (64, 129), (5, 250)]:
            batches = list(read_rows(file, 0, opts, lo, hi))
            assert batches[0].first_row == lo
            assert sum(b.n_docs for b in batches) == hi - lo
            tokens = np.concatenate([b.tokens for b in batches])
            assert tokens.tolist() == [t for d in docs[lo:hi] for t in d]
            lengths = np.concatenate([b.lengths for b in batches])
            assert lengths.tolist() == [len(d) for d in docs[lo:hi]]
        whole = np.concatenate([b.lengths for b in read_file(file, 0, opts)])
        if file.format == "parquet":
            assert parquet_lengths(file, opts, 10, 200).tolist() == whole[10:200].tolist()


def test_a_bad_row_in_a_range_is_named_as_a_whole_read_names_it(tmp_path: Path) -> None:
    docs: list[list[int] | None] = [[1, 2]] * 100
    docs[70] = None
    file = resolve_inputs([str(_parquet(tmp_path / "a.parquet", docs, 32))])[0]
    with pytest.raises(InputError) as whole:
        list(read_file(file, 0, ReadOptions()))
    with pytest.raises(InputError) as part:
        list(read_rows(file, 0, ReadOptions(), 64, 96))
    assert str(part.value) == str(whole.value)
    assert list(read_rows(file, 0, ReadOptions(), 0, 64))  # rows before it read fine
    with pytest.raises(InputError) as lengths:
        parquet_lengths(file, ReadOptions(), 64, 96)
    assert str(lengths.value) == str(whole.value)


@pytest.mark.parametrize("error", [
    InputError("a.jsonl", "not valid JSON (x)", line=3, fix="repair it"),
    InputError("a.parquet", "'input_ids' is null", row=9),
    OutputError("out: writing x failed", fix="free disk space"),
    OptionError("--engine ray needs Ray", fix="pip install it"),
])
def test_typed_errors_survive_pickling(error: Exception) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert again.__dict__ == error.__dict__


@pytest.mark.parametrize("command", [["pack", "OUT", "--ctx", "512"], ["stats", "--ctx", "512"], ["histogram"]])
def test_engine_ray_without_ray_installed_says_how_to_install_it(command: list[str], monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bestfit_cli.cli import cli
    from tests.conftest import SAMPLES

    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` raises ImportError, as when absent
    args = [command[0], str(SAMPLES / "code.parquet"), *[str(tmp_path / a) if a == "OUT" else a for a in command[1:]]]
    result = CliRunner().invoke(cli, [*args, "--engine", "ray", "-q"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert "--engine ray needs Ray" in lines[0] and "pip install 'bestfit-cli[ray]'" in lines[0]
    assert not (tmp_path / "OUT").exists()


def _jsonl_with_blank_lines(path: Path, n_docs: int, seed: int = 5) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 50_000, int(n)).tolist() for n in rng.integers(1, 60, n_docs)]
    lines = []
    for i, doc in enumerate(docs):
        lines.append(json.dumps({"input_ids": doc, "id": i}))
        if i % 7 == 3:
            lines.append("   ")  # blank lines: a record's row is not its line number minus one
    path.write_text("\n".join(lines) + "\n")
    return docs


def test_jsonl_reads_from_a_checkpoint_as_from_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bestfit_cli.formats import jsonl
    from bestfit_cli.formats.base import Checkpoint
    from bestfit_cli.read import input_format

    monkeypatch.setattr(jsonl, "BATCH_TOKENS", 400)  # many batches, so many checkpoints, in a small file
    path = tmp_path / "docs.jsonl"
    docs = _jsonl_with_blank_lines(path, 300)
    (file,) = resolve_inputs([str(path)])
    fmt = input_format(file)
    checkpoints: list[Checkpoint] = []
    whole = list(fmt.read_checkpointed(file, 0, ReadOptions(), checkpoints))
    assert len(checkpoints) >= 10 and [c.row for c in checkpoints] == sorted({c.row for c in checkpoints})
    assert np.array_equal(np.concatenate([b.tokens for b in whole]), np.concatenate([np.array(d) for d in docs]))
    for checkpoint in checkpoints[::3]:
        lo, hi = min(checkpoint.row + 2, len(docs) - 1), min(checkpoint.row + 40, len(docs))
        from_start = list(read_rows(file, 0, ReadOptions(), lo, hi))
        seeking = list(read_rows(file, 0, ReadOptions(), lo, hi, checkpoint))
        assert [b.first_row for b in seeking] == [b.first_row for b in from_start]
        assert np.array_equal(np.concatenate([b.tokens for b in seeking]),
                              np.concatenate([np.array(d) for d in docs[lo:hi]]))

    # Reading from a checkpoint really starts there: the first line, made unreadable (same length), is never
    # parsed; and a bad line after the checkpoint is named by its true line number.
    text = path.read_text().split("\n")
    text[0] = "x" * len(text[0])
    checkpoint = checkpoints[4]
    bad_row = checkpoints[5].row + 1  # in a later batch than the rows read first
    bad_line = [i for i, line in enumerate(text) if line.strip()][bad_row]
    text[bad_line] = text[bad_line].replace('"input_ids": [', '"input_ids": ["seven", ')
    path.write_text("\n".join(text))
    with pytest.raises(InputError) as first:
        list(read_rows(file, 0, ReadOptions(), checkpoint.row, checkpoint.row + 2))
    assert first.value.line == 1
    assert len(list(read_rows(file, 0, ReadOptions(), checkpoint.row, checkpoint.row + 2, checkpoint))) >= 1
    with pytest.raises(InputError) as later:
        list(read_rows(file, 0, ReadOptions(), checkpoint.row, bad_row + 1, checkpoint))
    assert later.value.line == bad_line + 1 and "'input_ids' holds str" in str(later.value)


@pytest.mark.parametrize("suffix", ["gz", "zst", "bz2", "lz4"])
def test_compressed_jsonl_reads_from_a_checkpoint_without_parsing_what_comes_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    from bestfit_cli.formats import jsonl
    from bestfit_cli.formats.base import Checkpoint
    from bestfit_cli.read import input_format

    monkeypatch.setattr(jsonl, "BATCH_TOKENS", 400)
    monkeypatch.setattr(jsonl, "SKIP_BYTES", 1000)  # the skip takes several steps
    plain = tmp_path / "docs.jsonl"
    docs = _jsonl_with_blank_lines(plain, 300, seed=8)
    text = plain.read_text().split("\n")
    text[0] = "x" * len(text[0])  # the first line is no JSON: only a read that parses it fails
    path = tmp_path / f"docs.jsonl.{suffix}"
    codec = {"gz": "gzip", "zst": "zstd", "bz2": "bz2", "lz4": "lz4"}[suffix]
    with pa.CompressedOutputStream(str(path), codec) as out:
        out.write("\n".join(text).encode())
    (file,) = resolve_inputs([str(path)])
    fmt = input_format(file)
    checkpoints: list[Checkpoint] = []
    with pytest.raises(InputError) as whole:
        list(fmt.read_checkpointed(file, 0, ReadOptions(), checkpoints))
    assert whole.value.line == 1
    # The same file with a readable first line records its checkpoints (offsets in the decompressed text).
    text[0] = json.dumps({"input_ids": docs[0], "id": 0}).ljust(len(text[0]))
    good = tmp_path / f"good.jsonl.{suffix}"
    with pa.CompressedOutputStream(str(good), codec) as out:
        out.write("\n".join(text).encode())
    (good_file,) = resolve_inputs([str(good)])
    whole_batches = list(fmt.read_checkpointed(good_file, 0, ReadOptions(), checkpoints))
    assert len(checkpoints) >= 10
    assert sum(b.n_docs for b in whole_batches) == len(docs)
    for checkpoint in checkpoints[2::4]:
        lo, hi = checkpoint.row + 1, min(checkpoint.row + 30, len(docs))
        # Reading the bad file from a checkpoint decompresses the bytes before it without parsing them.
        seeking = list(read_rows(file, 0, ReadOptions(), lo, hi, checkpoint))
        assert [b.first_row for b in seeking][:1] == [lo]
        assert np.array_equal(np.concatenate([b.tokens for b in seeking]),
                              np.concatenate([np.array(d) for d in docs[lo:hi]]))
    # A bad line after the checkpoint is named by its true line number.
    checkpoint = checkpoints[3]
    bad_row = checkpoint.row + 5
    bad_line = [i for i, line in enumerate(text) if line.strip()][bad_row]
    text[bad_line] = text[bad_line].replace('"input_ids": [', '"input_ids": [true, ')
    with pa.CompressedOutputStream(str(path), codec) as out:
        out.write("\n".join(text).encode())
    with pytest.raises(InputError) as later:
        list(read_rows(file, 0, ReadOptions(), checkpoint.row, bad_row + 1, checkpoint))
    assert later.value.line == bad_line + 1 and "'input_ids' holds bool" in str(later.value)
    # A checkpoint beyond the decompressed text (a file replaced by a shorter one) is a one-line error.
    beyond = Checkpoint(checkpoint.row, 10**9, checkpoint.line)
    with pytest.raises(InputError, match="cannot read"):
        list(read_rows(file, 0, ReadOptions(), beyond.row, beyond.row + 1, beyond))


# ------------------------------------------------------------------------------------------------ carried columns


def _carried_docs(n: int, seed: int) -> list[dict[str, object]]:
    """Documents whose ``id`` is null in the first rows and an integer after; ``score`` an integer first, then an
    integral float (cast to int64 by a reader of every row); a per-token ``mask``."""
    rng = np.random.default_rng(seed)
    docs: list[dict[str, object]] = []
    for i, n_ids in enumerate(rng.integers(1, 40, n).tolist()):
        ids = rng.integers(0, 900, n_ids).tolist()
        docs.append({"input_ids": ids, "id": None if i < n // 2 else i, "source": ["web", None, "code"][i % 3],
                     "score": i if i < n // 3 else float(i), "mask": rng.integers(0, 2, n_ids).tolist()})
    return docs


CARRIED = ReadOptions(keep=("id", "source", "score"), keep_token=(TokenColumn("mask", 0),))


def _rows(batches: list[DocBatch]) -> list[tuple[object, ...]]:
    """Per document: its ids, each carried value with its Arrow type, and its token column."""
    out = []
    for batch in batches:
        for i in range(batch.n_docs):
            a, b = int(batch.offsets[i]), int(batch.offsets[i + 1])
            out.append((batch.tokens[a:b].tolist(),
                        *((str(batch.columns[k].type), batch.columns[k][i].as_py()) for k in CARRIED.keep),
                        batch.token_columns["mask"][a:b].tolist()))
    return out


def test_carried_columns_of_a_range_of_rows_are_that_slice_of_the_file(tmp_path: Path) -> None:
    docs = _carried_docs(300, 2)
    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(docs), parquet, row_group_size=64)
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs))
    for file in resolve_inputs([str(parquet), str(jsonl)]):
        whole = _rows(list(read_file(file, 0, CARRIED)))
        for lo, hi in [(0, 300), (63, 64), (64, 129), (5, 250)]:
            assert _rows(list(read_rows(file, 0, CARRIED, lo, hi))) == whole[lo:hi]


def test_planned_document_types_cast_a_range_as_a_reader_of_every_input_casts_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the Ray driver learns (a footer's schema, the lengths pass's first typed batch of each file), handed to
    a reader of some rows only, gives the types and values the local engine's reading of every input gives."""
    from bestfit_cli.carry import DocumentTypes, FirstType, note_first_types
    from bestfit_cli.formats import jsonl as jsonl_format
    from bestfit_cli.ray_engine import file_lengths
    from bestfit_cli.read import InputCounts, input_format, read_inputs

    monkeypatch.setattr(jsonl_format, "BATCH_TOKENS", 300)  # many batches: types are fixed mid-file
    docs = _carried_docs(400, 3)
    null_first = tmp_path / "a.parquet"  # every id null: Arrow's null type, fixed by no batch of it
    pq.write_table(pa.Table.from_pylist([{**d, "id": None, "score": 1} for d in docs[:50]]), null_first,
                   row_group_size=16)
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs))
    files = resolve_inputs([str(null_first), str(jsonl)])
    local = _rows(list(read_inputs(files, CARRIED, InputCounts.for_files(2))))

    planned: dict[str, FirstType] = {}
    note_first_types(planned, 0, files[0].name, 0, input_format(files[0]).document_types(files[0], CARRIED) or {})
    for name, first in file_lengths(files[1], 1, CARRIED, full=True).document_types.items():
        planned.setdefault(name, first)
    assert planned["score"].file_index == 0 and planned["id"].file_index == 1 and planned["id"].row > 0
    assert str(planned["id"].type) == "int64"
    for lo, hi in [(0, 50), (50, 60), (60, 300), (250, 450)]:
        types = DocumentTypes(CARRIED.keep, planned)
        got = []
        for index, file in enumerate(files):
            first = 0 if index == 0 else 50
            a, b = max(lo, first) - first, min(hi, first + (50 if index == 0 else 400)) - first
            if a < b:
                for batch in read_rows(file, index, CARRIED, a, b):
                    got.append(replace(batch, columns=types.conform(file.name, batch.columns,
                                                                    (index, batch.first_row))))
        assert _rows(got) == local[lo:hi]
    assert {row[1][0] for row in local} == {"null", "int64"}  # both kinds of window are in the ranges above


def test_the_lengths_pass_hands_on_the_rows_before_a_bad_record(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A cast that fails in an earlier row is the first error: the driver plans the rows before a bad record, so
    their tasks can meet it, before raising what the lengths pass met."""
    from bestfit_cli.formats import jsonl as jsonl_format
    from bestfit_cli.ray_engine import file_lengths

    monkeypatch.setattr(jsonl_format, "BATCH_TOKENS", 300)
    path = tmp_path / "a.jsonl"
    lines = [json.dumps(d) for d in _carried_docs(200, 4)]
    lines[150] = '{"input_ids": [1, 2,'
    path.write_text("\n".join(lines) + "\n")
    (file,) = resolve_inputs([str(path)])
    result = file_lengths(file, 0, CARRIED, full=True)
    assert isinstance(result.error, InputError) and result.error.line == 151
    assert 100 < result.documents <= 150 and result.content_sha256 is None
    assert result.lengths.tolist() == [len(d["input_ids"]) for d in _carried_docs(200, 4)[:result.documents]]


def test_ray_submits_windows_two_per_cluster_cpu_ahead() -> None:
    from bestfit_cli import ray_engine

    class Cluster:
        def __init__(self, cpus: float | None) -> None:
            self.cpus = cpus

        def cluster_resources(self) -> dict[str, float]:
            return {} if self.cpus is None else {"CPU": self.cpus}

    assert [ray_engine.windows_ahead(Cluster(c)) for c in (None, 1.0, 2.0, 16.0)] == [2, 2, 4, 32]
