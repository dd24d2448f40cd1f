"""The Parquet encoding of packed shards (docs/format.md): what each column carries, and that every reader reads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bestfit_cli import PackOptions, pack
from bestfit_cli.loader import PackedDataset

from .conftest import EOS

CTX = 64


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 3 * CTX, 400)
    docs = [rng.integers(0, 100_000, n).tolist() for n in lengths]
    folder = tmp_path_factory.mktemp("encoding")
    pq.write_table(pa.table({"input_ids": pa.array(docs, type=pa.list_(pa.int32()))}), folder / "in.parquet")
    out = folder / "out"
    pack([str(folder / "in.parquet")], str(out),
         PackOptions(ctx=CTX, eos_id=EOS, rows_per_shard=200, columns=("position_ids", "labels")))
    return out


def shard_paths(out: Path) -> list[Path]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [out / shard["path"] for shard in manifest["shards"]]


def test_token_columns_have_neither_dictionary_nor_statistics_and_piece_columns_keep_theirs(packed: Path) -> None:
    paths = shard_paths(packed)
    assert len(paths) > 1
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        names = [meta.schema.column(i).path.split(".")[0] for i in range(meta.num_columns)]
        assert names == ["input_ids", "seq_lengths", "doc_index", "doc_offset", "position_ids", "labels"]
        for group in range(meta.num_row_groups):
            for i, name in enumerate(names):
                chunk = meta.row_group(group).column(i)
                assert not any("DICTIONARY" in e for e in chunk.encodings), (name, chunk.encodings)
                assert chunk.compression == "ZSTD"
                piece_column = name in ("seq_lengths", "doc_index", "doc_offset")
                assert chunk.is_stats_set == piece_column, name
                if piece_column:  # the statistics are right, not just present
                    values = pq.read_table(path, columns=[name]).slice(group * 1024, 1024).column(name)
                    flat = [v for row in values.to_pylist() for v in row]
                    assert (chunk.statistics.min, chunk.statistics.max) == (min(flat), max(flat))


def test_datasets_the_loader_and_pyarrow_read_the_same_tokens(packed: Path) -> None:
    import datasets

    paths = shard_paths(packed)
    expected = np.concatenate([pq.read_table(p).column("input_ids").combine_chunks().flatten().to_numpy()
                               for p in paths])
    hf = datasets.load_dataset("parquet", split="train", data_files=[str(p) for p in paths])
    assert hf.column_names[:4] == ["input_ids", "seq_lengths", "doc_index", "doc_offset"]
    assert np.array_equal(np.concatenate([np.asarray(row, dtype=np.int64) for row in hf["input_ids"]]), expected)
    n_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    batches = list(PackedDataset(str(packed), batch_size=1, shuffle=False))
    assert len(batches) == n_rows
    got = np.concatenate([b["input_ids"].reshape(-1) for b in batches])
    assert np.array_equal(got, expected)
    assert sum(b["labels"].size for b in batches) == expected.size
