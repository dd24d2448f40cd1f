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


def test_make_pieces_widens_starts_only_past_int32() -> None:
    """Starts are int32 while every document has fewer than 2**31 tokens, int64 from there; no tokens are needed
    to cut so long a document, only its length."""
    from bestfit_cli.window import _index_dtype

    assert _index_dtype(2**31 - 1) is np.int32 and _index_dtype(2**31) is np.int64
    ctx = 2**30
    for longest, dtype in ((2**31 - 1, np.int32), (2**31 + 5, np.int64)):
        got = make_pieces(np.array([3, longest, 0, ctx], dtype=np.int64), ctx, False, "split")
        assert got.start.dtype == dtype and got.doc.dtype == np.int32 and got.length.dtype == np.int32
        expected = reference_pieces([3, longest, 0, ctx], ctx)
        in_order = [p for p in expected if p[1] == 0] + [p for p in expected if p[1] > 0]
        assert list(zip(got.doc.tolist(), got.start.tolist(), got.length.tolist(), strict=True)) == in_order
        assert got.tokens == 3 + longest + ctx


@pytest.mark.parametrize(("ctx", "dtype"), [(32_767, np.int16), (32_768, np.int32)])
def test_piece_lengths_are_int16_while_ctx_fits(ctx: int, dtype: type) -> None:
    """A piece holds up to ctx tokens: int16 holds 32,767, not 32,768; the plan is the same either way."""
    got = make_pieces(np.array([2 * ctx + 1, ctx, 5], dtype=np.int64), ctx, False, "split")
    assert got.length.dtype == dtype
    assert got.length.tolist() == [ctx, ctx, 5, ctx, 1] and got.tokens == 3 * ctx + 6
    placement = plan_pieces(got.length, ctx)
    wide = plan_pieces(got.length.astype(np.int64), ctx)
    assert placement.n_bins == wide.n_bins == 4
    assert placement.bin.tolist() == wide.bin.tolist() and placement.offset.tolist() == wide.offset.tolist()


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


@given(corpus(), st.sampled_from(LONG_DOC_POLICIES), st.booleans(), st.sampled_from([1, 2, 1 << 16]))
def test_make_pieces_matches_reference_cutting(case: tuple[int, list[int]], long_docs: str, eos: bool,
                                               chunk: int) -> None:
    from bestfit_cli import window

    ctx, doc_lengths = case
    raw = np.array(doc_lengths, dtype=np.int64)
    packed = [n + 1 if eos and n else n for n in doc_lengths]
    saved = window._CHUNK
    window._CHUNK = chunk  # make_pieces works in chunks of documents: here, often several
    try:
        got = make_pieces(raw, ctx, eos, long_docs)  # type: ignore[arg-type]
    finally:
        window._CHUNK = saved
    expected = reference_pieces(packed, ctx, long_docs)
    # The same pieces in the order the planner breaks ties by (so the output depends on it): every document's
    # first piece in document order, then the further pieces of split documents, in document and token order.
    in_order = [p for p in expected if p[1] == 0] + [p for p in expected if p[1] > 0]
    assert list(zip(got.doc.tolist(), got.start.tolist(), got.length.tolist(), strict=True)) == in_order
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
    """longest_first sorts by blocks (here a few pieces each, so most cases take several blocks) and must give
    exactly numpy's stable argsort: longest first, ties in input order; and the piece counts by length."""
    from bestfit_cli import plan

    ctx, lengths = case
    pieces_ = np.asarray(lengths, dtype=np.int64)
    saved = plan._SORT_BLOCK
    plan._SORT_BLOCK = block
    try:
        order, counts = plan.longest_first(pieces_, ctx)
    finally:
        plan._SORT_BLOCK = saved
    assert order.tolist() == np.argsort(ctx - pieces_, kind="stable").tolist()
    assert counts.tolist() == np.bincount(pieces_, minlength=ctx + 1).tolist()


@pytest.mark.parametrize("ctx", [2048, 70_000])
def test_longest_first_order_over_many_blocks(ctx: int) -> None:
    """Many full blocks, ties across blocks; at ctx 70,000 the sort keys need 64 bits (a position in a block of
    16 * ctx pieces and a key of 17 bits), at 2048 they fit 32."""
    from bestfit_cli import plan

    rng = np.random.default_rng(ctx)
    lengths = np.minimum(rng.lognormal(5.5, 1.5, 40 * plan._SORT_BLOCK).astype(np.int64) + 1, ctx)
    lengths[::7] = ctx  # many ties
    order, counts = plan.longest_first(lengths.astype(np.int32), ctx)
    assert order.dtype == np.int32
    assert np.array_equal(order, np.argsort(ctx - lengths, kind="stable"))
    assert np.array_equal(counts, np.bincount(lengths, minlength=ctx + 1))


def expand_events(plan: CapacityPlan, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every piece's sequence and offset, event by event, one piece at a time (what assign_slots must write)."""
    bins, offsets = np.empty(plan.pieces, dtype=np.int64), np.empty(plan.pieces, dtype=np.int64)
    i = 0
    for size, count, first_bin, per_bin, start in zip(plan.size.tolist(), plan.n_pieces.tolist(),
                                                      plan.first_bin.tolist(), plan.per_bin.tolist(),
                                                      plan.start_offset.tolist(), strict=True):
        for k in range(count):
            bins[i], offsets[i] = first_bin + k // per_bin, start + (k % per_bin) * size
            i += 1
    return bins, offsets


@given(pieces(), st.sampled_from([1, 2, 5, None]))
def test_slots_written_in_steps_are_the_events(case: tuple[int, list[int]], step: int | None) -> None:
    """assign_slots writes each event in steps of whole sequences (a few here, so events span many steps, with
    narrow rows a column at a time and wide ones a row at a time), or, for few pieces (step None), every slot at
    once: the same slots as the events spelt out."""
    from bestfit_cli import plan as plan_module

    ctx, lengths = case
    piece_lengths = np.array(lengths, dtype=np.int64)
    order, counts = plan_module.longest_first(piece_lengths, ctx)
    plan = plan_capacities(counts, ctx)
    saved = plan_module._SLOT_STEP, plan_module._AT_ONCE_PIECES
    if step is not None:
        plan_module._SLOT_STEP, plan_module._AT_ONCE_PIECES = step, -1
    try:
        placement = assign_slots(plan, piece_lengths, order)
    finally:
        plan_module._SLOT_STEP, plan_module._AT_ONCE_PIECES = saved
    bins, offsets = expand_events(plan, order)
    assert placement.sorted_bin.tolist() == bins.tolist()
    assert placement.sorted_offset.tolist() == offsets.tolist()
    assert placement.order.tolist() == order.tolist()


@pytest.mark.parametrize(("ctx", "dtype"), [(32_768, np.int16), (32_769, np.int32)])
def test_offsets_take_the_narrowest_type_that_holds_ctx_minus_one(ctx: int, dtype: type) -> None:
    """ctx pieces of one token fill one sequence, the last at offset ctx - 1: int16 holds 32,767, not 32,768."""
    from bestfit_cli.plan import offset_dtype

    assert offset_dtype(ctx) is dtype
    placement = plan_pieces(np.ones(ctx, dtype=np.int32), ctx)
    assert placement.sorted_offset.dtype == dtype
    assert placement.n_bins == 1
    assert placement.sorted_offset.astype(np.int64).tolist() == list(range(ctx))


def test_large_events_fill_many_slot_steps() -> None:
    """Events far longer than one write step (200,000 full-length pieces; 3 and 7 pieces a sequence)."""
    from bestfit_cli import plan as plan_module

    lengths = np.concatenate([np.full(200_000, 64), np.full(300_001, 21), np.full(140_003, 9),
                              np.arange(1, 65).repeat(50)]).astype(np.int32)
    lengths = lengths[np.random.default_rng(3).permutation(len(lengths))]
    order, counts = plan_module.longest_first(lengths, 64)
    plan = plan_capacities(counts, 64)
    at_once = assign_slots(plan, lengths, order)
    saved, plan_module._AT_ONCE_PIECES = plan_module._AT_ONCE_PIECES, 0
    try:
        placement = assign_slots(plan, lengths, order)  # in steps
    finally:
        plan_module._AT_ONCE_PIECES = saved
    assert max(plan.n_pieces.tolist()) > 3 * plan_module._SLOT_STEP
    bins, offsets = expand_events(plan, order)
    for slots in (placement, at_once):
        assert np.array_equal(slots.sorted_bin, bins) and np.array_equal(slots.sorted_offset, offsets)
        assert slots.sorted_bin.dtype == np.int32 and slots.sorted_offset.dtype == np.int16
    check_placement(placement, lengths.astype(np.int64), 64)
