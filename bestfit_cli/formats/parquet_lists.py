"""Encode a shard of numeric list columns as Parquet, with the work per token that such columns need and no more.

Every column of a default shard (``input_ids``, ``seq_lengths``, ``doc_index``, ``doc_offset``, the training
columns, carried token columns) is a list of fixed-width numbers without nulls. pyarrow's writer handles any
nesting and any nulls, so it computes and encodes a repetition and a definition level for every value, one by
one: about half of its time on a token column here, the other half being zstd (docs/benchmarks.md). Here the
levels are known in closed form from the row lengths, and each page's levels take a few bytes of RLE runs (a row
is a run of one 0 and a run of ``length - 1`` ones; the definition levels of a page without empty rows are one
run), so encoding a shard costs about what compressing its values costs.

The file is the one pyarrow writes for the same table, as far as readers can tell: the same schema (optional list
of optional ``element``, the compliant three-level form, logical types for unsigned ids), PLAIN values in
version 1 data pages of about 1 MiB that start and end on row boundaries, RLE levels, ZSTD (pyarrow's default
level), row groups of ``row_group_rows`` rows, and min/max statistics on the columns that ask for them. pyarrow,
``datasets`` and the trainer-ready reader read it (tests/test_parquet_lists.py checks it value by value against
``pyarrow.parquet.write_table`` of the same table, and through ``parquet_footer.check_bytes``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..resources import thread_buffer

PAGE_BYTES = 1 << 20  # values per data page, uncompressed (pyarrow's default data page size)

# parquet.thrift enums
_INT32, _INT64, _FLOAT, _DOUBLE = 1, 2, 4, 5
_REQUIRED, _OPTIONAL, _REPEATED = 0, 1, 2
_CONVERTED_LIST = 3
_PLAIN, _RLE = 0, 3
_ZSTD = 6
_DATA_PAGE = 0

# Thrift compact protocol type ids
_T_TRUE, _T_FALSE, _T_BYTE, _T_I16, _T_I32, _T_I64, _T_BINARY, _T_LIST, _T_STRUCT = 1, 2, 3, 4, 5, 6, 8, 9, 12

# numpy dtype -> (physical type, physical dtype, (bit width, signed) of an INTEGER logical type or None)
_TYPES: dict[np.dtype, tuple[int, np.dtype, tuple[int, bool] | None]] = {
    np.dtype(np.int8): (_INT32, np.dtype("<i4"), (8, True)),
    np.dtype(np.int16): (_INT32, np.dtype("<i4"), (16, True)),
    np.dtype(np.int32): (_INT32, np.dtype("<i4"), None),
    np.dtype(np.int64): (_INT64, np.dtype("<i8"), None),
    np.dtype(np.uint8): (_INT32, np.dtype("<i4"), (8, False)),
    np.dtype(np.uint16): (_INT32, np.dtype("<i4"), (16, False)),
    np.dtype(np.uint32): (_INT32, np.dtype("<u4"), (32, False)),
    np.dtype(np.uint64): (_INT64, np.dtype("<u8"), (64, False)),
    np.dtype(np.float32): (_FLOAT, np.dtype("<f4"), None),
    np.dtype(np.float64): (_DOUBLE, np.dtype("<f8"), None),
}
# The converted type older readers look for beside an INTEGER logical type.
_CONVERTED_INT = {(8, True): 15, (16, True): 16, (8, False): 11, (16, False): 12, (32, False): 13, (64, False): 14}


def encodable(dtype: np.dtype) -> bool:
    """Whether a list column of ``dtype`` values can be written here (fixed-width integers and floats)."""
    return np.dtype(dtype) in _TYPES


@dataclass(frozen=True)
class ListColumn:
    """One column: row ``r`` is ``values[offsets[r]:offsets[r + 1]]``; ``statistics``: write its min and max."""

    name: str
    offsets: np.ndarray
    values: np.ndarray
    statistics: bool = False


def _uleb128(out: bytearray, n: int) -> None:
    """Append ``n`` (>= 0) as an unsigned LEB128 varint: Thrift's compact integers and RLE run headers."""
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


class _Thrift:
    """Writes one Thrift compact-protocol struct (parquet.thrift's field ids) into a bytearray."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._last = [0]

    def _varint(self, n: int) -> None:
        _uleb128(self.out, n)

    def _field(self, field_id: int, kind: int) -> None:
        delta = field_id - self._last[-1]
        if 0 < delta <= 15:
            self.out.append(delta << 4 | kind)
        else:
            self.out.append(kind)
            self._varint((field_id << 1) ^ (field_id >> 15))
        self._last[-1] = field_id

    def i32(self, field_id: int, value: int, kind: int = _T_I32) -> _Thrift:
        self._field(field_id, kind)
        self._varint((value << 1) ^ (value >> 63))
        return self

    def byte(self, field_id: int, value: int) -> _Thrift:
        self._field(field_id, _T_BYTE)
        self.out.append(value & 0xFF)
        return self

    def i64(self, field_id: int, value: int) -> _Thrift:
        return self.i32(field_id, value, _T_I64)

    def binary(self, field_id: int, value: bytes) -> _Thrift:
        self._field(field_id, _T_BINARY)
        self._varint(len(value))
        self.out += value
        return self

    def boolean(self, field_id: int, value: bool) -> _Thrift:
        self._field(field_id, _T_TRUE if value else _T_FALSE)
        return self

    def begin(self, field_id: int | None = None) -> _Thrift:
        """A nested struct: a field of the struct being written, or (``field_id`` None) an element of a list."""
        if field_id is not None:
            self._field(field_id, _T_STRUCT)
        self._last.append(0)
        return self

    def end(self) -> _Thrift:
        self.out.append(0)
        self._last.pop()
        return self

    def list(self, field_id: int, kind: int, size: int) -> _Thrift:
        self._field(field_id, _T_LIST)
        if size < 15:
            self.out.append(size << 4 | kind)
        else:
            self.out.append(0xF0 | kind)
            self._varint(size)
        return self

    def ints(self, field_id: int, values: Sequence[int]) -> _Thrift:
        self.list(field_id, _T_I32, len(values))
        for value in values:
            self._varint((value << 1) ^ (value >> 63))
        return self

    def strings(self, field_id: int, values: Sequence[bytes]) -> _Thrift:
        self.list(field_id, _T_BINARY, len(values))
        for value in values:
            self._varint(len(value))
            self.out += value
        return self


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ULEB128 bytes of each value (< 2**28) in 4 byte slots, and which slot bytes are used."""
    values = values.astype(np.uint32)
    slots = np.empty((len(values), 4), dtype=np.uint8)
    for k in range(4):
        slots[:, k] = (values >> (7 * k)) & 0x7F
    used = np.ones((len(values), 4), dtype=bool)
    for k in range(1, 4):
        used[:, k] = values >= (1 << (7 * k))
    slots[:, :3] |= used[:, 1:].astype(np.uint8) << 7
    return slots, used


class _Levels:
    """A column's levels worked out once for all its rows, so a page takes its slice instead of a dozen small numpy
    calls of its own (each holds the GIL): the repetition levels (RLE runs, bit width 1: per row, a run of one 0 and
    a run of ``length - 1`` ones), the level entries per row, and the empty rows (for the definition levels).

    An empty row is one entry at level 0, like a row of one value."""

    def __init__(self, offsets: np.ndarray) -> None:
        lengths = np.diff(offsets)
        self.offsets = offsets
        self.empty_rows = np.flatnonzero(lengths == 0)
        slots = np.zeros((len(lengths), 7), dtype=np.uint8)
        used = np.zeros((len(lengths), 7), dtype=bool)
        slots[:, 0] = 2  # a run of one ...
        used[:, :2] = True  # ... of level 0
        more = np.maximum(lengths.astype(np.int64) - 1, 0)
        varint, varint_used = _varints(more << 1)
        slots[:, 2:6] = varint
        used[:, 2:6] = varint_used & (more > 0)[:, None]
        slots[:, 6] = 1  # the run's level: 1
        used[:, 6] = more > 0
        self.runs: np.ndarray = slots[used]
        self.run_ends = np.zeros(len(lengths) + 1, dtype=np.int64)  # rows [a, b) are runs[run_ends[a]:run_ends[b]]
        np.cumsum(used.sum(axis=1), out=self.run_ends[1:])
        self.entry_ends = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(more + 1, out=self.entry_ends[1:])

    def repetition(self, a: int, b: int) -> np.ndarray:
        return self.runs[self.run_ends[a]:self.run_ends[b]]

    def entries(self, a: int, b: int) -> int:
        return int(self.entry_ends[b] - self.entry_ends[a])

    def definition(self, a: int, b: int) -> bytes:
        if not len(self.empty_rows):
            return _run(int(self.offsets[b] - self.offsets[a]), 3)
        lo, hi = np.searchsorted(self.empty_rows, [a, b])
        return _definition_levels(self.offsets[a:b + 1], self.empty_rows[lo:hi] - a)


def _run(count: int, level: int) -> bytes:
    """One RLE run of the hybrid encoding: ``count`` levels of value ``level`` (one byte wide)."""
    out = bytearray()
    _uleb128(out, count << 1)
    out.append(level)
    return bytes(out)


def _definition_levels(offsets: np.ndarray, empty_rows: np.ndarray) -> bytes:
    """RLE runs of the definition levels (bit width 2) of an optional list of optional values, none null, for rows
    ``offsets`` of which ``empty_rows`` (indices into them, sorted) are empty: 3 for every value, 1 for an empty
    row."""
    if not len(empty_rows):
        return _run(int(offsets[-1] - offsets[0]), 3)
    runs, start = bytearray(), 0
    for row in empty_rows.tolist():
        values = int(offsets[row] - offsets[start])
        if values:
            runs += _run(values, 3)
        runs += _run(1, 1)
        start = row + 1
    values = int(offsets[-1] - offsets[start])
    if values:
        runs += _run(values, 3)
    return bytes(runs)


def _page_bounds(offsets: np.ndarray, itemsize: int) -> list[int]:
    """Row boundaries of the data pages of rows ``offsets``: about ``PAGE_BYTES`` of values each, a row at least."""
    n_rows = len(offsets) - 1
    bounds, row = [0], 0
    base = int(offsets[0])
    while row < n_rows:
        target = int(offsets[row]) - base + PAGE_BYTES // itemsize
        end = int(np.searchsorted(offsets, base + target, side="right")) - 1
        row = min(max(end, row + 1), n_rows)
        bounds.append(row)
    return bounds


class _Chunk:
    """A column chunk written: where it starts, its sizes and counts, for the footer."""

    def __init__(self, column: ListColumn, physical: int, offset: int) -> None:
        self.column, self.physical, self.offset = column, physical, offset
        self.values = 0  # level entries: values plus empty rows
        self.compressed = self.uncompressed = 0
        self.minimum: bytes | None = None
        self.maximum: bytes | None = None


class _PageBuffer:
    """One page's uncompressed bytes, in a buffer reused from page to page (new memory costs page faults)."""

    def __init__(self) -> None:
        self.buffer = np.empty(0, dtype=np.uint8)

    def get(self, size: int) -> np.ndarray:
        if len(self.buffer) < size:
            self.buffer = np.empty(max(size, PAGE_BYTES + (PAGE_BYTES >> 4)), dtype=np.uint8)
        return self.buffer[:size]


def _write_chunk(parts: list[bytes | pa.Buffer], at: int, column: ListColumn, levels: _Levels, lo: int, hi: int,
                 codec: pa.Codec, physical: int, dtype: np.dtype, page: _PageBuffer) -> _Chunk:
    chunk = _Chunk(column, physical, at)
    offsets = column.offsets[lo:hi + 1]
    values = column.values[int(offsets[0]):int(offsets[-1])]
    if values.dtype != dtype:
        values = values.astype(dtype)
    first = int(offsets[0])
    bounds = _page_bounds(offsets, dtype.itemsize)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        rep = levels.repetition(lo + a, lo + b)
        definition = levels.definition(lo + a, lo + b)
        data = values[int(offsets[a]) - first:int(offsets[b]) - first]
        body = page.get(8 + len(rep) + len(definition) + data.nbytes)
        body[:4] = np.frombuffer(struct.pack("<i", len(rep)), dtype=np.uint8)
        body[4:4 + len(rep)] = rep
        at_def = 4 + len(rep)
        body[at_def:at_def + 4] = np.frombuffer(struct.pack("<i", len(definition)), dtype=np.uint8)
        body[at_def + 4:at_def + 4 + len(definition)] = np.frombuffer(definition, dtype=np.uint8)
        body[at_def + 4 + len(definition):] = data.view(np.uint8)
        compressed = codec.compress(body, asbytes=False)
        entries = levels.entries(lo + a, lo + b)
        header = (_Thrift().i32(1, _DATA_PAGE).i32(2, len(body)).i32(3, compressed.size)
                  .begin(5).i32(1, entries).i32(2, _PLAIN).i32(3, _RLE).i32(4, _RLE).end().out)
        header.append(0)  # end of PageHeader
        parts += [bytes(header), compressed]
        chunk.values += entries
        chunk.compressed += len(header) + compressed.size
        chunk.uncompressed += len(header) + len(body)
    if column.statistics and len(values):
        chunk.minimum = values.min().tobytes()
        chunk.maximum = values.max().tobytes()
    return chunk


def _schema(thrift: _Thrift, columns: Sequence[ListColumn]) -> None:
    thrift.list(2, _T_STRUCT, 1 + 3 * len(columns))
    thrift.begin().i32(3, _REQUIRED).binary(4, b"schema").i32(5, len(columns)).end()
    for column in columns:
        physical, _, logical = _TYPES[column.values.dtype]
        (thrift.begin().i32(3, _OPTIONAL).binary(4, column.name.encode()).i32(5, 1).i32(6, _CONVERTED_LIST)
         .begin(10).begin(3).end().end().end())
        thrift.begin().i32(3, _REPEATED).binary(4, b"list").i32(5, 1).end()
        thrift.begin().i32(1, physical).i32(3, _OPTIONAL).binary(4, b"element")
        if logical is not None:
            thrift.i32(6, _CONVERTED_INT[logical])
            thrift.begin(10).begin(10).byte(1, logical[0]).boolean(2, logical[1]).end().end()
        thrift.end()


def encode(columns: Sequence[ListColumn], n_rows: int, row_group_rows: int, *, created_by: str,
           compression_level: int | None = None, reuse: bool = False) -> bytes | memoryview:
    """The bytes of a Parquet file holding ``columns`` (each ``n_rows`` rows) in row groups of ``row_group_rows``.

    ``reuse``: the bytes are a view of this thread's output buffer, valid until its next ``encode(reuse=True)``
    (for a caller that writes them out at once, as ``pack`` does)."""
    for column in columns:
        if not encodable(column.values.dtype) or len(column.offsets) != n_rows + 1:
            raise ValueError(f"column {column.name}: {column.values.dtype} values, {len(column.offsets) - 1} rows")
    codec = pa.Codec("zstd", compression_level=compression_level)
    parts: list[bytes | pa.Buffer] = [b"PAR1"]
    at = 4
    groups: list[tuple[int, list[_Chunk]]] = []
    page = _PageBuffer()
    levels = [_Levels(column.offsets) for column in columns]
    for lo in range(0, n_rows, row_group_rows):
        hi = min(lo + row_group_rows, n_rows)
        chunks = []
        for column, column_levels in zip(columns, levels, strict=True):
            physical, dtype, _ = _TYPES[column.values.dtype]
            chunk = _write_chunk(parts, at, column, column_levels, lo, hi, codec, physical, dtype, page)
            at += chunk.compressed
            chunks.append(chunk)
        groups.append((hi - lo, chunks))
    footer = _Thrift().i32(1, 2)
    _schema(footer, columns)
    footer.i64(3, n_rows)
    footer.list(4, _T_STRUCT, len(groups))
    for rows, chunks in groups:
        footer.begin().list(1, _T_STRUCT, len(chunks))
        for chunk in chunks:
            footer.begin().i64(2, 0).begin(3).i32(1, chunk.physical).ints(2, [_RLE, _PLAIN])
            footer.strings(3, [chunk.column.name.encode(), b"list", b"element"]).i32(4, _ZSTD)
            footer.i64(5, chunk.values).i64(6, chunk.uncompressed).i64(7, chunk.compressed).i64(9, chunk.offset)
            if chunk.minimum is not None and chunk.maximum is not None:
                footer.begin(12).i64(3, 0).binary(5, chunk.maximum).binary(6, chunk.minimum).end()
            footer.end().end()
        footer.i64(2, sum(c.uncompressed for c in chunks)).i64(3, rows)
        footer.i64(5, chunks[0].offset if chunks else at).i64(6, sum(c.compressed for c in chunks)).end()
    footer.binary(6, created_by.encode())
    footer.list(7, _T_STRUCT, len(columns))
    for _ in columns:
        footer.begin().begin(1).end().end()
    footer.end()
    parts += [bytes(footer.out), struct.pack("<i", len(footer.out)), b"PAR1"]
    if not reuse:
        return b"".join(parts)
    # This thread's buffer, reused from file to file: a new one per shard (bytes.join) cost a page fault per 4 KiB
    # with the GIL held, 2 s of a 20 s pack here.
    total = sum(len(part) if isinstance(part, bytes) else part.size for part in parts)
    out = thread_buffer("parquet file", total, np.dtype(np.uint8))
    at = 0
    for part in parts:
        size = len(part) if isinstance(part, bytes) else part.size
        out[at:at + size] = np.frombuffer(part, dtype=np.uint8)
        at += size
    return out.data
