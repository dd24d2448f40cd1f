"""Small synthetic corpora for the verify, fault and fuzz tests: documents of chosen lengths with random ids."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def documents(lengths: Sequence[int], seed: int = 0, high: int = 50_000) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, high, size=n).tolist() for n in lengths]


def write_parquet(path: Path, docs: Sequence[Sequence[int]], value_type: pa.DataType | None = None,
                  row_group_size: int = 1024) -> Path:
    value_type = value_type or pa.int32()
    table = pa.table({"id": [f"d{i}" for i in range(len(docs))],
                      "input_ids": pa.array(docs, type=pa.list_(value_type))})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_jsonl(path: Path, docs: Sequence[Sequence[int]]) -> Path:
    path.write_text("".join(json.dumps({"input_ids": list(d)}) + "\n" for d in docs))
    return path


def corpus(folder: Path, n_docs: int, seed: int = 0, max_len: int = 400) -> Path:
    """A folder of two Parquet files and one JSONL file, ``n_docs`` documents in all, lengths 0..max_len."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    docs = documents(rng.integers(0, max_len + 1, size=n_docs).tolist(), seed)
    third = n_docs // 3
    write_parquet(folder / "a.parquet", docs[:third])
    write_parquet(folder / "b.parquet", docs[third:2 * third], pa.int64())
    write_jsonl(folder / "c.jsonl", docs[2 * third:])
    return folder


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, for byte-for-byte comparisons of outputs."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
