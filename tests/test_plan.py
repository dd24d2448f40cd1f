"""Property tests: the capacity planner makes the same decisions as textbook best-fit decreasing."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bestfit_cli.histogram import LONG_DOC_POLICIES, LengthHistogram, piece_counts
from bestfit_cli.plan import CapacityPlan, Placement, assign_slots, plan_capacities, plan_pieces
from bestfit_cli.window import make_pieces

from .reference import reference_bfd, reference_documents, reference_pieces

CTX = st.one_of(st.sampled_from([1, 2, 3, 8, 64, 2048, 8192]), st.integers(1, 300))


@st.composite
def corpus(draw: st.DrawFn, max_docs: int = 60) -> tuple[int, list[int]]:
    """A context length and document lengths, with the edge cases 0, 1, ctx - 1, ctx, ctx + 1 and far longer."""
    ctx = draw(CTX)
    edge = st.sampled_from(sorted({0, 1, max(ctx - 1, 1), ctx, ctx + 1, 2 * ctx, 3 * ctx + 1}))
    far = st.integers(ctx, min(60 * ctx, 200_000))
    ordinary = st.integers(1, ctx)
    lengths = draw(st.lists(st.one_of(ordinary, ordinary, edge, far), max_size=max_docs))
    return ctx, lengths


@st.composite
def pieces(draw: st.DrawFn) -> tuple[int, list[int]]:
    """A context length and piece lengths in 1..ctx, often with many repeats (what real histograms look like)."""
    ctx = draw(CTX)
    palette = draw(st.lists(st.integers(1, ctx), min_size=1, max_size=8))
    lengths = draw(st.lists(st.one_of(st.sampled_from(palette), st.integers(1, ctx), st.just(ctx), st.just(1)),
                            max_size=400))
    return ctx, lengths


def free_space_multiset(values: object) -> Counter[int]:
    return Counter(int(v) for v in np.asarray(values).ravel())


def check_placement(placement: Placement, lengths: np.ndarray, ctx: int) -> np.ndarray:
    """Pieces lie inside their sequence and never overlap; no sequence is empty. Returns tokens per sequence."""
    bins, offsets = placement.bin.astype(np.int64), placement.offset.astype(np.int64)
    assert len(bins) == len(offsets) == len(lengths)
    if len(lengths) == 0:
        assert placement.n_bins == 0
        return np.zeros(0, dtype=np.int64)
    assert bins.min() >= 0 and bins.max() < placement.n_bins
    assert offsets.min() >= 0
    assert np.all(offsets + lengths <= ctx)
    order = np.lexsort((offsets, bins))
    same_bin = bins[order][1:] == bins[order][:-1]
    ends = (offsets + lengths)[order][:-1]
    assert np.all(ends[same_bin] <= offsets[order][1:][same_bin]), "pieces overlap"
    fill = np.bincount(bins, weights=lengths, minlength=placement.n_bins).astype(np.int64)
    assert np.all(fill > 0), "an empty sequence was planned"
    return fill


@given(corpus(), st.sampled_from(LONG_DOC_POLICIES))
def test_plan_equals_reference_bfd(case: tuple[int, list[int]], long_docs: str) -> None:
    ctx, doc_lengths = case
    counts = piece_counts(LengthHistogram.from_lengths(np.array(doc_lengths, dtype=np.int64)), ctx,
                          long_docs)  # type: ignore[arg-type]
    plan = plan_capacities(counts, ctx)
    reference = reference_documents(doc_lengths, ctx, long_docs)
    assert plan.sequences == reference.sequences
    assert free_space_multiset(plan.free_space()) == free_space_multiset(reference.free_space())


@given(pieces())
def test_placement_is_valid_and_matches_plan(case: tuple[int, list[int]]) -> None:
    ctx, lengths = case
    piece_lengths = np.array(lengths, dtype=np.int64)
    plan = plan_capacities(np.bincount(piece_lengths, minlength=ctx + 1), ctx)
    placement = assign_slots(plan, piece_lengths)
    fill = check_placement(placement, piece_lengths, ctx)
    assert placement.n_bins == plan.n_bins
    np.testing.assert_array_equal(fill, plan.fill())
    np.testing.assert_array_equal(plan.free_space(), ctx - fill)
    reference = reference_bfd(lengths, ctx)
    assert placement.n_bins == reference.sequences
    assert free_space_multiset(ctx - fill) == free_space_multiset(reference.free_space())


@given(pieces())
def test_sequences_open_longest_first(case: tuple[int, list[int]]) -> None:
    """BFD opens sequences in order of the piece that opens them: the piece at offset 0 never grows."""
    ctx, lengths = case
    piece_lengths = np.array(lengths, dtype=np.int64)
    placement = plan_pieces(piece_lengths, ctx)
    first = placement.offset == 0
    opener = np.empty(placement.n_bins, dtype=np.int64)
    opener[placement.bin[first]] = piece_lengths[first]
    assert np.count_nonzero(first) == placement.n_bins
    assert np.all(np.diff(opener) <= 0)


@given(corpus(), st.sampled_from(LONG_DOC_POLICIES), st.booleans())
def test_make_pieces_matches_reference_cutting(case: tuple[int, list[int]], long_docs: str, eos: bool) -> None:
    ctx, doc_lengths = case
    raw = np.array(doc_lengths, dtype=np.int64)
    packed = [n + 1 if eos and n else n for n in doc_lengths]
    got = make_pieces(raw, ctx, eos, long_docs)  # type: ignore[arg-type]
    expected = reference_pieces(packed, ctx, long_docs)
    # The same pieces (their order is the planner's business: first pieces, then split documents' further ones).
    assert sorted(zip(got.doc.tolist(), got.start.tolist(), got.length.tolist(), strict=True)) == sorted(expected)
    long_ = [n for n in packed if n > ctx]
    per_doc = Counter(doc for doc, _, _ in expected)
    assert got.tokens == sum(n for _, _, n in expected)
    assert got.documents == len(per_doc)
    assert got.empty_documents == packed.count(0)
    assert got.truncated_documents == sum(1 for n in per_doc.values() if n > 1)
    assert got.truncations == sum(n - 1 for n in per_doc.values())
    if long_docs == "drop":
        assert (got.dropped_documents, got.dropped_tokens) == (len(long_), sum(long_))
    elif long_docs == "truncate":
        assert (got.clipped_documents, got.dropped_tokens) == (len(long_), sum(n - ctx for n in long_))
    else:
        assert (got.dropped_documents, got.dropped_tokens, got.clipped_documents) == (0, 0, 0)
    # Every token kept exactly once: what is placed plus what the policy removed is the whole input.
    assert got.tokens + got.dropped_tokens == sum(packed)


@given(corpus(), st.sampled_from(LONG_DOC_POLICIES))
def test_piece_counts_match_reference_cutting(case: tuple[int, list[int]], long_docs: str) -> None:
    ctx, doc_lengths = case
    counts = piece_counts(LengthHistogram.from_lengths(np.array(doc_lengths, dtype=np.int64)), ctx,
                          long_docs)  # type: ignore[arg-type]
    expected = np.zeros(ctx + 1, dtype=np.int64)
    for _, _, n in reference_pieces(doc_lengths, ctx, long_docs):
        expected[n] += 1
    np.testing.assert_array_equal(counts, expected)


def test_piece_counts_by_policy() -> None:
    hist = LengthHistogram.from_lengths(np.array([0, 3, 8, 9, 20, 20]))
    assert piece_counts(hist, 8, "split").tolist() == [0, 1, 0, 1, 2, 0, 0, 0, 6]
    assert piece_counts(hist, 8, "truncate").tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 4]
    assert piece_counts(hist, 8, "drop").tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 1]


# ------------------------------------------------------------------------------------------------ histogram


@given(st.lists(st.integers(0, 10_000), max_size=80), st.lists(st.integers(0, 10_000), max_size=80))
def test_histogram_adds_up(a: list[int], b: list[int]) -> None:
    ha, hb = LengthHistogram.from_lengths(np.array(a, dtype=np.int64)), LengthHistogram.from_lengths(
        np.array(b, dtype=np.int64))
    both = LengthHistogram.from_lengths(np.array(a + b, dtype=np.int64))
    assert ha + hb == both
    assert hb + ha == both
    assert ha + LengthHistogram() == ha
    assert both.documents == len(a) + len(b)
    assert both.tokens == sum(a) + sum(b)
    assert both.expand().tolist() == sorted(a + b)


@given(st.lists(st.integers(0, 1 << 40), max_size=80))
def test_histogram_round_trips_json(lengths: list[int]) -> None:
    hist = LengthHistogram.from_lengths(np.array(lengths, dtype=np.int64))
    text = json.dumps(hist.to_json())
    back = LengthHistogram.from_json(json.loads(text))
    assert back == hist
    assert json.loads(text)["documents"] == len(lengths)
    assert json.loads(text)["tokens"] == sum(lengths)


def test_histogram_from_json_rejects_bad_data() -> None:
    good = LengthHistogram.from_lengths(np.array([1, 2, 2])).to_json()
    with pytest.raises(ValueError, match="schema"):
        LengthHistogram.from_json({**good, "schema": "something/else"})
    with pytest.raises(ValueError, match="increasing"):
        LengthHistogram.from_json({**good, "lengths": [2, 1]})
    with pytest.raises(ValueError, match="non-negative"):
        LengthHistogram.from_json({**good, "counts": [1, -1]})


# ------------------------------------------------------------------------------------------------ planner edges


def test_paper_toy_example_plan() -> None:
    """ctx 8, documents 14, 7, 5, 2, 3: pieces 8, 6, 7, 5, 2, 3 fit into 4 sequences, two of them full."""
    counts = piece_counts(LengthHistogram.from_lengths(np.array([14, 7, 5, 2, 3])), 8, "split")
    plan = plan_capacities(counts, 8)
    assert plan.sequences == 4
    assert sorted(plan.free_space().tolist()) == [0, 0, 0, 1]


def test_empty_plan() -> None:
    plan = plan_capacities(np.zeros(9, dtype=np.int64), 8)
    assert plan.sequences == 0 and plan.pieces == 0
    assert plan.fill().tolist() == []
    placement = assign_slots(plan, np.zeros(0, dtype=np.int64))
    assert placement.n_bins == 0 and len(placement.bin) == 0


def test_plan_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ctx"):
        plan_capacities(np.zeros(1, dtype=np.int64), 0)
    with pytest.raises(ValueError, match="entries"):
        plan_capacities(np.zeros(5, dtype=np.int64), 8)
    with pytest.raises(ValueError, match="1..ctx"):
        plan_pieces(np.array([3, 9]), 8)
    plan = plan_capacities(np.bincount([3, 5], minlength=9), 8)
    with pytest.raises(ValueError, match="pieces"):
        assign_slots(plan, np.array([3]))


def test_plan_size_does_not_grow_with_documents() -> None:
    """A million pieces of a few lengths need only a handful of events; the totals still add up."""
    ctx = 2048
    counts = np.zeros(ctx + 1, dtype=np.int64)
    counts[[1, 700, 1000, 1500, 2048]] = [300_000, 200_000, 200_000, 100_000, 200_000]
    plan: CapacityPlan = plan_capacities(counts, ctx)
    assert len(plan.size) < 50
    fill = plan.fill()
    assert int(fill.sum()) == int((counts * np.arange(ctx + 1)).sum())
    assert fill.max() <= ctx and fill.min() > 0
    assert plan.pieces == int(counts.sum())


@given(pieces(), st.sampled_from([1, 3, 64]))
def test_longest_first_order_by_blocks_is_the_stable_sort(case: tuple[int, list[int]], block: int) -> None:
    """descending_order sorts by blocks (here a few pieces each, so every case takes the block path) and must give
    exactly numpy's stable argsort: longest first, ties in input order."""
    from bestfit_cli import plan

    ctx, lengths = case
    pieces_ = np.asarray(lengths, dtype=np.int64)
    saved = plan._SORT_BLOCK
    plan._SORT_BLOCK = block
    try:
        order = plan.descending_order(pieces_, ctx)
    finally:
        plan._SORT_BLOCK = saved
    assert order.tolist() == np.argsort(ctx - pieces_, kind="stable").tolist()


@pytest.mark.parametrize("ctx", [2048, 70_000])
def test_longest_first_order_over_many_blocks(ctx: int) -> None:
    from bestfit_cli import plan

    rng = np.random.default_rng(ctx)
    lengths = np.minimum(rng.lognormal(5.5, 1.5, 40 * plan._SORT_BLOCK).astype(np.int64) + 1, ctx)
    lengths[::7] = ctx  # many ties
    order = plan.descending_order(lengths, ctx)
    assert np.array_equal(order, np.argsort(ctx - lengths, kind="stable"))
