"""Benchmark 5: peak memory of ``pack``, ``pack --verify`` and ``verify`` under ``--memory`` on short documents.

Short documents are where per-document arrays (offsets, pieces, plan, gather indices, shard columns) outweigh the
tokens, so a budget that counts tokens alone is exceeded. Each corpus is written as Parquet (1M documents a file,
random ids); every command runs in its own process and its peak RSS is compared with the budget.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .common import BESTFIT, log, remove, run, save

CTX = 2048
EOS = 100257
FILE_DOCUMENTS = 1_000_000

# name, documents, how lengths are drawn, budget: the distributions of issue 8.
CORPORA = (("27-tokens", 4_000_000, "normal 27", "1GiB"),
           ("1-3-tokens", 20_000_000, "uniform 1..3", "2GiB"),
           ("1-token", 10_000_000, "one", "1GiB"))


def _lengths(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "one":
        return np.ones(n, dtype=np.int64)
    if kind == "uniform 1..3":
        return rng.integers(1, 4, n)
    return np.maximum(1, rng.normal(27, 8, n).astype(np.int64))


def write_corpus(folder: Path, kind: str, n_docs: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lengths = _lengths(kind, n_docs, rng)
    for part, lo in enumerate(range(0, n_docs, FILE_DOCUMENTS)):
        chunk = lengths[lo:lo + FILE_DOCUMENTS]
        offsets = np.zeros(len(chunk) + 1, dtype=np.int32)
        np.cumsum(chunk, out=offsets[1:])
        ids = rng.integers(0, 100_256, int(offsets[-1]), dtype=np.int32)
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))
        pq.write_table(pa.table({"input_ids": column}), folder / f"part-{part:05d}.parquet", row_group_size=65_536)
    return int(lengths.sum())


def _measure(cmd: list[str]) -> dict[str, Any]:
    result = run(cmd)
    return {"seconds": round(result.seconds, 1), "peak_rss_mib": round(result.peak_rss_bytes / 2**20),
            "stdout": result.stdout}


def main(scratch: Path, scale: float = 1.0) -> dict[str, Any]:
    rows = []
    for name, n_docs, kind, budget in CORPORA:
        n_docs = int(n_docs * scale)
        folder, out = scratch / f"short-{name}", scratch / f"short-{name}-out"
        tokens = write_corpus(folder, kind, n_docs)
        pack = [*BESTFIT, "pack", str(folder), str(out), "--ctx", str(CTX), "--eos-id", str(EOS), "--memory", budget,
                "--quiet", "--json", "--overwrite"]
        packed = _measure(pack)
        report = json.loads(packed.pop("stdout"))
        verified = _measure([*BESTFIT, "verify", str(folder), str(out), "--json"])
        verified.pop("stdout")
        both = _measure([*pack, "--verify"])
        both.pop("stdout")
        budget_mib = {"1GiB": 1024, "2GiB": 2048}[budget]
        row = {"corpus": name, "documents": n_docs, "tokens": tokens, "budget": budget, "budget_mib": budget_mib,
               "windows": report["windows"], "sequences": report["sequences"], "pack": packed, "verify": verified,
               "pack_verify": both,
               "within_budget": all(r["peak_rss_mib"] <= budget_mib for r in (packed, verified, both))}
        log(f"{name}: pack {packed['peak_rss_mib']} MiB, verify {verified['peak_rss_mib']} MiB, pack --verify "
            f"{both['peak_rss_mib']} MiB under {budget} ({report['windows']} windows)")
        rows.append(row)
        remove(out)
        remove(folder)
    payload = {"ctx": CTX, "eos_id": EOS, "scale": scale, "runs": rows, "load_average": os.getloadavg()}
    save("short_docs", payload)
    return payload
