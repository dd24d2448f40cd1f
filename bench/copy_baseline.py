"""The I/O floor for end-to-end packing: read every Parquet shard and write it back with the same compression.

Run as ``python -m bench.copy_baseline OUT IN...``; a separate process, so it is timed like ``bestfit pack``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq


def copy(inputs: list[Path], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(inputs):
        source = pq.ParquetFile(path)
        compression = source.metadata.row_group(0).column(0).compression.lower()
        table = source.read()
        pq.write_table(table, out / f"{index:05d}.parquet", compression=compression,
                       row_group_size=source.metadata.row_group(0).num_rows)


def main() -> None:
    out, *folders = sys.argv[1:]
    inputs = sorted(p for folder in folders for p in Path(folder).rglob("*.parquet"))
    copy(inputs, Path(out))


if __name__ == "__main__":
    main()
