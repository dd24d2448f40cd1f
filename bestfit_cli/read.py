"""Read: tokenized shards in, ``DocBatch`` values out.

A reader turns one input file into batches of documents: flat token ids plus offsets, already validated and cast
to the output dtype. Readers are registered by format in ``READERS``; a new input format is one function here.
"""

from __future__ import annotations

import errno
import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import InputError, OptionError
from .fs import InputFile

# Documents are handed on in batches of about this many tokens (a few MB), whatever the input's row groups.
BATCH_TOKENS = 1 << 20
PARQUET_BATCH_ROWS = 1024

TOKEN_DTYPES: dict[str, type[np.integer[Any]]] = {"uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
                                                  "int64": np.int64}
BAD_RECORD_POLICIES = ("error", "skip")
SKIPPED_EXAMPLES = 5  # locations of skipped records kept for the report and the manifest
# The longest JSONL line read: parsing a line holds about 8 bytes of memory per byte of it (the line, Python's list
# of ints, the numpy copy), so 1 GiB (about 130M tokens, one default window) costs about 8 GiB at its peak.
DEFAULT_MAX_LINE_BYTES = 1 << 30
LINE_MEMORY_FACTOR = 8


def line_limit(memory: int | None) -> int:
    """The longest JSONL line a run with this ``--memory`` budget reads: an eighth of it, at most the default."""
    return DEFAULT_MAX_LINE_BYTES if memory is None else max(1, min(DEFAULT_MAX_LINE_BYTES,
                                                                   memory // LINE_MEMORY_FACTOR))


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


DEFAULT_MAX_BAD_RECORDS = "1%"


@dataclass(frozen=True)
class BadRecordLimit:
    """``--max-bad-records``: how many records ``--on-bad-record skip`` may leave out before the run fails, as a
    count (``100``) or a share of the records read (``1%``)."""

    text: str = DEFAULT_MAX_BAD_RECORDS
    count: int | None = None
    share: float | None = 0.01

    @classmethod
    def parse(cls, text: str) -> BadRecordLimit:
        """``N`` (a count >= 0) or ``P%`` (a share, 0 to 100); anything else is an OptionError."""
        value = str(text).strip()
        try:
            if value.endswith("%"):
                share = float(value[:-1])
                if not 0 <= share <= 100:
                    raise ValueError(value)
                return cls(value, None, share / 100)
            count = int(value)
            if count < 0:
                raise ValueError(value)
            return cls(value, count, None)
        except ValueError:
            raise OptionError(f"--max-bad-records {text!r} is neither a count nor a share",
                              fix="give a count of records such as 100, or a share of them such as 1%") from None

    def exceeded(self, bad: int, records: int, *, final: bool) -> bool:
        """A count is exceeded as soon as it is passed; a share only once every record is read (``final``)."""
        if self.count is not None:
            return bad > self.count
        return final and self.share is not None and bad > self.share * records

    def check(self, skipped: Skipped, records: int, inputs: str, *, final: bool) -> None:
        if not self.exceeded(skipped.count, records, final=final):
            return
        share = f" ({100 * skipped.count / records:.1f}%)" if records else ""
        first = f"first: {skipped.where[0]}; " if skipped.where else ""
        raise InputError(inputs[:200], f"{skipped.count:,} of {records:,} records{share} were bad and skipped, more "
                                       f"than --max-bad-records {self.text} allows",
                         fix=f"{first}fix the inputs or --column, or raise --max-bad-records")


@dataclass(frozen=True)
class DocBatch:
    """Consecutive documents of one input file: ``tokens[offsets[i]:offsets[i+1]]`` is document ``first_row + i``."""

    file_index: int
    first_row: int
    offsets: np.ndarray  # int64, n_docs + 1 entries, offsets[0] == 0
    tokens: np.ndarray  # the output token dtype
    fraction_done: float = 0.0  # share of the file read once this batch is handed on (for progress)
    skipped: Skipped = Skipped()  # bad records left out of this batch (--on-bad-record skip)
    content_sha256: str | None = None  # JSONL: on a file's last batch, sha256 of all its bytes read (decompressed)

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
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES  # a longer JSONL line is an error (``line_limit``)

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


# A footer claiming more values than this per byte of a column chunk is damaged: decoding it would allocate for
# values that are not in the file. Real data stays far below it (a column of one repeated id under zstd measured
# about 40,000 values a byte), so no honest file is refused.
MAX_VALUES_PER_BYTE = 1 << 20


def _unreadable(file: InputFile, exc: BaseException, what: str, fix: str) -> InputError:
    """The error for a file that could not be opened or read: named after its cause (a missing file, a permission,
    an I/O error) when the operating system gives one, else ``what`` with ``fix``."""
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    code = getattr(exc, "errno", None)
    if isinstance(exc, FileNotFoundError) or code == errno.ENOENT:
        return InputError(file.name, f"disappeared before it could be read ({detail})",
                          fix="restore it, or leave it out of the inputs (was it moved or deleted during the run?)")
    if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM):
        return InputError(file.name, f"cannot be read: permission denied ({detail})",
                          fix="check the file's permissions and the user bestfit runs as")
    if isinstance(exc, OSError) and code is not None:
        return InputError(file.name, f"cannot be read ({detail})",
                          fix="the operating system reported an error: check the disk or the mount, then rerun")
    return InputError(file.name, f"{what} ({detail})", fix=fix)


def _open_parquet(file: InputFile) -> pq.ParquetFile:
    assert file.fs is not None
    try:
        return pq.ParquetFile(file.fs.open_input_file(file.fs_path))
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise _unreadable(file, exc, "not a readable Parquet file",
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
    _check_list_type(file, opts.column, schema.field(opts.column).type)
    _check_footer(file, pf.metadata, opts.column)
    return pf


def _check_list_type(file: InputFile, column: str, field_type: pa.DataType, row: int | None = None) -> None:
    list_like = pa.types.is_list(field_type) or pa.types.is_large_list(field_type) or pa.types.is_fixed_size_list(
        field_type)
    if not list_like or not pa.types.is_integer(field_type.value_type):
        raise InputError(file.name, f"column '{column}' has type {field_type}, not a list of integer token ids",
                         row=row, fix="pass --column with the column that holds token ids")


def _check_footer(file: InputFile, meta: pq.FileMetaData, column: str) -> None:
    size = file.size
    leaf = next(i for i in range(meta.num_columns) if meta.schema.column(i).path.split(".")[0] == column)
    first_row = 0
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        rows = row_group.num_rows
        chunk = row_group.column(leaf)
        claim = None
        if rows < 0 or chunk.num_values < 0 or chunk.total_compressed_size < 0:
            claim = "negative counts"
        elif size is not None and chunk.total_compressed_size > size:
            claim = f"{chunk.total_compressed_size:,} bytes of '{column}' in a file of {size:,} bytes"
        elif size is not None and not 0 <= chunk.data_page_offset < size:
            claim = f"'{column}' data at byte {chunk.data_page_offset:,} of a file of {size:,} bytes"
        elif rows > chunk.num_values:
            claim = f"{rows:,} rows but only {chunk.num_values:,} values of '{column}'"
        elif chunk.num_values > MAX_VALUES_PER_BYTE * max(chunk.total_compressed_size, 1):
            claim = f"{chunk.num_values:,} values of '{column}' in {chunk.total_compressed_size:,} bytes"
        if claim is not None:
            raise InputError(file.name, f"the footer of row group {group} (its first row is {first_row:,}) claims "
                                        f"{claim}, which the file cannot hold",
                             fix="the footer is damaged: re-create or remove this file")
        first_row += rows
    if first_row != meta.num_rows:
        raise InputError(file.name, f"the footer claims {meta.num_rows:,} rows, its row groups {first_row:,}",
                         fix="the footer is damaged: re-create or remove this file")


def check_schemas(files: Sequence[InputFile], opts: ReadOptions) -> None:
    """Open every Parquet input's footer before any work, so a wrong ``--column`` or a damaged footer in the last
    file fails at once rather than after the files before it are packed."""
    for file in files:
        if file.format == "parquet":
            if file.size == 0:
                raise InputError(file.name, "file is empty", fix="remove it from the inputs")
            open_parquet_checked(file, opts).close()


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


def _corrupt(file: InputFile, pf: pq.ParquetFile, column: str, row: int, exc: BaseException) -> InputError:
    if isinstance(exc, OSError) and getattr(exc, "errno", None) is not None:
        return _unreadable(file, exc, "", "")
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InputError(file.name, f"corrupt Parquet data in {_failing_row_group(pf, column, row)} ({detail})",
                      fix="re-create or remove this file")


def _record_batches(file: InputFile, column: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """One column of a Parquet file in record batches, in row order.

    pyarrow's dataset scanner decodes ahead on its own threads with bounded read-ahead, which keeps both cores busy
    on a single column (reading row group by row group through ``ParquetFile`` measured about half as fast).
    """
    import pyarrow.dataset as pads  # heavy: loaded by the first Parquet read, not by every `bestfit --help`

    fragment = pads.ParquetFileFormat().make_fragment(file.fs_path, filesystem=file.fs)
    yield from fragment.to_batches(columns=[column], batch_size=batch_rows, use_threads=True)


def read_parquet(file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
    pf = open_parquet_checked(file, opts)

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
        raise _corrupt(file, pf, opts.column, row, exc) from None


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
        raise _unreadable(file, exc, "cannot open", "check the file and its compression") from None


class LineTooLong(Exception):
    """A JSONL line longer than ``ReadOptions.max_line_bytes``; ``read_jsonl`` names the file and line."""

    def __init__(self, line_no: int) -> None:
        super().__init__(line_no)
        self.line_no = line_no


def _lines(stream: IO[bytes], max_line_bytes: int, digest: Any = None, chunk_size: int = 1 << 23
           ) -> Iterator[bytes | bytearray]:
    """Lines of a binary stream, read in large chunks (pyarrow's streams have no readline), in linear time.

    The unfinished end of a chunk is kept in a growing buffer, so a line of any length is copied once, never
    re-joined chunk after chunk. A line longer than ``max_line_bytes`` raises ``LineTooLong``; a run of blank
    bytes is never buffered (leading blanks of a line are dropped, a blank chunk inside one counts one byte), so
    a file of nothing but spaces reads in bounded memory. Every chunk also goes into ``digest`` (a hashlib
    object): the input's content fingerprint (``fingerprint.py``).
    """
    line_no = 0  # lines finished so far
    tail = bytearray()
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        if digest is not None:
            digest.update(chunk)
        lines: list[bytes | bytearray] = list(chunk.split(b"\n"))
        last = lines.pop()
        if lines:
            if tail:
                tail += lines[0]
                lines[0] = tail
                tail = bytearray()
            for line in lines:
                line_no += 1
                if len(line) > max_line_bytes:
                    raise LineTooLong(line_no)
                yield line
        if last.isspace():
            last = b" " if tail else b""  # separating whitespace is all JSON needs of it
        tail += last
        if len(tail) > max_line_bytes:
            raise LineTooLong(line_no + 1)
    if tail:
        yield tail


# The magic bytes of compressed streams, to say "decompress it" rather than "not valid JSON".
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2", b"\x04\x22\x4d\x18": "lz4"}


def _compression_of(raw: bytes | bytearray) -> str | None:
    return next((name for magic, name in _COMPRESSED_MAGIC.items() if raw.startswith(magic)), None)


def _not_json(file: InputFile, line_no: int, raw: bytes | bytearray, detail: str) -> InputError:
    compression = _compression_of(raw) if line_no == 1 else None
    if compression is not None:
        where = "stdin" if file.is_stdin else "this file"
        fix = (f"{where} is {compression}-compressed: decompress it first, for example zcat FILE | bestfit pack - ..."
               if file.is_stdin else f"{where} is {compression}-compressed: name it *.jsonl.{_SUFFIX[compression]} "
                                     "or decompress it")
        return InputError(file.name, f"not valid JSON ({compression}-compressed data)", line=line_no, fix=fix)
    return InputError(file.name, f"not valid JSON ({detail})", line=line_no,
                      fix="repair or remove this line, or pass --on-bad-record skip")


_SUFFIX = {"gzip": "gz", "zstd": "zst", "bzip2": "bz2", "lz4": "lz4"}
_INT64_MAX = int(np.iinfo(np.int64).max)


def _out_of_range(file: InputFile, line_no: int, ids: list[Any], column: str, dtype: str) -> InputError:
    """The first bad id of a line holding one beyond int64, named as Parquet input names a bad id."""
    value = next(v for v in ids if v < 0 or v > _INT64_MAX)
    if value < 0:
        return InputError(file.name, f"negative token id {value} in '{column}'", line=line_no,
                          fix="token ids must be >= 0; check the tokenizer output")
    return InputError(file.name, f"token id {value} in '{column}' does not fit the output dtype {dtype}",
                      line=line_no, fix="token ids must fit in int64; check the tokenizer output")


def _parse_line(file: InputFile, line_no: int, raw: bytes | bytearray, column: str, dtype: str) -> np.ndarray:
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _not_json(file, line_no, raw, f"{exc.__class__.__name__}: {str(exc).split(':')[0]}") from None
    except RecursionError:
        raise InputError(file.name, "JSON nested too deeply to read", line=line_no,
                         fix="repair or remove this line, or pass --on-bad-record skip") from None
    if not isinstance(record, dict):
        raise InputError(file.name, "line is not a JSON object", line=line_no,
                         fix='each line must be an object such as {"input_ids": [1, 2, 3]}')
    if column not in record:
        # Escaped: a field name may hold a newline, and the message is one line.
        keys = ", ".join(json.dumps(key, ensure_ascii=False)[1:-1] for key in record) or "none"
        raise InputError(file.name, f"no field '{column}'; fields are: {keys[:200]}", line=line_no,
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
    only_ints = arr.ndim == 1 and (arr.dtype.kind in "iu" or all(type(v) is int for v in ids))
    if not only_ints or ((b"true" in raw or b"false" in raw) and any(type(v) is bool for v in ids)):
        kinds = sorted({type(v).__name__ if v is not None else "null" for v in ids} - {"int"})
        what = "nested lists" if arr.ndim > 1 or "list" in kinds else ", ".join(kinds)
        raise InputError(file.name, f"'{column}' holds {what}, not only integer token ids", line=line_no,
                         fix="token ids must be non-negative integers")
    if arr.dtype.kind != "i":  # numpy picks uint64 or object only for ids beyond int64
        raise _out_of_range(file, line_no, ids, column, dtype)
    return arr


def read_jsonl(file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
    stream, file_position = _open_text(file)
    line_numbers: list[int] = []  # the line of each record in the pending batch, for messages
    pending: list[np.ndarray] = []
    pending_tokens = 0
    row = 0
    skipped = Skipped()
    digest = hashlib.sha256()

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
        for line_no, raw in enumerate(_lines(stream, opts.max_line_bytes, digest), start=1):
            if not raw.strip():
                continue
            try:
                ids = _parse_line(file, line_no, raw, opts.column, opts.dtype)
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
    except LineTooLong as exc:
        raise InputError(file.name, f"line longer than {opts.max_line_bytes:,} bytes, the most one line may hold "
                                    "in memory", line=exc.line_no,
                         fix="give a larger --memory (one line costs about 8 bytes of memory a byte), or check "
                             "that the file really is JSON Lines") from None
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise _unreadable(file, exc, "cannot read", "check the file and its compression") from None
    finally:
        if not file.is_stdin:
            stream.close()
    # Always a last batch, even one without documents: it carries the content hash of the whole file.
    yield replace(flush(), content_sha256=digest.hexdigest())


READERS: dict[str, Reader] = {"parquet": read_parquet, "jsonl": read_jsonl}


@dataclass
class InputCounts:
    """Records read and bad records skipped, per input file, tallied as ``read_inputs`` hands batches on."""

    documents: list[int]
    skipped: list[Skipped]
    content_sha256: list[str | None] = field(default_factory=list)  # JSONL files, once read to the end

    @classmethod
    def for_files(cls, n_files: int) -> InputCounts:
        return cls([0] * n_files, [Skipped()] * n_files, [None] * n_files)


def read_inputs(files: Sequence[InputFile], opts: ReadOptions, counts: InputCounts) -> Iterator[DocBatch]:
    """Batches of every input file, in input order (what ``pack`` and ``verify`` both read); an empty file is an
    error, since it is almost always an interrupted copy."""
    for index, file in enumerate(files):
        if file.size == 0:
            raise InputError(file.name, "file is empty", fix="remove it from the inputs")
        for batch in read_file(file, index, opts):
            counts.documents[index] += batch.n_docs
            counts.skipped[index] += batch.skipped
            if batch.content_sha256 is not None:
                counts.content_sha256[index] = batch.content_sha256
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
    pf = open_parquet_checked(file, opts)
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
        raise _corrupt(file, pf, opts.column, row, exc) from None
