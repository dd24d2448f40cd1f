"""Strategies that packing is compared against. Pure numpy over document lengths.

Every strategy takes document lengths as packed (EOS included, empty documents already removed) and returns
``StrategyCounts``: how many sequences it fills and how many documents it cuts. Definitions follow ``pack``'s
``stats.json``: a document is *truncated* when its tokens are spread over more than one sequence, and its
*truncations* are the cuts (pieces beyond the first); a document cut to ``ctx`` with its tail thrown away is
*clipped*, not truncated.

- ``concat``: documents concatenated in input order and cut every ``ctx`` tokens. It depends on order: it runs on
  lengths in input order, or, when only a histogram is known, reports the expectation for a random order.
- ``bestfit``: best-fit decreasing over pieces, planned exactly as ``pack`` plans it (``plan.plan_capacities``).
- ``ffd``: first-fit decreasing over the same pieces.
- ``nextfit``: pieces in input order; a new sequence starts when the next piece does not fit the current one.
- ``truncate``: one document per sequence, clipped to ``ctx``.

``bestfit``, ``ffd`` and ``nextfit`` cut documents into pieces with the long-document policy (``split`` by default),
so they only ever cut documents longer than ``ctx``; ``concat`` applies the policy first, as ``pack`` reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from .histogram import LengthHistogram, LongDocs, piece_counts
from .plan import plan_capacities

Strategy = Literal["concat", "bestfit", "ffd", "nextfit", "truncate"]
STRATEGIES: tuple[Strategy, ...] = ("concat", "bestfit", "ffd", "nextfit", "truncate")


# ------------------------------------------------------------------------------------------------ concat in order


@dataclass(frozen=True)
class ConcatCounts:
    """Truncation counts of concatenate-and-chunk over a run of documents; ``end`` is the stream position after it."""

    end: int
    truncated_documents: int
    truncations: int

    def sequences(self, ctx: int) -> int:
        return -(-self.end // ctx)


def concat_cuts(doc_lengths: np.ndarray, ctx: int, start: int = 0) -> np.ndarray:
    """Cuts of every document when the stream, starting at position ``start``, is chunked every ``ctx`` tokens.

    A document occupying stream positions ``[a, b)`` is cut ``(b - 1) // ctx - a // ctx`` times (0 when empty).
    """
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    ends = start + np.cumsum(lengths)
    begins = ends - lengths
    return np.where(lengths > 0, (ends - 1) // ctx - begins // ctx, 0)


def concat_counts(doc_lengths: np.ndarray, ctx: int, start: int = 0, before: ConcatCounts | None = None
                  ) -> ConcatCounts:
    """Cuts made by chunking the stream every ``ctx`` tokens, continuing from stream position ``start``."""
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    lengths = lengths[lengths > 0]
    cuts = concat_cuts(lengths, ctx, start)
    counts = ConcatCounts(start + int(lengths.sum()), int((cuts > 0).sum()), int(cuts.sum()))
    if before is not None:
        counts = ConcatCounts(counts.end, counts.truncated_documents + before.truncated_documents,
                              counts.truncations + before.truncations)
    return counts


# ------------------------------------------------------------------------------------------------ results


def bucket_of(lengths: np.ndarray) -> np.ndarray:
    """Length bucket of each (positive) length: bucket ``k`` holds lengths ``2**k .. 2**(k+1) - 1``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    exponent = np.frexp(lengths.astype(np.float64))[1] - 1  # exact for lengths below 2**53
    return exponent.astype(np.int64)


def bucket_count(max_length: int, ctx: int) -> int:
    """Number of power-of-two buckets that reach both the longest document and ``ctx``."""
    return max(int(max_length), int(ctx), 1).bit_length()


@dataclass(frozen=True)
class PerDocument:
    """Outcome per document, as parallel arrays over document lengths with a weight (a count) per entry.

    In input order every weight is 1; from a histogram each entry is one distinct length. Values are floats so
    that expected counts (``concat`` without order) fit the same shape.
    """

    lengths: np.ndarray  # packed length of the document(s)
    weights: np.ndarray  # number of documents of this entry
    truncations: np.ndarray  # cuts per document
    truncated: np.ndarray  # share of these documents spread over more than one sequence (0..1)
    clipped: np.ndarray  # 1 where the documents were clipped to ctx
    dropped: np.ndarray  # 1 where the documents were dropped whole

    def buckets(self, n_buckets: int) -> dict[str, np.ndarray]:
        """Totals per length bucket (see ``bucket_of``)."""
        index = bucket_of(self.lengths)

        def total(values: np.ndarray) -> np.ndarray:
            return np.bincount(index, weights=values * self.weights, minlength=n_buckets)[:n_buckets]

        return {"documents": total(np.ones(len(self.lengths))), "truncated_documents": total(self.truncated),
                "truncations": total(self.truncations), "clipped_documents": total(self.clipped),
                "dropped_documents": total(self.dropped)}


@dataclass(frozen=True)
class StrategyCounts:
    """What one strategy does with one corpus at one ``ctx``.

    ``tokens`` are the tokens placed in sequences. Counts are exact unless ``exact`` is false, when ``method``
    says how they were estimated (``truncated_documents`` and ``truncations`` may then be fractional).
    """

    strategy: Strategy
    ctx: int
    documents: int
    tokens: int
    sequences: int
    truncated_documents: float
    truncations: float
    clipped_documents: int
    dropped_documents: int
    dropped_tokens: int
    per_document: PerDocument
    exact: bool = True
    method: str | None = None

    @property
    def sequences_lower_bound(self) -> int:
        return -(-self.tokens // self.ctx)

    @property
    def padding_tokens(self) -> int:
        return self.sequences * self.ctx - self.tokens

    @property
    def padding_fraction(self) -> float:
        return self.padding_tokens / (self.sequences * self.ctx) if self.sequences else 0.0


def _counts(strategy: Strategy, ctx: int, tokens: int, sequences: int, per_doc: PerDocument, *,
            exact: bool = True, method: str | None = None) -> StrategyCounts:
    w = per_doc.weights
    dropped = per_doc.dropped * w
    clipped = per_doc.clipped * w
    dropped_tokens = (per_doc.lengths * dropped).sum() + ((per_doc.lengths - ctx) * clipped).sum()
    truncated = float((per_doc.truncated * w).sum())
    truncations = float((per_doc.truncations * w).sum())
    return StrategyCounts(
        strategy, ctx, documents=int(w.sum() - dropped.sum()), tokens=int(tokens), sequences=int(sequences),
        truncated_documents=round(truncated) if exact else truncated,
        truncations=round(truncations) if exact else truncations, clipped_documents=int(clipped.sum()),
        dropped_documents=int(dropped.sum()), dropped_tokens=int(dropped_tokens), per_document=per_doc,
        exact=exact, method=method)


def _policy_per_length(lengths: np.ndarray, weights: np.ndarray, ctx: int, long_docs: LongDocs) -> PerDocument:
    """Per-document outcome of cutting documents into pieces with the long-document policy (order-free)."""
    long_ = (lengths > ctx).astype(np.float64)
    zeros = np.zeros(len(lengths))
    if long_docs == "split":
        cuts = np.where(lengths > ctx, -(-lengths // ctx) - 1, 0).astype(np.float64)
        return PerDocument(lengths, weights, cuts, long_, zeros, zeros)
    if long_docs == "truncate":
        return PerDocument(lengths, weights, zeros, zeros, long_, zeros)
    return PerDocument(lengths, weights, zeros, zeros, zeros, long_)


def _kept_tokens(hist: LengthHistogram, ctx: int, long_docs: LongDocs) -> int:
    lengths, counts = hist.lengths, hist.counts
    if long_docs == "split":
        return hist.tokens
    if long_docs == "truncate":
        return int((np.minimum(lengths, ctx) * counts).sum())
    return int((lengths * counts)[lengths <= ctx].sum())


def _check(hist: LengthHistogram, ctx: int) -> None:
    if ctx < 1:
        raise ValueError("ctx must be >= 1")
    if hist.lengths.size and hist.lengths[0] < 1:
        raise ValueError("strategies take non-empty documents only")


# ------------------------------------------------------------------------------------------------ strategies


def concat(doc_lengths: np.ndarray, ctx: int, long_docs: LongDocs = "split") -> StrategyCounts:
    """Concatenate-and-chunk over documents in input order (lengths as packed, non-empty)."""
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    if ctx < 1 or (lengths.size and lengths.min() < 1):
        raise ValueError("ctx must be >= 1 and documents non-empty")
    long_ = lengths > ctx
    kept = lengths
    if long_docs == "truncate":
        kept = np.minimum(lengths, ctx)
    elif long_docs == "drop":
        kept = np.where(long_, 0, lengths)
    cuts = concat_cuts(kept, ctx).astype(np.float64)
    zeros = np.zeros(len(lengths))
    per_doc = PerDocument(lengths, np.ones(len(lengths)), cuts, (cuts > 0).astype(np.float64),
                          long_.astype(np.float64) if long_docs == "truncate" else zeros,
                          long_.astype(np.float64) if long_docs == "drop" else zeros)
    tokens = int(kept.sum())
    return _counts("concat", ctx, tokens, -(-tokens // ctx), per_doc)


CONCAT_EXPECTED_METHOD = ("document order unknown (histogram input): truncations are the expected values for a "
                          "random order, taking each document to start at a uniformly random position within a "
                          "sequence; sequences and padding are exact")


def concat_expected(hist: LengthHistogram, ctx: int, long_docs: LongDocs = "split") -> StrategyCounts:
    """Concatenate-and-chunk when only the length histogram is known: expected cuts for a random order.

    A document of ``l`` tokens starting at offset ``u`` within a sequence is cut ``(u + l - 1) // ctx`` times.
    With ``u`` uniform over ``0..ctx-1`` that averages exactly ``(l - 1) / ctx``, and the document is cut at all
    with probability ``min(1, (l - 1) / ctx)``. Sequences and padding do not depend on order.
    """
    _check(hist, ctx)
    lengths = hist.lengths
    kept = np.minimum(lengths, ctx) if long_docs == "truncate" else lengths
    cuts = (kept - 1) / ctx
    truncated = np.minimum(1.0, cuts)
    long_ = (lengths > ctx).astype(np.float64)
    zeros = np.zeros(len(lengths))
    if long_docs == "drop":
        cuts, truncated = cuts * (1 - long_), truncated * (1 - long_)
    per_doc = PerDocument(lengths, hist.counts.astype(np.float64), cuts, truncated,
                          long_ if long_docs == "truncate" else zeros, long_ if long_docs == "drop" else zeros)
    tokens = _kept_tokens(hist, ctx, long_docs)
    return _counts("concat", ctx, tokens, -(-tokens // ctx), per_doc, exact=False, method=CONCAT_EXPECTED_METHOD)


def bestfit(windows: list[LengthHistogram], ctx: int, long_docs: LongDocs = "split") -> StrategyCounts:
    """Best-fit decreasing as ``pack`` plans it: one plan per window, each from the window's length histogram."""
    merged = sum(windows, LengthHistogram())
    _check(merged, ctx)
    sequences = sum(plan_capacities(piece_counts(h, ctx, long_docs), ctx).n_bins for h in windows)
    per_doc = _policy_per_length(merged.lengths, merged.counts.astype(np.float64), ctx, long_docs)
    return _counts("bestfit", ctx, _kept_tokens(merged, ctx, long_docs), sequences, per_doc)


def ffd_sequences(counts: np.ndarray, ctx: int) -> int:
    """Sequences first-fit decreasing fills with ``counts[s]`` pieces of ``s`` tokens (``s`` in ``1..ctx``).

    Pieces of one length are placed together: first fit sends them to the lowest-numbered sequences with room,
    each taking as many as fit (``free // s``) until they run out, then opens new sequences. Sequences are kept as
    runs of consecutive sequences with equal free space, in sequence order (full ones left out: they never take a
    piece again), so one vectorised step per distinct length replaces the per-piece search and memory grows with
    the number of runs (at most three new runs per distinct length), never with the number of sequences.
    """
    counts = np.asarray(counts, dtype=np.int64)
    run_free = np.zeros(0, dtype=np.int64)  # free space of each run, runs in sequence order
    run_count = np.zeros(0, dtype=np.int64)  # sequences in each run
    n_bins = 0
    for size in (np.flatnonzero(counts[1:])[::-1] + 1).tolist():
        remaining = int(counts[size])
        per_bin = run_free // size  # pieces each sequence of a run takes (0: no room)
        capacity = np.cumsum(run_count * per_bin)
        j = int(np.searchsorted(capacity, remaining))  # the first run that holds the last of these pieces
        new_free = run_free - per_bin * size  # every run before j is filled as far as this length goes
        if j < len(run_free):
            taken = remaining - (int(capacity[j - 1]) if j else 0)
            full, rest = divmod(taken, int(per_bin[j]))
            free_j, count_j = int(run_free[j]), int(run_count[j])
            split_free = [free_j % size, free_j - rest * size, free_j]
            split_count = [full, int(rest > 0), count_j - full - int(rest > 0)]
            run_free = np.concatenate([new_free[:j], split_free, run_free[j + 1:]])
            run_count = np.concatenate([run_count[:j], split_count, run_count[j + 1:]])
        else:
            left = remaining - (int(capacity[-1]) if len(capacity) else 0)
            fit = ctx // size
            full, rest = divmod(left, fit)
            run_free = np.concatenate([new_free, [ctx - fit * size, ctx - rest * size]])
            run_count = np.concatenate([run_count, [full, int(rest > 0)]])
            n_bins += full + int(rest > 0)
        run_free, run_count = _merge_runs(run_free, run_count)
    return n_bins


def _merge_runs(run_free: np.ndarray, run_count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs without sequences or without free space removed, neighbours of equal free space joined."""
    keep = (run_count > 0) & (run_free > 0)
    run_free, run_count = run_free[keep], run_count[keep]
    if len(run_free) < 2:
        return run_free, run_count
    starts = np.flatnonzero(np.concatenate([[True], run_free[1:] != run_free[:-1]]))
    return run_free[starts], np.add.reduceat(run_count, starts)


def ffd(hist: LengthHistogram, ctx: int, long_docs: LongDocs = "split") -> StrategyCounts:
    """First-fit decreasing over the pieces of the whole corpus."""
    _check(hist, ctx)
    sequences = ffd_sequences(piece_counts(hist, ctx, long_docs), ctx)
    per_doc = _policy_per_length(hist.lengths, hist.counts.astype(np.float64), ctx, long_docs)
    return _counts("ffd", ctx, _kept_tokens(hist, ctx, long_docs), sequences, per_doc)


NEXTFIT_STEP = 1 << 20  # documents turned into Python ints at a time


def nextfit_sequences(doc_lengths: np.ndarray, ctx: int, long_docs: LongDocs = "split") -> int:
    """Sequences next fit fills, documents in the order given.

    A document longer than ``ctx`` is split into ``ctx``-sized pieces and a remainder (``split``), clipped to
    ``ctx`` (``truncate``) or skipped (``drop``); a full piece always starts a new sequence. A plain loop over
    documents (next fit is sequential by nature; it runs at several million documents per second), fed
    ``NEXTFIT_STEP`` documents at a time so it holds no list of every document.
    """
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    state = (0, 0)  # (sequences, free space of the last one)
    for lo in range(0, len(lengths), NEXTFIT_STEP):
        state = _nextfit_step(lengths[lo:lo + NEXTFIT_STEP].tolist(), ctx, long_docs, state)
    return state[0]


def _nextfit_step(lengths: list[int], ctx: int, long_docs: LongDocs, state: tuple[int, int]) -> tuple[int, int]:
    n_bins, free = state
    split = long_docs == "split"
    for length in lengths:
        if length > ctx:
            if not split:
                if long_docs == "drop":
                    continue
                length = ctx
            else:
                full, length = divmod(length, ctx)
                n_bins += full
                free = 0
                if not length:
                    continue
        if length <= free:
            free -= length
        else:
            n_bins += 1
            free = ctx - length
    return n_bins, free


def nextfit_runs_sequences(hist: LengthHistogram, ctx: int, long_docs: LongDocs = "split") -> int:
    """Next fit over the histogram's documents longest first (next-fit decreasing), by arithmetic on each run of
    equal lengths: one step per distinct length, whatever the number of documents. Equals
    ``nextfit_sequences`` over ``hist.expand()[::-1]``."""
    n_bins = free = 0
    for length, count in zip(hist.lengths[::-1].tolist(), hist.counts[::-1].tolist(), strict=True):
        if not count or length < 1:
            continue
        if length > ctx:
            if long_docs == "drop":
                continue
            if long_docs == "split":
                full, rest = divmod(length, ctx)
                # Each document: its full pieces, then its remainder opens a sequence of its own.
                n_bins += count * (full + (rest > 0))
                free = ctx - rest if rest else 0
                continue
            length = ctx
        # `count` pieces of `length`: what fits the open sequence, then ctx // length to a new sequence.
        first = min(count, free // length)
        free -= first * length
        left = count - first
        if left:
            fit = ctx // length
            opened = -(-left // fit)
            n_bins += opened
            free = ctx - (left - (opened - 1) * fit) * length
    return n_bins


NEXTFIT_SORTED_METHOD = ("document order unknown (histogram input): sequences and padding are next fit over the "
                         "documents longest first (next-fit decreasing); truncation counts do not depend on order "
                         "and are exact")


def nextfit(doc_lengths: np.ndarray | LengthHistogram, ctx: int, long_docs: LongDocs = "split") -> StrategyCounts:
    """Next fit over documents in input order; given a histogram, over the documents longest first."""
    if isinstance(doc_lengths, LengthHistogram):
        hist = doc_lengths
        _check(hist, ctx)
        sequences = nextfit_runs_sequences(hist, ctx, long_docs)
        exact, method = False, NEXTFIT_SORTED_METHOD
    else:
        order = np.asarray(doc_lengths, dtype=np.int64)
        hist = LengthHistogram.from_lengths(order)
        _check(hist, ctx)
        sequences = nextfit_sequences(order, ctx, long_docs)
        exact, method = True, None
    per_doc = _policy_per_length(hist.lengths, hist.counts.astype(np.float64), ctx, long_docs)
    counts = _counts("nextfit", ctx, _kept_tokens(hist, ctx, long_docs), sequences, per_doc)
    # Truncation counts are exact either way; only the sequence count depends on the order.
    return replace(counts, exact=exact, method=method)


def truncate(hist: LengthHistogram, ctx: int) -> StrategyCounts:
    """One document per sequence, clipped to ``ctx``; the long-document policy does not apply."""
    _check(hist, ctx)
    per_doc = _policy_per_length(hist.lengths, hist.counts.astype(np.float64), ctx, "truncate")
    return _counts("truncate", ctx, _kept_tokens(hist, ctx, "truncate"), hist.documents, per_doc)
