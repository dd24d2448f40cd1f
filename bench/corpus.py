"""Benchmark corpora: ../shared/corpora replicated with new document ids, or synthetic when it is absent."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .common import SHARED_CORPORA, log

COMPRESSION = "zstd"
ROW_GROUP_ROWS = 512
VOCAB = 100_256
SYNTHETIC_TOKENS = 30_000_000  # about the size of the shared corpora


def _shared_tables() -> list[tuple[str, pa.Table]]:
    files = sorted(SHARED_CORPORA.glob("*/*.parquet"))
    return [(f"{f.parent.name}-{f.stem}", pq.read_table(f)) for f in files]


def _synthetic_tables(seed: int = 0) -> list[tuple[str, pa.Table]]:
    """Lognormal lengths (median 400) and Zipf-distributed ids, so the data compresses roughly like text."""
    rng = np.random.default_rng(seed)
    tables = []
    for shard in range(4):
        lengths = np.maximum(1, rng.lognormal(np.log(400), 1.2, 20_000).astype(np.int64))
        lengths = lengths[np.cumsum(lengths) <= SYNTHETIC_TOKENS // 4]
        ids = np.minimum(rng.zipf(1.3, int(lengths.sum())), VOCAB).astype(np.int32)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))
        names = pa.array([f"synthetic:{shard}/{i}" for i in range(len(lengths))])
        tables.append((f"synthetic-{shard:05d}", pa.table({"id": names, "input_ids": column})))
    return tables


def build(dest: Path, copies: int) -> list[Path]:
    """Write ``copies`` folders ``copy-000`` ... of the source shards, each copy with its own document ids."""
    sources = _shared_tables() if (SHARED_CORPORA / "code").is_dir() else _synthetic_tables()
    kind = "shared corpora" if (SHARED_CORPORA / "code").is_dir() else "synthetic data"
    log(f"writing {copies} copies of the {kind} to {dest}")

    def write_copy(copy: int) -> Path:
        folder = dest / f"copy-{copy:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, table in sources:
            ids = pc.binary_join_element_wise(table["id"], pa.scalar(f"copy{copy}"), "#")
            renamed = table.set_column(table.schema.get_field_index("id"), "id", ids)
            pq.write_table(renamed, folder / f"{name}.parquet", compression=COMPRESSION,
                           row_group_size=ROW_GROUP_ROWS)
        return folder

    with ThreadPoolExecutor(max_workers=2) as pool:  # pyarrow releases the GIL while it encodes
        return list(pool.map(write_copy, range(copies)))
