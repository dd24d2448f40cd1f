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
from typing import Any

import numpy as np
import numpy.typing as npt


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
    # One step per event, written out in one loop (no helper calls): a window of 16M tokens at ctx 2048 has about
    # 2,700 events, and pack and stats plan one window after another.
    bisect_left, insort, append = bisect.bisect_left, bisect.insort, events.append
    per_size = counts.tolist()
    for size in np.flatnonzero(counts[::-1][:-1]).tolist():
        size = ctx - size
        remaining = per_size[size]
        while remaining:
            i = bisect_left(frees, size)
            if i < len(frees):  # the tightest class that fits: take sequences from the front of its first range
                free = frees[i]
                per_bin = free // size
                queue = ranges[free]
                head = queue[0]
                full = min(head[1], remaining // per_bin)
                n = full or 1
                first = head[0]
                head[0] += n
                head[1] -= n
                if not head[1]:
                    queue.popleft()
                    if not queue:
                        del ranges[free]
                        del frees[i]
            else:  # none fits: open new sequences
                free, per_bin = ctx, ctx // size
                full = remaining // per_bin
                n = full or 1
                first = next_bin
                next_bin += n
            if full:  # ``full`` sequences of ``per_bin`` pieces each
                append((size, full * per_bin, first, per_bin, ctx - free))
                left = free % size
                remaining -= full * per_bin
            else:  # fewer pieces left than one sequence of this class takes: they all go into one sequence
                append((size, remaining, first, per_bin, ctx - free))
                left = free - remaining * size
                remaining = 0
            if left:  # the sequences just filled, with what they have left
                into = ranges.get(left)
                if into is None:
                    ranges[left] = deque([[first, n]])
                    insort(frees, left)
                else:
                    into.append([first, n])

    table = np.array(events, dtype=np.int64).reshape(-1, 5)
    return CapacityPlan(ctx, next_bin, table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy(),
                        table[:, 3].copy(), table[:, 4].copy())


def longest_first(piece_lengths: np.ndarray, ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of pieces sorted longest first, ties in input order (a stable counting sort by blocks), and
    ``counts[s]``, the number of pieces of length ``s`` (what ``plan_capacities`` takes).

    Each block of ``_SORT_BLOCK`` pieces (or more, for a large ctx) is sorted on its own, where it fits in the
    cache, as one array of ``key << bits | position in the block``: the values are distinct, so numpy's fastest
    sort (vectorised where the CPU has AVX2 or AVX-512) gives exactly the stable order, and measured about a
    quarter faster than a stable argsort of the keys. The blocks' length histograms say where each block's pieces
    of each length go among all pieces of that length (after those of earlier blocks), so one scatter a block
    puts them in place. The order is int32 below 2**31 pieces and the only array as long as the pieces that this
    allocates (docs/benchmarks.md, "Planner").
    """
    piece_lengths = np.asarray(piece_lengths)
    n = len(piece_lengths)
    block = max(_SORT_BLOCK, 16 * ctx)  # the histograms stay a sixteenth of the pieces or less
    position_bits = (min(n, block) - 1).bit_length()
    # Keys hold a block position, and then a piece's position overall.
    key_type = np.uint32 if position_bits + (ctx - 1).bit_length() <= 32 and n < 2**32 else np.uint64
    n_blocks = -(-n // block)
    block_counts = np.empty((n_blocks, ctx + 1), dtype=np.int32 if block < 2**31 else np.int64)  # by length
    for b in range(n_blocks):
        block_counts[b] = np.bincount(piece_lengths[b * block:(b + 1) * block], minlength=ctx + 1)
    counts = block_counts.sum(axis=0, dtype=np.int64)
    by_key = counts[::-1]  # key = ctx - length: 0 for the longest pieces
    next_slot = np.cumsum(by_key) - by_key  # where the next piece of each key goes in the whole order
    order = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)
    ramp = np.arange(min(n, block), dtype=np.int64)
    key_ramp: npt.NDArray[np.unsignedinteger[Any]] = ramp.astype(key_type)
    sorted_keys: npt.NDArray[np.unsignedinteger[Any]] = np.empty(min(n, block), dtype=key_type)
    for b in range(n_blocks):
        lo = b * block
        block_lengths = piece_lengths[lo:lo + block]
        m = len(block_lengths)
        keys = sorted_keys[:m]
        np.subtract(ctx, block_lengths, out=keys, casting="unsafe")
        keys <<= position_bits
        keys |= key_ramp[:m]
        keys.sort()
        # The k-th piece of the block's own order goes to k + (the next slot of its key overall)
        # - (where its key starts within the block).
        in_block = block_counts[b, ::-1]
        destination = np.repeat(next_slot - (np.cumsum(in_block) - in_block), in_block)
        destination += ramp[:m]
        keys &= (1 << position_bits) - 1  # the positions in the block, in the block's own order
        if lo:
            keys += lo
        # Of the same width as the order, the keys scatter without a cast (measured: a third faster).
        order[destination] = keys.view(order.dtype) if keys.itemsize == order.itemsize else keys
        next_slot += in_block
    return order, counts


_SORT_BLOCK = 1 << 16  # pieces sorted at once by longest_first (measured: 2**15 to 2**17 about alike)


@dataclass(frozen=True)
class Placement:
    """Sequence and starting token of every piece.

    Kept in the planner's longest-first order: piece ``order[i]`` goes to sequence ``sorted_bin[i]`` at token
    ``sorted_offset[i]``. ``bin`` and ``offset`` give the same indexed like the pieces passed to ``assign_slots``.
    The arrays are as narrow as their values allow, to halve the memory traffic of 100M pieces: ``order`` and
    ``sorted_bin`` int32 below 2**31 pieces (int64 beyond), ``sorted_offset`` int16 up to ctx 32768
    (``offset_dtype``). Widen them (``astype(np.int64)``) before arithmetic that can leave those ranges.
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


def assign_slots(plan: CapacityPlan, piece_lengths: np.ndarray, order: np.ndarray | None = None) -> Placement:
    """Give every piece its sequence and offset, following the plan's events.

    ``order`` is ``longest_first(piece_lengths, plan.ctx)[0]`` when the caller has it already. Event ``e`` takes
    the next ``n_pieces[e]`` pieces of the longest-first order, ``per_bin[e]`` to a sequence: seen as a table of
    one row a sequence, its sequences are a ramp down the rows and its offsets the same in every row, written in
    cache-sized steps without index arrays, so memory traffic stays near one write per piece.
    """
    piece_lengths = np.asarray(piece_lengths)
    n = len(piece_lengths)
    if n != plan.pieces:
        raise ValueError(f"plan is for {plan.pieces} pieces, got {n}")
    if order is None:
        order = longest_first(piece_lengths, plan.ctx)[0]
    bins = np.empty(n, dtype=np.int32 if max(n, plan.n_bins) < 2**31 else np.int64)
    offsets = np.empty(n, dtype=offset_dtype(plan.ctx))
    if n <= _AT_ONCE_PIECES:
        _slots_at_once(plan, bins, offsets)
        return Placement(plan.n_bins, order, bins, offsets)
    ramp = np.arange(max(_SLOT_STEP, plan.ctx), dtype=np.int64)
    lo = 0
    # Events are contiguous runs of the longest-first order, so every write below is sequential.
    for size, count, first_bin, per_bin, start in zip(plan.size.tolist(), plan.n_pieces.tolist(),
                                                      plan.first_bin.tolist(), plan.per_bin.tolist(),
                                                      plan.start_offset.tolist(), strict=True):
        full, rest = divmod(count, per_bin)  # full sequences, and pieces left for one more (one of them is 0)
        row_offsets = ramp[:min(per_bin, count)] * size + start
        rows_per_step = max(1, _SLOT_STEP // per_bin)
        for row in range(0, full, rows_per_step):
            k = min(rows_per_step, full - row)
            a = lo + row * per_bin
            _write_rows(bins[a:a + k * per_bin].reshape(k, per_bin), offsets[a:a + k * per_bin].reshape(k, per_bin),
                        ramp[:k], first_bin + row, row_offsets)
        if rest:
            a = lo + full * per_bin
            bins[a:a + rest] = first_bin + full
            offsets[a:a + rest] = row_offsets[:rest]
        lo += count
    return Placement(plan.n_bins, order, bins, offsets)


def _slots_at_once(plan: CapacityPlan, bins: np.ndarray, offsets: np.ndarray) -> None:
    """``assign_slots`` for few pieces: every piece's event, and its rank within it, as arrays. A window of a few
    thousand documents has about as many events as pieces, and a Python step per event cost 8 µs (25 ms a window
    of 16M tokens at ctx 2048, against 0.3 ms here); the index arrays cost about 40 bytes a piece."""
    event = np.repeat(np.arange(len(plan.n_pieces)), plan.n_pieces)
    rank = np.arange(len(bins), dtype=np.int64) - (np.cumsum(plan.n_pieces) - plan.n_pieces)[event]
    per_bin = plan.per_bin[event]
    row = rank // per_bin
    np.add(plan.first_bin[event], row, out=bins, casting="unsafe")
    rank -= row * per_bin
    rank *= plan.size[event]
    rank += plan.start_offset[event]
    offsets[:] = rank


def offset_dtype(ctx: int) -> type[np.signedinteger]:
    """Offsets lie in ``0..ctx-1``: int16 up to ctx 32768, int32 beyond."""
    return np.int16 if ctx <= 1 << 15 else np.int32 if ctx <= 1 << 31 else np.int64


def _write_rows(bins: np.ndarray, offsets: np.ndarray, ramp: np.ndarray, first_bin: int,
                row_offsets: np.ndarray) -> None:
    """Row ``r`` of the tables ``bins`` and ``offsets`` (one row a sequence) gets sequence ``first_bin + r`` and
    the offsets ``row_offsets``. Narrow rows are written a column at a time (measured: numpy's broadcast over
    rows of 2 or 3 entries is several times slower), wide ones a row at a time."""
    per_bin = bins.shape[1]
    if per_bin < _WIDE_ROW:
        for j in range(per_bin):
            np.add(ramp, first_bin, out=bins[:, j], casting="unsafe")
            offsets[:, j] = row_offsets[j]
    else:
        np.add(ramp[:, None], first_bin, out=bins, casting="unsafe")
        offsets[:] = row_offsets


_SLOT_STEP = 1 << 16  # pieces written at once by assign_slots: the slices stay in the cache
_AT_ONCE_PIECES = 1 << 20  # up to this many pieces, assign_slots computes every slot at once (_slots_at_once)
_WIDE_ROW = 8  # from this many pieces a sequence, assign_slots writes whole rows (measured, docs/benchmarks.md)


def plan_pieces(piece_lengths: np.ndarray, ctx: int) -> Placement:
    """Best-fit-decreasing placement of pieces of length ``1..ctx``."""
    piece_lengths = np.asarray(piece_lengths)
    if piece_lengths.size and (piece_lengths.min() < 1 or piece_lengths.max() > ctx):
        raise ValueError("piece lengths must lie in 1..ctx")
    order, counts = longest_first(piece_lengths, ctx)
    return assign_slots(plan_capacities(counts, ctx), piece_lengths, order)
