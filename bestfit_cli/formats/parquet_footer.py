"""Check a Parquet footer before pyarrow sees it: some damaged footers make pyarrow's C++ code abort the process.

pyarrow parses a footer's claims lazily and, on some of them (a schema element whose repetition type is -1, level
histograms that do not fit the schema), throws a C++ exception on a thread that nothing catches: the process aborts
with a core dump that no Python code can catch. So every reader of Parquet files (``read.py`` for pack, stats,
histogram and verify's inputs, the output format for verify's shards, the training reader) first hands the footer
to ``check_footer``: a small reader of the Thrift compact protocol that decodes the ``FileMetaData`` (field ids of
parquet.thrift) and refuses, with a ``FooterError`` naming the field, any enum out of range, a schema tree that does
not add up, a column chunk that does not match its schema leaf, and any size or offset outside the file.

It is bounded: the footer is at most ``MAX_FOOTER_BYTES``, every length is checked against the bytes left before it
is used, structs nest at most ``MAX_DEPTH`` deep, and decoding is linear in the footer's size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

MAGIC = b"PAR1"
MAX_FOOTER_BYTES = 64 << 20  # far beyond a real footer (the shared corpora's are a few KiB)
MAX_DEPTH = 32  # FileMetaData nests about 7 deep; more is a hostile footer

# Thrift compact protocol type ids.
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)
_INTS = (_BYTE, _I16, _I32, _I64)

# Enum ranges of parquet.thrift (the highest value each may take).
_PHYSICAL_TYPES = 7  # BOOLEAN .. FIXED_LEN_BYTE_ARRAY
_REPETITIONS = 2  # REQUIRED, OPTIONAL, REPEATED
_CONVERTED_TYPES = 21  # UTF8 .. INTERVAL
_CODECS = 7  # UNCOMPRESSED .. LZ4_RAW
_ENCODINGS = 9  # PLAIN .. BYTE_STREAM_SPLIT
_PAGE_TYPES = 3  # DATA_PAGE .. DATA_PAGE_V2
_REQUIRED, _OPTIONAL, _REPEATED = range(3)

Struct = dict[int, tuple[int, Any]]


class FooterError(ValueError):
    """A footer that is malformed or claims what the file cannot hold; ``str()`` says which field, for messages."""


class NotParquetError(FooterError):
    """No Parquet footer at all: the file is truncated or is not Parquet."""


class _Decoder:
    """The Thrift compact protocol over ``data``, refusing any length that runs past its end."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def _byte(self) -> int:
        if self.at >= len(self.data):
            raise FooterError("the footer ends in the middle of a value")
        value = self.data[self.at]
        self.at += 1
        return value

    def _varint(self) -> int:
        at = self.at
        if at < len(self.data) and self.data[at] < 0x80:  # most varints of a footer are one byte
            self.at = at + 1
            return self.data[at]
        result = shift = 0
        while True:
            byte = self._byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise FooterError("a varint longer than 64 bits")

    def _zigzag(self) -> int:
        n = self._varint()
        return (n >> 1) ^ -(n & 1)

    def _length(self) -> int:
        n = self._varint()
        if n > len(self.data) - self.at:
            raise FooterError(f"a length of {n:,} runs past the footer's end")
        return n

    def value(self, kind: int, depth: int) -> Any:
        if _I16 <= kind <= _I64:
            return self._zigzag()
        if kind in (_TRUE, _FALSE):
            return kind == _TRUE
        if kind == _BYTE:
            byte = self._byte()
            return byte - 256 if byte > 127 else byte
        if kind == _DOUBLE:
            if len(self.data) - self.at < 8:
                raise FooterError("the footer ends in the middle of a value")
            self.at += 8
            return None
        if kind == _BINARY:
            n = self._length()
            self.at += n
            return self.data[self.at - n:self.at]
        if kind in (_LIST, _SET):
            header = self._byte()
            size, element = header >> 4, header & 0x0F
            if size == 15:
                size = self._length()  # every element takes at least one byte
            if element in (_TRUE, _FALSE):  # a bool element is one byte of its own
                return [self._byte() == _TRUE for _ in range(size)]
            return [self.value(element, depth) for _ in range(size)]
        if kind == _MAP:
            size = self._length()
            if size:
                types = self._byte()
                for _ in range(size):
                    self.value(types >> 4, depth)
                    self.value(types & 0x0F, depth)
            return None
        if kind == _STRUCT:
            return self.struct(depth + 1)
        raise FooterError(f"Thrift type {kind} does not exist")

    def struct(self, depth: int = 0) -> Struct:
        if depth > MAX_DEPTH:
            raise FooterError(f"structs nested more than {MAX_DEPTH} deep")
        fields: Struct = {}
        last = 0
        data, end = self.data, len(self.data)
        while True:
            if self.at >= end:
                raise FooterError("the footer ends in the middle of a value")
            header = data[self.at]
            self.at += 1
            if header == _STOP:
                return fields
            delta, kind = header >> 4, header & 0x0F
            field_id = last + delta if delta else self._zigzag()
            at = self.at
            if _I16 <= kind <= _I64 and at < end and data[at] < 0x80:  # the common one-byte integer, inline
                self.at = at + 1
                fields[field_id] = (kind, (data[at] >> 1) ^ -(data[at] & 1))
            else:
                fields[field_id] = (kind, self.value(kind, depth))
            last = field_id


@dataclass(frozen=True)
class _Leaf:
    path: tuple[bytes, ...]
    physical_type: int
    max_definition: int
    max_repetition: int


class _Fields:
    """Typed access to one decoded struct, naming the field in errors as ``where.name``."""

    def __init__(self, fields: Any, where: str) -> None:
        if not isinstance(fields, dict):
            raise FooterError(f"{where} is not a struct")
        self.fields, self.where = fields, where

    def _get(self, field_id: int, name: str, kinds: tuple[int, ...], required: bool) -> Any:
        if field_id not in self.fields:
            if required:
                raise FooterError(f"{self.where}.{name} is missing")
            return None
        kind, value = self.fields[field_id]
        if kind not in kinds:
            raise FooterError(f"{self.where}.{name} has Thrift type {kind}")
        return value

    def number(self, field_id: int, name: str, *, required: bool = False, low: int = 0, high: int | None = None
            ) -> int | None:
        value = self._get(field_id, name, _INTS, required)
        if value is not None and (value < low or (high is not None and value > high)):
            allowed = f"{low}..{high}" if high is not None else f">= {low}"
            raise FooterError(f"{self.where}.{name} is {value}, not {allowed}")
        return value  # type: ignore[no-any-return]

    def items(self, field_id: int, name: str, *, required: bool = False) -> list[Any]:
        value = self._get(field_id, name, (_LIST, _SET), required)
        return [] if value is None else value

    def struct(self, field_id: int, name: str, *, required: bool = False) -> _Fields | None:
        value = self._get(field_id, name, (_STRUCT,), required)
        return None if value is None else _Fields(value, f"{self.where}.{name}")

    def binary(self, field_id: int, name: str, *, required: bool = False) -> bytes | None:
        return self._get(field_id, name, (_BINARY,), required)  # type: ignore[no-any-return]


def _schema_leaves(elements: list[Any]) -> list[_Leaf]:
    """The leaf columns of the schema tree (depth first, as the column chunks list them), checking that every
    element's enums are in range and that the children counts describe exactly the elements listed."""
    if not elements:
        raise FooterError("the schema is empty")
    leaves: list[_Leaf] = []
    # Each entry: (children still to read, path, max definition level, max repetition level) of an open group.
    stack: list[tuple[int, tuple[bytes, ...], int, int]] = []
    for index, raw in enumerate(elements):
        element = _Fields(raw, f"schema[{index}]")
        physical = element.number(1, "type", high=_PHYSICAL_TYPES)
        element.number(2, "type_length", low=-(2**31))
        repetition = element.number(3, "repetition_type", high=_REPETITIONS)
        name = element.binary(4, "name", required=True)
        children = element.number(5, "num_children", high=len(elements) - index - 1)
        element.number(6, "converted_type", high=_CONVERTED_TYPES)
        if index == 0:
            if not children and len(elements) > 1:
                raise FooterError("schema[0] (the root) has no children, yet more elements follow")
            stack.append((children or 0, (), 0, 0))
            continue
        if not stack:
            raise FooterError(f"schema[{index}] lies outside the tree its num_children describe")
        left, path, definition, repetition_level = stack.pop()
        if left > 1:
            stack.append((left - 1, path, definition, repetition_level))
        if repetition is None:
            raise FooterError(f"schema[{index}].repetition_type is missing")
        path = (*path, name or b"")
        definition += repetition != _REQUIRED
        repetition_level += repetition == _REPEATED
        if children:
            stack.append((children, path, definition, repetition_level))
        else:
            if physical is None:
                raise FooterError(f"schema[{index}] is a leaf without a type")
            leaves.append(_Leaf(path, physical, definition, repetition_level))
    if stack:
        raise FooterError("the schema's num_children count more elements than it lists")
    return leaves


def _check_span(where: str, offset: int | None, length: int | None, end: int) -> None:
    if offset is not None and length is not None and offset + length > end:
        raise FooterError(f"{where}: {length:,} bytes from byte {offset:,} run past byte {end:,}, where the data ends")


@dataclass(frozen=True)
class _Group:
    """Where a column chunk sits, for messages in the user's terms: the row group, its first row, the file size."""

    index: int
    first_row: int
    file_size: int

    def claims(self, what: str) -> FooterError:
        return FooterError(f"the footer of row group {self.index} (its first row is {self.first_row:,}) claims "
                           f"{what}, which the file cannot hold")


def _check_chunk(chunk: _Fields, leaf: _Leaf, body_end: int, group: _Group) -> None:
    where = chunk.where
    column = leaf.path[0].decode("utf-8", "replace")[:80] if leaf.path else "?"
    chunk.number(2, "file_offset", high=body_end)
    for offset_id, length_id, what in ((4, 5, "offset_index"), (6, 7, "column_index")):
        offset = chunk.number(offset_id, f"{what}_offset", high=body_end)
        length = chunk.number(length_id, f"{what}_length")
        _check_span(f"{where}.{what}", offset, length, body_end)
    meta = chunk.struct(3, "meta_data")
    if meta is None:
        if chunk.binary(9, "encrypted_column_metadata") is None:
            raise FooterError(f"{where}.meta_data is missing")
        return  # an encrypted column: pyarrow refuses it with a Python error of its own
    physical = meta.number(1, "type", required=True, high=_PHYSICAL_TYPES)
    if physical != leaf.physical_type:
        raise FooterError(f"{meta.where}.type is {physical}, its schema leaf's {leaf.physical_type}")
    for position, encoding in enumerate(meta.items(2, "encodings", required=True)):
        if not isinstance(encoding, int) or not 0 <= encoding <= _ENCODINGS:
            raise FooterError(f"{meta.where}.encodings[{position}] is {encoding}, not 0..{_ENCODINGS}")
    path = tuple(meta.items(3, "path_in_schema", required=True))
    if path != leaf.path:
        shown = ".".join(p.decode("utf-8", "replace") if isinstance(p, bytes) else "?" for p in path)[:80]
        raise FooterError(f"{meta.where}.path_in_schema is {shown!r}, not its schema leaf's")
    meta.number(4, "codec", required=True, high=_CODECS)
    meta.number(5, "num_values", required=True)
    meta.number(6, "total_uncompressed_size", required=True)
    compressed = meta.number(7, "total_compressed_size", required=True) or 0
    # A page offset of 0 is what pyarrow writes for the data page of an empty row group (its dictionary page comes
    # first); pyarrow reads a chunk from its first page, so that is where the chunk's bytes must fit.
    data_page = meta.number(9, "data_page_offset", required=True) or 0
    meta.number(10, "index_page_offset", high=body_end)
    dictionary_page = meta.number(11, "dictionary_page_offset") or 0
    first_page = min((p for p in (data_page, dictionary_page) if p > 0), default=0)
    if max(data_page, dictionary_page) > body_end:
        raise group.claims(f"'{column}' data at byte {max(data_page, dictionary_page):,} of a file of "
                           f"{group.file_size:,} bytes")
    if first_page + compressed > body_end:
        raise group.claims(f"{compressed:,} bytes of '{column}' in a file of {group.file_size:,} bytes, "
                           f"from byte {first_page:,}")
    for position, raw in enumerate(meta.items(13, "encoding_stats")):
        stats = _Fields(raw, f"{meta.where}.encoding_stats[{position}]")
        stats.number(1, "page_type", required=True, high=_PAGE_TYPES)
        stats.number(2, "encoding", required=True, high=_ENCODINGS)
        stats.number(3, "count", required=True)
    bloom = meta.number(14, "bloom_filter_offset", high=body_end)
    _check_span(f"{meta.where}.bloom_filter", bloom, meta.number(15, "bloom_filter_length"), body_end)
    sizes = meta.struct(16, "size_statistics")
    if sizes is not None:
        sizes.number(1, "unencoded_byte_array_data_bytes")
        for field_id, name, level in ((2, "repetition_level_histogram", leaf.max_repetition),
                                      (3, "definition_level_histogram", leaf.max_definition)):
            histogram = sizes.items(field_id, name)
            if histogram and len(histogram) != level + 1:
                raise FooterError(f"{sizes.where}.{name} has {len(histogram)} entries, the schema's levels "
                                  f"need {level + 1}")
            if any(not isinstance(count, int) or count < 0 for count in histogram):
                raise FooterError(f"{sizes.where}.{name} holds a negative count")


# Footers found good, by their sha256 and file size: a run opens each input several times (check, histogram, each
# window's reads), and decoding a footer of thousands of row groups takes a while in Python; hashing it does not.
_PASSED: dict[tuple[bytes, int], None] = {}
_PASSED_MAX = 4096


def check_footer(footer: bytes, file_size: int) -> None:
    """Raise ``FooterError`` unless ``footer`` (the Thrift bytes before the length and magic at the file's end) is
    a ``FileMetaData`` whose every enum, count, size and offset is one pyarrow can be handed safely."""
    key = (hashlib.sha256(footer).digest(), file_size)
    if key in _PASSED:
        return
    _check_footer(footer, file_size)
    if len(_PASSED) >= _PASSED_MAX:
        _PASSED.clear()
    _PASSED[key] = None


def _check_footer(footer: bytes, file_size: int) -> None:
    decoder = _Decoder(footer)
    meta = _Fields(decoder.struct(), "footer")
    body_end = file_size - len(footer) - 8  # the data ends where the footer begins
    meta.number(1, "version", required=True, low=-(2**31))
    leaves = _schema_leaves(meta.items(2, "schema", required=True))
    num_rows = meta.number(3, "num_rows", required=True)
    total = 0
    for group_index, raw in enumerate(meta.items(4, "row_groups", required=True)):
        group = _Fields(raw, f"row_groups[{group_index}]")
        rows = group.number(3, "num_rows", required=True) or 0
        group.number(2, "total_byte_size", required=True)
        group.number(5, "file_offset", high=body_end)
        group.number(6, "total_compressed_size", high=body_end)
        group.number(7, "ordinal", low=0)
        chunks = group.items(1, "columns", required=True)
        if len(chunks) != len(leaves):
            raise FooterError(f"{group.where} has {len(chunks)} column chunks, the schema {len(leaves)} columns")
        for column, (chunk, leaf) in enumerate(zip(chunks, leaves, strict=True)):
            _check_chunk(_Fields(chunk, f"{group.where}.columns[{column}]"), leaf, body_end,
                         _Group(group_index, total, file_size))
        total += rows
    if total != num_rows:
        raise FooterError(f"the footer claims {num_rows:,} rows, its row groups {total:,}")
    orders = meta.items(7, "column_orders")
    if orders and len(orders) != len(leaves):
        raise FooterError(f"footer.column_orders has {len(orders)} entries, the schema {len(leaves)} columns")


def _check_length(length: int, file_size: int) -> None:
    if length > file_size - 12:
        raise NotParquetError(f"the footer claims {length:,} bytes in a file of {file_size:,}")
    if length > MAX_FOOTER_BYTES:
        raise FooterError(f"a footer of {length:,} bytes, more than the {MAX_FOOTER_BYTES:,} this reader accepts")


_NOT_PARQUET = "Parquet magic bytes not found at the end (a truncated file, or not Parquet)"


def check_bytes(data: bytes) -> None:
    """Check the footer of a whole Parquet file held in memory."""
    if len(data) < 12 or data[-4:] != MAGIC:
        raise NotParquetError(_NOT_PARQUET)
    length = int.from_bytes(data[-8:-4], "little")
    _check_length(length, len(data))
    check_footer(bytes(data[len(data) - 8 - length:len(data) - 8]), len(data))


def check_file(fs: pafs.FileSystem, path: str, size: int | None = None) -> None:
    """Check the footer of the Parquet file ``path`` on ``fs``, reading only its tail. Raises ``FooterError`` for a
    footer that must not reach pyarrow, ``OSError`` (or a pyarrow error) when the file cannot be read."""
    with fs.open_input_file(path) as handle:
        file_size = handle.size() if size is None else size
        if file_size < 12:
            raise NotParquetError(_NOT_PARQUET)
        handle.seek(file_size - 8)
        end = handle.read(8)
        if len(end) != 8 or end[4:] != MAGIC:
            raise NotParquetError(_NOT_PARQUET)
        length = int.from_bytes(end[:4], "little")
        _check_length(length, file_size)
        handle.seek(file_size - 8 - length)
        footer = handle.read(length)
        if len(footer) != length:
            raise NotParquetError("the file ends before its footer (was it truncated while being read?)")
    check_footer(bytes(footer), file_size)
