"""Side-by-side timing: contenders run interleaved, each repeat in its own process, medians compared."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any

from .common import Run, log, run


def interleaved(contenders: dict[str, Callable[[], list[str]]], repeats: int,
                after: Callable[[str], None] | None = None) -> dict[str, list[Run]]:
    """Run every contender once per round, in the same order each round, ``repeats`` rounds; ``after(name)`` cleans
    up after each run (an output folder)."""
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    for round_no in range(repeats):
        for name, command in contenders.items():
            result = run(command())
            runs[name].append(result)
            log(f"  round {round_no + 1}/{repeats} {name}: {result.seconds:.1f}s, {result.cpu_seconds:.1f}s CPU, "
                f"{result.peak_rss_bytes / 2**20:.0f} MiB (helpers {result.helper_peak_rss_bytes / 2**20:.0f}), "
                f"load {os.getloadavg()[0]:.1f}")
            if after is not None:
                after(name)
    return runs


def summary(runs: list[Run]) -> dict[str, Any]:
    return {"median_seconds": round(statistics.median(r.seconds for r in runs), 2),
            "seconds": [round(r.seconds, 2) for r in runs],
            "median_cpu_seconds": round(statistics.median(r.cpu_seconds for r in runs), 2),
            "peak_rss_mib": max(round(r.peak_rss_bytes / 2**20) for r in runs),
            "helper_peak_rss_mib": max(round(r.helper_peak_rss_bytes / 2**20) for r in runs)}
