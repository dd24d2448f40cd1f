"""Benchmark 1: the planner (document lengths -> pieces -> BFD plan with every slot assigned).

Compared with a straightforward per-document best-fit decreasing written here in plain Python: pieces sorted
longest first, each put into the open sequence with the least free space that fits it. Open sequences are kept in
buckets by free space with a sorted list of the non-empty free-space values, so each piece costs a bisect, not a
scan; that is the usual "optimised" per-item BFD. Both must open the same number of sequences.
"""

from __future__ import annotations

import bisect
import gc
import os
import sys
import time
from typing import Any

import numpy as np

from bestfit_cli.pipeline import place
from bestfit_cli.plan import assign_slots, longest_first, plan_capacities
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


def profile(n: int = 100_000_000, ctx: int = 2048, repeats: int = 3) -> list[dict[str, Any]]:
    """``bestfit_plan`` stage by stage (``place`` spelt out), wall and CPU (user, system) seconds of each, and the
    arrays as long as the pieces that the result holds. System time is mostly page faults: first touches of
    memory, which on this VM cost more than the work done in it (docs/benchmarks.md, "Planner").

    ``python -c "from bench.planner import profile; profile(100_000_000, 2048, 3)"``
    """
    lengths = lognormal_lengths(n)
    rows = []
    for run in range(repeats):
        gc.collect()
        stages: dict[str, list[float]] = {}
        pieces = _stage(stages, "make_pieces", make_pieces, lengths, ctx, False, "split")
        order, counts = _stage(stages, "longest_first", longest_first, pieces.length, ctx)
        plan = _stage(stages, "plan_capacities", plan_capacities, counts, ctx)
        placement = _stage(stages, "assign_slots", assign_slots, plan, pieces.length, order)
        arrays = {name: f"{a.dtype} {a.nbytes / 2**20:,.0f} MiB" for name, a in
                  (("doc", pieces.doc), ("start", pieces.start), ("length", pieces.length),
                   ("order", placement.order), ("sorted_bin", placement.sorted_bin),
                   ("sorted_offset", placement.sorted_offset))}
        row = {"run": run, "documents": n, "ctx": ctx, "pieces": len(pieces.length), "events": len(plan.size),
               "sequences": placement.n_bins, "stages": stages, "arrays": arrays,
               "load_average": round(os.getloadavg()[0], 2)}
        totals = [round(sum(s[i] for s in stages.values()), 2) for i in range(3)]
        print(f"run {run}: wall {totals[0]} s, user {totals[1]} s, sys {totals[2]} s, load {row['load_average']}; "
              + ", ".join(f"{k} {v[0]}/{v[1]}/{v[2]}" for k, v in stages.items()), file=sys.stderr, flush=True)
        rows.append(row)
        del pieces, order, counts, plan, placement
    print(f"arrays: {rows[-1]['arrays']}", file=sys.stderr)
    return rows


def _stage(stages: dict[str, list[float]], name: str, fn: Any, *args: Any) -> Any:
    """``fn(*args)``, its wall, user and system seconds recorded in ``stages[name]``."""
    started, cpu = time.perf_counter(), os.times()
    result = fn(*args)
    done = os.times()
    stages[name] = [round(time.perf_counter() - started, 3), round(done.user - cpu.user, 3),
                    round(done.system - cpu.system, 3)]
    return result


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
