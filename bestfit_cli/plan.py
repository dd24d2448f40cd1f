"""Plan: best-fit-decreasing packing computed over capacities, then slots assigned with numpy.

Best-fit decreasing (BFD) takes pieces longest first and puts each into the open sequence with the least free space
that still fits it, opening a new sequence when none does. Free space is an integer in ``1..ctx``, and sequences
with equal free space are interchangeable, so the decisions depend only on the counts of pieces per length. All
pieces of one length are placed together: the tightest class of sequences with free space ``f >= s`` takes
``f // s`` pieces of length ``s`` per sequence, and what it has left (``f % s``) is below ``s``. Sequences are kept
as contiguous id ranges per free-space class, so the planner's work grows with ``ctx``, not with the number of
documents. Each range's free space at least halves whenever it takes pieces, which bounds the number of groups
("events") by about ``ctx * log2(ctx)``.

The plan is a list of events; ``assign_slots`` maps pieces (sorted longest first, ties in input order) onto them
with a handful of vectorised numpy operations.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class CapacityPlan:
    """Where each group of equal-length pieces goes, in the order BFD places them.

    Event ``e`` places ``n_pieces[e]`` pieces of ``size[e]`` tokens into sequences ``first_bin[e]``, ``+1``, ...,
    ``per_bin[e]`` pieces per sequence, the first of them at token ``start_offset[e]`` of its sequence.
    """

    ctx: int
    n_bins: int
    size: np.ndarray
    n_pieces: np.ndarray
    first_bin: np.ndarray
    per_bin: np.ndarray
    start_offset: np.ndarray

    @property
    def sequences(self) -> int:
        return self.n_bins

    @property
    def pieces(self) -> int:
        return int(self.n_pieces.sum())

    def fill(self) -> np.ndarray:
        """Tokens placed in each sequence, computed from the events without expanding pieces."""
        bins_used = -(-self.n_pieces // self.per_bin)
        last_bin = self.first_bin + bins_used - 1
        per_bin_tokens = self.per_bin * self.size
        delta = np.zeros(self.n_bins + 1, dtype=np.int64)
        # Each sequence of an event takes per_bin pieces, except its last, which takes what is left.
        np.add.at(delta, self.first_bin, per_bin_tokens)
        np.add.at(delta, last_bin + 1, -per_bin_tokens)
        fill = np.cumsum(delta)[:-1]
        np.add.at(fill, last_bin, (self.n_pieces - (bins_used - 1) * self.per_bin) * self.size - per_bin_tokens)
        return fill

    def free_space(self) -> np.ndarray:
        return self.ctx - self.fill()


def plan_capacities(counts: np.ndarray, ctx: int) -> CapacityPlan:
    """BFD over piece counts: ``counts[s]`` pieces of length ``s`` for ``s`` in ``1..ctx``."""
    counts = np.asarray(counts, dtype=np.int64)
    if ctx < 1:
        raise ValueError("ctx must be >= 1")
    if len(counts) != ctx + 1:
        raise ValueError(f"counts must have ctx + 1 = {ctx + 1} entries, got {len(counts)}")
    ranges: dict[int, deque[list[int]]] = {}  # free space -> deque of [first_bin, n_bins]
    frees: list[int] = []  # the free-space values that have open sequences, sorted
    events: list[tuple[int, int, int, int, int]] = []
    next_bin = 0

    def add_range(free: int, first: int, n: int) -> None:
        if free == 0 or n == 0:
            return
        if free not in ranges:
            ranges[free] = deque()
            bisect.insort(frees, free)
        ranges[free].append([first, n])

    def take(free: int, n: int) -> int:
        """Remove ``n`` sequences from the front of the first range of class ``free``; return the first id."""
        queue = ranges[free]
        head = queue[0]
        first = head[0]
        head[0] += n
        head[1] -= n
        if head[1] == 0:
            queue.popleft()
            if not queue:
                del ranges[free]
                frees.pop(bisect.bisect_left(frees, free))
        return first

    for size in np.flatnonzero(counts[::-1][:-1]).tolist():
        size = ctx - size
        remaining = int(counts[size])
        while remaining:
            i = bisect.bisect_left(frees, size)
            if i < len(frees):
                free = frees[i]
                per_bin = free // size
                available = ranges[free][0][1]
            else:
                free, per_bin, available = ctx, ctx // size, -1
            offset = ctx - free
            full = remaining // per_bin if available < 0 else min(available, remaining // per_bin)
            if full:
                first = next_bin if available < 0 else take(free, full)
                next_bin += full if available < 0 else 0
                events.append((size, full * per_bin, first, per_bin, offset))
                add_range(free % size, first, full)
                remaining -= full * per_bin
                continue
            # Fewer pieces left than one sequence of this class takes: they all go into one sequence.
            first = next_bin if available < 0 else take(free, 1)
            next_bin += 1 if available < 0 else 0
            events.append((size, remaining, first, per_bin, offset))
            add_range(free - remaining * size, first, 1)
            remaining = 0

    table = np.array(events, dtype=np.int64).reshape(-1, 5)
    return CapacityPlan(ctx, next_bin, table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy(),
                        table[:, 3].copy(), table[:, 4].copy())


def descending_order(piece_lengths: np.ndarray, ctx: int) -> np.ndarray:
    """Positions of pieces sorted longest first, ties in input order: a stable counting sort by blocks.

    Each block of ``_SORT_BLOCK`` pieces (or more, for a large ctx) is sorted on its own, where it fits in the
    cache (numpy's stable argsort of 16-bit keys is a radix sort); the blocks' length histograms say where each
    block's pieces of each length go among all pieces of that length (after those of earlier blocks), so one
    scatter a block puts them in place. Measured about twice as fast as one argsort of all pieces at 10M pieces
    (docs/benchmarks.md), with the same result.
    """
    piece_lengths = np.asarray(piece_lengths)
    key_dtype = np.uint16 if ctx < 1 << 16 else np.uint32 if ctx < 1 << 32 else np.uint64
    keys = (ctx - piece_lengths).astype(key_dtype)  # 0 for the longest pieces
    n = len(keys)
    block = max(_SORT_BLOCK, 16 * ctx)  # the histograms stay a sixteenth of the pieces or less
    if n <= block:
        return np.argsort(keys, kind="stable")
    n_blocks = -(-n // block)
    counts = np.empty((n_blocks, ctx + 1), dtype=np.int64)
    for b in range(n_blocks):
        counts[b] = np.bincount(keys[b * block:(b + 1) * block], minlength=ctx + 1)
    before_block = np.cumsum(counts, axis=0) - counts  # pieces of each key in earlier blocks
    totals = counts.sum(axis=0)
    key_start = np.cumsum(totals) - totals  # where each key's pieces start in the whole order
    order = np.empty(n, dtype=np.intp)
    ramp = np.arange(block, dtype=np.intp)
    for b in range(n_blocks):
        lo = b * block
        block_keys = keys[lo:lo + block]
        inner = np.argsort(block_keys, kind="stable")
        # A piece at position k of the block's own order goes to k + (its key's start overall, after earlier
        # blocks) - (its key's start within the block).
        shift = key_start + before_block[b] - (np.cumsum(counts[b]) - counts[b])
        destination = shift[block_keys[inner]]
        destination += ramp[:len(inner)]
        inner += lo
        order[destination] = inner
    return order


_SORT_BLOCK = 1 << 15  # pieces sorted at once by descending_order (measured: 2**14 to 2**17 about alike)


@dataclass(frozen=True)
class Placement:
    """Sequence and starting token of every piece.

    Kept in the planner's longest-first order: piece ``order[i]`` goes to sequence ``sorted_bin[i]`` at token
    ``sorted_offset[i]``. ``bin`` and ``offset`` give the same indexed like the pieces passed to ``assign_slots``.
    """

    n_bins: int
    order: np.ndarray
    sorted_bin: np.ndarray
    sorted_offset: np.ndarray

    @cached_property
    def bin(self) -> np.ndarray:
        return _unsort(self.order, self.sorted_bin)

    @cached_property
    def offset(self) -> np.ndarray:
        return _unsort(self.order, self.sorted_offset)


def _unsort(order: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[order] = values
    return out


def assign_slots(plan: CapacityPlan, piece_lengths: np.ndarray) -> Placement:
    """Give every piece its sequence and offset, following the plan's events.

    One vectorised step per event (a few thousand events, however many pieces): event ``e`` takes the next
    ``n_pieces[e]`` pieces of the longest-first order, ``per_bin[e]`` to a sequence. No per-piece index arrays are
    built, which keeps memory traffic near one write per piece.
    """
    piece_lengths = np.asarray(piece_lengths)
    n = len(piece_lengths)
    if n != plan.pieces:
        raise ValueError(f"plan is for {plan.pieces} pieces, got {n}")
    index_dtype = np.int32 if max(n, plan.n_bins, plan.ctx) < 2**31 - 1 else np.int64
    order = descending_order(piece_lengths, plan.ctx)
    bins = np.empty(n, dtype=index_dtype)
    offsets = np.empty(n, dtype=index_dtype)
    ramp = np.arange(int(plan.n_pieces.max()) if n else 0, dtype=index_dtype)
    lo = 0
    # Events are contiguous runs of the longest-first order, so every write below is sequential.
    for size, count, first_bin, per_bin, start in zip(plan.size.tolist(), plan.n_pieces.tolist(),
                                                      plan.first_bin.tolist(), plan.per_bin.tolist(),
                                                      plan.start_offset.tolist(), strict=True):
        hi = lo + count
        if per_bin == 1:
            np.add(ramp[:count], first_bin, out=bins[lo:hi])
            offsets[lo:hi] = start
        else:
            seq, slot = np.divmod(ramp[:count], per_bin)
            np.add(seq, first_bin, out=bins[lo:hi])
            window = offsets[lo:hi]
            np.multiply(slot, size, out=window)
            np.add(window, start, out=window)
        lo = hi
    return Placement(plan.n_bins, order, bins, offsets)


def plan_pieces(piece_lengths: np.ndarray, ctx: int) -> Placement:
    """Best-fit-decreasing placement of pieces of length ``1..ctx``."""
    piece_lengths = np.asarray(piece_lengths)
    if piece_lengths.size and (piece_lengths.min() < 1 or piece_lengths.max() > ctx):
        raise ValueError("piece lengths must lie in 1..ctx")
    counts = np.bincount(piece_lengths, minlength=ctx + 1)
    return assign_slots(plan_capacities(counts, ctx), piece_lengths)
