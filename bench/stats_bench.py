"""Benchmark 4: ``bestfit stats`` against reading the same files' document lengths alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .common import BESTFIT, dir_bytes, log, run, save

CTX = 2048
EOS = 100257


def main(folders: list[Path]) -> dict[str, Any]:
    help_run = run([*BESTFIT, "--help"])
    if "stats" not in help_run.stdout:
        log("bestfit stats does not exist yet: benchmark 4 skipped")
        payload: dict[str, Any] = {"skipped": "bestfit stats is not available"}
        save("stats", payload)
        return payload
    baseline = run([sys.executable, "-m", "bench.lengths_baseline", *map(str, folders)])
    stats = run([*BESTFIT, "stats", *map(str, folders), "--ctx", str(CTX), "--eos-id", str(EOS), "--json", "-q"])
    stats_default = json.loads(stats.stdout)
    payload = {"input_bytes": sum(dir_bytes(f) for f in folders), "ctx": CTX,
               "lengths_only": {"seconds": round(baseline.seconds, 2), **json.loads(baseline.stdout)},
               "stats": {"seconds": round(stats.seconds, 2), "peak_rss_mib": round(stats.peak_rss_bytes / 2**20),
                         "strategies": sorted({r.get("strategy", "?") for r in stats_default.get("results", [])})},
               "stats_over_lengths": round(stats.seconds / baseline.seconds, 2)}
    log(f"stats {stats.seconds:.1f}s vs lengths alone {baseline.seconds:.1f}s: {payload['stats_over_lengths']}x")
    save("stats", payload)
    return payload
