"""Benchmark 4: ``bestfit stats`` against reading the same files' document lengths alone."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from .common import BESTFIT, dir_bytes, log, run, save
from .timing import interleaved, summary

CTX = 2048
EOS = 100257


def main(folders: list[Path], repeats: int = 3) -> dict[str, Any]:
    help_run = run([*BESTFIT, "--help"])
    if "stats" not in help_run.stdout:
        log("bestfit stats does not exist yet: benchmark 4 skipped")
        payload: dict[str, Any] = {"skipped": "bestfit stats is not available"}
        save("stats", payload)
        return payload
    load_before = os.getloadavg()
    runs = interleaved({
        "lengths_only": lambda: [sys.executable, "-m", "bench.lengths_baseline", *map(str, folders)],
        "stats": lambda: [*BESTFIT, "stats", *map(str, folders), "--ctx", str(CTX), "--eos-id", str(EOS), "--json",
                          "-q"]}, repeats)
    baseline, stats = summary(runs["lengths_only"]), summary(runs["stats"])
    stats_default = json.loads(runs["stats"][-1].stdout)
    payload = {"input_bytes": sum(dir_bytes(f) for f in folders), "ctx": CTX, "repeats": repeats,
               "lengths_only": {"seconds": baseline["median_seconds"], **baseline,
                                **json.loads(runs["lengths_only"][-1].stdout)},
               "stats": {"seconds": stats["median_seconds"], **stats,
                         "strategies": sorted({r.get("strategy", "?") for r in stats_default.get("results", [])})},
               "stats_over_lengths": round(stats["median_seconds"] / baseline["median_seconds"], 2),
               "stats_over_lengths_cpu": round(stats["median_cpu_seconds"] / baseline["median_cpu_seconds"], 2),
               "load_average": {"before": load_before, "after": os.getloadavg()}}
    log(f"stats {stats['median_seconds']}s vs lengths alone {baseline['median_seconds']}s: "
        f"{payload['stats_over_lengths']}x (target 1.1x)")
    save("stats", payload)
    return payload
