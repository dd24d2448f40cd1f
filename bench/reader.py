"""Benchmark: the reader (``PackedDataset``) against a bare pyarrow read of the same shards.

The output of ``bestfit pack`` at ctx 2048 over the benchmark corpus (several windows) is read to the end by each
contender in its own process, interleaved and repeated: pyarrow reading every shard's ``input_ids`` and
``seq_lengths`` into numpy, the reader in output order and shuffled (global shuffle, int64 training columns
computed per batch), and ``PackedLoader`` with 2 DataLoader workers when torch is installed. Throughput counts the
rows and the tokens of the rows (``rows * ctx``, padding included: what a trainer is fed); the child's own clock
times the read, its start-up and imports excluded.

``python -m bench.reader MODE OUT`` is the child: it reads ``OUT`` one way and prints its counts as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import sys
import time
from pathlib import Path
from typing import Any

from .common import BESTFIT, log, remove, run, save

CTX = 2048
EOS = 100257
BATCH = 8
WINDOW_TOKENS = 4_000_000  # several windows, so the shuffle has windows to mix
MODES = ("pyarrow", "reader_ordered", "reader_shuffled", "loader_2_workers")


def read(mode: str, out: str) -> dict[str, Any]:
    """Read ``out`` to the end one way; rows, tokens and seconds."""
    import numpy as np

    if mode == "loader_2_workers":
        import torch  # noqa: F401  (imported before the clock starts, as the other modes' libraries are)
    started = time.perf_counter()
    rows = tokens = 0
    if mode == "pyarrow":
        import pyarrow.parquet as pq

        from bestfit_cli.fs import filesystem_for

        fs, root = filesystem_for(out)
        with fs.open_input_stream(posixpath.join(root, "manifest.json")) as stream:
            manifest = json.loads(stream.read())
        for shard in manifest["shards"]:
            table = pq.read_table(posixpath.join(root, shard["path"]), columns=["input_ids", "seq_lengths"],
                                  filesystem=fs)
            ids = np.asarray(table.column("input_ids").combine_chunks().values)
            rows += table.num_rows
            tokens += len(ids)
    else:
        from bestfit_cli.loader import PackedDataset, PackedLoader

        dataset = PackedDataset(out, batch_size=BATCH, seed=0, shuffle=mode != "reader_ordered")
        batches: Any = PackedLoader(dataset, num_workers=2) if mode == "loader_2_workers" else dataset
        for batch in batches:
            rows += int(batch["input_ids"].shape[0])
            tokens += int(batch["input_ids"].numel() if hasattr(batch["input_ids"], "numel")
                          else batch["input_ids"].size)
    return {"rows": rows, "tokens": tokens, "seconds": time.perf_counter() - started}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main(folders: list[Path], scratch: Path, repeats: int = 3) -> dict[str, Any]:
    out = scratch / "reader-out"
    log(f"reader: packing {len(folders)} folder(s) at ctx {CTX} into {out}")
    run([*BESTFIT, "pack", *map(str, folders), str(out), "--ctx", str(CTX), "--eos-id", str(EOS), "--quiet",
         "--overwrite", "--window-tokens", str(WINDOW_TOKENS)])
    manifest = json.loads((out / "manifest.json").read_text())
    modes = [m for m in MODES if m != "loader_2_workers" or importlib.util.find_spec("torch") is not None]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for _ in range(repeats):  # interleaved, so a slow spell of the shared machine hits every contender
        for mode in modes:
            result = run([sys.executable, "-m", "bench.reader", mode, str(out)])
            counts = json.loads(result.stdout)
            row = {**counts, "seconds": round(counts["seconds"], 3), "peak_rss_mib": round(result.peak_rss_bytes
                                                                                           / 2**20)}
            runs[mode].append(row)
            log(f"reader {mode}: {row['rows']:,} rows in {row['seconds']}s, peak {row['peak_rss_mib']} MiB")
    summary = {}
    for mode, rows in runs.items():
        seconds = _median([r["seconds"] for r in rows])
        summary[mode] = {"median_seconds": round(seconds, 3), "rows_per_second": round(rows[0]["rows"] / seconds),
                         "tokens_per_second": round(rows[0]["tokens"] / seconds),
                         "peak_rss_mib": max(r["peak_rss_mib"] for r in rows)}
    base = summary["pyarrow"]["median_seconds"]
    for mode in summary:
        summary[mode]["time_over_pyarrow"] = round(summary[mode]["median_seconds"] / base, 2)
    payload = {"ctx": CTX, "batch_size": BATCH, "window_tokens": WINDOW_TOKENS, "rows": manifest["sequences"],
               "shards": len(manifest["shards"]), "windows": len(manifest["windows"]),
               "output_bytes": sum(s["bytes"] for s in manifest["shards"]), "repeats": repeats, "runs": runs,
               "summary": summary, "load_average": os.getloadavg()}
    save("reader", payload)
    remove(out)
    return payload


if __name__ == "__main__":
    print(json.dumps(read(sys.argv[1], sys.argv[2])))
