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


def write_megatron(prefix: Path, docs: Sequence[Sequence[int]], dtype: type = np.int32, chunk: int = 50) -> Path:
    """A Megatron ``.bin``/``.idx`` pair in megatron-core's layout (written here, without megatron-core), each
    document cut into sequences of ``chunk`` tokens as Megatron-LM's preprocess_data.py cuts them."""
    lengths: list[int] = []
    document_index = [0]
    for doc in docs:
        lengths += [chunk] * (len(doc) // chunk) + ([len(doc) % chunk] if len(doc) % chunk else [])
        document_index.append(len(lengths))
    itemsize = np.dtype(dtype).itemsize
    pointers = (np.cumsum([0, *lengths[:-1]]) * itemsize) if lengths else np.empty(0)
    code = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4, np.dtype(np.int64): 5}[np.dtype(dtype)]
    head = b"MMIDIDX\x00\x00" + np.array([1], "<u8").tobytes() + bytes([code]) + np.array(
        [len(lengths), len(document_index)], "<u8").tobytes()
    Path(f"{prefix}.idx").write_bytes(head + np.array(lengths, "<i4").tobytes() + np.array(pointers, "<i8").tobytes()
                                      + np.array(document_index, "<i8").tobytes())
    flat = [t for doc in docs for t in doc]
    Path(f"{prefix}.bin").write_bytes(np.array(flat, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())
    return Path(f"{prefix}.bin")


def write_stream(path: Path, docs: Sequence[Sequence[int]], separator: int, dtype: type = np.uint16) -> Path:
    """A flat token stream (raw ``.bin``, or ``.npy`` by the name): every document followed by ``separator``."""
    flat = np.array([t for doc in docs for t in [*doc, separator]], dtype=dtype)
    if path.suffix == ".npy":
        np.save(path, flat)
    else:
        flat.tofile(path)
    return path


def write_arrow(path: Path, docs: Sequence[Sequence[int]], stream: bool, batch_rows: int) -> Path:
    """An Arrow IPC file (``stream`` False: random access by record batch) or stream of ``batch_rows`` rows a
    record batch, one ``input_ids`` column of int32 lists."""
    table = pa.table({"input_ids": pa.array(docs, pa.list_(pa.int32()))})
    opener = pa.ipc.new_stream if stream else pa.ipc.new_file
    with opener(str(path), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch)
    return path
