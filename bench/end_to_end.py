"""Benchmarks 2 and 3: ``bestfit pack`` against a bare pyarrow copy, and peak memory at 1x and 10x the corpus.

Every command runs in its own process; wall time and that process's peak resident memory come from ``wait4``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .common import BESTFIT, dir_bytes, log, remove, run, save

COPY_MODULE = "bench.copy_baseline"

CTX = 2048
EOS = 100257


def pack_cmd(folders: list[Path], out: Path, *extra: str) -> list[str]:
    return [*BESTFIT, "pack", *map(str, folders), str(out), "--ctx", str(CTX), "--eos-id", str(EOS), "--quiet",
            "--json", "--overwrite", *extra]


def timed_pack(folders: list[Path], out: Path, *extra: str) -> dict[str, Any]:
    result = run(pack_cmd(folders, out, *extra))
    report = json.loads(result.stdout)
    row = {"args": list(extra), "seconds": round(result.seconds, 2),
           "peak_rss_mib": round(result.peak_rss_bytes / 2**20),
           "input_tokens": report["input_tokens"], "sequences": report["sequences"], "windows": report["windows"],
           "output_bytes": dir_bytes(out)}
    remove(out)
    log(f"pack {' '.join(extra) or '(defaults)'}: {row['seconds']}s, peak {row['peak_rss_mib']} MiB, "
        f"{row['windows']} windows")
    return row


def _copy(folders: list[Path], out: Path) -> dict[str, Any]:
    result = run([*BESTFIT[:1], "-m", COPY_MODULE, str(out), *map(str, folders)])
    row = {"seconds": round(result.seconds, 2), "peak_rss_mib": round(result.peak_rss_bytes / 2**20),
           "output_bytes": dir_bytes(out)}
    remove(out)
    log(f"pyarrow copy: {row['seconds']}s")
    return row


def _median(rows: list[dict[str, Any]]) -> float:
    values = sorted(r["seconds"] for r in rows)
    return float(values[len(values) // 2]) if len(values) % 2 else (values[len(values) // 2 - 1] + values[
        len(values) // 2]) / 2


def end_to_end(folders: list[Path], scratch: Path, repeats: int = 2) -> dict[str, Any]:
    input_bytes = sum(dir_bytes(f) for f in folders)
    log(f"end to end on {input_bytes / 2**30:.2f} GiB of Parquet in {len(folders)} folders")
    copies, packs2, packs1 = [], [], []
    # Interleaved, so a slow spell of a shared machine hits every contender; the page cache holds the input for all.
    for _ in range(repeats):
        copies.append(_copy(folders, scratch / "copy-out"))
        packs2.append(timed_pack(folders, scratch / "pack-out", "--workers", "2"))
        packs1.append(timed_pack(folders, scratch / "pack-out", "--workers", "1"))
    copy_s, pack2_s, pack1_s = _median(copies), _median(packs2), _median(packs1)
    payload = {"input_bytes": input_bytes, "ctx": CTX, "repeats": repeats, "copy": copies,
               "pack_workers_2": packs2, "pack_workers_1": packs1,
               "median_seconds": {"copy": copy_s, "pack_workers_2": pack2_s, "pack_workers_1": pack1_s},
               "pack_over_copy": round(pack2_s / copy_s, 2), "speedup_workers_2_over_1": round(pack1_s / pack2_s, 2),
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
