"""The I/O floor for end-to-end packing: read every Parquet shard and write it back with the same compression.

Run as ``python -m bench.copy_baseline [--serial] [--dictionary] [--fsync] OUT IN...``; a separate process, so it is
timed like ``bestfit pack``. By default it is the floor issue 12 measures ``pack`` against: two files in flight (a
thread each; pyarrow releases the GIL while it decodes and encodes), no dictionary pages, the input's compression
and row-group size. ``--fsync`` flushes each written file to the disk before the next, as ``pack`` does with its
shards; ``--serial --dictionary`` is the older one-file-at-a-time copy with pyarrow's default encoding.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq


def copy_file(source_path: Path, dest: Path, *, dictionary: bool = False, fsync: bool = False) -> None:
    source = pq.ParquetFile(source_path)
    compression = source.metadata.row_group(0).column(0).compression.lower()
    table = source.read()
    pq.write_table(table, dest, compression=compression, row_group_size=source.metadata.row_group(0).num_rows,
                   use_dictionary=dictionary)
    if fsync:
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def copy(inputs: list[Path], out: Path, *, in_flight: int = 2, dictionary: bool = False, fsync: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(path, out / f"{index:05d}.parquet") for index, path in enumerate(inputs)]
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        for done in pool.map(lambda job: copy_file(*job, dictionary=dictionary, fsync=fsync), jobs):
            del done


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.copy_baseline", description=__doc__)
    parser.add_argument("--serial", action="store_true", help="one file at a time instead of two in flight")
    parser.add_argument("--dictionary", action="store_true", help="pyarrow's default dictionary pages")
    parser.add_argument("--fsync", action="store_true", help="fsync every written file, as pack does")
    parser.add_argument("out", type=Path)
    parser.add_argument("inputs", nargs="+", type=Path, help="folders of Parquet files")
    args = parser.parse_args()
    inputs = sorted(p for folder in args.inputs for p in folder.rglob("*.parquet"))
    copy(inputs, args.out, in_flight=1 if args.serial else 2, dictionary=args.dictionary, fsync=args.fsync)


if __name__ == "__main__":
    main()
