"""Read: tokenized shards in, ``DocBatch`` values out.

A reader turns one input file into batches of documents: flat token ids plus offsets, already validated and cast
to the output dtype. Readers are registered by format in ``READERS``; a new input format is one function here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import InputError
from .fs import InputFile

# Documents are handed on in batches of about this many tokens (a few MB), whatever the input's row groups.
BATCH_TOKENS = 1 << 20
PARQUET_BATCH_ROWS = 1024

TOKEN_DTYPES: dict[str, type[np.integer[Any]]] = {"uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
                                                  "int64": np.int64}
BAD_RECORD_POLICIES = ("error", "skip")
SKIPPED_EXAMPLES = 5  # locations of skipped records kept for the report and the manifest


@dataclass(frozen=True)
class Skipped:
    """Bad records skipped under ``--on-bad-record skip``: how many, and where the first few were."""

    count: int = 0
    where: tuple[str, ...] = ()
    positions: tuple[int, ...] = ()  # the row or line of each entry of ``where``, to merge within one batch

    def __add__(self, other: Skipped) -> Skipped:
        """Records of a later batch or file: appended after these."""
        return Skipped(self.count + other.count, (self.where + other.where)[:SKIPPED_EXAMPLES],
                       (self.positions + other.positions)[:SKIPPED_EXAMPLES])

    def merged(self, other: Skipped) -> Skipped:
        """Records found by another check of the same batch: the first few kept in row (or line) order."""
        pairs = sorted(zip(self.positions + other.positions, self.where + other.where, strict=True))
        return Skipped(self.count + other.count, tuple(w for _, w in pairs[:SKIPPED_EXAMPLES]),
                       tuple(p for p, _ in pairs[:SKIPPED_EXAMPLES]))

    def record(self, error: InputError) -> Skipped:
        position = error.line if error.line is not None else error.row if error.row is not None else 0
        return self + Skipped(1, (f"{error.where} ({error.reason})",), (position,))


@dataclass(frozen=True)
class DocBatch:
    """Consecutive documents of one input file: ``tokens[offsets[i]:offsets[i+1]]`` is document ``first_row + i``."""

    file_index: int
    first_row: int
    offsets: np.ndarray  # int64, n_docs + 1 entries, offsets[0] == 0
    tokens: np.ndarray  # the output token dtype
    fraction_done: float = 0.0  # share of the file read once this batch is handed on (for progress)
    skipped: Skipped = Skipped()  # bad records left out of this batch (--on-bad-record skip)

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class ReadOptions:
    column: str = "input_ids"
    dtype: str = "int32"
    on_bad_record: str = "error"  # or "skip": leave out records that cannot be read, and count them

    @property
    def skip_bad(self) -> bool:
        return self.on_bad_record == "skip"


Reader = Callable[[InputFile, int, ReadOptions], Iterator[DocBatch]]


def _dtype_fix(largest_id: int) -> str:
    """The smallest output dtype that holds ``largest_id`` (the largest id of the batch, so the hint is final)."""
    fits = [name for name, dtype in TOKEN_DTYPES.items() if largest_id <= np.iinfo(dtype).max]
    return f"pass --dtype {fits[0]}" if fits else "token ids must fit in int64"


def check_ids(file: InputFile, ids: np.ndarray, offsets: np.ndarray, first_row: int, opts: ReadOptions,
              row_label: Callable[[int], dict[str, int]]) -> np.ndarray:
    """Reject negative ids and ids the output dtype cannot hold; return ids cast to the output dtype."""
    out_dtype = np.dtype(TOKEN_DTYPES[opts.dtype])
    if ids.size == 0:
        return ids.astype(out_dtype, copy=False)
    low, high = ids.min(), ids.max()
    if low >= 0 and high <= np.iinfo(out_dtype).max:
        return ids.astype(out_dtype, copy=False)
    # Name the first bad id of the batch (the earliest row), not the extreme one.
    bad = (ids < 0) | (ids > np.iinfo(out_dtype).max) if ids.dtype.kind == "i" else ids > np.iinfo(out_dtype).max
    position = int(np.flatnonzero(bad)[0])
    value = int(ids[position])
    if value < 0:
        fix = "token ids must be >= 0; check the tokenizer output"
        reason = f"negative token id {value} in '{opts.column}'"
    else:
        fix = _dtype_fix(int(high))
        reason = f"token id {value} in '{opts.column}' does not fit the output dtype {opts.dtype}"
    doc = int(np.searchsorted(offsets, position, side="right") - 1)
    raise InputError(file.name, reason, fix=fix, **row_label(first_row + doc))


def drop_bad_ids(file: InputFile, ids: np.ndarray, offsets: np.ndarray, opts: ReadOptions,
                 location: Callable[[int], dict[str, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, Skipped]:
    """``--on-bad-record skip``: leave out documents holding a negative id or one the output dtype cannot hold.

    Returns the kept ids (cast), their offsets, the mask of kept documents and what was skipped;
    ``location(i)`` names document ``i`` of the batch for the report.
    """
    n_docs = len(offsets) - 1
    keep = np.ones(n_docs, dtype=bool)
    if ids.size:
        bad_token = (ids < 0) | (ids > np.iinfo(TOKEN_DTYPES[opts.dtype]).max)
        keep[np.unique(np.searchsorted(offsets, np.flatnonzero(bad_token), side="right") - 1)] = False
    skipped = Skipped()
    if not keep.all():
        lengths = np.diff(offsets)
        bad_docs = np.flatnonzero(~keep)
        for doc in bad_docs[:SKIPPED_EXAMPLES].tolist():
            doc_ids = ids[offsets[doc]:offsets[doc + 1]]
            what = "negative token id" if doc_ids.min() < 0 else f"token id does not fit the output dtype {opts.dtype}"
            where = location(doc)
            skipped = skipped.record(InputError(file.name, what, row=where.get("row"), line=where.get("line")))
        skipped += Skipped(len(bad_docs) - min(len(bad_docs), SKIPPED_EXAMPLES))
        ids = ids[np.repeat(keep, lengths)]
        # A skipped record stays in the numbering as an empty document, so doc_index keeps matching its row.
        offsets = np.zeros(n_docs + 1, dtype=np.int64)
        np.cumsum(np.where(keep, lengths, 0), out=offsets[1:])
    return ids.astype(TOKEN_DTYPES[opts.dtype], copy=False), offsets, keep, skipped


# --------------------------------------------------------------------------------------------- Parquet


def _open_parquet(file: InputFile) -> pq.ParquetFile:
    assert file.fs is not None
    try:
        return pq.ParquetFile(file.fs.open_input_file(file.fs_path))
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(file.name, f"not a readable Parquet file ({detail})",
                         fix="re-create or remove this file; an interrupted copy leaves a truncated file") from None


def _check_list_type(file: InputFile, column: str, field_type: pa.DataType, row: int | None = None) -> None:
    list_like = pa.types.is_list(field_type) or pa.types.is_large_list(field_type) or pa.types.is_fixed_size_list(
        field_type)
    if not list_like or not pa.types.is_integer(field_type.value_type):
        raise InputError(file.name, f"column '{column}' has type {field_type}, not a list of integer token ids",
                         row=row, fix="pass --column with the column that holds token ids")


def _record_batches(file: InputFile, column: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """One column of a Parquet file in record batches, in row order.

    pyarrow's dataset scanner decodes ahead on its own threads with bounded read-ahead, which keeps both cores busy
    on a single column (reading row group by row group through ``ParquetFile`` measured about half as fast).
    """
    import pyarrow.dataset as pads  # heavy: loaded by the first Parquet read, not by every `bestfit --help`

    fragment = pads.ParquetFileFormat().make_fragment(file.fs_path, filesystem=file.fs)
    yield from fragment.to_batches(columns=[column], batch_size=batch_rows, use_threads=True)


def read_parquet(file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
    pf = _open_parquet(file)
    schema = pf.schema_arrow
    if opts.column not in schema.names:
        raise InputError(file.name, f"no column '{opts.column}'; columns are: {', '.join(schema.names)}",
                         fix="pass --column NAME")
    _check_list_type(file, opts.column, schema.field(opts.column).type)

    def label(row: int) -> dict[str, int]:
        return {"row": row}

    row = 0
    try:
        for record_batch in _record_batches(file, opts.column, PARQUET_BATCH_ROWS):
            column = record_batch.column(0)
            batch = _batch_from_arrow(file, file_index, row, column, opts, label)
            row += len(column)
            yield replace(batch, fraction_done=row / max(pf.metadata.num_rows, 1))
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(file.name, f"corrupt Parquet data after row {row} ({detail})",
                         fix="re-create or remove this file") from None


def _null_rows(file: InputFile, column: pa.Array, first_row: int, opts: ReadOptions) -> tuple[np.ndarray, Skipped]:
    """``--on-bad-record skip``: the mask of rows that are null or hold a null token id, and what was skipped."""
    bad = column.is_null().to_numpy(zero_copy_only=False).copy()
    reasons = {}
    if column.values.null_count:
        offsets = column.offsets.to_numpy().astype(np.int64)
        null_values = np.flatnonzero(column.values.is_null().to_numpy(zero_copy_only=False))
        rows = np.searchsorted(offsets, null_values, side="right") - 1
        rows = rows[(rows >= 0) & (rows < len(column))]
        rows = rows[~bad[rows]]
        reasons = dict.fromkeys(rows.tolist(), f"'{opts.column}' holds a null token id")
        bad[rows] = True
    skipped = Skipped()
    bad_rows = np.flatnonzero(bad)
    for row in bad_rows[:SKIPPED_EXAMPLES].tolist():
        reason = reasons.get(row, f"'{opts.column}' is null")
        skipped = skipped.record(InputError(file.name, reason, row=first_row + row))
    skipped += Skipped(len(bad_rows) - min(len(bad_rows), SKIPPED_EXAMPLES))
    return bad, skipped


def _batch_from_arrow(file: InputFile, file_index: int, first_row: int, column: pa.Array, opts: ReadOptions,
                      label: Callable[[int], dict[str, int]]) -> DocBatch:
    if pa.types.is_fixed_size_list(column.type):
        column = column.cast(pa.list_(column.type.value_type))
    if opts.skip_bad:
        bad, skipped = _null_rows(file, column, first_row, opts)
        flat = pc.list_flatten(column.filter(pa.array(~bad))).to_numpy()
        lengths = pc.list_value_length(column).fill_null(0).to_numpy().astype(np.int64)
        lengths[bad] = 0  # a skipped row stays in the numbering as an empty document
        offsets = np.zeros(len(column) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids, offsets, _, more = drop_bad_ids(file, flat, offsets, opts, lambda i: {"row": first_row + i})
        return DocBatch(file_index, first_row, offsets, ids, skipped=skipped.merged(more))
    if column.null_count:
        null_row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(file.name, f"'{opts.column}' is null", fix="drop or fill rows without token ids",
                         **label(first_row + null_row))
    offsets = column.offsets.to_numpy().astype(np.int64)
    flat = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets -= offsets[0]
    if flat.null_count:
        position = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0])
        doc = int(np.searchsorted(offsets, position, side="right") - 1)
        raise InputError(file.name, f"'{opts.column}' holds a null token id", fix="drop or repair this row",
                         **label(first_row + doc))
    ids = check_ids(file, flat.to_numpy(), offsets, first_row, opts, label)
    return DocBatch(file_index, first_row, offsets, ids)


# --------------------------------------------------------------------------------------------- JSONL


def _open_text(file: InputFile) -> tuple[IO[bytes], Callable[[], int]]:
    """The file's decompressed bytes, and how many bytes of the file itself have been read (for progress)."""
    if file.is_stdin:
        return sys.stdin.buffer, lambda: 0
    assert file.fs is not None
    try:
        raw = file.fs.open_input_file(file.fs_path)  # random access: its position gives progress
        codec = pa.Codec.detect(file.fs_path) if file.format_compressed else None
        stream: IO[bytes] = pa.CompressedInputStream(raw, codec.name) if codec is not None else raw
        size = file.size or 0
        return stream, lambda: size if raw.closed else raw.tell()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(file.name, f"cannot open ({exc})", fix="check the file and its compression") from None


def _lines(stream: IO[bytes], chunk_size: int = 1 << 23) -> Iterator[bytes]:
    """Lines of a binary stream, read in large chunks (pyarrow's streams have no readline)."""
    tail = b""
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        yield from lines
    if tail:
        yield tail


def _parse_line(file: InputFile, line_no: int, raw: bytes, column: str) -> np.ndarray:
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(file.name, f"not valid JSON ({exc.__class__.__name__}: {str(exc).split(':')[0]})",
                         line=line_no, fix="repair or remove this line, or pass --on-bad-record skip") from None
    if not isinstance(record, dict):
        raise InputError(file.name, "line is not a JSON object", line=line_no,
                         fix='each line must be an object such as {"input_ids": [1, 2, 3]}')
    if column not in record:
        keys = ", ".join(record) or "none"
        raise InputError(file.name, f"no field '{column}'; fields are: {keys}", line=line_no,
                         fix="pass --column NAME")
    ids = record[column]
    if not isinstance(ids, list):
        kind = "null" if ids is None else type(ids).__name__
        raise InputError(file.name, f"'{column}' is {kind}, not a list of token ids", line=line_no,
                         fix="each line needs a list of integer token ids")
    if not ids:
        return np.empty(0, dtype=np.int64)
    try:
        arr = np.array(ids)
    except (ValueError, OverflowError):
        arr = np.array(ids, dtype=object)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or (
            (b"true" in raw or b"false" in raw) and any(type(v) is bool for v in ids)):
        kinds = sorted({type(v).__name__ if v is not None else "null" for v in ids} - {"int"})
        what = "nested lists" if arr.ndim > 1 or "list" in kinds else ", ".join(kinds) or "values out of range"
        raise InputError(file.name, f"'{column}' holds {what}, not only integer token ids", line=line_no,
                         fix="token ids must be non-negative integers")
    if arr.dtype.kind == "u":  # numpy picks uint64 only for ids beyond int64
        raise InputError(file.name, f"token id {int(arr.max())} in '{column}' does not fit int64", line=line_no,
                         fix="check the tokenizer output")
    return arr


def read_jsonl(file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
    stream, file_position = _open_text(file)
    line_numbers: list[int] = []  # the line of each record in the pending batch, for messages
    pending: list[np.ndarray] = []
    pending_tokens = 0
    row = 0
    skipped = Skipped()

    def flush() -> DocBatch:
        nonlocal row, skipped
        lengths = np.fromiter((len(a) for a in pending), dtype=np.int64, count=len(pending))
        offsets = np.zeros(len(pending) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate(pending) if pending_tokens else np.empty(0, dtype=np.int64)
        lines = list(line_numbers)
        batch_start = row

        def label(r: int) -> dict[str, int]:
            return {"line": lines[r - batch_start]}

        done = min(file_position() / file.size, 1.0) if file.size else 0.0
        if opts.skip_bad:
            kept, offsets, _, more = drop_bad_ids(file, ids, offsets, opts, lambda i: {"line": lines[i]})
            batch = DocBatch(file_index, row, offsets, kept, done, skipped.merged(more))
            skipped = Skipped()
        else:
            batch = DocBatch(file_index, row, offsets, check_ids(file, ids, offsets, row, opts, label), done)
        row += batch.n_docs
        pending.clear()
        line_numbers.clear()
        return batch

    try:
        for line_no, raw in enumerate(_lines(stream), start=1):
            if not raw.strip():
                continue
            try:
                ids = _parse_line(file, line_no, raw, opts.column)
            except InputError as exc:
                if not opts.skip_bad:
                    raise
                skipped = skipped.record(exc)
                ids = np.empty(0, dtype=np.int64)  # kept in the numbering as an empty document
            pending.append(ids)
            line_numbers.append(line_no)
            pending_tokens += len(ids)
            if pending_tokens >= BATCH_TOKENS:
                yield flush()
                pending_tokens = 0
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise InputError(file.name, f"cannot read ({exc})", fix="check the file and its compression") from None
    finally:
        if not file.is_stdin:
            stream.close()
    if pending or skipped.count:
        yield flush()


READERS: dict[str, Reader] = {"parquet": read_parquet, "jsonl": read_jsonl}


@dataclass
class InputCounts:
    """Records read and bad records skipped, per input file, tallied as ``read_inputs`` hands batches on."""

    documents: list[int]
    skipped: list[Skipped]

    @classmethod
    def for_files(cls, n_files: int) -> InputCounts:
        return cls([0] * n_files, [Skipped()] * n_files)


def read_inputs(files: Sequence[InputFile], opts: ReadOptions, counts: InputCounts) -> Iterator[DocBatch]:
    """Batches of every input file, in input order (what ``pack`` and ``verify`` both read); an empty file is an
    error, since it is almost always an interrupted copy."""
    for index, file in enumerate(files):
        if file.size == 0:
            raise InputError(file.name, "file is empty", fix="remove it from the inputs")
        for batch in read_file(file, index, opts):
            counts.documents[index] += batch.n_docs
            counts.skipped[index] += batch.skipped
            yield batch


def read_file(file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
    """Batches of one input file, through the reader registered for its format."""
    yield from READERS[file.format](file, file_index, opts)


# --------------------------------------------------------------------------------------------- lengths only


@dataclass(frozen=True)
class LengthBatch:
    """Token counts of consecutive documents of one input file: all ``bestfit stats`` needs."""

    file_index: int
    first_row: int
    lengths: np.ndarray  # int64, one per document, in file order
    fraction_done: float = 0.0
    skipped: Skipped = Skipped()  # bad records left out (--on-bad-record skip)


def _ids_in_range(column: pa.Array, opts: ReadOptions) -> bool:
    values = pc.list_flatten(column)
    if not len(values):
        return True
    extremes = pc.min_max(values)
    return bool(extremes["min"].as_py() >= 0 and extremes["max"].as_py() <= np.iinfo(TOKEN_DTYPES[opts.dtype]).max)


def read_lengths(file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[LengthBatch]:
    """Document lengths of one input file, without casting token ids where the format allows.

    Parquet lengths come from the list offsets (``pc.list_value_length``); null rows, null ids and ids out of range
    for ``--dtype`` are refused as ``read_parquet`` refuses them (one ``min_max`` pass over the ids finds them), so
    ``stats`` accepts exactly the inputs ``pack`` accepts. JSONL must be parsed line by line anyway, and bad records
    skipped with ``--on-bad-record skip`` need the full reader, so those go through ``read_file``.
    """
    if file.format != "parquet" or opts.skip_bad:
        for batch in read_file(file, file_index, opts):
            yield LengthBatch(batch.file_index, batch.first_row, batch.lengths, batch.fraction_done, batch.skipped)
        return
    pf = _open_parquet(file)
    if opts.column not in pf.schema_arrow.names:
        raise InputError(file.name, f"no column '{opts.column}'; columns are: {', '.join(pf.schema_arrow.names)}",
                         fix="pass --column NAME")
    _check_list_type(file, opts.column, pf.schema_arrow.field(opts.column).type)
    row = 0
    try:
        for record_batch in _record_batches(file, opts.column, PARQUET_BATCH_ROWS * 8):
            column = record_batch.column(0)
            if column.null_count or column.values.null_count or not _ids_in_range(column, opts):
                _batch_from_arrow(file, file_index, row, column, opts, lambda r: {"row": r})  # raises, naming the row
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
            row += len(lengths)
            yield LengthBatch(file_index, row - len(lengths), lengths, row / max(pf.metadata.num_rows, 1))
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(file.name, f"corrupt Parquet data after row {row} ({detail})",
                         fix="re-create or remove this file") from None
