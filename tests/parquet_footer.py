"""Read and rewrite a Parquet footer (Thrift compact protocol), so tests can make a file whose footer lies.

Only what the tests need: a struct is a dict of field id -> (type, value), a list is (element type, values), and
``encode(decode(footer))`` gives the footer's bytes back. Field ids are those of parquet.thrift, for instance
``FileMetaData`` 3 num_rows and 4 row_groups, ``RowGroup`` 1 columns and 3 num_rows, ``ColumnChunk`` 3 meta_data,
``ColumnMetaData`` 5 num_values, 6 total_uncompressed_size, 7 total_compressed_size, 9 data_page_offset.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(13)
FILE_NUM_ROWS, FILE_ROW_GROUPS = 3, 4
GROUP_COLUMNS, GROUP_BYTES, GROUP_NUM_ROWS = 1, 2, 3
CHUNK_META = 3
META_PATH, META_NUM_VALUES, META_UNCOMPRESSED, META_COMPRESSED, META_DATA_OFFSET = 3, 5, 6, 7, 9


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> int:
        value = self.data[self.at]
        self.at += 1
        return value

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int) -> Any:
        if kind in (TRUE, FALSE):
            return kind == TRUE
        if kind == BYTE:
            return self.byte()
        if kind in (I16, I32, I64):
            return self.zigzag()
        if kind == DOUBLE:
            self.at += 8
            return struct.unpack("<d", self.data[self.at - 8:self.at])[0]
        if kind == BINARY:
            n = self.varint()
            self.at += n
            return self.data[self.at - n:self.at]
        if kind in (LIST, SET):
            header = self.byte()
            size, elem = header >> 4, header & 0x0F
            if size == 15:
                size = self.varint()
            return elem, [self.byte() == TRUE if elem in (TRUE, FALSE) else self.value(elem) for _ in range(size)]
        if kind == STRUCT:
            return self.struct()
        raise ValueError(f"thrift type {kind} is not used by Parquet footers")

    def struct(self) -> dict[int, tuple[int, Any]]:
        fields: dict[int, tuple[int, Any]] = {}
        last = 0
        while True:
            header = self.byte()
            if header == STOP:
                return fields
            delta, kind = header >> 4, header & 0x0F
            field_id = last + delta if delta else self.zigzag()
            fields[field_id] = (kind, self.value(kind))
            last = field_id


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


def _encode_value(kind: int, value: Any) -> bytes:
    if kind == BYTE:
        return bytes([value])
    if kind in (I16, I32, I64):
        return _zigzag(value)
    if kind == DOUBLE:
        return struct.pack("<d", value)
    if kind == BINARY:
        return _varint(len(value)) + bytes(value)
    if kind in (LIST, SET):
        elem, items = value
        head = bytes([(len(items) << 4) | elem]) if len(items) < 15 else bytes([0xF0 | elem]) + _varint(len(items))
        body = b"".join(bytes([TRUE if v else FALSE]) if elem in (TRUE, FALSE) else _encode_value(elem, v)
                        for v in items)
        return head + body
    if kind == STRUCT:
        return encode(value)
    raise ValueError(f"thrift type {kind} is not used by Parquet footers")


def encode(fields: dict[int, tuple[int, Any]]) -> bytes:
    out = bytearray()
    last = 0
    for field_id in sorted(fields):
        kind, value = fields[field_id]
        if kind in (TRUE, FALSE):
            kind = TRUE if value else FALSE
        delta = field_id - last
        out += bytes([(delta << 4) | kind]) if 0 < delta <= 15 else bytes([kind]) + _zigzag(field_id)
        if kind not in (TRUE, FALSE):
            out += _encode_value(kind, value)
        last = field_id
    out.append(STOP)
    return bytes(out)


def read_footer(path: Path) -> tuple[bytes, dict[int, tuple[int, Any]]]:
    """The bytes before the footer, and the footer decoded."""
    data = path.read_bytes()
    assert data[-4:] == b"PAR1"
    length = int.from_bytes(data[-8:-4], "little")
    return data[:-8 - length], _Reader(data[-8 - length:-8]).struct()


def write_footer(path: Path, body: bytes, footer: dict[int, tuple[int, Any]] | bytes) -> None:
    encoded = footer if isinstance(footer, bytes) else encode(footer)
    path.write_bytes(body + encoded + len(encoded).to_bytes(4, "little") + b"PAR1")


def set_field(fields: dict[int, tuple[int, Any]], field_id: int, value: Any) -> None:
    kind, _ = fields[field_id]
    fields[field_id] = (kind, value)


def row_groups(footer: dict[int, tuple[int, Any]]) -> list[dict[int, tuple[int, Any]]]:
    return list(footer[FILE_ROW_GROUPS][1][1])


def column_meta(group: dict[int, tuple[int, Any]], column: str = "input_ids") -> dict[int, tuple[int, Any]]:
    """The ``ColumnMetaData`` of the chunk whose path starts with ``column``."""
    for chunk in group[GROUP_COLUMNS][1][1]:
        meta: dict[int, tuple[int, Any]] = chunk[CHUNK_META][1]
        if meta[META_PATH][1][1][0] == column.encode():
            return meta
    raise KeyError(column)
