"""Benchmarks 2 and 3: ``bestfit pack`` against a pyarrow copy of the same shards (``copy_baseline.py``), and
peak memory at 1x and 10x the corpus.

Every command runs in its own process; wall time and that process's peak resident memory come from ``wait4``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from statistics import median
from typing import Any

from bestfit_cli.entry import ALLOCATOR_OPTIONS

from .common import BESTFIT, dir_bytes, log, remove, run, run_together, save

COPY_MODULE = "bench.copy_baseline"

CTX = 2048
EOS = 100257


def pack_cmd(folders: list[Path], out: Path, *extra: str) -> list[str]:
    return [*BESTFIT, "pack", *map(str, folders), str(out), "--ctx", str(CTX), "--eos-id", str(EOS), "--quiet",
            "--json", "--overwrite", *extra]


def timed_pack(folders: list[Path], out: Path, *extra: str) -> dict[str, Any]:
    result = run(pack_cmd(folders, out, *extra))
    report = json.loads(result.stdout)
    row = {"args": list(extra), "seconds": round(result.seconds, 2), "cpu_seconds": round(result.cpu_seconds, 2),
           "peak_rss_mib": round(result.peak_rss_bytes / 2**20),
           "input_tokens": report["input_tokens"], "sequences": report["sequences"], "windows": report["windows"],
           "output_bytes": dir_bytes(out)}
    remove(out)
    log(f"pack {' '.join(extra) or '(defaults)'}: {row['seconds']}s, peak {row['peak_rss_mib']} MiB, "
        f"{row['windows']} windows")
    return row


def _copy(folders: list[Path], out: Path, *flags: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run([*BESTFIT[:1], "-m", COPY_MODULE, *flags, str(out), *map(str, folders)], env=env)
    row = {"args": list(flags), "env": env or {}, "seconds": round(result.seconds, 2),
           "cpu_seconds": round(result.cpu_seconds, 2),
           "peak_rss_mib": round(result.peak_rss_bytes / 2**20), "output_bytes": dir_bytes(out),
           "load_average": os.getloadavg()[0]}
    remove(out)
    log(f"pyarrow copy {' '.join(flags)}{' with ' + str(env) if env else ''}: {row['seconds']}s, "
        f"peak {row['peak_rss_mib']} MiB")
    return row


def _two_at_once(folders: list[Path], scratch: Path) -> dict[str, Any]:
    """Two independent ``pack --workers 1`` of the whole corpus at the same time, one per core: how much of a second
    core this machine gives this job when nothing at all is shared between the two (no GIL, no queue, no
    buffer), only the caches, the memory bus and the disk. ``--workers 2`` cannot scale better than this."""
    outs = [scratch / "pair-out-a", scratch / "pair-out-b"]
    seconds, runs = run_together([pack_cmd(folders, out, "--workers", "1") for out in outs])
    for out in outs:
        remove(out)
    row = {"seconds": round(seconds, 2), "each_seconds": [round(r.seconds, 2) for r in runs],
           "cpu_seconds": round(sum(r.cpu_seconds for r in runs) / len(runs), 2),
           "peak_rss_mib": round(max(r.peak_rss_bytes for r in runs) / 2**20)}
    log(f"two pack --workers 1 at once: {row['seconds']}s (each {row['each_seconds']})")
    return row


def _median(rows: list[dict[str, Any]], key: str = "seconds") -> float:
    return float(median(r[key] for r in rows))


def end_to_end(folders: list[Path], scratch: Path, repeats: int = 5) -> dict[str, Any]:
    """``pack`` at 2 and 1 workers against the copy floor (two files in flight, no dictionary pages, the inputs'
    zstd), with and without an fsync per file, and two ``--workers 1`` runs at once (the machine's own ceiling for
    two cores on this job), interleaved ``repeats`` times; medians."""
    input_bytes = sum(dir_bytes(f) for f in folders)
    log(f"end to end on {input_bytes / 2**30:.2f} GiB of Parquet in {len(folders)} folders")
    runs: dict[str, list[dict[str, Any]]] = {"copy": [], "copy_fsync": [], "pack_workers_2": [],
                                             "pack_workers_1": [], "two_workers_1_at_once": [],
                                             "copy_with_bestfit_allocator_options": []}
    # Interleaved, so a slow spell of a shared machine hits every contender; the page cache holds the input for all.
    for _ in range(repeats):
        runs["copy"].append(_copy(folders, scratch / "copy-out"))
        runs["pack_workers_2"].append(timed_pack(folders, scratch / "pack-out", "--workers", "2"))
        runs["copy_fsync"].append(_copy(folders, scratch / "copy-out", "--fsync"))
        runs["pack_workers_1"].append(timed_pack(folders, scratch / "pack-out", "--workers", "1"))
        runs["two_workers_1_at_once"].append(_two_at_once(folders, scratch))
        # The copy with the allocator options the bestfit command sets for itself (bestfit_cli/entry.py): what
        # they are worth to a bare pyarrow copy, beside what they are worth to pack.
        runs["copy_with_bestfit_allocator_options"].append(_copy(folders, scratch / "copy-out",
                                                                 env=ALLOCATOR_OPTIONS))
    med = {name: _median(rows) for name, rows in runs.items()}
    peak = {name: _median(rows, "peak_rss_mib") for name, rows in runs.items()}
    cpu = {name: _median(rows, "cpu_seconds") for name, rows in runs.items()}
    payload = {"input_bytes": input_bytes, "ctx": CTX, "repeats": repeats, **runs, "median_seconds": med,
               "median_peak_rss_mib": peak, "median_cpu_seconds": cpu,
               "pack_over_copy": round(med["pack_workers_2"] / med["copy"], 2),
               "pack_over_copy_fsync": round(med["pack_workers_2"] / med["copy_fsync"], 2),
               "pack_over_copy_with_bestfit_allocator_options": round(
                   med["pack_workers_2"] / med["copy_with_bestfit_allocator_options"], 2),
               "peak_over_copy": round(peak["pack_workers_2"] / peak["copy"], 2),
               "speedup_workers_2_over_1": round(med["pack_workers_1"] / med["pack_workers_2"], 2),
               # Two runs' work in the time of the pair, against one run's work in the time of one alone.
               "speedup_two_independent_runs": round(2 * med["pack_workers_1"] / med["two_workers_1_at_once"], 2),
               # The same two ratios round by round (each round's runs follow each other within a minute): on this
               # machine a round's ratio moves by more than the gap between the medians and the target.
               "speedup_workers_2_over_1_per_round": [
                   round(one["seconds"] / two["seconds"], 2)
                   for one, two in zip(runs["pack_workers_1"], runs["pack_workers_2"], strict=True)],
               "speedup_two_independent_runs_per_round": [
                   round(2 * one["seconds"] / pair["seconds"], 2)
                   for one, pair in zip(runs["pack_workers_1"], runs["two_workers_1_at_once"], strict=True)],
               "load_average": os.getloadavg()}
    save("end_to_end", payload)
    return payload


def memory(folders_1x: list[Path], folders_10x: list[Path], scratch: Path, window_tokens: int,
           budget: str = "1GiB") -> dict[str, Any]:
    rows = {}
    for label, folders in (("1x", folders_1x), ("10x", folders_10x)):
        rows[label] = timed_pack(folders, scratch / "pack-out", "--window-tokens", str(window_tokens))
        rows[label]["input_bytes"] = sum(dir_bytes(f) for f in folders)
    budgeted = timed_pack(folders_10x, scratch / "pack-out", "--memory", budget)
    window_mib = window_tokens * 4 / 2**20
    payload = {"window_tokens": window_tokens, "window_token_mib": window_mib, "ctx": CTX, "runs": rows,
               "growth_10x_over_1x": round(rows["10x"]["peak_rss_mib"] / rows["1x"]["peak_rss_mib"], 3),
               "memory_budget": {"budget": budget, **budgeted}, "load_average": os.getloadavg()}
    save("memory", payload)
    return payload
