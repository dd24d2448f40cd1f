"""``bestfit pack`` of JSON Lines against a per-line parse with a fast JSON parser (``bench/jsonl_baseline.py``).

The JSONL corpus is the benchmark corpus's documents (``../shared/corpora``, or synthetic data) written as
``{"id": "...", "input_ids": [...]}`` lines, compact as most writers make them, ``copies`` times over.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .common import BESTFIT, SHARED_CORPORA, log, remove, save
from .corpus import _shared_tables, _synthetic_tables
from .timing import interleaved, summary

CTX = 2048
EOS = 100257
PARSERS = ("orjson", "msgspec")


def build_jsonl(dest: Path, copies: int) -> list[Path]:
    import orjson

    tables = _shared_tables() if (SHARED_CORPORA / "code").is_dir() else _synthetic_tables()
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for copy in range(copies):
        path = dest / f"copy-{copy:03d}.jsonl"
        with path.open("wb") as out:
            for _, table in tables:
                for doc_id, ids in zip(table["id"].to_pylist(), table["input_ids"].to_pylist(), strict=True):
                    out.write(orjson.dumps({"id": f"{doc_id}#copy{copy}", "input_ids": ids}) + b"\n")
        paths.append(path)
    log(f"wrote {copies} JSONL files, {sum(p.stat().st_size for p in paths) / 2**20:.0f} MiB, to {dest}")
    return paths


def main(scratch: Path, copies: int, repeats: int = 3) -> dict[str, Any]:
    files = build_jsonl(scratch / "jsonl", copies)
    out = scratch / "jsonl-pack-out"
    contenders = {f"{p}_per_line": (lambda p=p: [sys.executable, "-m", "bench.jsonl_baseline", p, *map(str, files)])
                  for p in PARSERS}
    contenders["pack"] = lambda: [*BESTFIT, "pack", *map(str, files), str(out), "--ctx", str(CTX), "--eos-id",
                                  str(EOS), "--quiet", "--json", "--overwrite"]
    # One core: the lines parsed in the reader's own process, no parse workers (what --workers 2 gains).
    contenders["pack_workers_1"] = lambda: [*contenders["pack"](), "--workers", "1"]
    load_before = os.getloadavg()
    runs = interleaved(contenders, repeats, after=lambda name: remove(out))
    rows = {name: summary(r) for name, r in runs.items()}
    fastest = min(PARSERS, key=lambda p: rows[f"{p}_per_line"]["median_seconds"])
    floor = rows[f"{fastest}_per_line"]["median_seconds"]
    payload = {"input_bytes": sum(f.stat().st_size for f in files), "files": len(files), "ctx": CTX,
               "repeats": repeats, "runs": rows, "fastest_parser": fastest,
               "pack_over_parse": round(rows["pack"]["median_seconds"] / floor, 2),
               "pack_workers_1_over_parse": round(rows["pack_workers_1"]["median_seconds"] / floor, 2),
               "pack_over_parse_cpu": round(rows["pack"]["median_cpu_seconds"]
                                            / rows[f"{fastest}_per_line"]["median_cpu_seconds"], 2),
               "load_average": {"before": load_before, "after": os.getloadavg()}}
    log(f"JSONL pack {rows['pack']['median_seconds']}s vs per-line {fastest} {floor}s: "
        f"{payload['pack_over_parse']}x (target 1.2x)")
    save("jsonl", payload)
    remove(scratch / "jsonl")
    return payload
