"""The pipeline: read → histogram → plan → write → report, wired together for ``pack``.

Documents stream in as batches and are grouped into windows (``window.py``). Each window is a self-contained unit
of work (``pack_window``): cut into pieces, planned with best-fit decreasing, shuffled with a seed derived from the
run's seed and the window's number, gathered into fixed-length rows and written as its own shards. Windows run on a
thread pool; results are collected in window order, so the output does not depend on scheduling.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import __version__, carry
from .carry import TokenColumn
from .errors import InputError, OptionError, check_field_types
from .fingerprint import Fingerprint, check_unchanged, fingerprint
from .formats import FORMATS, PackedRows
from .fs import InputArgs, InputFile, InputScan, check_output_location, input_args, scan_inputs
from .histogram import LONG_DOC_POLICIES, LengthHistogram, LongDocs
from .plan import Placement, assign_slots, longest_first, plan_capacities
from .read import (
    BAD_RECORD_POLICIES,
    DEFAULT_MAX_BAD_RECORDS,
    STREAM_DTYPES,
    TOKEN_DTYPES,
    BadRecordLimit,
    DocBatch,
    InputCounts,
    ReadOptions,
    Skipped,
    check_schemas,
    input_format,
    line_limit,
    read_inputs,
)
from .report import PackStats, Report
from .resources import arrow_threads, thread_buffer, usable_cores
from .strategies import ConcatCounts, concat_counts
from .training import TRAINING_COLUMNS
from .window import (
    EOS_MODES,
    MEMORY_IN_FLIGHT,
    Pieces,
    TokenBuffers,
    Window,
    ends_with,
    eos_appended,
    make_pieces,
    packed_lengths,
    read_ahead_bytes,
    span_steps,
    window_documents_for,
    window_tokens_for_memory,
    windows,
)
from .write import STATS, ShardInfo, ShardStager, ShardWriter, kill_point

MANIFEST_FORMAT = "bestfit.packed"
MANIFEST_VERSION = 2  # 2: inputs' fingerprints, inputs_left_out, stats.json's size and sha256, shard names
COLUMNS = ("input_ids", "seq_lengths", "doc_index", "doc_offset")  # of every shard, in this order
UNPADDED_VERSION = 3  # rows of fewer than ctx tokens (--no-pad): a reader of version 2 would misread them
BASE_COLUMNS = COLUMNS
# The default window: 8,192 sequences' worth of tokens (16M at ctx 2048: 64 MiB of int32 ids), within 16M..134M.
# Each window ends in a partly filled sequence, about half a sequence wasted a window, so a window of 8,192
# sequences costs about 0.006 % extra sequences at any ctx (docs/benchmarks.md#windows-and-packing-quality).
DEFAULT_WINDOW_SEQUENCES = 8192
DEFAULT_WINDOW_RANGE = (1 << 24, 1 << 27)
MAX_CTX = 1 << 20
SHARD_TOKENS = 1 << 24  # default shard size: 16M tokens (64 MiB of int32 ids) before compression


def default_window_tokens(ctx: int) -> int:
    """--window-tokens when neither it nor --memory is given: ``DEFAULT_WINDOW_SEQUENCES`` sequences of ``ctx``."""
    low, high = DEFAULT_WINDOW_RANGE
    return min(max(DEFAULT_WINDOW_SEQUENCES * ctx, low), high)


def shard_rows(n_rows: int, rows_per_shard: int) -> int:
    """Rows of each shard of a window of ``n_rows`` rows: as few shards as ``rows_per_shard`` allows, of equal
    size (the last at most one row shorter), so no window ends in a shard of a handful of rows."""
    shards = -(-n_rows // rows_per_shard)
    return -(-n_rows // shards) if shards else rows_per_shard


GATHER_TOKENS = 1 << 22  # tokens copied per vectorised gather step, to bound index arrays
FLAT_TOKENS = 1 << 20  # tokens gathered per list_flatten call (gather_rows)
LOOP_PIECE_TOKENS = 48  # pieces at least this long are copied as slices (a Python step costs ~48 gathered tokens)


@dataclass(frozen=True)
class PackOptions:
    """Every option of a packing run; ``manifest.json`` records them as resolved."""

    ctx: int
    column: str = "input_ids"
    eos_id: int | None = None
    eos_mode: str = "always"  # or "if-missing": no EOS for a document that already ends with eos_id
    pad_id: int | None = None
    long_docs: LongDocs = "split"
    seed: int = 0
    shuffle: bool = True
    rows_per_shard: int = 0  # 0: SHARD_TOKENS // ctx rows, at least 1
    dtype: str = "int32"
    window_tokens: int = 0  # 0: default_window_tokens(ctx), or what memory allows
    window_documents: int = 0  # 0: window.window_documents_for(window_tokens), which bounds per-document memory
    workers: int = 0  # 0: the number of usable cores
    memory: int | None = None  # bytes; sets window_tokens (window.window_tokens_for_memory) and caps windows in flight
    format: str = "parquet"
    overwrite: bool = False
    on_bad_record: str = "error"
    columns: tuple[str, ...] = ()  # training columns to add (training.TRAINING_COLUMNS), stored in that order
    pad: bool = True  # False: rows end after their last piece instead of being padded to ctx
    max_bad_records: str = DEFAULT_MAX_BAD_RECORDS  # with skip: a count (100) or a share of records read (1%)
    engine: str = "local"  # or "ray": the same windows packed as Ray tasks (ray_engine.py); never changes the output
    ray_address: str | None = None  # the Ray cluster (None: RAY_ADDRESS, else a local Ray started for the run)
    keep: tuple[str, ...] = ()  # --keep: document columns carried into the output, one value per piece
    keep_token: tuple[str, ...] = ()  # --keep-token NAME:FILL[:EOS]: token columns carried into the output

    @property
    def token_columns(self) -> tuple[TokenColumn, ...]:
        return tuple(TokenColumn.parse(spec) for spec in self.keep_token)

    @property
    def carried_columns(self) -> tuple[str, ...]:
        """The carried columns of every shard, after the training columns (a carried ``labels`` with ``--columns
        labels`` is the training column itself)."""
        tokens = [c.name for c in self.token_columns if not (c.name == "labels" and "labels" in self.columns)]
        return (*self.keep, *tokens)
    split_at: int | None = None  # flat token streams: the separator id that ends each document
    stream_dtype: str | None = None  # a raw .bin stream: the type of its ids

    @property
    def bad_record_limit(self) -> BadRecordLimit:
        return BadRecordLimit.parse(self.max_bad_records)

    @property
    def resolved_pad_id(self) -> int:
        if self.pad_id is not None:
            return self.pad_id
        return self.eos_id if self.eos_id is not None else 0

    @property
    def resolved_workers(self) -> int:
        return self.workers or usable_cores()

    @property
    def in_flight(self) -> int:
        """Windows held at once (and shards written at once): one per worker, or what ``memory`` allows."""
        return min(self.resolved_workers, MEMORY_IN_FLIGHT) if self.memory else self.resolved_workers

    def resolved(self) -> PackOptions:
        """These options with every default that depends on others filled in (what the manifest records)."""
        opts = self
        if not opts.rows_per_shard:
            opts = replace(opts, rows_per_shard=max(1, SHARD_TOKENS // opts.ctx))
        # One order whatever order they were asked in, so the same columns always give the same shards.
        opts = replace(opts, columns=tuple(c for c in TRAINING_COLUMNS if c in opts.columns))
        opts = opts.with_memory_window()
        if not opts.window_tokens:
            opts = replace(opts, window_tokens=default_window_tokens(opts.ctx))
        if not opts.window_documents:
            opts = replace(opts, window_documents=window_documents_for(opts.window_tokens))
        return opts

    @property
    def token_bytes(self) -> int:
        """Bytes a window holds per token: carried token columns ride beside the ids, so they count as wider ids."""
        return int(np.dtype(TOKEN_DTYPES[self.dtype]).itemsize + sum(c.dtype.itemsize for c in self.token_columns))

    def with_memory_window(self) -> PackOptions:
        """These options with ``window_tokens`` derived from the ``memory`` budget (unchanged without one)."""
        if not self.memory:
            return self
        try:
            window_tokens = window_tokens_for_memory(self.memory, self.ctx, self.rows_per_shard, self.token_bytes)
        except ValueError as exc:
            raise OptionError(f"--memory: {exc}", fix="give a larger --memory, or lower --rows-per-shard") from None
        return replace(self, window_tokens=window_tokens)

    def validate(self) -> None:
        check_field_types(self)
        if not 1 <= self.ctx <= MAX_CTX:
            raise OptionError(f"--ctx {self.ctx} is out of range", fix=f"choose a sequence length in 1..{MAX_CTX}")
        if self.eos_mode not in EOS_MODES:
            raise OptionError(f"--eos-mode {self.eos_mode!r} is unknown", fix="use always or if-missing")
        if self.eos_mode != "always" and self.eos_id is None:
            raise OptionError(f"--eos-mode {self.eos_mode} needs --eos-id", fix="pass --eos-id with your tokenizer's "
                              "EOS id, or drop --eos-mode")
        if self.long_docs not in LONG_DOC_POLICIES:
            raise OptionError(f"--long-docs {self.long_docs!r} is unknown", fix="use split, truncate or drop")
        if self.dtype not in TOKEN_DTYPES:
            raise OptionError(f"--dtype {self.dtype!r} is unknown", fix=f"use one of {', '.join(TOKEN_DTYPES)}")
        info = np.iinfo(TOKEN_DTYPES[self.dtype])
        for flag, value in (("--eos-id", self.eos_id), ("--pad-id", self.pad_id)):
            if value is not None and not 0 <= value <= info.max:
                raise OptionError(f"{flag} {value} does not fit the token dtype {self.dtype}",
                                  fix=f"use an id in 0..{info.max}, or a wider --dtype")
        if self.rows_per_shard < 0:
            raise OptionError("--rows-per-shard must be at least 1 (or 0 for the default)")
        if self.window_tokens < 0:
            raise OptionError("window_tokens must be 0 (the default) or more")
        if self.window_tokens and self.window_tokens < self.ctx:
            raise OptionError(f"--window-tokens {self.window_tokens:,} is smaller than --ctx {self.ctx:,}, so every "
                              "window would fill less than one sequence (windows never share one)",
                              fix="give --window-tokens of at least ctx (5000 x ctx keeps the extra sequences "
                                  "under 0.01 %), or --memory")
        if self.window_documents < 0:
            raise OptionError("window_documents must be 0 (derived from the window) or more")
        if self.workers < 0:
            raise OptionError("--workers must be 0 (all cores) or more")
        if self.engine not in ("local", "ray"):
            raise OptionError(f"--engine {self.engine!r} is unknown", fix="use local or ray")
        if self.format not in FORMATS:
            raise OptionError(f"--format {self.format!r} is unknown", fix=f"use one of {', '.join(FORMATS)}")
        FORMATS[self.format].check_options(self)
        if self.seed < 0:
            raise OptionError("--seed must be >= 0")
        if self.on_bad_record not in BAD_RECORD_POLICIES:
            raise OptionError(f"--on-bad-record {self.on_bad_record!r} is unknown", fix="use error or skip")
        if self.memory is not None and self.memory < 1:
            raise OptionError("--memory must be a positive size such as 4GB")
        self.bad_record_limit  # noqa: B018 -- parsing it is the check
        carry.check_names(self.column, self.keep, self.token_columns, (*BASE_COLUMNS, *TRAINING_COLUMNS))
        if self.split_at is not None and self.split_at < 0:
            raise OptionError(f"--split-at {self.split_at} is negative", fix="give the separator's token id (>= 0)")
        if self.stream_dtype is not None and self.stream_dtype not in STREAM_DTYPES:
            raise OptionError(f"--stream-dtype {self.stream_dtype!r} is unknown",
                              fix=f"use one of {', '.join(STREAM_DTYPES)}")
        unknown = [c for c in self.columns if c not in TRAINING_COLUMNS]
        if unknown:
            raise OptionError(f"--columns: unknown column {unknown[0]!r}",
                              fix=f"use {' and/or '.join(TRAINING_COLUMNS)}, comma-separated")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pad_id"] = self.resolved_pad_id
        data.pop("overwrite")
        data.pop("workers")  # never changes the output
        data.pop("engine")  # nor does the engine
        data.pop("ray_address")
        data.pop("memory")  # what it changes is window_tokens, recorded above
        # Recorded only when used, so a run with neither writes the same manifest as before they existed.
        if self.columns:
            data["columns"] = list(self.columns)
        else:
            data.pop("columns")
        if self.pad:
            data.pop("pad")
        if self.eos_mode == "always":
            data.pop("eos_mode")
        data.pop("keep")
        data.pop("keep_token")
        if self.keep:
            data["keep"] = list(self.keep)
        if self.keep_token:
            data["keep_token"] = {c.name: c.to_json() for c in self.token_columns}
        for key in ("split_at", "stream_dtype"):
            if data[key] is None:
                data.pop(key)
        return data


@dataclass(frozen=True)
class WindowResult:
    index: int
    stats: PackStats
    shards: tuple[ShardInfo, ...]
    histogram: LengthHistogram
    first_doc: int = 0  # the window's documents are doc_index first_doc .. first_doc + n_docs - 1
    n_docs: int = 0


@dataclass
class PackResult:
    """What ``pack`` returns: the report, the manifest written, and the corpus-wide length histogram."""

    report: Report
    manifest: dict[str, Any]
    histogram: LengthHistogram = field(default_factory=LengthHistogram)
    notes: list[str] = field(default_factory=list)  # one line each, for stderr (inputs left out)


# ------------------------------------------------------------------------------------------------ one window


def place(pieces: Pieces, ctx: int) -> Placement:
    order, counts = longest_first(pieces.length, ctx)
    return assign_slots(plan_capacities(counts, ctx), pieces.length, order)


def sequence_order(n_bins: int, opts: PackOptions, window_index: int) -> np.ndarray:
    """Output row of every planned sequence: a seeded permutation, the same wherever the window runs."""
    if not opts.shuffle:
        return np.arange(n_bins, dtype=np.int64)
    return np.random.default_rng([opts.seed, window_index]).permutation(n_bins)


def gather_tokens(window: Window, doc: np.ndarray, start: np.ndarray, length: np.ndarray, dst: np.ndarray,
                  out: np.ndarray, eos_id: int | np.ndarray | None, source: np.ndarray | None = None) -> None:
    """Copy each piece's tokens into ``out`` at ``dst``; an EOS goes where a piece includes its document's end.

    Pieces of ``LOOP_PIECE_TOKENS`` or more are copied one slice at a time (a memcpy each, no index arrays); the
    many short ones in vectorised steps, whose index arrays cost about 24 bytes per token. ``source`` (a carried
    token column, aligned with the window's tokens) is copied instead of the tokens when given, with ``eos_id`` one
    value per piece.
    """
    doc_start = window.offsets[doc]
    copy_len = np.minimum(length, window.offsets[doc + 1] - doc_start - start)
    src = doc_start + start
    tokens = window.tokens if source is None else source
    sliced = copy_len >= LOOP_PIECE_TOKENS
    _copy_slices(tokens, src[sliced], out, dst[sliced], copy_len[sliced])
    short = ~sliced
    short_dst, short_src, short_len = dst[short], src[short], copy_len[short]
    for lo, hi, within in span_steps(short_len, GATHER_TOKENS):
        n = short_len[lo:hi]
        out[np.repeat(short_dst[lo:hi], n) + within] = tokens[np.repeat(short_src[lo:hi], n) + within]
    if eos_id is not None:
        ends = copy_len < length
        out[dst[ends] + length[ends] - 1] = eos_id[ends] if isinstance(eos_id, np.ndarray) else eos_id


@dataclass(frozen=True)
class ShardRows:
    """Where a shard's pieces go, in output order: ``row`` is each piece's row, ``lengths`` each row's tokens; row
    ``r`` starts at ``r * stride`` (padded rows) or right after row ``r - 1`` (``stride`` None)."""

    row: np.ndarray
    lengths: np.ndarray
    stride: int | None


def gather_rows(window: Window, doc: np.ndarray, start: np.ndarray, length: np.ndarray, dst: np.ndarray,
                rows: ShardRows, out: np.ndarray, eos_id: int | np.ndarray | None,
                source: np.ndarray | None = None, pad: int | float | None = None) -> None:
    """``gather_tokens`` for a shard's pieces in output order, laid out row by row (``rows``), each row's pieces
    back to back from its start, as ``pack_window`` places them; the rest of ``out`` (the padding) is set to ``pad``,
    or left as is when ``pad`` is None. Only the padding is written, not the whole of ``out`` first: a shard's rows
    are nearly all full (a few hundred of 8192 padded, by a few thousand tokens in all, at the default window), so
    filling 64 MiB to write over all but a few KiB of it cost about 1 % of a pack's CPU (``perf``).

    The pieces are copied by pyarrow's ``list_flatten`` over a list view of the tokens (a view per piece, EOS slot
    included), which runs without the GIL: one memcpy per piece in C++, where a Python step per piece held the GIL
    for about a second and a half of a ``pack`` here while the other threads' Python waited. The flat copy, made
    ``FLAT_TOKENS`` at a time, goes into ``out`` in runs of consecutive full rows, so a padded row costs one more
    copy and full ones nothing. Pieces not laid out so (``dst`` says where each goes) go through ``gather_tokens``.
    """
    length = length.astype(np.int64)  # pieces' arrays are narrow (``Pieces``)
    n_rows = len(rows.lengths)
    row_starts = np.zeros(n_rows + 1, dtype=np.int64)  # where each row's tokens start in the flat copy
    np.cumsum(rows.lengths, out=row_starts[1:])
    flat_pos = np.zeros(len(length), dtype=np.int64)
    np.cumsum(length[:-1], out=flat_pos[1:])
    row_base = row_starts[:-1] if rows.stride is None else np.arange(n_rows, dtype=np.int64) * rows.stride
    tokens = window.tokens if source is None else source
    doc_start = window.offsets[doc]
    copy_len = np.minimum(length, window.offsets[doc + 1] - doc_start - start)
    src = doc_start + start
    # A piece's view includes its EOS slot (the next document's first token, written over below); after the
    # window's last document there is no token, so that view ends at the window's end instead and its piece is
    # copied again on its own.
    view_start = np.minimum(src, len(tokens) - length)
    if (not len(length) or int(view_start.min()) < 0 or tokens.dtype != out.dtype or not tokens.flags.c_contiguous
            or not np.array_equal(dst, row_base[rows.row] + flat_pos - row_starts[rows.row])):
        if pad is not None:
            out.fill(pad)
        gather_tokens(window, doc, start, length, dst, out, eos_id, source)
        return
    values = pa.array(tokens)  # no copy
    # A few rows at a time, so the flat copy is a small buffer pyarrow's allocator keeps reusing, not a second shard.
    step = max(1, FLAT_TOKENS // max(int(rows.lengths.max()), 1))
    for r0 in range(0, n_rows, step):
        r1 = min(r0 + step, n_rows)
        p0, p1 = np.searchsorted(rows.row, [r0, r1])
        views = pa.LargeListViewArray.from_arrays(pa.array(view_start[p0:p1]), pa.array(length[p0:p1]), values)
        flat = pc.list_flatten(views).to_numpy()
        if rows.stride is None:
            out[row_starts[r0]:row_starts[r1]] = flat
        else:
            _place_rows(flat, row_starts[r0:r1 + 1] - row_starts[r0], rows.stride, out[r0 * rows.stride:], pad)
    moved = np.flatnonzero(view_start != src)
    _copy_slices(tokens, src[moved], out, dst[moved], copy_len[moved])
    if eos_id is not None:
        ends = copy_len < length
        out[dst[ends] + length[ends] - 1] = eos_id[ends] if isinstance(eos_id, np.ndarray) else eos_id


def _place_rows(flat: np.ndarray, row_starts: np.ndarray, stride: int, out: np.ndarray,
                pad: int | float | None = None) -> None:
    """Rows back to back in ``flat`` (row ``r`` is ``flat[row_starts[r]:row_starts[r + 1]]``) into ``out`` at
    multiples of ``stride``: one copy per run of full rows (contiguous in both) and one per shorter row, whose
    rest is set to ``pad`` (left as is when None)."""
    lengths = np.diff(row_starts)
    prev = 0  # first row of the run of full rows being gathered
    for r in [*np.flatnonzero(lengths != stride).tolist(), len(lengths)]:
        if r > prev:
            out[prev * stride:r * stride] = flat[row_starts[prev]:row_starts[r]]
        if r < len(lengths):
            end = r * stride + int(lengths[r])
            out[r * stride:end] = flat[row_starts[r]:row_starts[r + 1]]
            if pad is not None:
                out[end:(r + 1) * stride] = pad
        prev = r + 1


def _copy_slices(src_array: np.ndarray, src: np.ndarray, out: np.ndarray, dst: np.ndarray, n: np.ndarray) -> None:
    """``out[dst[i]:dst[i] + n[i]] = src_array[src[i]:src[i] + n[i]]`` for every i.

    Through memoryviews where it can: their slice assignment copies with the GIL held, where numpy's releases and
    takes it back for every slice. With two threads gathering at once, numpy's way passes the GIL back and forth
    thousands of times a shard (measured: two threads gathering a shard each took 91 ms, one alone 16 ms); this
    way they take turns at the interpreter's switch interval and the copies cost what they cost on one thread.
    """
    if src_array.dtype != out.dtype or not (src_array.flags.c_contiguous and out.flags.c_contiguous):
        for to, at, size in zip(dst.tolist(), src.tolist(), n.tolist(), strict=True):
            out[to:to + size] = src_array[at:at + size]
        return
    item = out.itemsize
    source, target = src_array.data.cast("B"), out.data.cast("B")
    for to, at, size in zip((dst * item).tolist(), (src * item).tolist(), (n * item).tolist(), strict=True):
        target[to:to + size] = source[at:at + size]


def pack_window(window: Window, opts: PackOptions, writer: ShardWriter | ShardStager,
                shard_pool: Executor | None = None) -> WindowResult:
    """Plan, shuffle, gather and write one window. Depends only on the window and the options.

    Shards are gathered, encoded and written on ``shard_pool`` when given (each shard depends only on its rows),
    so a window's shards use every core even when it is the only window left.
    """
    ctx = opts.ctx
    eos = eos_appended(window, opts.eos_id, opts.eos_mode)
    pieces = make_pieces(window.lengths, ctx, eos, opts.long_docs)
    placement = place(pieces, ctx)
    kill_point("planning")
    row_of_bin = sequence_order(placement.n_bins, opts, window.index)
    # Pieces in output order (row, then offset), found from the planner's longest-first order.
    sorted_row = row_of_bin[placement.sorted_bin]
    by_output = np.argsort(sorted_row * ctx + placement.sorted_offset)
    order = placement.order[by_output]
    piece_row = sorted_row[by_output]
    piece_offset = placement.sorted_offset[by_output]
    del sorted_row, by_output
    fmt = FORMATS[opts.format]
    token_columns = opts.token_columns
    # What each document's appended EOS gets in each carried token column (carry.eos_values), once per window.
    column_eos = {c.name: carry.eos_values(c, window.token_columns.get(c.name, np.empty(0, c.dtype)),
                                           window.offsets, opts.eos_id) for c in token_columns}

    per_shard = shard_rows(placement.n_bins, opts.rows_per_shard)

    def write_part(part: int) -> ShardInfo:
        first_row = part * per_shard
        last_row = min(first_row + per_shard, placement.n_bins)
        lo, hi = np.searchsorted(piece_row, [first_row, last_row])
        sel = order[lo:hi]
        local_row = piece_row[lo:hi] - first_row
        doc, start, length = pieces.doc[sel], pieces.start[sel], pieces.length[sel]
        n_rows = last_row - first_row
        piece_offsets = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(local_row, minlength=n_rows), out=piece_offsets[1:])
        row_lengths = np.bincount(local_row, weights=length, minlength=n_rows).astype(np.int64)
        if opts.pad:
            token_offsets = None
            row_start = local_row * ctx
            tokens = thread_buffer("shard tokens", n_rows * ctx, window.tokens.dtype)  # padded by gather_rows
        else:  # each row ends after its last piece, and the pieces cover it: nothing to fill
            token_offsets = np.zeros(n_rows + 1, dtype=np.int64)
            np.cumsum(row_lengths, out=token_offsets[1:])
            row_start = token_offsets[local_row]
            tokens = thread_buffer("shard tokens", int(token_offsets[-1]), window.tokens.dtype)
        dst = row_start + piece_offset[lo:hi]
        layout = ShardRows(local_row, row_lengths, ctx if opts.pad else None)
        gather_rows(window, doc, start, length, dst, layout, tokens, opts.eos_id,
                    pad=opts.resolved_pad_id if opts.pad else None)
        carried_tokens = {}
        for column in token_columns:
            values = np.empty(len(tokens), dtype=column.dtype)
            gather_rows(window, doc, start, length, dst, layout, values, column_eos[column.name][doc],
                        window.token_columns.get(column.name, values[:0]), pad=column.fill if opts.pad else None)
            carried_tokens[column.name] = values
        kept = {name: window.columns[name].take(pa.array(doc)) for name in opts.keep}
        rows = PackedRows(ctx, tokens, piece_offsets, length, window.first_doc + doc.astype(np.int64), start,
                          eos_id=opts.eos_id, pad_id=opts.resolved_pad_id, token_offsets=token_offsets,
                          training_columns=opts.columns, kept=kept, token_columns=carried_tokens)
        shard = writer.write_shard(window.index, part, fmt, fmt.encode(rows), rows.n_rows, fmt.companions(rows))
        if window.index:
            kill_point("writing")
        return shard

    parts = range(-(-placement.n_bins // per_shard))
    shards = list(shard_pool.map(write_part, parts) if shard_pool is not None else map(write_part, parts))
    input_tokens = window.n_tokens
    packed = packed_lengths(window.lengths, eos)
    stats = PackStats(
        documents=pieces.documents, empty_documents=pieces.empty_documents, tokens=pieces.tokens,
        input_tokens=input_tokens, eos_tokens=int(packed.sum()) - input_tokens,
        documents_ending_with_eos=int(ends_with(window, opts.eos_id).sum()) if opts.eos_id is not None else 0,
        sequences=placement.n_bins, truncated_documents=pieces.truncated_documents, truncations=pieces.truncations,
        dropped_documents=pieces.dropped_documents, dropped_tokens=pieces.dropped_tokens,
        clipped_documents=pieces.clipped_documents, windows=1, window_lower_bound=-(-pieces.tokens // ctx))
    histogram = LengthHistogram.from_lengths(packed[window.lengths > 0])
    return WindowResult(window.index, stats, tuple(shards), histogram, first_doc=window.first_doc,
                        n_docs=window.n_docs)


def kept_lengths(window: Window, opts: PackOptions) -> np.ndarray:
    """Document lengths in input order as packed (EOS, long-document policy): what concatenation would chunk."""
    lengths = packed_lengths(window.lengths, eos_appended(window, opts.eos_id, opts.eos_mode))
    if opts.long_docs == "drop":
        return lengths[lengths <= opts.ctx]
    if opts.long_docs == "truncate":
        clipped: np.ndarray = np.minimum(lengths, opts.ctx)
        return clipped
    return lengths


# ------------------------------------------------------------------------------------------------ whole run


class _InputTracker:
    """Counts documents per input file and reports read progress in bytes (and tokens read so far)."""

    def __init__(self, inputs: Sequence[InputFile], progress: Callable[[int], None] | None,
                 tokens_read: Callable[[int], None] | None = None, limit: BadRecordLimit | None = None) -> None:
        self.inputs = inputs
        self.limit = limit or BadRecordLimit()
        self.names = ", ".join(f.name for f in inputs)
        self.counts = InputCounts.for_files(len(inputs))
        self.documents, self.skipped = self.counts.documents, self.counts.skipped
        self.progress = progress
        self.tokens_read = tokens_read
        self.tokens = 0
        self._done = [0] * len(inputs)

    def batches(self, opts: ReadOptions) -> Generator[DocBatch, None, None]:
        reading = 0
        for batch in read_inputs(self.inputs, opts, self.counts):
            for finished in range(reading, batch.file_index):  # files before this batch's are read whole
                self._advance(finished, 1.0)
            reading = batch.file_index
            self.tokens += batch.n_tokens
            if self.tokens_read is not None:
                self.tokens_read(self.tokens)
            self._advance(reading, batch.fraction_done)
            if batch.skipped.count:  # a count limit fails as soon as it is passed, not hours later
                self.check_bad_records(final=False)
            yield batch
            kill_point("reading")
        for finished in range(reading, len(self.inputs)):
            self._advance(finished, 1.0)

    def check_bad_records(self, *, final: bool) -> None:
        self.limit.check(sum(self.skipped, Skipped()), sum(self.documents), self.names, final=final)

    def _advance(self, index: int, fraction: float) -> None:
        size = self.inputs[index].size or 0
        done = int(size * fraction)
        if self.progress is not None and done > self._done[index]:
            self.progress(done - self._done[index])
            self._done[index] = done


def pack(inputs: InputArgs, out: str, opts: PackOptions,
         progress_factory: Callable[[int], Any] | None = None) -> PackResult:
    """Pack token documents from ``inputs`` into fixed-length sequences in the folder ``out``.

    ``progress_factory(total_bytes)`` may return a progress bar with ``update(n)`` and ``close()``.
    """
    opts.validate()
    opts = opts.resolved()
    inputs = input_args(inputs)
    scan = scan_inputs(inputs)
    files = list(scan.files)
    check_output_location(out, inputs, files)
    cannot_carry = next((f for f in files if not input_format(f).carries_columns), None)
    if (opts.keep or opts.keep_token) and cannot_carry is not None:
        raise OptionError(f"{cannot_carry.name}: {input_format(cannot_carry).description} holds token ids only, no "
                          "columns for --keep and --keep-token to carry",
                          fix="leave them out, or convert this input to Parquet with its columns")
    read_opts = ReadOptions(column=opts.column, dtype=opts.dtype, on_bad_record=opts.on_bad_record,
                            max_line_bytes=line_limit(opts.memory), keep=opts.keep, keep_token=opts.token_columns,
                            split_at=opts.split_at, stream_dtype=opts.stream_dtype,
                            # JSONL parsed on every worker's core; under --memory, in this process only
                            parse_workers=1 if opts.memory else opts.resolved_workers,
                            # with one worker, one thread reads: --workers 1 is one core
                            read_ahead_bytes=read_ahead_bytes(opts.window_tokens, opts.token_bytes)
                            if opts.resolved_workers > 1 else 0)
    check_schemas(files, read_opts)  # every footer before any work: a bad last file fails in seconds, OUT untouched
    taken = [fingerprint(f, stat_again=False) for f in files]  # size and time as scanned, Parquet footers read
    total_bytes = sum(f.size or 0 for f in files)
    bar = progress_factory(total_bytes) if progress_factory else None
    tracker = _InputTracker(files, bar.update if bar is not None else None, _token_rate(bar), opts.bad_record_limit)
    try:
        with ShardWriter(out, overwrite=opts.overwrite) as writer:
            if opts.engine == "ray":
                results, concat = _pack_on_ray(files, read_opts, opts, writer, tracker, bar)
            else:
                results, concat = _pack_local(tracker, read_opts, opts, writer)
            skipped = sum(tracker.skipped, Skipped())
            stats = sum((r.stats for r in results), PackStats())
            # Documents all dropped by --long-docs still count as input; nothing but empty or bad records does not.
            if stats.documents + stats.dropped_documents == 0:
                what = f"input holds no documents with tokens ({sum(tracker.documents):,} records read"
                what += f", {skipped.count:,} of them skipped as bad)" if skipped.count else ")"
                raise InputError(", ".join(f.name for f in files)[:200], what,
                                 fix="check the inputs and --column" + (
                                     f"; first skipped: {skipped.where[0]}" if skipped.where else ""))
            tracker.check_bad_records(final=True)
            # Skipped records keep their doc_index as empty documents; count them as skipped, not as empty.
            stats = replace(stats, empty_documents=stats.empty_documents - skipped.count)
            report = Report(opts.ctx, stats, concat.sequences(opts.ctx), concat.truncated_documents,
                            concat.truncations, skipped_records=skipped.count, skipped_where=skipped.where,
                            max_bad_records=opts.max_bad_records if opts.on_bad_record == "skip" else None,
                            padded=opts.pad)
            # An input rewritten while it was read could have mixed old and new documents into the shards: fail
            # before anything complete-looking (stats.json, the manifest) is written.
            check_unchanged(files, taken)
            stats_file = writer.write_json(STATS, report.to_json())
            identities = _input_identities(taken, tracker.counts.content_sha256)
            manifest = _manifest(opts, scan, tracker.documents, results, report, tracker.skipped, stats_file,
                                 identities, tracker.counts.notes)
            kill_point("manifest")
            writer.commit([s for r in results for s in r.shards], manifest)
    finally:
        if bar is not None:
            bar.close()
    histogram = sum((r.histogram for r in results), LengthHistogram())
    notes = [note for note in (scan.note(), _eos_note(opts, report.stats)) if note]
    return PackResult(report, manifest, histogram, notes + [n for file in tracker.counts.notes for n in file])


def _eos_note(opts: PackOptions, stats: PackStats) -> str | None:
    """Documents that got a second EOS: almost always a tokenizer that already added one."""
    if opts.eos_mode != "always" or not stats.documents_ending_with_eos:
        return None
    return (f"{stats.documents_ending_with_eos:,} documents already ended with --eos-id {opts.eos_id} and got a "
            "second one; --eos-mode if-missing appends it only where it is missing")


def _pack_local(tracker: _InputTracker, read_opts: ReadOptions, opts: PackOptions, writer: ShardWriter
                ) -> tuple[list[WindowResult], ConcatCounts]:
    """The local engine: windows found while reading, packed on a thread pool, results in window order."""
    results: list[WindowResult] = []
    concat = ConcatCounts(0, 0, 0)
    workers = opts.in_flight
    # Two pools: windows are planned on one while their shards are gathered, encoded and written on the other.
    # A window task waits for its shards, never the reverse, so neither pool can starve the other.
    # --workers N: N cores, pyarrow's decoding threads included.
    with arrow_threads(opts.resolved_workers), \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bestfit") as pool, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bestfit-shard") as shard_pool:
        pending: list[tuple[Future[WindowResult], np.ndarray]] = []
        # A packed window's buffer is filled again by a later window instead of new memory (TokenBuffers).
        buffers = TokenBuffers(keep=workers)
        batches = tracker.batches(read_opts)
        try:
            for window in windows(batches, opts.window_tokens, opts.window_documents, buffers):
                concat = concat_counts(kept_lengths(window, opts), opts.ctx, concat.end, concat)
                pending.append((pool.submit(pack_window, window, opts, writer, shard_pool), window.tokens))
                del window
                # At most `workers` windows in flight plus the one being read: memory is bounded by the window.
                while len(pending) >= workers:
                    done, tokens = pending.pop(0)
                    results.append(done.result())
                    buffers.give(tokens)
                    del tokens
            results.extend(f.result() for f, _ in pending)
        except BaseException:
            for f, _ in pending:
                f.cancel()
            raise
        finally:
            # The reading thread (read.ReadAhead) stops now, however the run ends, not when the interpreter gets
            # round to the generators that an exception's traceback keeps alive (at exit, with its threads going).
            batches.close()
    return results, concat


def _pack_on_ray(files: Sequence[InputFile], read_opts: ReadOptions, opts: PackOptions, writer: ShardWriter,
                 tracker: _InputTracker, bar: Any) -> tuple[list[WindowResult], ConcatCounts]:
    """The Ray engine (ray_engine.py): the same windows planned first and packed as tasks; the counts per input
    come from the plan instead of the tracker's reading."""
    from .ray_engine import RayEngine

    with RayEngine(opts.ray_address) as engine:
        results, kept, counts = engine.pack_windows(files, read_opts, opts, writer.stager,
                                                    bar.update if bar is not None else None)
    concat = ConcatCounts(0, 0, 0)
    for lengths in kept:
        concat = concat_counts(lengths, opts.ctx, concat.end, concat)
    tracker.counts = counts
    tracker.documents, tracker.skipped = counts.documents, counts.skipped
    return results, concat


def _token_rate(bar: Any) -> Callable[[int], None] | None:
    """Shows tokens per second beside the bar's bytes, rate and ETA (when the bar can show a postfix, as tqdm can)."""
    set_postfix = getattr(bar, "set_postfix_str", None)
    if set_postfix is None:
        return None
    started = time.monotonic()

    def show(tokens: int) -> None:
        set_postfix(f"{tokens / max(time.monotonic() - started, 1e-3) / 1e6:,.1f}M tokens/s", refresh=False)

    return show


def _window_json(result: WindowResult) -> dict[str, Any]:
    """What ``verify`` needs to check one window on its own: its documents, what was dropped, and its shards."""
    s = result.stats
    return {"index": result.index, "first_doc": result.first_doc, "documents": result.n_docs, "tokens": s.tokens,
            "sequences": s.sequences, "dropped_documents": s.dropped_documents, "dropped_tokens": s.dropped_tokens,
            "clipped_documents": s.clipped_documents, "shards": [shard.path for shard in result.shards]}


def _input_identities(taken: Sequence[Fingerprint], content: Sequence[str | None]) -> list[dict[str, Any]]:
    """Each input's fingerprint for the manifest: size, mtime_ns, a Parquet footer's or a JSONL file's sha256."""
    return [{**fp.to_json(), **({"content_sha256": sha} if sha is not None else {})}
            for fp, sha in zip(taken, content, strict=True)]


def _manifest(opts: PackOptions, scan: InputScan, documents: list[int], results: list[WindowResult],
              report: Report, skipped: Sequence[Skipped], stats_file: tuple[int, str],
              identities: Sequence[dict[str, Any]], notes: Sequence[Sequence[str]]) -> dict[str, Any]:
    files = scan.files
    shards = [s.to_json() for r in results for s in r.shards]
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION if opts.pad else UNPADDED_VERSION,
        "bestfit_version": __version__,
        "options": opts.to_json(),
        "columns": [*BASE_COLUMNS, *opts.columns, *opts.carried_columns],
        "inputs": [{"path": f.name, "given": f.given, "resolved": f.resolved, "format": f.format, "documents": n,
                    "skipped_records": k.count, **identity, **({"notes": list(said)} if said else {})}
                   for f, n, k, identity, said in zip(files, documents, skipped, identities, notes, strict=True)],
        "inputs_left_out": scan.left_out_json(),
        "documents": sum(documents),
        "sequences": report.stats.sequences,
        "tokens": report.stats.tokens,
        "shards": shards,
        "windows": [_window_json(r) for r in results],
        "skipped_records": {"count": report.skipped_records, "first": list(report.skipped_where)},
        "stats": STATS,
        "stats_bytes": stats_file[0],
        "stats_sha256": stats_file[1],
    }
