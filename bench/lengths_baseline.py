"""The floor for ``bestfit stats``: read every Parquet shard's token column and count document lengths, nothing else.

Run as ``python -m bench.lengths_baseline IN...``; prints the number of documents and tokens as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def main() -> None:
    inputs = sorted(p for folder in sys.argv[1:] for p in Path(folder).rglob("*.parquet"))
    counts = np.zeros(1, dtype=np.int64)
    for path in inputs:
        column = pq.read_table(path, columns=["input_ids"])["input_ids"]
        for chunk in column.chunks:
            lengths = np.diff(chunk.offsets.to_numpy())
            found = np.bincount(lengths)
            if len(found) > len(counts):
                counts = np.pad(counts, (0, len(found) - len(counts)))
            counts[:len(found)] += found
    print(json.dumps({"documents": int(counts.sum()), "tokens": int((np.arange(len(counts)) * counts).sum())}))


if __name__ == "__main__":
    main()
