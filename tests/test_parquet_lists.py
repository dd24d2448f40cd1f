"""parquet_lists: shards of numeric list columns written without pyarrow's writer read back as pyarrow's would."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bestfit_cli import PackOptions, pack
from bestfit_cli.formats import parquet_lists
from bestfit_cli.formats.parquet_footer import check_bytes
from bestfit_cli.formats.parquet_lists import ListColumn, encodable, encode

DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.float32, np.float64]


def _values(rng: np.random.Generator, dtype: type, n: int) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(n).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)


def _reference(columns: list[ListColumn]) -> pa.Table:
    return pa.table({c.name: pa.ListArray.from_arrays(pa.array(c.offsets.astype(np.int32)), pa.array(c.values))
                     for c in columns})


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_rows=st.integers(0, 40), group_rows=st.integers(1, 9),
       page_bytes=st.sampled_from([16, 64, 1 << 20]), dtypes=st.lists(st.sampled_from(DTYPES), min_size=1, max_size=4),
       empty_rows=st.booleans())
def test_read_back_equals_the_columns_and_the_footer_checks(seed: int, n_rows: int, group_rows: int,
                                                            page_bytes: int, dtypes: list[type],
                                                            empty_rows: bool) -> None:
    """Any row lengths (empty rows, rows longer than a page, rows of 200 values whose RLE runs need 2-byte
    varints), every dtype, row groups and pages of any size: pyarrow reads exactly the table written, with the
    types pyarrow's own writer gives, and statistics where asked."""
    rng = np.random.default_rng(seed)
    columns = []
    for i, dtype in enumerate(dtypes):
        lengths = rng.choice([0, 1, 2, 3, 200], n_rows) if empty_rows else rng.integers(1, 300, n_rows)
        offsets = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        columns.append(ListColumn(f"c{i}", offsets, _values(rng, dtype, int(offsets[-1])), statistics=i % 2 == 0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parquet_lists, "PAGE_BYTES", page_bytes)
        data = encode(columns, n_rows, group_rows, created_by="bestfit test")
        assert bytes(encode(columns, n_rows, group_rows, created_by="bestfit test", reuse=True)) == data
    check_bytes(data)
    got = pq.read_table(pa.BufferReader(data))
    buffer = pa.BufferOutputStream()
    pq.write_table(_reference(columns), buffer)
    expected = pq.read_table(pa.BufferReader(buffer.getvalue()))
    assert got.schema.equals(expected.schema), (got.schema, expected.schema)
    assert got.equals(expected)
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    assert meta.num_rows == n_rows
    assert meta.num_row_groups == -(-n_rows // group_rows)
    for group in range(meta.num_row_groups):
        rows = slice(group * group_rows, min((group + 1) * group_rows, n_rows))
        for i, column in enumerate(columns):
            chunk = meta.row_group(group).column(i)
            values = column.values[int(column.offsets[rows.start]):int(column.offsets[rows.stop])]
            assert chunk.is_stats_set == (column.statistics and len(values) > 0)
            if chunk.is_stats_set:
                assert (chunk.statistics.min, chunk.statistics.max) == (values.min(), values.max())
                assert chunk.statistics.null_count == 0


def test_long_runs_and_wide_rows() -> None:
    """Rows of 100,000 values (3-byte RLE run lengths) and a row of one value between them."""
    lengths = np.array([100_000, 1, 70_000, 0, 3])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.arange(offsets[-1], dtype=np.int32)
    data = encode([ListColumn("input_ids", offsets, values)], len(lengths), 2, created_by="x")
    got = pq.read_table(pa.BufferReader(data)).column("input_ids").to_pylist()
    assert [len(row) for row in got] == lengths.tolist()
    assert np.array_equal(np.concatenate([np.asarray(r, dtype=np.int32) for r in got if r]), values)


def test_reuse_writes_into_one_buffer_per_thread() -> None:
    """``reuse=True``: the same bytes, in this thread's buffer, which the next such encode on the thread writes over
    (pack hashes and writes a shard before its thread encodes the next); another thread has its own."""
    def shard(n: int) -> list[ListColumn]:
        return [ListColumn("input_ids", np.arange(0, 10 * n + 1, 10), np.arange(10 * n, dtype=np.int32))]

    first = encode(shard(50), 50, 16, created_by="x", reuse=True)
    expected_first = encode(shard(50), 50, 16, created_by="x")
    assert isinstance(first, memoryview) and bytes(first) == expected_first
    second = encode(shard(40), 40, 16, created_by="x", reuse=True)
    assert bytes(second) == encode(shard(40), 40, 16, created_by="x")
    assert np.shares_memory(np.asarray(first), np.asarray(second))
    assert bytes(first) != expected_first  # written over: hence "valid until the thread's next encode"
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(lambda: encode(shard(40), 40, 16, created_by="x", reuse=True)).result()
    assert not np.shares_memory(np.asarray(other), np.asarray(second))


def test_refuses_what_it_cannot_write() -> None:
    assert not encodable(np.dtype(bool)) and not encodable(np.dtype("<U3"))
    with pytest.raises(ValueError):
        encode([ListColumn("x", np.array([0, 1]), np.array([True]))], 1, 1, created_by="x")
    with pytest.raises(ValueError):  # offsets for 2 rows, 1 row claimed
        encode([ListColumn("x", np.array([0, 1, 2]), np.arange(2))], 1, 1, created_by="x")


def _shards(out: Path) -> list[Path]:
    return [out / s["path"] for s in json.loads((out / "manifest.json").read_text())["shards"]]


@pytest.mark.parametrize("dtype", ["int32", "uint16"])
def test_pack_writes_its_shards_with_it_and_with_pyarrow_only_for_keep(tmp_path: Path, dtype: str) -> None:
    """A default shard is parquet_lists' (and reads back as the same rows pyarrow's writer gives); a shard with a
    --keep column, which may be of any Arrow type, is pyarrow's."""
    rng = np.random.default_rng(5)
    docs = [rng.integers(0, 60_000, n).tolist() for n in rng.integers(1, 200, 300)]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(docs, type=pa.list_(pa.int32())),
                             "url": [f"u{i}" for i in range(len(docs))]}), source)
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    opts = PackOptions(ctx=128, eos_id=60_001, rows_per_shard=50, dtype=dtype, columns=("labels", "position_ids"))
    pack([str(source)], str(plain), opts)
    pack([str(source)], str(kept), PackOptions(**{**opts.__dict__, "keep": ("url",)}))
    for ours, theirs in zip(_shards(plain), _shards(kept), strict=True):
        assert pq.ParquetFile(ours).metadata.created_by.startswith("bestfit version")
        assert pq.ParquetFile(theirs).metadata.created_by.startswith("parquet-cpp-arrow")
        assert pq.read_table(ours).equals(pq.read_table(theirs).drop_columns(["url"]))
