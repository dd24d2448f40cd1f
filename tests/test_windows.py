"""Windowed packing: windows are lossless and fixed by the input, and the output does not depend on workers."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from bestfit_cli import window as window_module
from bestfit_cli.cli import cli
from bestfit_cli.pipeline import PackOptions, pack
from bestfit_cli.read import DocBatch
from bestfit_cli.window import (
    BASE_BYTES,
    DOCUMENT_TOKENS,
    MEMORY_IN_FLIGHT,
    MIN_WINDOW_DOCUMENTS,
    PIECE_BYTES,
    SHARD_COPIES,
    WINDOW_OVERHEAD,
    TokenBuffers,
    parse_size,
    read_ahead_bytes,
    window_bounds,
    window_documents_for,
    window_tokens_for_memory,
    windows,
)

from .conftest import EOS, SAMPLES

CTX = 512


def _batches(lengths: list[int], cuts: list[int]) -> list[DocBatch]:
    """The documents ``lengths`` (token ``i`` of the corpus has id ``i``) handed on in batches split at ``cuts``."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.arange(offsets[-1], dtype=np.int32)
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(lengths))), len(lengths)]
    batches = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        a, b = offsets[lo], offsets[hi]
        batches.append(DocBatch(0, lo, offsets[lo:hi + 1] - a, tokens[a:b]))
    return batches


@given(lengths=st.lists(st.integers(0, 60), min_size=1, max_size=80),
       cuts=st.lists(st.integers(0, 80), max_size=6), other_cuts=st.lists(st.integers(0, 80), max_size=6),
       window_tokens=st.integers(1, 200))
def test_windows_are_lossless_bounded_and_independent_of_batching(lengths: list[int], cuts: list[int],
                                                                   other_cuts: list[int], window_tokens: int) -> None:
    result = list(windows(_batches(lengths, cuts), window_tokens))
    assert [w.index for w in result] == list(range(len(result)))
    assert [w.first_doc for w in result] == [sum(w.n_docs for w in result[:i]) for i in range(len(result))]
    assert np.concatenate([w.lengths for w in result]).tolist() == lengths
    assert np.concatenate([w.tokens for w in result]).tolist() == list(range(sum(lengths)))
    for i, w in enumerate(result):
        assert w.n_docs >= 1
        # At most window_tokens, unless the window is one document longer than that.
        assert w.n_tokens <= window_tokens or (w.n_docs == 1 and w.n_tokens > window_tokens)
        if i + 1 < len(result):  # a window closes only when the next document does not fit
            next_doc = int(result[i + 1].lengths[0])
            assert w.n_tokens + next_doc > window_tokens
    again = list(windows(_batches(lengths, other_cuts), window_tokens))
    assert [(w.first_doc, w.offsets.tolist()) for w in again] == [(w.first_doc, w.offsets.tolist()) for w in result]


@given(lengths=st.lists(st.integers(0, 20), min_size=1, max_size=80),
       cuts=st.lists(st.integers(0, 80), max_size=6), other_cuts=st.lists(st.integers(0, 80), max_size=6),
       window_tokens=st.integers(1, 300), window_documents=st.integers(1, 12))
def test_a_window_closes_on_its_documents_too_a_pure_function_of_the_lengths(
        lengths: list[int], cuts: list[int], other_cuts: list[int], window_tokens: int, window_documents: int) -> None:
    result = list(windows(_batches(lengths, cuts), window_tokens, window_documents))
    assert np.concatenate([w.lengths for w in result]).tolist() == lengths
    for i, w in enumerate(result):
        assert 1 <= w.n_docs <= window_documents
        assert w.n_tokens <= window_tokens or w.n_docs == 1
        if i + 1 < len(result):  # it closed because the next document would break one of the two limits
            assert w.n_docs == window_documents or w.n_tokens + int(result[i + 1].lengths[0]) > window_tokens
    again = list(windows(_batches(lengths, other_cuts), window_tokens, window_documents))
    assert [w.offsets.tolist() for w in again] == [w.offsets.tolist() for w in result]
    expected = [(w.first_doc, w.first_doc + w.n_docs) for w in result]
    assert window_bounds(np.array(lengths), window_tokens, window_documents) == expected  # what stats plans


def test_short_documents_fill_windows_by_count_not_by_tokens() -> None:
    result = list(windows(_batches([1] * 10, [3, 7]), 1000, 4))
    assert [w.n_docs for w in result] == [4, 4, 2]


def test_a_document_longer_than_the_window_is_a_window_of_its_own() -> None:
    result = list(windows(_batches([3, 50, 2, 2], []), 10))
    assert [w.lengths.tolist() for w in result] == [[3], [50], [2, 2]]


def test_a_packed_windows_buffer_is_filled_again_and_a_batchs_memory_never_is() -> None:
    """TokenBuffers: a window given back lends its buffer to a later window (no new memory to fault in), which
    then holds its own tokens; a window of one long document is a view of its batch and is never lent out."""
    lengths = [4, 4, 4, 30, 4, 4, 4, 4]
    buffers = TokenBuffers(keep=1)
    seen = []
    for window in windows(_batches(lengths, [3, 4]), 12, buffers=buffers):
        first = sum(lengths[:window.first_doc])
        assert np.array_equal(window.tokens, np.arange(first, first + window.n_tokens, dtype=np.int32))
        seen.append(window.tokens)
        buffers.give(window.tokens)
    assert [len(t) for t in seen] == [12, 30, 12, 4]
    assert np.shares_memory(seen[0], seen[2])  # the first window's buffer, filled again
    assert not any(np.shares_memory(seen[1], other) for other in (seen[0], seen[2], seen[3]))
    assert len(buffers._spare) == 1  # keep=1: no more held than asked


def _input_documents() -> list[np.ndarray]:
    column = pq.read_table(SAMPLES / "code.parquet", columns=["input_ids"])["input_ids"]
    return [np.asarray(doc, dtype=np.int32) for doc in column.to_pylist()]


def _rebuild(out: Path) -> dict[int, list[tuple[int, list[int]]]]:
    """Every piece in the output, by document: ``doc_index -> [(doc_offset, tokens)]``."""
    manifest = json.loads((out / "manifest.json").read_text())
    pieces: dict[int, list[tuple[int, list[int]]]] = {}
    for shard in manifest["shards"]:
        table = pq.read_table(out / shard["path"]).to_pydict()
        for ids, lengths, docs, starts in zip(table["input_ids"], table["seq_lengths"], table["doc_index"],
                                              table["doc_offset"], strict=True):
            assert len(ids) == CTX
            at = 0
            for length, doc, start in zip(lengths, docs, starts, strict=True):
                pieces.setdefault(doc, []).append((start, ids[at:at + length]))
                at += length
            assert all(t == EOS for t in ids[at:])  # the rest is padding
    return pieces


def _pack(out: Path, window_tokens: int, workers: int) -> Path:
    opts = PackOptions(ctx=CTX, eos_id=EOS, window_tokens=window_tokens, workers=workers, rows_per_shard=64)
    pack([str(SAMPLES / "code.parquet")], str(out), opts)
    return out


# Windows of one sequence (512, smaller than most documents), a few documents (5,000), many (200,000), and the
# whole sample.
@pytest.mark.parametrize("window_tokens", [CTX, 5_000, 200_000, 1 << 27])
def test_windowed_output_is_lossless_and_the_same_for_any_worker_count(tmp_path: Path, window_tokens: int) -> None:
    one = _pack(tmp_path / "w1", window_tokens, workers=1)
    two = _pack(tmp_path / "w2", window_tokens, workers=2)
    three = _pack(tmp_path / "w3", window_tokens, workers=3)
    names = sorted(p.name for p in one.iterdir())
    for other in (two, three):
        assert sorted(p.name for p in other.iterdir()) == names
        for name in names:
            assert (one / name).read_bytes() == (other / name).read_bytes(), name

    documents = _input_documents()
    pieces = _rebuild(one)
    assert sorted(pieces) == list(range(len(documents)))
    for doc, expected in enumerate(documents):
        rebuilt = [t for _, chunk in sorted(pieces[doc]) for t in chunk]
        assert rebuilt == [*expected.tolist(), EOS], f"document {doc}"

    stats = json.loads((one / "stats.json").read_text())
    assert stats["windows_lower_bound"] >= stats["sequences_lower_bound"]
    assert stats["sequences"] >= stats["windows_lower_bound"]
    if window_tokens == 1 << 27:
        assert stats["windows"] == 1
    if window_tokens == CTX:
        assert stats["windows"] >= len(documents) // 2


def test_smaller_windows_never_need_fewer_sequences_than_their_bound(tmp_path: Path) -> None:
    opts = PackOptions(ctx=CTX, eos_id=EOS, window_tokens=50_000, workers=2)
    result = pack([str(SAMPLES / "code.parquet")], str(tmp_path / "out"), opts)
    data = result.report.to_json()
    assert data["windows"] > 10
    assert data["sequences_lower_bound"] <= data["windows_lower_bound"] <= data["sequences"]
    assert 0 <= data["extra_sequences_fraction"] < 0.05


# ------------------------------------------------------------------------------------------------ --memory


def test_sizes_parse_in_decimal_and_binary_units() -> None:
    assert parse_size("4GB") == 4 * 10**9
    assert parse_size("4GiB") == parse_size("4g") == 4 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("123") == 123
    for bad in ("", "GB", "-1GB", "4 parsecs", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_the_memory_window_fills_the_budget_and_no_more() -> None:
    budget = 4 << 30
    window = window_tokens_for_memory(budget, 2048, 8192, 4)
    fixed = MEMORY_IN_FLIGHT * (SHARD_COPIES * 8192 * 2048 * 4 + MIN_WINDOW_DOCUMENTS * PIECE_BYTES)
    token_bytes = WINDOW_OVERHEAD * 4 + PIECE_BYTES * (1 / DOCUMENT_TOKENS + 1 / 2048)
    used = BASE_BYTES + fixed + MEMORY_IN_FLIGHT * token_bytes * window + read_ahead_bytes(window, 4)
    assert budget - 16 < used <= budget
    # At a tiny ctx every few tokens are a piece with its own planner arrays: the window must shrink for them.
    assert window_tokens_for_memory(budget, 8, 8192, 4) < window / 2
    assert window_tokens_for_memory(2 * budget, 2048, 8192, 4) > 2 * window  # the constant is paid once
    assert window_tokens_for_memory(budget, 2048, 8192, 2) > window  # uint16 ids: twice the tokens
    with pytest.raises(ValueError, match="needs at least"):
        window_tokens_for_memory(300 << 20, 8192, 8192, 4)


def test_memory_sets_the_window_and_the_output_ignores_workers(tmp_path: Path) -> None:
    outs = []
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        opts = PackOptions(ctx=CTX, eos_id=EOS, memory=1 << 30, workers=workers, rows_per_shard=64)
        pack([str(SAMPLES / "code.parquet")], str(out), opts)
        outs.append(out)
    manifest = json.loads((outs[0] / "manifest.json").read_text())
    assert manifest["options"]["window_tokens"] == window_tokens_for_memory(1 << 30, CTX, 64, 4)
    assert "memory" not in manifest["options"] and "workers" not in manifest["options"]
    for path in sorted(outs[0].iterdir()):
        assert path.read_bytes() == (outs[1] / path.name).read_bytes(), path.name


def test_memory_and_window_tokens_together_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["pack", str(SAMPLES / "code.parquet"), str(tmp_path / "out"), "--ctx", "512",
                                      "--memory", "4GB", "--window-tokens", "1000"])
    assert result.exit_code == 2
    assert "not both" in result.output
    result = CliRunner().invoke(cli, ["pack", str(SAMPLES / "code.parquet"), str(tmp_path / "out"), "--ctx", "512",
                                      "--memory", "lots"])
    assert result.exit_code == 2
    assert "is not a size" in result.output


def test_a_window_far_larger_than_memory_reserves_only_what_it_fills(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    lengths = [3, 5, 0, 7, 2, 9, 4, 4, 1] * 5
    expected = [(w.first_doc, w.offsets.tolist(), w.tokens.tolist()) for w in windows(_batches(lengths, [4]), 40)]
    monkeypatch.setattr(window_module, "reservable_bytes", lambda: 16)  # the buffer starts small and doubles
    grown = [(w.first_doc, w.offsets.tolist(), w.tokens.tolist()) for w in windows(_batches(lengths, [4]), 40)]
    assert grown == expected
    monkeypatch.undo()
    opts = PackOptions(ctx=CTX, window_tokens=10**15)  # 4 PB of ids if it were reserved up front
    assert pack([str(SAMPLES / "code.parquet")], str(tmp_path / "out"), opts).report.stats.windows == 1


@given(st.lists(st.integers(0, 40), max_size=30), st.integers(1, 50))
def test_span_steps_cover_every_token_once_in_order(lengths: list[int], step: int) -> None:
    spans = np.array(lengths, dtype=np.int64)
    starts = np.cumsum(spans) - spans + 1000 * np.arange(len(spans))  # spans far apart, as in a real gather
    got = [np.repeat(starts[lo:hi], spans[lo:hi]) + within
           for lo, hi, within in window_module.span_steps(spans, step)]
    expected = [np.arange(s, s + n) for s, n in zip(starts.tolist(), lengths, strict=True)]
    flat = np.concatenate(got) if got else np.empty(0, dtype=np.int64)
    assert np.array_equal(flat, np.concatenate(expected) if expected else np.empty(0, dtype=np.int64))
    # Each step stays near the requested size: at most one span beyond it.
    assert all(len(w) <= step + max(lengths) for _, _, w in window_module.span_steps(spans, step))


def test_the_document_limit_follows_the_window_and_is_recorded(tmp_path: Path) -> None:
    assert window_documents_for(1 << 27) == (1 << 27) // DOCUMENT_TOKENS
    assert window_documents_for(1000) == MIN_WINDOW_DOCUMENTS
    out = tmp_path / "out"
    pack([str(SAMPLES / "code.parquet")], str(out), PackOptions(ctx=CTX, memory=1 << 30))
    options = json.loads((out / "manifest.json").read_text())["options"]
    assert options["window_documents"] == window_documents_for(options["window_tokens"])


def test_one_token_documents_are_packed_in_windows_of_the_document_limit(tmp_path: Path) -> None:
    n_docs = 2 * MIN_WINDOW_DOCUMENTS + 5
    offsets = pa.array(np.arange(n_docs + 1, dtype=np.int32))
    source = tmp_path / "short.parquet"
    pq.write_table(pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(np.ones(n_docs, np.int32)))}),
                   source)
    out = tmp_path / "out"
    # A window of 1M tokens would hold every document at once; the document limit cuts it into three.
    pack([str(source)], str(out), PackOptions(ctx=CTX, eos_id=EOS, window_tokens=1 << 20))
    manifest = json.loads((out / "manifest.json").read_text())
    assert [w["documents"] for w in manifest["windows"]] == [MIN_WINDOW_DOCUMENTS, MIN_WINDOW_DOCUMENTS, 5]


def test_a_window_smaller_than_ctx_is_refused(tmp_path: Path) -> None:
    for command in (["pack", str(SAMPLES), str(tmp_path / "out")], ["stats", str(SAMPLES)]):
        result = CliRunner().invoke(cli, [*command, "--ctx", "2048", "--window-tokens", "1000"])
        assert result.exit_code == 2, result.output
        assert "--window-tokens 1,000 is smaller than --ctx 2,048" in result.stderr
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_pack_refuses_a_second_ctx(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["pack", str(SAMPLES), str(tmp_path / "out"), "--ctx", "2048", "--ctx", "4096"])
    assert result.exit_code == 2
    assert "given 2 times (2048, 4096)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_pack_of_one_token_documents_allocates_per_window_not_per_corpus(tmp_path: Path) -> None:
    """numpy arrays alive at once (tracemalloc) stay within the per-piece allowance of the windows in flight,
    where one window of every document would need the corpus' worth."""
    n_docs = 600_000
    source = tmp_path / "short.parquet"
    offsets = pa.array(np.arange(n_docs + 1, dtype=np.int32))
    pq.write_table(pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(np.ones(n_docs, np.int32)))}),
                   source)
    opts = PackOptions(ctx=CTX, eos_id=EOS, window_tokens=1 << 20, workers=2)
    tracemalloc.start()
    try:
        pack([str(source)], str(tmp_path / "out"), opts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    allowance = opts.in_flight * MIN_WINDOW_DOCUMENTS * PIECE_BYTES
    assert peak < 1.25 * allowance < n_docs * PIECE_BYTES / 3
