"""Read: tokenized shards in, ``DocBatch`` values out.

A reader turns one input file into batches of documents: flat token ids plus offsets, already validated and cast
to the output dtype. Each input format is one module of ``formats/`` (its ``InputFormat``, found in the registry
``formats.INPUT_FORMATS`` by the file's format); this module holds what every reader shares: the batch types, the
read options, the checks of token ids, the accounting of bad records, and the dispatch to a file's format.
"""

from __future__ import annotations

import collections
import errno
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import carry
from .carry import TokenColumn
from .errors import BestfitError, InputError, OptionError
from .fs import InputFile, storage_error

if TYPE_CHECKING:
    from .formats.base import Checkpoint, InputFormat

# Documents are handed on in batches of about this many tokens (a few MB), whatever the input's row groups.
BATCH_TOKENS = 1 << 20

TOKEN_DTYPES: dict[str, type[np.integer[Any]]] = {"uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
                                                  "int64": np.int64}
STREAM_DTYPES = ("uint16", "uint32", "int32", "int64")  # --stream-dtype: the ids of a raw .bin token stream
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
    columns: dict[str, pa.Array] = field(default_factory=dict)  # --keep: one value per document
    token_columns: dict[str, np.ndarray] = field(default_factory=dict)  # --keep-token: aligned with ``tokens``
    notes: tuple[str, ...] = ()  # one line each on what reading the file found (a stream's trailing document)

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
    keep: tuple[str, ...] = ()  # document columns carried into the output (carry.py)
    keep_token: tuple[TokenColumn, ...] = ()  # token columns carried into the output

    @property
    def carried(self) -> tuple[str, ...]:
        return (*self.keep, *(c.name for c in self.keep_token))
    split_at: int | None = None  # flat token streams: the separator id that ends each document
    stream_dtype: str | None = None  # a raw .bin stream: the type of its ids (a .npy says its own)
    parse_workers: int = 1  # JSONL: processes parsing a file's lines (formats/jsonl_workers.py); never the output
    read_ahead_bytes: int = 0  # batches read on a thread of their own, up to this far ahead (``ReadAhead``); 0: off

    @property
    def skip_bad(self) -> bool:
        return self.on_bad_record == "skip"


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


def unreadable(file: InputFile, exc: BaseException, what: str, fix: str) -> BestfitError:
    """The error for a file that could not be opened or read: named after its cause (a missing file, a permission,
    an I/O error) when the operating system gives one, else ``what`` with ``fix``."""
    failure = storage_error(file.name, exc)
    if failure is not None:
        return failure
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


def check_list_type(file: InputFile, column: str, field_type: pa.DataType, row: int | None = None) -> None:
    list_like = pa.types.is_list(field_type) or pa.types.is_large_list(field_type) or pa.types.is_fixed_size_list(
        field_type)
    if not list_like or not pa.types.is_integer(field_type.value_type):
        raise InputError(file.name, f"column '{column}' has type {field_type}, not a list of integer token ids",
                         row=row, fix="pass --column with the column that holds token ids")


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


def batch_from_arrow(file: InputFile, file_index: int, first_row: int, column: pa.Array, opts: ReadOptions,
                     label: Callable[[int], dict[str, int]]) -> DocBatch:
    """One record batch's token column (a list array) as a ``DocBatch``: null rows and null ids refused, or skipped
    with ``--on-bad-record skip``, and ids checked as ``check_ids`` checks them."""
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


def check_carried_schema(file: InputFile, schema: pa.Schema, opts: ReadOptions) -> None:
    """The columns --keep and --keep-token name exist, once each, in a columnar input's schema; --keep columns hold
    one scalar per document."""
    for name in opts.carried:
        found = schema.get_all_field_indices(name)
        if not found:
            raise InputError(file.name, f"no column '{name}' to carry (--keep / --keep-token); columns are: "
                                        f"{', '.join(schema.names)[:300]}",
                             fix="every input needs the columns --keep and --keep-token name")
        if len(found) > 1:
            raise InputError(file.name, f"{len(found)} columns are named '{name}'",
                             fix="write the file again with one column of that name")
    for name in opts.keep:
        carry.check_document_type(file.name, name, schema.field(name).type)


def with_carried(file: InputFile, batch: DocBatch, arrays: Callable[[str], pa.Array], opts: ReadOptions) -> DocBatch:
    """``batch`` with its --keep and --keep-token columns, from a columnar input's rows of the same batch
    (``arrays(name)``): document columns as they are, token columns checked against the token ids' lengths."""
    columns = {name: arrays(name) for name in opts.keep}
    token_columns = {}
    ids_lengths = batch.lengths
    nonempty = ids_lengths > 0
    rows = np.flatnonzero(nonempty) if opts.skip_bad else None

    def where(i: int) -> dict[str, int]:  # row i of the carried column (of the non-empty rows only, when skipping)
        return {"row": batch.first_row + (int(rows[i]) if rows is not None and len(rows) > i else i)}

    for spec in opts.keep_token:
        array = arrays(spec.name)
        if opts.skip_bad:  # a record skipped as bad is an empty document: its values go with it
            array = array.filter(pa.array(nonempty))
        token_columns[spec.name] = carry.arrow_token_values(
            file.name, spec, array, ids_lengths[nonempty] if opts.skip_bad else ids_lengths, batch.first_row, where)
    return replace(batch, columns=columns, token_columns=token_columns)


@dataclass
class InputCounts:
    """Records read and bad records skipped, per input file, tallied as ``read_inputs`` hands batches on."""

    documents: list[int]
    skipped: list[Skipped]
    content_sha256: list[str | None] = field(default_factory=list)  # JSONL files, once read to the end
    notes: list[list[str]] = field(default_factory=list)  # per input file: what reading found, one line each

    @classmethod
    def for_files(cls, n_files: int) -> InputCounts:
        return cls([0] * n_files, [Skipped()] * n_files, [None] * n_files, [[] for _ in range(n_files)])


def read_inputs(files: Sequence[InputFile], opts: ReadOptions, counts: InputCounts
                ) -> Generator[DocBatch, None, None]:
    """Batches of every input file, in input order (what ``pack`` and ``verify`` both read); an empty file is an
    error, since it is almost always an interrupted copy."""
    types = carry.DocumentTypes(opts.keep)
    opts = run_read_options(files, opts)
    ahead = None
    try:
        batches: Iterator[DocBatch] = _read_files(files, opts)
        if opts.read_ahead_bytes and all(input_format(f).reads_ahead and not f.is_stdin for f in files):
            batches = ahead = ReadAhead(batches, opts.read_ahead_bytes)
        for batch in batches:
            file = files[batch.file_index]
            if batch.columns:
                batch = replace(batch, columns=types.conform(file.name, batch.columns))
            counts.documents[batch.file_index] += batch.n_docs
            counts.skipped[batch.file_index] += batch.skipped
            if batch.content_sha256 is not None:
                counts.content_sha256[batch.file_index] = batch.content_sha256
            counts.notes[batch.file_index].extend(batch.notes)
            yield batch
    finally:
        if ahead is not None:
            ahead.close()
        close_readers()


def _read_files(files: Sequence[InputFile], opts: ReadOptions) -> Iterator[DocBatch]:
    for index, file in enumerate(files):
        if file.size == 0:
            raise InputError(file.name, "file is empty", fix="remove it from the inputs")
        yield from read_file(file, index, opts)


def batch_bytes(batch: DocBatch) -> int:
    """The memory a batch holds: its tokens, offsets, carried token columns and document columns."""
    return int(batch.tokens.nbytes + batch.offsets.nbytes + sum(v.nbytes for v in batch.token_columns.values())
               + sum(a.nbytes for a in batch.columns.values()))


class ReadAhead:
    """The batches of ``source``, read on a thread of their own up to ``limit`` bytes (``batch_bytes``) ahead.

    Reading a file (decoding on pyarrow's threads, then checking and casting the ids in Python) then goes on while
    the consumer fills a window or waits for a packed one, and the next file's decoding starts before the last
    batch of this one is taken; with one thread, each file's reading began only when the one before was used up
    (``pack --workers 2``'s main thread waited 7.7 s for batches in a 26 s profiled run; docs/benchmarks.md).

    The batches come out in ``source``'s order, and an error reading it is raised where its batch would have come,
    after every batch before it. One batch is always let ahead, however large. ``close`` stops the thread (after
    the batch it is reading) and waits for it, so nothing reads on after the consumer stops.
    """

    def __init__(self, source: Iterator[DocBatch], limit: int) -> None:
        self._limit = limit
        self._ready: collections.deque[tuple[DocBatch, int]] = collections.deque()
        self._held = 0  # bytes in _ready
        self._changed = threading.Condition()
        self._finished = self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(source,), name="bestfit-read", daemon=True)
        self._thread.start()

    def _read(self, source: Iterator[DocBatch]) -> None:
        try:
            for batch in source:
                size = batch_bytes(batch)
                with self._changed:
                    while self._held and self._held + size > self._limit and not self._stopped:
                        self._changed.wait()
                    if self._stopped:
                        return
                    self._ready.append((batch, size))
                    self._held += size
                    self._changed.notify_all()
        except BaseException as exc:  # handed to the consumer, raised in its thread
            self._error = exc
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a generator's clean-up runs in the thread that ran it
            with self._changed:
                self._finished = True
                self._changed.notify_all()

    def __iter__(self) -> Iterator[DocBatch]:
        return self

    def __next__(self) -> DocBatch:
        with self._changed:
            while not self._ready and not self._finished:
                self._changed.wait()
            if self._ready:
                batch, size = self._ready.popleft()
                self._held -= size
                self._changed.notify_all()
                return batch
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            raise StopIteration

    def close(self) -> None:
        with self._changed:
            self._stopped = True
            self._ready.clear()
            self._held = 0
            self._changed.notify_all()
        self._thread.join()


# JSONL a run must read before it starts parse workers: their start (about half a second of CPU each) costs more
# than they save on less (formats/jsonl_workers.py).
PARALLEL_JSONL_BYTES = 64 << 20


def run_read_options(files: Sequence[InputFile], opts: ReadOptions) -> ReadOptions:
    """``opts`` for a run that reads ``files``: JSONL parse workers only when it reads ``PARALLEL_JSONL_BYTES`` of
    JSONL or more (stdin, whose size is unknown, counts as that much)."""
    jsonl = [f for f in files if f.format == "jsonl"]
    if opts.parse_workers <= 1 or any(f.is_stdin for f in jsonl) or sum(f.size or 0 for f in jsonl) >= \
            PARALLEL_JSONL_BYTES:
        return opts
    return replace(opts, parse_workers=1)


def close_readers() -> None:
    """Release what reading started, in every format (JSONL's parse workers): at the end of a run's reading."""
    from .formats import INPUT_FORMATS

    for fmt in INPUT_FORMATS.values():
        fmt.close()


def input_format(file: InputFile) -> InputFormat:
    """The registered format that reads ``file``."""
    from .formats import INPUT_FORMATS  # the formats import this module: looked up when first needed

    return INPUT_FORMATS[file.format]


def check_schemas(files: Sequence[InputFile], opts: ReadOptions) -> None:
    """Check every input (its schema, its footer: ``InputFormat.check``) before any work, so a wrong ``--column``
    or a damaged footer in the last file fails at once rather than after the files before it are packed."""
    streams = [file for file in files if file.format in ("bin", "npy")]
    for flag, value in (("--split-at", opts.split_at), ("--stream-dtype", opts.stream_dtype)):
        if value is not None and not streams:
            raise OptionError(f"{flag} applies to flat token streams (a .bin without a .idx, a .npy), and no input "
                              "is one", fix=f"drop {flag}, or name the stream among the inputs")
    for file in files:
        input_format(file).check(file, opts)


def read_file(file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
    """Batches of one input file, through the reader registered for its format."""
    yield from input_format(file).read(file, file_index, opts)


# --------------------------------------------------------------------------------------------- lengths only


@dataclass(frozen=True)
class LengthBatch:
    """Token counts of consecutive documents of one input file: all ``bestfit stats`` needs."""

    file_index: int
    first_row: int
    lengths: np.ndarray  # int64, one per document, in file order
    fraction_done: float = 0.0
    skipped: Skipped = Skipped()  # bad records left out (--on-bad-record skip)
    notes: tuple[str, ...] = ()  # as ``DocBatch.notes``


def ids_in_range(column: pa.Array, opts: ReadOptions) -> bool:
    """Whether every id of a list column is >= 0 and fits ``--dtype`` (one ``min_max`` pass)."""
    values = pc.list_flatten(column)
    if not len(values):
        return True
    extremes = pc.min_max(values)
    return bool(extremes["min"].as_py() >= 0 and extremes["max"].as_py() <= np.iinfo(TOKEN_DTYPES[opts.dtype]).max)


def lengths_from_arrow(file: InputFile, first_row: int, column: pa.Array, opts: ReadOptions) -> np.ndarray:
    """Token counts of a list column's rows from its offsets, ids not cast; a null row, a null id or an id out of
    range for ``--dtype`` is refused as ``batch_from_arrow`` refuses it (one ``min_max`` pass finds them), so
    ``stats`` accepts exactly the inputs ``pack`` accepts."""
    if column.null_count or column.values.null_count or not ids_in_range(column, opts):
        batch_from_arrow(file, 0, first_row, column, opts, lambda r: {"row": r})  # raises, naming the row
    lengths: np.ndarray = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    return lengths


def read_lengths(file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[LengthBatch]:
    """Document lengths of one input file, through its format's ``read_lengths``: without casting token ids where
    the format allows, and accepting exactly the inputs ``pack`` accepts."""
    yield from input_format(file).read_lengths(file, file_index, opts)


# --------------------------------------------------------------------------------------------- part of a file


def slice_batch(batch: DocBatch, lo: int, hi: int) -> DocBatch:
    """Rows ``lo .. hi - 1`` (of the file) of ``batch``, with their carried columns."""
    a, b = lo - batch.first_row, hi - batch.first_row
    offsets = batch.offsets[a:b + 1]
    first, last = int(offsets[0]), int(offsets[-1])
    return replace(batch, first_row=lo, offsets=offsets - offsets[0], tokens=batch.tokens[first:last],
                   skipped=Skipped(), content_sha256=None,
                   columns={name: array.slice(a, b - a) for name, array in batch.columns.items()},
                   token_columns={name: values[first:last] for name, values in batch.token_columns.items()})


def read_rows(file: InputFile, file_index: int, opts: ReadOptions, lo: int, hi: int,
              start: Checkpoint | None = None) -> Iterator[DocBatch]:
    """Documents of rows ``lo .. hi - 1`` of one input file, read and checked as ``read_file`` reads them (the same
    messages), through its format's ``read_rows``, from ``start`` (a checkpoint at or before ``lo`` that an earlier
    read recorded) when given. Skipped records are counted where the whole file is read."""
    yield from input_format(file).read_rows(file, file_index, opts, lo, hi, start)
