"""Encoding choices for a shard: one packed shard of real token ids re-encoded with each candidate, timed.

Run by ``python -m bench --only encoding``: packs the shared corpora (synthetic data when they are absent) at ctx 2048,
takes the first shard (8,192 rows, 16M tokens) and writes it with ``pyarrow.parquet.write_table`` into memory under
each variant, interleaved, ``repeats`` times; medians and sizes go to ``bench/results/encoding.json``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from statistics import median
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .common import BESTFIT, log, remove, run, save

PIECE_COLUMNS = ["seq_lengths.list.element", "doc_index.list.element", "doc_offset.list.element"]
DELTA = dict.fromkeys(("seq_lengths", "doc_index", "doc_offset"), "DELTA_BINARY_PACKED")
BASE: dict[str, Any] = {"compression": "zstd", "row_group_size": 1024, "use_dictionary": False}
VARIANTS: dict[str, dict[str, Any]] = {
    "statistics everywhere (before)": {},
    "statistics on piece columns only (now)": {"write_statistics": PIECE_COLUMNS},
    "no statistics at all": {"write_statistics": False},
    "now + DELTA_BINARY_PACKED piece columns": {"write_statistics": PIECE_COLUMNS, "column_encoding": DELTA},
    "now + no page index": {"write_statistics": PIECE_COLUMNS, "write_page_index": False},
    "now + zstd level 3": {"write_statistics": PIECE_COLUMNS, "compression_level": 3},
    "now + lz4": {"write_statistics": PIECE_COLUMNS, "compression": "lz4"},
    "now + 8,192-row row groups": {"write_statistics": PIECE_COLUMNS, "row_group_size": 8192},
    "now + 4 MiB data pages": {"write_statistics": PIECE_COLUMNS, "data_page_size": 4 << 20},
    "dictionary pages on (pyarrow's default)": {"write_statistics": PIECE_COLUMNS, "use_dictionary": True},
}


def main(folders: list[Path], scratch: Path, repeats: int = 5) -> dict[str, Any]:
    out = scratch / "encoding-out"
    run([*BESTFIT, "pack", *map(str, folders), str(out), "--ctx", "2048", "--eos-id", "100257", "--quiet",
         "--overwrite"])
    first = sorted(out.glob("train-00000000-00000000-*.parquet"))[0]
    table = pq.read_table(first)
    remove(out)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    sizes: dict[str, int] = {}
    for _ in range(repeats):
        for name, options in VARIANTS.items():
            sink = pa.BufferOutputStream()
            started = time.perf_counter()
            pq.write_table(table, sink, **{**BASE, **options})
            times[name].append(round(time.perf_counter() - started, 4))
            sizes[name] = sink.getvalue().size
    before = median(times["statistics everywhere (before)"])
    rows = [{"variant": name, "seconds": times[name], "median_seconds": median(times[name]),
             "relative_time": round(median(times[name]) / before, 3), "bytes": sizes[name]} for name in VARIANTS]
    for row in rows:
        log(f"encoding {row['variant']}: {row['median_seconds']:.3f}s ({row['relative_time']}x), "
            f"{row['bytes'] / 2**20:.2f} MiB")
    payload = {"rows_in_shard": table.num_rows, "tokens_in_shard": len(table.column("input_ids").combine_chunks()
                                                                       .flatten()),
               "repeats": repeats, "variants": rows, "load_average": os.getloadavg()}
    save("encoding", payload)
    return payload
