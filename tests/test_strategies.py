"""Strategies against plain per-document implementations, on random inputs (hypothesis) and the paper's example."""

from __future__ import annotations

import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bestfit_cli.histogram import LengthHistogram
from bestfit_cli.read import DocBatch
from bestfit_cli.strategies import (
    bestfit,
    bucket_count,
    bucket_of,
    concat,
    concat_counts,
    concat_expected,
    ffd,
    ffd_sequences,
    nextfit,
    truncate,
)
from bestfit_cli.window import window_bounds, windows

from .reference import reference_documents, reference_pieces

TOY = [14, 7, 5, 2, 3]
POLICIES = ("split", "truncate", "drop")

# ------------------------------------------------------------------------------------------------ references


def ref_concat(lengths: list[int], ctx: int) -> tuple[int, list[int]]:
    """Sequences and cuts per document, filling sequences token run by token run."""
    free = sequences = 0
    cuts = []
    for remaining in lengths:
        n = 0
        while remaining:
            if free == 0:
                sequences += 1
                free = ctx
            take = min(free, remaining)
            remaining -= take
            free -= take
            n += remaining > 0
        cuts.append(n)
    return sequences, cuts


def ref_ffd(pieces: list[int], ctx: int) -> int:
    """Textbook first fit decreasing: each piece, longest first, into the first sequence with room."""
    free: list[int] = []
    for size in sorted(pieces, reverse=True):
        for i, room in enumerate(free):
            if room >= size:
                free[i] -= size
                break
        else:
            free.append(ctx - size)
    return len(free)


def ref_nextfit(pieces: list[int], ctx: int) -> int:
    free = sequences = 0
    for size in pieces:
        if size > free:
            sequences += 1
            free = ctx
        free -= size
    return sequences


def ref_policy(lengths: list[int], ctx: int, long_docs: str) -> dict[str, int]:
    """Per-document outcome of cutting into pieces: truncated, cuts, clipped, dropped."""
    out = {"truncated": 0, "truncations": 0, "clipped": 0, "dropped": 0, "dropped_tokens": 0}
    for n in lengths:
        if n <= ctx:
            continue
        if long_docs == "split":
            out["truncated"] += 1
            out["truncations"] += (n + ctx - 1) // ctx - 1
        elif long_docs == "truncate":
            out["clipped"] += 1
            out["dropped_tokens"] += n - ctx
        else:
            out["dropped"] += 1
            out["dropped_tokens"] += n
    return out


doc_lengths = st.lists(st.integers(1, 60), min_size=1, max_size=80)
ctxs = st.integers(1, 24)
policies = st.sampled_from(POLICIES)

# ------------------------------------------------------------------------------------------------ examples


def test_toy_example_concat_truncates_three_bestfit_one() -> None:
    lengths = np.array(TOY)
    hist = LengthHistogram.from_lengths(lengths)
    c, b = concat(lengths, 8), bestfit([hist], 8)
    assert (c.sequences, c.truncated_documents, c.truncations) == (4, 3, 3)
    assert (b.sequences, b.truncated_documents, b.truncations) == (4, 1, 1)
    assert ffd(hist, 8).sequences == 4
    assert nextfit(lengths, 8).sequences == 5  # 8 | 6 | 7 | 5+2 | 3
    t = truncate(hist, 8)
    assert (t.sequences, t.clipped_documents, t.dropped_tokens, t.truncations) == (5, 1, 6, 0)


def test_concat_counts_carries_the_stream_position_across_calls() -> None:
    whole = concat_counts(np.array(TOY), 8)
    first = concat_counts(np.array(TOY[:2]), 8)
    rest = concat_counts(np.array(TOY[2:]), 8, first.end, first)
    assert whole == rest
    assert whole.sequences(8) == 4


def test_buckets_are_powers_of_two() -> None:
    assert bucket_of(np.array([1, 2, 3, 4, 7, 8, 2**40, 2**40 + 1])).tolist() == [0, 1, 1, 2, 2, 3, 40, 40]
    assert bucket_count(5, 8) == 4  # 1, 2-3, 4-7, 8-15
    assert bucket_count(300, 8) == 9


# ------------------------------------------------------------------------------------------------ properties


@given(doc_lengths, ctxs, policies)
def test_concat_matches_a_stream_filled_document_by_document(lengths: list[int], ctx: int, long_docs: str) -> None:
    kept = {"split": lengths, "truncate": [min(n, ctx) for n in lengths],
            "drop": [n for n in lengths if n <= ctx]}[long_docs]
    sequences, cuts = ref_concat(kept, ctx)
    result = concat(np.array(lengths), ctx, long_docs)  # type: ignore[arg-type]
    assert result.sequences == sequences
    assert result.truncations == sum(cuts)
    assert result.truncated_documents == sum(c > 0 for c in cuts)
    assert result.tokens == sum(kept)
    assert result.padding_tokens == sequences * ctx - sum(kept)
    policy = ref_policy(lengths, ctx, long_docs)
    assert (result.clipped_documents, result.dropped_documents) == (policy["clipped"], policy["dropped"])


@given(doc_lengths, ctxs, policies)
def test_bestfit_ffd_nextfit_truncate_match_plain_loops(lengths: list[int], ctx: int, long_docs: str) -> None:
    pieces = [n for _, _, n in reference_pieces(lengths, ctx, long_docs)]
    hist = LengthHistogram.from_lengths(np.array(lengths))
    policy = ref_policy(lengths, ctx, long_docs)
    expected = {
        "bestfit": reference_documents(lengths, ctx, long_docs).sequences,
        "ffd": ref_ffd(pieces, ctx),
        "nextfit": ref_nextfit(pieces, ctx),
    }
    results = {
        "bestfit": bestfit([hist], ctx, long_docs),  # type: ignore[arg-type]
        "ffd": ffd(hist, ctx, long_docs),  # type: ignore[arg-type]
        "nextfit": nextfit(np.array(lengths), ctx, long_docs),  # type: ignore[arg-type]
    }
    for name, result in results.items():
        assert result.sequences == expected[name], name
        assert result.tokens == sum(pieces)
        assert result.sequences_lower_bound == -(-sum(pieces) // ctx)
        assert result.sequences >= result.sequences_lower_bound
        assert (result.truncated_documents, result.truncations) == (policy["truncated"], policy["truncations"])
        assert (result.clipped_documents, result.dropped_documents, result.dropped_tokens) == (
            policy["clipped"], policy["dropped"], policy["dropped_tokens"])
    t = truncate(hist, ctx)
    assert t.sequences == len(lengths)
    assert t.tokens == sum(min(n, ctx) for n in lengths)
    assert t.clipped_documents == sum(n > ctx for n in lengths)
    assert t.dropped_tokens == sum(max(0, n - ctx) for n in lengths)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=300), st.integers(1, 40))
def test_ffd_by_runs_equals_piece_by_piece(pieces: list[int], ctx: int) -> None:
    pieces = [min(p, ctx) for p in pieces]
    assert ffd_sequences(np.bincount(pieces, minlength=ctx + 1), ctx) == ref_ffd(pieces, ctx)


@given(doc_lengths, ctxs, policies)
def test_nextfit_of_a_histogram_is_next_fit_decreasing_per_document(lengths: list[int], ctx: int,
                                                                     long_docs: str) -> None:
    longest_first = sorted(lengths, reverse=True)
    pieces = [n for _, _, n in reference_pieces(longest_first, ctx, long_docs)]
    result = nextfit(LengthHistogram.from_lengths(np.array(lengths)), ctx, long_docs)  # type: ignore[arg-type]
    assert result.sequences == ref_nextfit(pieces, ctx)


def test_ffd_and_nextfit_of_a_huge_histogram_cost_its_distinct_lengths_not_its_documents() -> None:
    """A trillion documents of 200,000 distinct lengths at ctx 16: a per-document or per-sequence array would need
    terabytes; by runs, a few arrays of about ctx or distinct-length entries."""
    lengths = np.arange(1, 200_001, dtype=np.int64)
    hist = LengthHistogram(lengths, np.full(len(lengths), 5_000_000, dtype=np.int64))
    tracemalloc.start()
    try:
        first_fit, next_fit = ffd(hist, 16), nextfit(hist, 16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
    assert first_fit.sequences == first_fit.sequences_lower_bound  # pieces of 16 and their complements pair up
    assert next_fit.sequences >= first_fit.sequences


@given(doc_lengths, ctxs)
def test_buckets_add_up_per_document(lengths: list[int], ctx: int) -> None:
    _, cuts = ref_concat(lengths, ctx)
    result = concat(np.array(lengths), ctx)
    n_buckets = bucket_count(max(lengths), ctx)
    totals = result.per_document.buckets(n_buckets)
    for k in range(n_buckets):
        members = [i for i, n in enumerate(lengths) if 2**k <= n < 2 ** (k + 1)]
        assert totals["documents"][k] == len(members)
        assert totals["truncations"][k] == sum(cuts[i] for i in members)
        assert totals["truncated_documents"][k] == sum(cuts[i] > 0 for i in members)


@given(st.lists(st.integers(1, 200), min_size=1, max_size=50), st.integers(1, 64))
def test_concat_expectation_is_the_average_over_start_offsets(lengths: list[int], ctx: int) -> None:
    """For each document, averaging its cuts over every start offset 0..ctx-1 gives the analytic expectation."""
    result = concat_expected(LengthHistogram.from_lengths(np.array(lengths)), ctx)
    cuts = sum(Fraction(sum((u + n - 1) // ctx for u in range(ctx)), ctx) for n in lengths)
    cut_at_all = sum(Fraction(sum((u + n - 1) // ctx > 0 for u in range(ctx)), ctx) for n in lengths)
    assert result.truncations == pytest.approx(float(cuts))
    assert result.truncated_documents == pytest.approx(float(cut_at_all))
    assert not result.exact and result.method
    assert result.sequences == -(-sum(lengths) // ctx)


def test_concat_expectation_is_close_to_shuffled_orders() -> None:
    rng = np.random.default_rng(1)
    lengths = np.minimum(rng.lognormal(6, 1.5, 5000).astype(np.int64) + 1, 50_000)
    expected = concat_expected(LengthHistogram.from_lengths(lengths), 2048)
    shuffled = [concat(rng.permutation(lengths), 2048) for _ in range(10)]
    mean_truncated = np.mean([s.truncated_documents for s in shuffled])
    assert expected.truncated_documents == pytest.approx(mean_truncated, rel=0.03)
    assert expected.truncations == pytest.approx(np.mean([s.truncations for s in shuffled]), rel=0.01)


def test_nextfit_from_a_histogram_is_flagged_as_longest_first() -> None:
    result = nextfit(LengthHistogram.from_lengths(np.array(TOY)), 8)
    assert not result.exact and "longest first" in (result.method or "")
    assert result.truncations == 1


@given(st.lists(st.integers(0, 30), min_size=1, max_size=60), st.integers(1, 50))
def test_window_bounds_match_pack_windows(lengths: list[int], window_tokens: int) -> None:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    batch = DocBatch(0, 0, offsets, np.zeros(int(offsets[-1]), dtype=np.int32))
    expected = [(w.first_doc, w.first_doc + w.n_docs) for w in windows([batch], window_tokens)]
    assert window_bounds(np.array(lengths), window_tokens) == expected
