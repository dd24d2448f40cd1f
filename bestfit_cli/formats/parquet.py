"""Parquet: an input format (files of a list-of-integers token column) and the documented output (docs/format.md)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..errors import BestfitError, InputError, OutputError
from ..fs import InputFile
from ..read import (
    DocBatch,
    LengthBatch,
    ReadOptions,
    Skipped,
    batch_from_arrow,
    check_carried_schema,
    check_list_type,
    lengths_from_arrow,
    unreadable,
    with_carried,
)
from ..training import row_columns
from . import parquet_lists
from .base import Checkpoint, InputFormat, PackedRows
from .parquet_footer import FooterError, NotParquetError, check_bytes
from .parquet_footer import check_file as check_footer_file
from .parquet_lists import ListColumn, encodable

PARQUET_BATCH_ROWS = 1024
_PARQUET_MAGIC = b"PAR1"

STATS_COLUMNS = ("seq_lengths", "doc_index", "doc_offset")  # per-piece columns: small, and their ranges mean something


def _list_array(offsets: np.ndarray, values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=value_type))


def kept_columns(rows: PackedRows) -> dict[str, pa.Array]:
    """The --keep columns: per row, one value per piece, aligned with ``doc_index``."""
    offsets = pa.array(rows.piece_offsets.astype(np.int32))
    return {name: pa.ListArray.from_arrays(offsets, values) for name, values in rows.kept.items()}


@dataclass(frozen=True)
class ParquetFormat:
    """The documented output: ``input_ids``, ``seq_lengths``, ``doc_index``, ``doc_offset``, then the training
    columns asked for (docs/format.md)."""

    compression: str = "zstd"
    row_group_rows: int = 1024
    name: str = "parquet"
    suffix: str = ".parquet"
    companion_suffixes: tuple[str, ...] = ()
    dtype_follows_option: bool = True

    def check_options(self, opts: Any) -> None:
        pass

    def base_columns(self, rows: PackedRows) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """The documented columns and the training ones, as (name, row offsets, flat values), in their order."""
        token_offsets = rows.row_offsets
        if token_offsets[-1] >= 2**31:
            raise OutputError("a shard would hold 2**31 tokens or more", fix="lower --rows-per-shard")
        columns = [
            ("input_ids", token_offsets, rows.tokens),
            ("seq_lengths", rows.piece_offsets, rows.seq_lengths.astype(np.int32)),
            ("doc_index", rows.piece_offsets, rows.doc_index.astype(np.int64)),
            ("doc_offset", rows.piece_offsets, rows.doc_offset.astype(np.int64)),
        ]
        if rows.training_columns:
            # A carried labels column is the base of the training labels (still ignored on boundaries, padding).
            extra = row_columns(rows.training_columns, rows.tokens, rows.seq_lengths, rows.piece_offsets,
                                np.diff(token_offsets), labels_from=rows.token_columns.get("labels"))
            columns += [(name, token_offsets, values.astype(np.int64)) for name, values in extra.items()]
        return columns

    def table(self, rows: PackedRows) -> pa.Table:
        columns = {name: _list_array(offsets, values, pa.from_numpy_dtype(values.dtype))
                   for name, offsets, values in self.base_columns(rows)}
        columns.update(kept_columns(rows))
        for name, values in rows.token_columns.items():
            if name not in columns:
                columns[name] = _list_array(rows.row_offsets, values, pa.from_numpy_dtype(values.dtype))
        return pa.table(columns)

    def encode(self, rows: PackedRows) -> bytes | memoryview:
        # No dictionary pages: token ids have too many distinct values for them to pay (measured: a third faster
        # and 5 % smaller on cl100k shards). No min/max statistics on the token columns: no reader filters rows by
        # their token ids, and computing them is about a tenth of encoding a shard (docs/benchmarks.md).
        if not rows.kept and self.compression == "zstd":
            # Lists of numbers only (every shard but those with --keep columns) are written by parquet_lists,
            # which does per token only what such columns need: to every reader, the same file as pyarrow's below.
            columns = self.base_columns(rows)
            named = {name for name, _, _ in columns}
            columns += [(name, rows.row_offsets, values) for name, values in rows.token_columns.items()
                        if name not in named]
            if all(encodable(values.dtype) for _, _, values in columns):
                return parquet_lists.encode(
                    [ListColumn(name, offsets, values, statistics=name in STATS_COLUMNS)
                     for name, offsets, values in columns],
                    rows.n_rows, self.row_group_rows, created_by=f"bestfit version {__version__}", reuse=True)
        sink = pa.BufferOutputStream()
        table = self.table(rows)
        with_stats = [f"{name}.list.element" for name in table.column_names if name in STATS_COLUMNS]
        pq.write_table(table, sink, compression=self.compression, row_group_size=self.row_group_rows,
                       use_dictionary=False, write_statistics=with_stats)
        # The encoded buffer itself, not a copy: hashing and writing it read it through the buffer protocol.
        return memoryview(sink.getvalue())

    def companions(self, rows: PackedRows) -> dict[str, bytes]:
        return {}

    def decode(self, data: bytes, companions: dict[str, bytes]) -> pa.Table:
        check_bytes(data)  # a damaged footer raises FooterError (a ValueError) instead of aborting in pyarrow
        return pq.read_table(pa.BufferReader(arrow_owned(data)))


def arrow_owned(data: bytes) -> pa.Buffer:
    """A copy of ``data`` in memory pyarrow allocated, for pyarrow to read from.

    pyarrow's scan threads may drop their last reference to the source a moment after ``read_table`` returns. If
    that source wraps Python bytes, dropping it takes the GIL; when the interpreter is exiting by then (verify
    reports a problem and exits), the thread is killed inside a C++ destructor and the process aborts with
    "terminate called without an active exception" (exit 134). Memory pyarrow owns is freed without Python.
    """
    buffer = pa.allocate_buffer(len(data))
    np.frombuffer(buffer, dtype=np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
    return buffer


# --------------------------------------------------------------------------------------------- input


# A footer claiming more values than this per byte of a column chunk is damaged: decoding it would allocate for
# values that are not in the file. Real data stays far below it (a column of one repeated id under zstd measured
# about 40,000 values a byte), so no honest file is refused.
MAX_VALUES_PER_BYTE = 1 << 20


def _open_parquet(file: InputFile) -> pq.ParquetFile:
    assert file.fs is not None
    try:
        # Checked first: some damaged footers abort the process inside pyarrow (parquet_footer.py).
        check_footer_file(file.fs, file.fs_path, file.size)
        return pq.ParquetFile(file.fs.open_input_file(file.fs_path))
    except FooterError as exc:
        if not isinstance(exc, NotParquetError):
            raise InputError(file.name, str(exc), fix="the footer is damaged: re-create or remove this file") from None
        raise unreadable(file, exc, "not a readable Parquet file",
                         "re-create or remove this file; an interrupted copy leaves a truncated file") from None
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise unreadable(file, exc, "not a readable Parquet file",
                          "re-create or remove this file; an interrupted copy leaves a truncated file") from None


def open_parquet_checked(file: InputFile, opts: ReadOptions) -> pq.ParquetFile:
    """The file's footer, checked before any data is read: the token column exists once, holds lists of integers,
    and the row groups claim no more rows, values and bytes than the file can hold."""
    pf = _open_parquet(file)
    schema = pf.schema_arrow
    found = schema.get_all_field_indices(opts.column)
    if not found:
        raise InputError(file.name, f"no column '{opts.column}'; columns are: {', '.join(schema.names)[:300]}",
                         fix="pass --column NAME")
    if len(found) > 1:
        raise InputError(file.name, f"{len(found)} columns are named '{opts.column}'",
                         fix="write the file again with one token column of that name")
    check_list_type(file, opts.column, schema.field(opts.column).type)
    check_carried_schema(file, schema, opts)
    _check_footer(file, pf.metadata, opts.column)
    return pf


def _check_footer(file: InputFile, meta: pq.FileMetaData, column: str) -> None:
    """The claims about the token column that the footer check (parquet_footer.py) leaves to this reader, which
    decodes that column: no more rows than values, no more values than its bytes can encode."""
    leaf = next(i for i in range(meta.num_columns) if meta.schema.column(i).path.split(".")[0] == column)
    first_row = 0
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        rows = row_group.num_rows
        chunk = row_group.column(leaf)
        claim = None
        if rows > chunk.num_values:
            claim = f"{rows:,} rows but only {chunk.num_values:,} values of '{column}'"
        elif chunk.num_values > MAX_VALUES_PER_BYTE * max(chunk.total_compressed_size, 1):
            claim = f"{chunk.num_values:,} values of '{column}' in {chunk.total_compressed_size:,} bytes"
        if claim is not None:
            raise InputError(file.name, f"the footer of row group {group} (its first row is {first_row:,}) claims "
                                        f"{claim}, which the file cannot hold",
                             fix="the footer is damaged: re-create or remove this file")
        first_row += rows


def _failing_row_group(pf: pq.ParquetFile, column: str, row: int) -> str:
    """The first row group from ``row`` on that cannot be decoded, with its rows.

    The scanner decodes ahead, so the row it had handed on when it failed says little (pack and stats, reading in
    batches of different sizes, named different rows). Decoding the row groups again one at a time, only after a
    failure, names the damaged one the same way whoever read it.
    """
    meta = pf.metadata
    first = 0
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        if first + rows > row:
            try:
                pf.read_row_group(group, columns=[column], use_threads=False)
            except (pa.ArrowException, OSError):
                return f"row group {group} (rows {first:,} to {first + rows - 1:,})"
        first += rows
    return f"the rows after row {row:,}"


def _corrupt(file: InputFile, pf: pq.ParquetFile, column: str, row: int, exc: BaseException) -> BestfitError:
    if isinstance(exc, OSError) and getattr(exc, "errno", None) is not None:
        return unreadable(file, exc, "", "")
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InputError(file.name, f"corrupt Parquet data in {_failing_row_group(pf, column, row)} ({detail})",
                      fix="re-create or remove this file")


WITHOUT_PANDAS = False  # set by the CLI's process (cli.main): pyarrow.dataset is imported there without pandas


class _HidePandas:
    """An import finder that refuses pandas (a ``None`` in ``sys.modules`` would not do: Cython's import returns
    it as the module)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError(f"{name} is hidden while pyarrow.dataset loads", name=name)


def dataset_module() -> Any:
    """``pyarrow.dataset``, loaded by the first Parquet read (not by every `bestfit --help`).

    Importing it imports pandas, which bestfit never uses: 0.6 s of CPU here, about a tenth of a `stats` run of
    0.95 GiB (docs/benchmarks.md). In the CLI's own process (``WITHOUT_PANDAS``) it is
    imported with pandas hidden, so pyarrow takes pandas for absent in that process; a later ``import pandas``
    still works. A library caller's process is left as it is.
    """
    if WITHOUT_PANDAS and "pandas" not in sys.modules and "pyarrow.dataset" not in sys.modules:
        hidden = _HidePandas()
        sys.meta_path.insert(0, hidden)
        try:
            import pyarrow.dataset  # noqa: F401  (loaded into sys.modules for the import below)
        finally:
            sys.meta_path.remove(hidden)
    import pyarrow.dataset as pads

    return pads


def _record_batches(file: InputFile, column: str, batch_rows: int, carried: Sequence[str] = (),
                    decode_threads: bool = True) -> Iterator[pa.RecordBatch]:
    """One column of a Parquet file (and the ``carried`` ones) in record batches, in row order.

    With ``decode_threads``, pyarrow's dataset scanner decodes ahead on its own threads with bounded read-ahead,
    which keeps both cores busy on a single column when nothing else reads ahead (reading row group by row group
    through ``ParquetFile`` measured about half as fast). Without, each batch is decoded on the calling thread.
    """
    pads = dataset_module()

    fragment = pads.ParquetFileFormat().make_fragment(file.fs_path, filesystem=file.fs)
    yield from fragment.to_batches(columns=[column, *carried], batch_size=batch_rows, use_threads=decode_threads)


def pack_decode_threads(file: InputFile, opts: ReadOptions) -> bool:
    """Whether ``read_parquet`` decodes on pyarrow's threads: only for several columns (decoded side by side) or a
    file not on the local disk (its reads go ahead of the decoding). One local column is decoded where it is read:
    on ``read.ReadAhead``'s thread, which reads ahead of the packing already, or in ``--workers 1``'s only thread.
    Handing each batch to pyarrow's thread and back cost more than it overlapped: `pack` of the end-to-end corpus
    took 10.36 s against 10.72 s at two workers and 16.51 s against 17.72 s at one (docs/benchmarks.md, §2)."""
    return bool(opts.carried) or not file.is_local


def read_parquet(file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
    pf = open_parquet_checked(file, opts)

    def label(row: int) -> dict[str, int]:
        return {"row": row}

    row = 0
    try:
        for record_batch in _record_batches(file, opts.column, PARQUET_BATCH_ROWS, opts.carried,
                                             pack_decode_threads(file, opts)):
            column = record_batch.column(0)
            batch = batch_from_arrow(file, file_index, row, column, opts, label)
            if opts.carried:
                batch = with_carried(file, batch, record_batch.column, opts)
            row += len(column)
            yield replace(batch, fraction_done=row / max(pf.metadata.num_rows, 1))
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise _corrupt(file, pf, opts.column, row, exc) from None


def read_parquet_lengths(file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[LengthBatch]:
    """Lengths from the list offsets, refusing what ``read_parquet`` refuses (``read.lengths_from_arrow``)."""
    pf = open_parquet_checked(file, opts)
    row = 0
    try:
        for record_batch in _record_batches(file, opts.column, PARQUET_BATCH_ROWS * 8):
            lengths = lengths_from_arrow(file, row, record_batch.column(0), opts)
            row += len(lengths)
            yield LengthBatch(file_index, row - len(lengths), lengths, row / max(pf.metadata.num_rows, 1))
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise _corrupt(file, pf, opts.column, row, exc) from None


def footer_sha256(file: InputFile) -> str | None:
    """sha256 of a Parquet file's footer plus trailer (two small reads); None when the file has no valid trailer
    (the reader reports that file on its own)."""
    assert file.fs is not None
    try:
        with file.fs.open_input_file(file.fs_path) as stream:
            size = stream.size()
            if size < 12:
                return None
            stream.seek(size - 8)
            trailer = stream.read(8)
            length = int.from_bytes(trailer[:4], "little")
            if trailer[4:] != _PARQUET_MAGIC or length > size - 12:
                return None
            stream.seek(size - 8 - length)
            return hashlib.sha256(stream.read(length) + trailer).hexdigest()
    except (OSError, pa.ArrowException):
        return None


# --------------------------------------------------------------------------------------------- part of a file


def parquet_row_groups(file: InputFile, opts: ReadOptions) -> list[tuple[int, int, int | None]]:
    """``(first_row, rows, tokens)`` of each row group, from the footer alone.

    A list column stores one value slot per id plus one per empty or null list, and the footer counts those as
    nulls, so the ids are ``num_values - null_count``. That is exact unless an id is null, which fails the read
    anyway. ``tokens`` is None where the footer has no null count (or the column is a fixed-size list).
    """
    pf = open_parquet_checked(file, opts)
    try:
        meta = pf.metadata
        column_type = pf.schema_arrow.field(opts.column).type
        countable = pa.types.is_list(column_type) or pa.types.is_large_list(column_type)
        leaf = next(i for i in range(meta.num_columns) if meta.schema.column(i).path.split(".")[0] == opts.column)
        groups, first = [], 0
        for group in range(meta.num_row_groups):
            row_group = meta.row_group(group)
            chunk = row_group.column(leaf)
            stats = chunk.statistics if chunk.is_stats_set else None
            tokens = (chunk.num_values - stats.null_count
                      if countable and stats is not None and stats.has_null_count else None)
            groups.append((first, row_group.num_rows, tokens))
            first += row_group.num_rows
        return groups
    finally:
        pf.close()


def _row_group_batches(file: InputFile, pf: pq.ParquetFile, opts: ReadOptions, lo: int, hi: int,
                       batch_rows: int, carried: Sequence[str] = ()) -> Iterator[tuple[int, pa.RecordBatch]]:
    """``(first_row, record batch)`` of rows ``lo .. hi - 1`` of a Parquet file, reading only the row groups they
    are in: the token column first, then the ``carried`` columns."""
    pads = dataset_module()

    meta = pf.metadata
    groups, first, start = [], 0, None
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        if first < hi and first + rows > lo:
            groups.append(group)
            start = first if start is None else start
        first += rows
    if not groups or start is None:
        return
    fragment = pads.ParquetFileFormat().make_fragment(file.fs_path, filesystem=file.fs).subset(row_group_ids=groups)
    row = start
    for record_batch in fragment.to_batches(columns=[opts.column, *carried], batch_size=batch_rows,
                                            use_threads=True):
        a, b = max(lo, row), min(hi, row + record_batch.num_rows)
        if a < b:
            yield a, record_batch.slice(a - row, b - a)
        row += record_batch.num_rows
        if row >= hi:
            return


def parquet_lengths(file: InputFile, opts: ReadOptions, lo: int, hi: int) -> np.ndarray:
    """Lengths of rows ``lo .. hi - 1``, refusing what ``read_parquet`` refuses (as ``read_parquet_lengths``)."""
    pf = open_parquet_checked(file, opts)
    out, row = [], lo
    try:
        for row, rows in _row_group_batches(file, pf, opts, lo, hi, PARQUET_BATCH_ROWS * 8):
            out.append(lengths_from_arrow(file, row, rows.column(0), opts))
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise _corrupt(file, pf, opts.column, row, exc) from None
    finally:
        pf.close()
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def read_parquet_rows(file: InputFile, file_index: int, opts: ReadOptions, lo: int, hi: int) -> Iterator[DocBatch]:
    """Rows ``lo .. hi - 1``, from the row group holding ``lo`` on (skipped records are counted elsewhere), with
    their --keep and --keep-token columns, checked as ``read_parquet`` checks them."""
    pf = open_parquet_checked(file, opts)
    row = lo
    try:
        for row, rows in _row_group_batches(file, pf, opts, lo, hi, PARQUET_BATCH_ROWS, opts.carried):
            batch = batch_from_arrow(file, file_index, row, rows.column(0), opts, lambda r: {"row": r})
            if opts.carried:
                batch = with_carried(file, batch, rows.column, opts)
            yield replace(batch, skipped=Skipped())
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise _corrupt(file, pf, opts.column, row, exc) from None
    finally:
        pf.close()


class ParquetInput(InputFormat):
    """Parquet files (``*.parquet``, ``*.pq``) with a list-of-integers token column (``--column``)."""

    name = "parquet"
    suffixes = (".parquet", ".pq")
    description = "Parquet"
    carries_columns = True
    reads_ahead = True

    def check(self, file: InputFile, opts: ReadOptions) -> None:
        if file.size == 0:
            raise InputError(file.name, "file is empty", fix="remove it from the inputs")
        open_parquet_checked(file, opts).close()

    def read(self, file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
        return read_parquet(file, file_index, opts)

    def read_lengths(self, file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[LengthBatch]:
        if opts.skip_bad:  # skipped records need the full reader
            return super().read_lengths(file, file_index, opts)
        return read_parquet_lengths(file, file_index, opts)

    def blocks(self, file: InputFile, opts: ReadOptions) -> list[tuple[int, int, int | None]] | None:
        if opts.skip_bad:  # a skipped record's ids are not in its length: only reading tells
            return None
        return parquet_row_groups(file, opts)

    def block_lengths(self, file: InputFile, opts: ReadOptions, lo: int, hi: int) -> np.ndarray:
        return parquet_lengths(file, opts, lo, hi)

    def document_types(self, file: InputFile, opts: ReadOptions) -> dict[str, pa.DataType] | None:
        """The schema's: every batch ``read_parquet`` hands on has them (a file of no rows hands on one batch)."""
        pf = open_parquet_checked(file, opts)
        try:
            return {name: pf.schema_arrow.field(name).type for name in opts.keep}
        finally:
            pf.close()

    def read_rows(self, file: InputFile, file_index: int, opts: ReadOptions, lo: int, hi: int,
                  start: Checkpoint | None = None) -> Iterator[DocBatch]:
        return read_parquet_rows(file, file_index, opts, lo, hi)  # a row group is its own checkpoint

    def signature(self, file: InputFile) -> str | None:
        return footer_sha256(file)
