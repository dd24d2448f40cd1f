"""A Ray window task reads only its window's rows (``InputFormat.read_rows``), for every input format that can be
entered mid-way: Megatron datasets (by the ``.idx``), Arrow IPC files (by record batch) and streams (record batches
before the window skipped unconverted), token streams and JSONL (from a checkpoint the lengths pass recorded).

Each test reads rows from a file whose earlier part is made unreadable (a bad id, a line that is no JSON): reading
the whole file fails there, and a range after it reads the same documents as the whole file holds, so the range
never read it. The planner's blocks (``InputFormat.blocks``) are checked against the windows found while reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bestfit_cli.errors import InputError
from bestfit_cli.formats import megatron
from bestfit_cli.fs import InputFile, resolve_inputs
from bestfit_cli.read import DocBatch, ReadOptions, input_format, read_file, read_rows
from bestfit_cli.window import Block, plan_windows, windows

from .synthetic import documents, write_arrow, write_megatron, write_stream


def _docs(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return documents(rng.integers(0, 120, n).tolist(), seed=seed, high=30_000)


def _tokens(batches: list[DocBatch]) -> list[int]:
    return [int(t) for b in batches for t in b.tokens]


def _assert_rows(file: InputFile, docs: list[list[int]], lo: int, hi: int, opts: ReadOptions | None = None) -> None:
    batches = list(read_rows(file, 0, opts or ReadOptions(), lo, hi))
    assert [b.first_row for b in batches][:1] == ([lo] if hi > lo else [])
    assert sum(b.n_docs for b in batches) == hi - lo
    assert [int(n) for b in batches for n in b.lengths] == [len(d) for d in docs[lo:hi]]
    assert _tokens(batches) == [t for d in docs[lo:hi] for t in d]


def _assert_plan(file: InputFile, opts: ReadOptions, window_tokens: int) -> list[tuple[int, int]]:
    """The windows planned from the format's blocks equal those found reading the whole file; returns the
    ``(first_row, rows)`` of the blocks whose lengths the planner asked for."""
    fmt = input_format(file)
    blocks = fmt.blocks(file, opts)
    assert blocks is not None
    asked: list[tuple[int, int]] = []

    def lengths_of(block: Block) -> np.ndarray:
        asked.append((block.first_row, block.rows))
        return fmt.block_lengths(file, opts, block.first_row, block.first_row + block.rows)

    plan = plan_windows([Block(0, *b) for b in blocks], window_tokens, None, lengths_of)
    found = list(windows(read_file(file, 0, opts), window_tokens, None))
    assert [(s.first_doc, s.n_docs, s.n_tokens) for s in plan.windows] == [
        (w.first_doc, w.n_docs, w.n_tokens) for w in found]
    assert len(plan.windows) >= 3
    return asked


# ------------------------------------------------------------------------------------------------ Megatron


def test_megatron_blocks_come_from_the_idx_and_plan_the_local_windows(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(megatron, "DOC_STEP", 64)
    docs = _docs(700, seed=1)
    (file,) = resolve_inputs([str(write_megatron(tmp_path / "corpus", docs))])
    blocks = input_format(file).blocks(file, ReadOptions())
    assert blocks == [(a, min(64, 700 - a), sum(len(d) for d in docs[a:a + 64])) for a in range(0, 700, 64)]
    asked = _assert_plan(file, ReadOptions(), window_tokens=9_000)
    assert len(asked) < len(blocks)  # whole blocks are taken by their totals
    assert input_format(file).blocks(file, ReadOptions(on_bad_record="skip")) is None  # only reading tells


def test_megatron_rows_are_read_from_the_idx_not_from_the_first_document(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(megatron, "DOC_STEP", 64)
    docs = _docs(500, seed=2)
    docs[3] = [7, -4, 9]  # a negative id: reading it fails
    (file,) = resolve_inputs([str(write_megatron(tmp_path / "corpus", docs))])
    with pytest.raises(InputError) as whole:
        list(read_file(file, 0, ReadOptions()))
    assert whole.value.row == 3
    for lo, hi in [(4, 5), (4, 500), (63, 64), (64, 200), (130, 131), (499, 500)]:
        _assert_rows(file, docs, lo, hi)
    with pytest.raises(InputError) as part:
        list(read_rows(file, 0, ReadOptions(), 2, 40))
    assert str(part.value) == str(whole.value)
    lengths = input_format(file).block_lengths(file, ReadOptions(), 100, 300)
    assert lengths.tolist() == [len(d) for d in docs[100:300]]


# ------------------------------------------------------------------------------------------------ token streams


@pytest.mark.parametrize("suffix", [".bin", ".npy"])
def test_a_token_stream_reads_from_a_checkpoint_of_its_lengths_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    suffix: str) -> None:
    from bestfit_cli.formats import stream
    from bestfit_cli.formats.base import Checkpoint

    monkeypatch.setattr(stream, "CHUNK_TOKENS", 2000)  # several chunks
    monkeypatch.setattr(stream, "CHECKPOINT_TOKENS", 300)  # many checkpoints in each
    separator = 65_000
    docs = _docs(400, seed=3)
    docs[10] = []  # a document that is the separator alone (noted)
    path = write_stream(tmp_path / f"tokens{suffix}", docs, separator)
    flat = np.fromfile(path, dtype=np.uint16) if suffix == ".bin" else np.load(path)
    with path.open("r+b") as f:  # tokens after the last separator: a last document without one (noted)
        f.seek(0, 2)
        np.array([5, 6, 7], dtype=np.uint16).tofile(f)
    if suffix == ".npy":
        np.save(path, np.concatenate([flat, [5, 6, 7]]).astype(np.uint16))
    docs = [[*d, separator] for d in docs] + [[5, 6, 7]]
    opts = ReadOptions(split_at=separator, stream_dtype="uint16")
    (file,) = resolve_inputs([str(path)])
    fmt = input_format(file)
    checkpoints: list[Checkpoint] = []
    whole = list(fmt.read_checkpointed(file, 0, opts, checkpoints))
    assert _tokens(whole) == [t for d in docs for t in d]
    notes = [n for b in whole for n in b.notes]
    assert len(notes) == 2 and notes == [n for b in read_file(file, 0, opts) for n in b.notes]
    assert len(checkpoints) >= 20 and [c.row for c in checkpoints] == sorted({c.row for c in checkpoints})
    for checkpoint in checkpoints[1::5]:
        lo, hi = checkpoint.row + 1, min(checkpoint.row + 60, len(docs))
        batches = list(read_rows(file, 0, opts, lo, hi, checkpoint))
        assert [b.first_row for b in batches][:1] == [lo] and sum(b.n_docs for b in batches) == hi - lo
        assert _tokens(batches) == [t for d in docs[lo:hi] for t in d]
        assert not [n for b in batches for n in b.notes]
    last = checkpoints[-1]  # the last document, without a separator, read from the last checkpoint
    assert _tokens(list(read_rows(file, 0, opts, len(docs) - 1, len(docs), last))) == [5, 6, 7]

    # From a checkpoint, nothing before it is read: an id made too large for --dtype there fails a whole read,
    # not the read from the checkpoint; one after it is named by its row in the whole stream.
    checkpoint = checkpoints[6]
    ids = np.load(path) if suffix == ".npy" else np.fromfile(path, dtype=np.uint16)
    wide = ids.astype(np.uint32)
    starts = np.cumsum([0, *[len(d) for d in docs]])
    bad_row = int(np.searchsorted(starts, checkpoint.offset + 2 * 2000))  # in a later chunk than the first read
    wide[1] = 70_000
    wide[sum(len(d) for d in docs[:bad_row]) + 1] = 80_000
    path.unlink()
    if suffix == ".npy":
        np.save(path, wide)
    else:
        wide.tofile(path)
    opts = ReadOptions(split_at=separator, stream_dtype="uint32", dtype="uint16")
    (file,) = resolve_inputs([str(path)])
    with pytest.raises(InputError) as first:
        list(read_file(file, 0, opts))
    assert first.value.row == 0
    assert len(list(read_rows(file, 0, opts, checkpoint.row, checkpoint.row + 3, checkpoint))) >= 1
    with pytest.raises(InputError) as later:
        list(read_rows(file, 0, opts, checkpoint.row, bad_row + 1, checkpoint))
    assert later.value.row == bad_row and "80000" in str(later.value)


# ------------------------------------------------------------------------------------------------ Arrow


@pytest.mark.parametrize("kind", ["file", "stream", "feather"])
def test_arrow_blocks_are_record_batches_and_rows_skip_the_batches_before_them(tmp_path: Path, kind: str) -> None:
    import pyarrow as pa
    import pyarrow.feather as feather

    docs: list[list[int] | None] = list(_docs(600, seed=4))
    docs[5] = None  # a null row in the first record batch: reading it fails
    path = tmp_path / f"docs.{'feather' if kind == 'feather' else 'arrow'}"
    if kind == "feather":
        feather.write_feather(pa.table({"input_ids": pa.array(docs, pa.list_(pa.int32()))}), path, chunksize=50)
    else:
        write_arrow(path, docs, stream=kind == "stream", batch_rows=50)  # type: ignore[arg-type]
    (file,) = resolve_inputs([str(path)])
    fmt = input_format(file)
    with pytest.raises(InputError) as whole:
        list(read_file(file, 0, ReadOptions()))
    assert whole.value.row == 5
    blocks = fmt.blocks(file, ReadOptions())
    assert blocks == [(a, 50, sum(len(d or []) for d in docs[a:a + 50])) for a in range(0, 600, 50)]
    good = [d or [] for d in docs]
    for lo, hi in [(50, 51), (50, 600), (99, 101), (130, 420), (599, 600)]:
        _assert_rows(file, good, lo, hi)
    with pytest.raises(InputError) as part:
        list(read_rows(file, 0, ReadOptions(), 2, 60))
    assert str(part.value) == str(whole.value)
    assert fmt.block_lengths(file, ReadOptions(), 60, 240).tolist() == [len(d) for d in good[60:240]]
    assert fmt.blocks(file, ReadOptions(on_bad_record="skip")) is None  # only reading tells

    docs[5] = [1, 2, 3]
    if kind == "feather":
        feather.write_feather(pa.table({"input_ids": pa.array(docs, pa.list_(pa.int32()))}), path, chunksize=50)
    else:
        write_arrow(path, docs, stream=kind == "stream", batch_rows=50)  # type: ignore[arg-type]
    (file,) = resolve_inputs([str(path)])
    _assert_plan(file, ReadOptions(), window_tokens=7_000)


def test_an_arrow_file_read_from_a_checkpoint_starts_at_its_record_batch(tmp_path: Path) -> None:
    from bestfit_cli.formats.base import Checkpoint

    docs = _docs(400, seed=5)
    (file,) = resolve_inputs([str(write_arrow(tmp_path / "docs.arrow", docs, stream=False, batch_rows=40))])
    fmt = input_format(file)
    checkpoints: list[Checkpoint] = []
    whole = list(fmt.read_checkpointed(file, 0, ReadOptions(), checkpoints))
    assert _tokens(whole) == [t for d in docs for t in d]
    assert [(c.row, c.offset) for c in checkpoints] == [(40 * i, i) for i in range(10)]
    # A checkpoint names the record batch to start from: one that says batch 3 starts at row 100 (not 120) makes
    # the rows read shift by 20, which a read that counted rows from the first batch would not do.
    shifted = list(read_rows(file, 0, ReadOptions(), 110, 130, Checkpoint(100, 3, 0)))
    assert _tokens(shifted) == [t for d in docs[130:150] for t in d]
    assert _tokens(list(read_rows(file, 0, ReadOptions(), 130, 150, checkpoints[3]))) == [
        t for d in docs[130:150] for t in d]


def test_arrow_blocks_of_fixed_size_lists_count_rows_times_the_size(tmp_path: Path) -> None:
    import pyarrow as pa

    rows = np.arange(4 * 90, dtype=np.int32).reshape(90, 4).tolist()
    path = tmp_path / "fixed.arrow"
    table = pa.table({"input_ids": pa.array(rows, pa.list_(pa.int32(), 4))})
    with pa.ipc.new_file(str(path), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=25):
            writer.write_batch(batch)
    (file,) = resolve_inputs([str(path)])
    assert input_format(file).blocks(file, ReadOptions()) == [(0, 25, 100), (25, 25, 100), (50, 25, 100),
                                                               (75, 15, 60)]
    _assert_rows(file, rows, 30, 80)


@pytest.mark.parametrize("stream", [False, True])
def test_arrow_rows_carry_their_own_kept_values(tmp_path: Path, stream: bool) -> None:
    import pyarrow as pa

    docs = _docs(300, seed=6)
    table = pa.table({"input_ids": pa.array(docs, pa.list_(pa.int32())), "id": [f"doc-{i}" for i in range(300)]})
    path = tmp_path / "kept.arrow"
    with (pa.ipc.new_stream if stream else pa.ipc.new_file)(str(path), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=64):
            writer.write_batch(batch)
    (file,) = resolve_inputs([str(path)])
    opts = ReadOptions(keep=("id",))
    batches = list(read_rows(file, 0, opts, 70, 200))
    assert [v for b in batches for v in b.columns["id"].to_pylist()] == [f"doc-{i}" for i in range(70, 200)]
    assert _tokens(batches) == [t for d in docs[70:200] for t in d]


def test_arrow_on_an_object_store_is_planned_by_the_lengths_pass_and_entered_by_batch(s3: Any,
                                                                                    tmp_path: Path) -> None:
    from bestfit_cli.formats.base import Checkpoint

    docs = _docs(300, seed=7)
    write_arrow(tmp_path / "file.arrow", docs, stream=False, batch_rows=50)
    write_arrow(tmp_path / "stream.arrow", docs, stream=True, batch_rows=50)
    s3.upload(tmp_path / "file.arrow", f"s3://{s3.bucket}/file.arrow")
    s3.upload(tmp_path / "stream.arrow", f"s3://{s3.bucket}/stream.arrow")
    on_file, on_stream = resolve_inputs([f"s3://{s3.bucket}/file.arrow", f"s3://{s3.bucket}/stream.arrow"])
    for file in (on_file, on_stream):
        fmt = input_format(file)
        assert fmt.blocks(file, ReadOptions()) is None  # the driver would read every batch: a task does it
        checkpoints: list[Checkpoint] = []
        assert _tokens(list(fmt.read_checkpointed(file, 0, ReadOptions(), checkpoints))) == [
            t for d in docs for t in d]
        # An IPC file's checkpoints name record batches; a stream has none (read from its start, unconverted).
        assert [(c.row, c.offset) for c in checkpoints] == ([(50 * i, i) for i in range(6)]
                                                            if file is on_file else [])
        _assert_rows(file, docs, 120, 260)
    shifted = list(read_rows(on_file, 0, ReadOptions(), 110, 130, Checkpoint(100, 3, 0)))
    assert _tokens(shifted) == [t for d in docs[160:180] for t in d]  # started at batch 3, not at row 100
