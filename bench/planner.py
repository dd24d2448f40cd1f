"""Benchmark 1: the planner (document lengths -> pieces -> BFD plan with every slot assigned).

Compared with a straightforward per-document best-fit decreasing written here in plain Python: pieces sorted
longest first, each put into the open sequence with the least free space that fits it. Open sequences are kept in
buckets by free space with a sorted list of the non-empty free-space values, so each piece costs a bisect, not a
scan; that is the usual "optimised" per-item BFD. Both must open the same number of sequences.
"""

from __future__ import annotations

import bisect
import gc
import time
from typing import Any

import numpy as np

from bestfit_cli.pipeline import place
from bestfit_cli.window import make_pieces

from .common import log, save

MEDIAN = 400
SIGMA = 1.2  # P(length > 2048) ~ 9 %, P(> 8192) ~ 0.6 %, max in the millions of tokens at 100M documents


def lognormal_lengths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = np.empty(n, dtype=np.int64)
    step = 1 << 24
    for lo in range(0, n, step):  # in chunks, so 100M float64 draws never sit in memory at once
        hi = min(n, lo + step)
        lengths[lo:hi] = np.maximum(1, rng.lognormal(np.log(MEDIAN), SIGMA, hi - lo).astype(np.int64))
    return lengths


def bestfit_plan(lengths: np.ndarray, ctx: int) -> int:
    pieces = make_pieces(lengths, ctx, eos=False, long_docs="split")
    placement = place(pieces, ctx)
    return placement.n_bins


def _pieces_longest_first(lengths: np.ndarray, ctx: int) -> list[int]:
    """Documents split into ctx-sized chunks plus a remainder, one Python int a piece, longest first."""
    pieces: list[int] = []
    for length in lengths.tolist():
        full, rest = divmod(length, ctx)
        pieces.extend([ctx] * full)
        if rest:
            pieces.append(rest)
    pieces.sort(reverse=True)
    return pieces


def reference_bfd(lengths: np.ndarray, ctx: int) -> int:
    """Per-document BFD in plain Python; returns the number of sequences (every piece gets a bin and offset)."""
    pieces = _pieces_longest_first(lengths, ctx)
    buckets: dict[int, list[int]] = {}  # free space -> open sequences with exactly that much room
    frees: list[int] = []  # sorted free-space values that have open sequences
    fill: list[int] = []
    slot_bin = [0] * len(pieces)
    slot_offset = [0] * len(pieces)
    for i, size in enumerate(pieces):
        k = bisect.bisect_left(frees, size)
        if k == len(frees):
            seq = len(fill)
            fill.append(0)
        else:
            free = frees[k]
            bucket = buckets[free]
            seq = bucket.pop()
            if not bucket:
                del buckets[free]
                frees.pop(k)
        slot_bin[i], slot_offset[i] = seq, fill[seq]
        fill[seq] += size
        left = ctx - fill[seq]
        if left:
            if left not in buckets:
                buckets[left] = []
                bisect.insort(frees, left)
            buckets[left].append(seq)
    return len(fill)


def _time(fn: Any, *args: Any) -> tuple[float, int]:
    gc.collect()
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def main(sizes: list[int], reference_sizes: list[int], textbook_sizes: list[int], ctxs: list[int]) -> dict[str, Any]:
    rows = []
    for n in sizes:
        lengths = lognormal_lengths(n)
        for ctx in ctxs:
            seconds, n_bins = _time(bestfit_plan, lengths, ctx)
            row: dict[str, Any] = {"documents": n, "ctx": ctx, "tokens": int(lengths.sum()),
                                   "long_documents": int((lengths > ctx).sum()), "bestfit_seconds": round(seconds, 3),
                                   "sequences": n_bins, "docs_per_second": round(n / seconds)}
            log(f"planner n={n:,} ctx={ctx}: bestfit {seconds:.2f}s, {n_bins:,} sequences")
            if n in reference_sizes:
                ref_seconds, ref_bins = _time(reference_bfd, lengths, ctx)
                if ref_bins != n_bins:
                    raise AssertionError(f"reference BFD opened {ref_bins} sequences, bestfit {n_bins}")
                row.update(reference_seconds=round(ref_seconds, 3), speedup=round(ref_seconds / seconds, 1))
                log(f"  bucketed reference {ref_seconds:.1f}s: {ref_seconds / seconds:.0f}x")
            if n in textbook_sizes:
                ref_seconds, ref_bins = _time(reference_bfd_sorted, lengths, ctx)
                if ref_bins != n_bins:
                    raise AssertionError(f"textbook BFD opened {ref_bins} sequences, bestfit {n_bins}")
                row.update(textbook_seconds=round(ref_seconds, 3), textbook_speedup=round(ref_seconds / seconds, 1))
                log(f"  textbook reference {ref_seconds:.1f}s: {ref_seconds / seconds:.0f}x")
            rows.append(row)
        del lengths
    payload = {"median": MEDIAN, "sigma": SIGMA, "rows": rows}
    save("planner", payload)
    return payload


def reference_bfd_sorted(lengths: np.ndarray, ctx: int) -> int:
    """The textbook per-document BFD: open sequences in one list sorted by free space, a bisect per piece."""
    pieces = _pieces_longest_first(lengths, ctx)
    open_seqs: list[tuple[int, int]] = []  # (free space, sequence), sorted
    fill: list[int] = []
    slot_bin = [0] * len(pieces)
    slot_offset = [0] * len(pieces)
    for i, size in enumerate(pieces):
        k = bisect.bisect_left(open_seqs, (size, -1))
        if k == len(open_seqs):
            seq = len(fill)
            fill.append(0)
        else:
            seq = open_seqs.pop(k)[1]
        slot_bin[i], slot_offset[i] = seq, fill[seq]
        fill[seq] += size
        if fill[seq] < ctx:
            bisect.insort(open_seqs, (ctx - fill[seq], seq))
    return len(fill)
