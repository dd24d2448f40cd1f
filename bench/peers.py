"""The planner against compiled packers from PyPI, in the same process, on the same lengths.

Run by ``python -m bench --only peers``; the peers come from the ``bench`` extra (``pip install -e '.[bench]'``,
which ``make bench`` does). A peer that is not installed is recorded as such, never skipped silently.

The peers do not split documents, so they get bestfit's pieces (every document cut at ``ctx``, as ``pack`` cuts
them) and pack those; bestfit's time includes making the pieces. A peer is timed on its packing call alone, from a
Python list prepared outside the clock (its API takes a sequence of ints): turning its bins back into every piece's
sequence and offset, which ``pack`` needs and bestfit's time includes, is left out, in the peer's favour. Both must
open the same number of sequences. Runs are interleaved (bestfit, peer, bestfit, ...), medians of ``repeats``.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import time
from collections.abc import Callable
from statistics import median
from typing import Any

from bestfit_cli.window import make_pieces

from .common import log, save
from .planner import bestfit_plan, lognormal_lengths

PEERS = {"lightbinpack": "LightBinPack's C++ OBFD (lightbinpack.obfd)"}
# On PyPI but not runnable here: its only distribution for this platform is an sdist whose Rust build fetches crates
# from crates.io, which this machine cannot reach. Recorded in the results so a reader sees it was looked for.
NOT_INSTALLABLE = {"seqpacker": "0.1.3 ships no wheel for this platform; building its sdist needs crates.io"}


def _lightbinpack() -> Callable[[list[int], int], int]:
    import lightbinpack

    def run(pieces: list[int], ctx: int) -> int:
        return len(lightbinpack.obfd(pieces, ctx))

    return run


LOADERS: dict[str, Callable[[], Callable[[list[int], int], int]]] = {"lightbinpack": _lightbinpack}


CPU: dict[str, list[float]] = {}  # CPU seconds of each timed call, by what was timed (less sensitive to load)


def _timed(fn: Callable[..., int], *args: Any, label: str = "") -> tuple[float, int]:
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    CPU.setdefault(label or getattr(fn, "__name__", "run"), []).append(round(time.process_time() - cpu, 3))
    return time.perf_counter() - started, result


def _planner_alone(n_docs: int, ctx: int, repeats: int) -> dict[str, Any]:
    lengths = lognormal_lengths(n_docs)
    runs = []
    for _ in range(repeats):
        seconds, sequences = _timed(bestfit_plan, lengths, ctx, label="planner")
        runs.append(round(seconds, 3))
        log(f"planner: {n_docs:,} documents in {seconds:.2f}s, {sequences:,} sequences")
    return {"documents": n_docs, "seconds": runs, "median_seconds": median(runs), "sequences": sequences,
            "cpu_seconds": CPU["planner"], "median_cpu_seconds": median(CPU["planner"])}


def main(n_docs: int = 100_000_000, ctx: int = 2048, repeats: int = 3,
         planner_docs: int = 100_000_000) -> dict[str, Any]:
    """Bestfit and every peer on ``n_docs`` documents, interleaved; then bestfit alone on ``planner_docs`` (the
    ≤ 8 s target is for 100M documents), when that is another size."""
    planner_runs = _planner_alone(planner_docs, ctx, repeats) if planner_docs != n_docs else None
    lengths = lognormal_lengths(n_docs)
    available: dict[str, Callable[[list[int], int], int]] = {}
    peers: dict[str, Any] = {}
    for name, what in PEERS.items():
        try:
            available[name] = LOADERS[name]()
            peers[name] = {"what": what, "version": importlib.metadata.version(name), "seconds": []}
        except ImportError as exc:
            peers[name] = {"what": what, "installed": False, "why": str(exc)}
            log(f"peers: {name} is not available ({exc})")
    for name, why in NOT_INSTALLABLE.items():
        peers[name] = {"installed": False, "why": why}
    pieces = make_pieces(lengths, ctx, eos=False, long_docs="split").length.tolist() if available else []
    bestfit_runs: list[float] = []
    sequences = None
    for _ in range(repeats):
        seconds, sequences = _timed(bestfit_plan, lengths, ctx, label="bestfit")
        bestfit_runs.append(round(seconds, 3))
        log(f"peers: bestfit {seconds:.2f}s, {sequences:,} sequences")
        for name, run in available.items():
            seconds, bins = _timed(run, pieces, ctx, label=name)
            peers[name]["seconds"].append(round(seconds, 3))
            peers[name]["sequences"] = bins
            log(f"peers: {name} {seconds:.2f}s, {bins:,} sequences")
    bestfit_s = median(bestfit_runs)
    for name in available:
        peers[name]["median_seconds"] = median(peers[name]["seconds"])
        peers[name]["bestfit_speedup"] = round(peers[name]["median_seconds"] / bestfit_s, 2)
        peers[name]["same_sequences"] = peers[name]["sequences"] == sequences
        peers[name]["cpu_seconds"] = CPU[name]
        peers[name]["bestfit_speedup_cpu"] = round(median(CPU[name]) / median(CPU["bestfit"]), 2)
    fastest = min(available, key=lambda n: peers[n]["median_seconds"], default=None)
    if planner_runs is None:
        planner_runs = {"documents": n_docs, "seconds": bestfit_runs, "median_seconds": bestfit_s}
    payload = {"documents": n_docs, "ctx": ctx, "pieces": len(pieces), "sequences": sequences, "repeats": repeats,
               "bestfit_seconds": bestfit_runs, "bestfit_median_seconds": bestfit_s,
               "bestfit_cpu_seconds": CPU.get("bestfit", []), "peers": peers,
               "fastest_peer": fastest,
               "lead_over_fastest_peer": peers[fastest]["bestfit_speedup"] if fastest else None,
               "planner": planner_runs, "load_average": os.getloadavg()}
    save("peers", payload)
    return payload
