"""Windows: consecutive documents of the input order, the self-contained unit of packing work.

A window carries its documents' tokens and global ``doc_index`` numbers, so it can be packed and written anywhere
(a thread here, a task on a cluster later) with the same result. ``make_pieces`` applies EOS and the long-document
policy and cuts documents into the pieces the planner places.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .histogram import LongDocs
from .read import DocBatch


@dataclass(frozen=True)
class Window:
    """Documents ``first_doc .. first_doc + n_docs - 1`` (global ``doc_index``) and their tokens."""

    index: int
    first_doc: int
    offsets: np.ndarray  # int64, n_docs + 1, offsets[0] == 0
    tokens: np.ndarray
    columns: dict[str, pa.Array] = field(default_factory=dict)  # --keep: one value per document
    token_columns: dict[str, np.ndarray] = field(default_factory=dict)  # --keep-token: aligned with ``tokens``

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def reservable_bytes() -> int:
    """The largest window buffer reserved whole: half the physical memory (at least 1 GiB).

    A larger ``--window-tokens`` (often given to mean "the whole corpus") starts there and doubles as it fills, so
    no more is reserved than the corpus needs, at the price of a copy per doubling.
    """
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = 0
    return max(1 << 30, physical // 2)


UNBOUNDED_TOKENS = 1 << 62  # a WindowBuffer limit for a window whose size is given by its document count


class TokenBuffers:
    """Token buffers of windows already packed, lent to the next windows to fill.

    A window's buffer is tens or hundreds of MB. Freed, it goes back to the system, and the next window's first
    touch of its pages costs more than copying the tokens into them (about 1 s of system time per 512 MiB on this
    machine, docs/benchmarks.md). ``get`` hands out a spare buffer that fits, or a new one; ``give`` takes back a buffer
    ``get`` made once nothing reads that window any more. At most ``keep`` spares are held, so the peak stays what
    the windows in flight need.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._spare: list[np.ndarray] = []
        self._made: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def get(self, capacity: int, dtype: np.dtype) -> np.ndarray:
        with self._lock:
            for i, spare in enumerate(self._spare):
                if spare.dtype == dtype and len(spare) >= capacity:
                    return self._spare.pop(i)[:capacity]
        made = np.empty(capacity, dtype=dtype)
        with self._lock:
            self._made[id(made)] = made
        return made

    def give(self, tokens: np.ndarray) -> None:
        """Take back the buffer under ``tokens`` (a window's tokens), if ``get`` made it."""
        base = tokens if tokens.base is None else tokens.base
        with self._lock:
            if self._made.get(id(base)) is not base:
                return  # not one of ours: a window of one long document is a view of its batch
            if len(self._spare) < self.keep and all(spare is not base for spare in self._spare):
                self._spare.append(base)


class WindowBuffer:
    """Tokens of the window being filled, copied once into a buffer of the window's size.

    Copying each batch straight into place (instead of joining a list of batches at the end) keeps the peak at one
    window of tokens rather than two. ``np.empty`` only reserves address space, so a last, short window costs what
    it holds. ``buffers`` lends the buffers of windows already packed (``TokenBuffers``).
    """

    def __init__(self, window_tokens: int, expected_tokens: int | None = None,
                 buffers: TokenBuffers | None = None) -> None:
        self.window_tokens = window_tokens
        self.expected_tokens = expected_tokens  # reserved first when known; the buffer still grows past it
        self.buffers = buffers
        self.tokens: np.ndarray | None = None
        self.filled = 0
        self.lengths: list[np.ndarray] = []
        self.n_docs = 0
        self.columns: dict[str, list[pa.Array]] = {}  # chunks of each document column
        self.token_columns: dict[str, np.ndarray] = {}  # grown with ``tokens``, filled as far

    def room(self) -> int:
        return self.window_tokens - self.filled

    def add(self, batch: DocBatch, lo: int, hi: int) -> None:
        """Append documents ``lo .. hi - 1`` of ``batch``."""
        a, b = int(batch.offsets[lo]), int(batch.offsets[hi])
        if b > a:
            self._reserve(self.filled + b - a, batch.tokens.dtype, batch.token_columns)
            assert self.tokens is not None
            self.tokens[self.filled:self.filled + b - a] = batch.tokens[a:b]
            for name, values in batch.token_columns.items():
                self.token_columns[name][self.filled:self.filled + b - a] = values[a:b]
        self.filled += b - a
        self.lengths.append(np.diff(batch.offsets[lo:hi + 1]))
        self.n_docs += hi - lo
        for name, array in batch.columns.items():
            self.columns.setdefault(name, []).append(array.slice(lo, hi - lo))

    def _reserve(self, need: int, dtype: np.dtype, token_columns: dict[str, np.ndarray]) -> None:
        capacity = 0 if self.tokens is None else len(self.tokens)
        if need <= capacity:
            return
        first = min(self.window_tokens, reservable_bytes() // np.dtype(dtype).itemsize,
                    self.expected_tokens if self.expected_tokens is not None else self.window_tokens)
        capacity = min(self.window_tokens, max(need, 2 * capacity, first))
        try:
            grown = self.buffers.get(capacity, np.dtype(dtype)) if self.buffers is not None \
                else np.empty(capacity, dtype=dtype)
        except MemoryError:  # a reservation ahead of the tokens (a hint) that the address space refuses:
            if capacity <= need:  # grow by what is read instead
                raise
            capacity = need
            grown = np.empty(capacity, dtype=dtype)
        if self.tokens is not None:
            grown[:self.filled] = self.tokens[:self.filled]
        self.tokens = grown
        for name, values in token_columns.items():
            column = np.empty(capacity, dtype=values.dtype)
            if name in self.token_columns:
                column[:self.filled] = self.token_columns[name][:self.filled]
            self.token_columns[name] = column

    def take(self, index: int, first_doc: int, dtype: np.dtype) -> Window:
        offsets = np.zeros(self.n_docs + 1, dtype=np.int64)
        if self.lengths:
            np.cumsum(np.concatenate(self.lengths), out=offsets[1:])
        tokens = self.tokens[:self.filled] if self.tokens is not None else np.empty(0, dtype=dtype)
        columns = {name: concat_arrays(chunks) for name, chunks in self.columns.items()}
        token_columns = {name: values[:self.filled] for name, values in self.token_columns.items()}
        self.tokens, self.filled, self.lengths, self.n_docs = None, 0, [], 0
        self.columns, self.token_columns = {}, {}
        return Window(index, first_doc, offsets, tokens, columns, token_columns)


def concat_arrays(chunks: list[pa.Array]) -> pa.Array:
    """Chunks of one document column as one array; chunks read before its first value (all null) take its type."""
    typed = next((c.type for c in chunks if not pa.types.is_null(c.type)), None)
    if typed is not None:
        chunks = [c.cast(typed) if pa.types.is_null(c.type) else c for c in chunks]
    return pa.concat_arrays(chunks)


def windows(batches: Iterable[DocBatch], window_tokens: int, window_documents: int | None = None,
            buffers: TokenBuffers | None = None) -> Iterator[Window]:
    """Group consecutive documents into windows of at most ``window_tokens`` tokens and ``window_documents``
    documents (no document limit when it is None).

    A window ends before the first document that would take it past either limit; a document longer than
    ``window_tokens`` is a window of its own. Window boundaries depend only on the documents' lengths and the two
    limits, never on how the input was batched, so the output does not either (``stats.window_bounds`` computes
    the same boundaries from the lengths alone).
    """
    if window_tokens < 1 or (window_documents is not None and window_documents < 1):
        raise ValueError("window_tokens and window_documents must be >= 1")
    max_docs = window_documents if window_documents is not None else -1
    buffer = WindowBuffer(window_tokens, buffers=buffers)
    index = first_doc = 0
    dtype = np.dtype(np.int64)
    for batch in batches:
        dtype = batch.tokens.dtype
        pos = 0
        while pos < batch.n_docs:
            # Documents pos .. pos + fit - 1 still fit in the window being filled (tokens and documents).
            ends = batch.offsets[pos + 1:] - batch.offsets[pos]
            fit = int(np.searchsorted(ends, buffer.room(), side="right"))
            if max_docs > 0:
                fit = min(fit, max_docs - buffer.n_docs)
            if fit:
                buffer.add(batch, pos, pos + fit)
                pos += fit
                continue
            if buffer.n_docs:  # the next document does not fit: close the window
                window = buffer.take(index, first_doc, dtype)
            else:  # a document longer than a whole window: a window of its own, no copy
                a, b = int(batch.offsets[pos]), int(batch.offsets[pos + 1])
                window = Window(index, first_doc, np.array([0, b - a], dtype=np.int64), batch.tokens[a:b],
                                {name: array.slice(pos, 1) for name, array in batch.columns.items()},
                                {name: values[a:b] for name, values in batch.token_columns.items()})
                pos += 1
            yield window
            index += 1
            first_doc += window.n_docs
            del window
    if buffer.n_docs:
        yield buffer.take(index, first_doc, dtype)


def window_bounds(raw_lengths: np.ndarray, window_tokens: int, window_documents: int | None = None
                  ) -> list[tuple[int, int]]:
    """Document ranges ``[start, end)`` of the windows ``windows`` makes, computed from the lengths alone."""
    bounds = np.zeros(len(raw_lengths) + 1, dtype=np.int64)
    np.cumsum(raw_lengths, out=bounds[1:])
    ranges, start = [], 0
    while start < len(raw_lengths):
        end = int(np.searchsorted(bounds, bounds[start] + window_tokens, side="right")) - 1
        if window_documents is not None:
            end = min(end, start + window_documents)
        end = max(end, start + 1)
        ranges.append((start, end))
        start = end
    return ranges


@dataclass(frozen=True)
class Pieces:
    """What the planner places: piece ``i`` is ``length[i]`` tokens of window document ``doc[i]`` from ``start[i]``.

    Lengths count the appended EOS token. ``dropped_*`` count what the long-document policy removed. The arrays are
    narrow (``make_pieces``): widen them before arithmetic that can leave their range.
    """

    doc: np.ndarray
    start: np.ndarray
    length: np.ndarray
    documents: int  # non-empty documents packed (wholly or partly)
    empty_documents: int
    tokens: int  # tokens placed, EOS included
    dropped_documents: int
    dropped_tokens: int
    clipped_documents: int  # documents cut to ctx by long_docs="truncate"
    truncated_documents: int  # documents spread over more than one sequence
    truncations: int  # cuts: pieces beyond the first of each document


EOS_MODES = ("always", "if-missing")  # --eos-mode: append --eos-id to every non-empty document, or where it is not last


def ends_with(window: Window, token_id: int) -> np.ndarray:
    """Which documents of the window are non-empty and end with ``token_id``."""
    lengths = window.lengths
    found = lengths > 0
    found[found] = window.tokens[window.offsets[1:][found] - 1] == token_id
    return found


def eos_appended(window: Window, eos_id: int | None, mode: str = "always") -> bool | np.ndarray:
    """Whether each document gets ``eos_id`` appended: every non-empty one (``True``), none without an id
    (``False``), or with ``if-missing`` a mask of the non-empty documents that do not end with it already."""
    if eos_id is None:
        return False
    if mode == "always":
        return True
    appended: np.ndarray = (window.lengths > 0) & ~ends_with(window, eos_id)
    return appended


def packed_lengths(lengths: np.ndarray, eos: bool | np.ndarray) -> np.ndarray:
    """Document lengths as packed: EOS appended to every non-empty document (``eos`` True), or to those of the mask
    ``eos`` (``eos_appended``)."""
    if isinstance(eos, np.ndarray):
        return lengths + (eos & (lengths > 0))
    return lengths + ((lengths > 0) if eos else 0)


def make_pieces(lengths: np.ndarray, ctx: int, eos: bool | np.ndarray, long_docs: LongDocs) -> Pieces:
    """Cut documents (given their token counts before EOS) into pieces of ``1..ctx`` tokens; ``eos`` says which
    documents get an EOS appended (``eos_appended``).

    First comes each kept document's first piece, in document order, then the further pieces of split documents
    (in document order, each document's in token order). Nearly every document is one piece, so the first part is
    a few sequential passes over the lengths, and only split documents cost more.
    The arrays are as narrow as their values allow: ``length`` int16 up to ctx 32767 (else int32), ``doc`` and
    ``start`` int32 whenever their values fit (they nearly always do; see ``_index_dtype``). They are the only
    arrays as long as the pieces that this builds: everything else is written into them in place or in
    cache-sized chunks, because at 100M documents every fresh array costs more in first touches of memory than
    the work done in it (docs/benchmarks.md, "Planner").
    """
    doc_lengths = np.asarray(lengths, dtype=np.int64)
    if isinstance(eos, np.ndarray) or eos:
        doc_lengths = packed_lengths(doc_lengths, eos)
    long_doc, long_lengths, empty_documents = _scan(doc_lengths, ctx)
    extra = np.zeros(0, dtype=np.int64)  # pieces after the first, per long document
    dropped_documents = dropped_tokens = clipped = 0
    if long_docs == "split":
        extra = long_lengths - 1
        extra //= ctx  # >= 1: every long document is split
    elif long_docs == "drop":
        dropped_documents, dropped_tokens = len(long_doc), int(long_lengths.sum())
    else:
        clipped, dropped_tokens = len(long_doc), int((long_lengths - ctx).sum())
    n_first = len(doc_lengths) - empty_documents - dropped_documents
    n_extra = int(extra.sum())
    doc = np.empty(n_first + n_extra, dtype=_index_dtype(len(doc_lengths)))
    start = np.zeros(n_first + n_extra, dtype=_index_dtype(int(long_lengths.max()) if len(long_lengths) else 0))
    length = np.empty(n_first + n_extra, dtype=np.int16 if ctx < 1 << 15 else np.int32)
    if n_first == len(doc_lengths):  # every document kept: its index is its position
        _fill_ramp(doc[:n_first])
        np.minimum(doc_lengths, ctx, out=length[:n_first], casting="unsafe")
    else:
        keep = doc_lengths > 0
        if dropped_documents:
            keep[long_doc] = False
        doc[:n_first] = np.flatnonzero(keep)
        np.minimum(doc_lengths[doc[:n_first]], ctx, out=length[:n_first], casting="unsafe")
    if n_extra:
        _further_pieces(long_doc, long_lengths, extra, ctx, doc[n_first:], start[n_first:], length[n_first:])
    return Pieces(doc, start, length, documents=n_first, empty_documents=empty_documents,
                  tokens=int(length.sum()), dropped_documents=dropped_documents, dropped_tokens=dropped_tokens,
                  clipped_documents=clipped, truncated_documents=len(extra), truncations=n_extra)


def _index_dtype(largest: int) -> type[np.signedinteger]:
    """int32 for indices and offsets that stay below 2**31, int64 beyond."""
    return np.int32 if largest < 2**31 else np.int64


def _fill_ramp(out: np.ndarray) -> None:
    """``out[:] = 0, 1, 2, ...`` without a temporary as long as ``out``."""
    ramp = np.arange(min(len(out), _CHUNK), dtype=out.dtype)
    for lo in range(0, len(out), _CHUNK):
        np.add(ramp[:len(out) - lo], lo, out=out[lo:lo + _CHUNK])


_CHUNK = 1 << 16  # entries per step of the chunked passes: their temporaries stay in the cache


def _scan(doc_lengths: np.ndarray, ctx: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The documents longer than ``ctx`` (their indices and lengths) and the number of empty ones, in one pass of
    cache-sized chunks (each chunk is read from memory once)."""
    long_doc, long_lengths = [], []
    nonzero = 0
    for lo in range(0, len(doc_lengths), _CHUNK):
        chunk = doc_lengths[lo:lo + _CHUNK]
        found = np.flatnonzero(chunk > ctx)
        long_lengths.append(chunk[found])
        found += lo
        long_doc.append(found)
        nonzero += int(np.count_nonzero(chunk))
    if not long_doc:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64), 0
    return (np.concatenate(long_doc, dtype=_index_dtype(len(doc_lengths))), np.concatenate(long_lengths),
            len(doc_lengths) - nonzero)


def _further_pieces(long_doc: np.ndarray, long_lengths: np.ndarray, extra: np.ndarray, ctx: int, doc: np.ndarray,
                    start: np.ndarray, length: np.ndarray) -> None:
    """Write the pieces after the first of each long document (``extra`` of them, from token ``ctx`` on, the last
    one what is left) into ``doc``, ``start`` and ``length``, for a cache-sized chunk of documents at a time."""
    lo = 0
    for first in range(0, len(extra), _CHUNK):
        chunk_extra = extra[first:first + _CHUNK]
        hi = lo + int(chunk_extra.sum())
        doc[lo:hi] = np.repeat(long_doc[first:first + _CHUNK], chunk_extra)
        # Piece k (1, 2, ...) of its document starts at k * ctx.
        piece_start = np.arange(1, hi - lo + 1, dtype=np.int64)
        piece_start -= np.repeat(np.cumsum(chunk_extra) - chunk_extra, chunk_extra)
        piece_start *= ctx
        start[lo:hi] = piece_start
        np.minimum(np.repeat(long_lengths[first:first + _CHUNK], chunk_extra) - piece_start, ctx, out=length[lo:hi],
                   casting="unsafe")
        lo = hi


def span_steps(lengths: np.ndarray, step_tokens: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Walk consecutive spans of ``lengths`` tokens in steps of about ``step_tokens`` tokens.

    Yields ``(lo, hi, within)``: spans ``lo..hi-1`` and, for each of their tokens in order, its position inside its
    span. ``np.repeat(span_starts[lo:hi], lengths[lo:hi]) + within`` then indexes all their tokens at once, while
    the index arrays stay bounded by the step (about 24 bytes a token).
    """
    bounds = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    if bounds[-1] == 0:
        return
    starts = np.searchsorted(bounds, np.arange(0, bounds[-1], step_tokens), side="right") - 1
    for lo, hi in zip(starts.tolist(), [*starts[1:].tolist(), len(lengths)], strict=True):
        if lo < hi:
            within = np.arange(int(bounds[hi] - bounds[lo]), dtype=np.int64)
            within -= np.repeat(bounds[lo:hi] - bounds[lo], lengths[lo:hi])
            yield lo, hi, within


# ------------------------------------------------------------------------------------------------ memory budget

# What ``--memory`` assumes (docs/benchmarks.md measures it): besides the windows, the interpreter, libraries and
# reader take about BASE_BYTES; each shard being written holds its gathered tokens plus its encoded bytes (about
# SHARD_COPIES times the shard's token bytes); each window in flight costs its token bytes (WINDOW_OVERHEAD times
# them) plus PIECE_BYTES for each of its pieces. A window of T tokens and D documents has at most D + T / ctx
# pieces (every document is one piece, and only documents longer than ctx give more, one per ctx tokens), and the
# window closes at DOCUMENT_TOKENS tokens a document on average, so D <= T / DOCUMENT_TOKENS: its memory is bounded
# whatever the length distribution, down to one-token documents.
BASE_BYTES = 256 << 20
SHARD_COPIES = 3
WINDOW_OVERHEAD = 1.25
MEMORY_IN_FLIGHT = 2  # windows held at once under --memory: one packing while the next is read
READ_AHEAD_SHARE = 4  # batches read ahead of the window being filled: up to a quarter of a window's token bytes
MIN_WINDOW_TOKENS = 1 << 20
# Arrays per piece, from reading to the written shard: the window's offsets and lengths, the pieces (document,
# start, length), the plan (order, sequence, offset), the output order and its sort keys, the gather indices and
# the shard's seq_lengths, doc_index and doc_offset columns (measured: about 170 bytes for one-token documents).
PIECE_BYTES = 192
DOCUMENT_TOKENS = 256  # a window holds at most one document per this many tokens of --window-tokens ...
MIN_WINDOW_DOCUMENTS = 1 << 16  # ... or this many documents (12 MiB of per-piece arrays), whichever is more


def read_ahead_bytes(window_tokens: int, itemsize: int) -> int:
    """How far reading may run ahead of the window being filled (``read.ReadAhead``), in bytes."""
    return window_tokens * itemsize // READ_AHEAD_SHARE


def window_documents_for(window_tokens: int) -> int:
    """The most documents a window of ``window_tokens`` tokens holds: what bounds its per-document arrays."""
    return max(MIN_WINDOW_DOCUMENTS, window_tokens // DOCUMENT_TOKENS)


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 10**3, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6, "mib": 1 << 20,
          "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from ``4GB`` (10**9), ``4GiB`` or ``4G`` (2**30), ``512MiB``, ``1.5GB`` or a plain number of bytes."""
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("kmgtib")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not 0 < value < 2**63 / _UNITS.get(unit, 1):  # also refuses inf and nan
        raise ValueError(f"{text!r} is not a size such as 4GB, 4GiB or 512MiB")
    return int(value * _UNITS[unit])


def window_tokens_for_memory(budget: int, ctx: int, rows_per_shard: int, itemsize: int) -> int:
    """The largest window whose run stays within ``budget`` bytes for any document lengths.

    ``budget = BASE_BYTES + MEMORY_IN_FLIGHT * (SHARD_COPIES * shard_bytes + MIN_WINDOW_DOCUMENTS * PIECE_BYTES
    + window_tokens * token_bytes) + window_tokens * itemsize / READ_AHEAD_SHARE`` with ``token_bytes =
    WINDOW_OVERHEAD * itemsize + PIECE_BYTES * (1 / DOCUMENT_TOKENS + 1 / ctx)``: a window of ``n`` tokens holds at
    most ``MIN_WINDOW_DOCUMENTS + n / DOCUMENT_TOKENS`` documents (``window_documents_for``) and ``n / ctx`` further
    pieces of long documents, each with its per-piece arrays; the last term is the read-ahead
    (``read_ahead_bytes``). Solved for the window. It depends only on these arguments, never on ``--workers``, so
    the output does not.
    """
    shard_bytes = rows_per_shard * ctx * itemsize
    token_bytes = WINDOW_OVERHEAD * itemsize + PIECE_BYTES * (1 / DOCUMENT_TOKENS + 1 / ctx)
    run_token_bytes = MEMORY_IN_FLIGHT * token_bytes + itemsize / READ_AHEAD_SHARE
    fixed = SHARD_COPIES * shard_bytes + MIN_WINDOW_DOCUMENTS * PIECE_BYTES
    room = budget - BASE_BYTES - MEMORY_IN_FLIGHT * fixed
    window_tokens = int(room / run_token_bytes) if room > 0 else 0
    if window_tokens < MIN_WINDOW_TOKENS:
        need = BASE_BYTES + MEMORY_IN_FLIGHT * fixed + run_token_bytes * MIN_WINDOW_TOKENS
        raise ValueError(f"a budget of {budget / 2**20:,.0f} MiB leaves no room for a window of "
                         f"{MIN_WINDOW_TOKENS:,} tokens; it needs at least {need / 2**20:,.0f} MiB at ctx {ctx} "
                         f"and {rows_per_shard} rows per shard")
    return window_tokens


# ------------------------------------------------------------------------------------------------ planned windows
#
# ``windows`` finds window boundaries while it reads. A driver that hands windows to other machines must know them
# before anything is read, and without reading every token: ``plan_windows`` computes the same boundaries from
# blocks of documents whose token totals are known (a Parquet row group's footer says how many rows and ids it
# holds), and asks for the lengths of a block's documents only where a window ends inside it.


@dataclass(frozen=True)
class Block:
    """Consecutive documents of one input file: rows ``first_row .. first_row + rows - 1`` of file ``file_index``.

    ``tokens`` is their total when known without reading them (None: ask for their lengths); ``lengths`` their
    lengths when already read.
    """

    file_index: int
    first_row: int
    rows: int
    tokens: int | None = None
    lengths: np.ndarray | None = None


@dataclass(frozen=True)
class WindowSpec:
    """A window as planned: documents ``first_doc .. first_doc + n_docs - 1`` (global), ``n_tokens`` tokens."""

    index: int
    first_doc: int
    n_docs: int
    n_tokens: int


@dataclass(frozen=True)
class WindowPlan:
    """The windows of a run, and each input file's first global document and number of documents.

    ``error`` is a failure met while planning (a bad row in a block whose lengths were read): the windows before
    the failing block are planned, so a bad record earlier in the input, inside a window, is still the one named.
    """

    windows: tuple[WindowSpec, ...]
    file_first_doc: tuple[int, ...]
    file_docs: tuple[int, ...]
    error: BaseException | None = None

    def sources(self, spec: WindowSpec) -> list[tuple[int, int, int]]:
        """``(file_index, first_row, end_row)`` of each file the window's documents come from, in order."""
        out = []
        lo, hi = spec.first_doc, spec.first_doc + spec.n_docs
        for index, (first, n) in enumerate(zip(self.file_first_doc, self.file_docs, strict=True)):
            a, b = max(lo, first), min(hi, first + n)
            if a < b:
                out.append((index, a - first, b - first))
        return out


class _Planner:
    """The state of the window being filled: its first document, tokens and documents so far."""

    def __init__(self, window_tokens: int, window_documents: int | None) -> None:
        if window_tokens < 1 or (window_documents is not None and window_documents < 1):
            raise ValueError("window_tokens and window_documents must be >= 1")
        self.window_tokens = window_tokens
        self.max_docs = window_documents if window_documents is not None else UNBOUNDED_TOKENS
        self.specs: list[WindowSpec] = []
        self.start = self.doc = self.tokens = 0

    def close(self) -> None:
        if self.doc > self.start:
            self.specs.append(WindowSpec(len(self.specs), self.start, self.doc - self.start, self.tokens))
        self.start, self.tokens = self.doc, 0

    def fits_whole(self, rows: int, tokens: int) -> bool:
        return self.doc - self.start + rows <= self.max_docs and self.tokens + tokens <= self.window_tokens

    def add_whole(self, rows: int, tokens: int) -> None:
        self.doc += rows
        self.tokens += tokens

    def add_lengths(self, lengths: np.ndarray) -> None:
        """Documents one by one (vectorised per window), with ``windows``' rule: a window ends before the first
        document that would take it past either limit; a document longer than a window is a window of its own."""
        ends = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=ends[1:])
        pos = 0
        while pos < len(lengths):
            held = self.doc - self.start
            fit = int(np.searchsorted(ends, ends[pos] + self.window_tokens - self.tokens, side="right")) - 1 - pos
            fit = min(fit, self.max_docs - held)
            if fit <= 0:
                if held:  # the next document does not fit: close the window
                    self.close()
                    continue
                fit = 1  # a document longer than a whole window
            self.doc += fit
            self.tokens += int(ends[pos + fit] - ends[pos])
            pos += fit
            if held == 0 and fit == 1 and self.tokens > self.window_tokens:
                self.close()


def plan_windows(blocks: Iterable[Block], window_tokens: int, window_documents: int | None,
                 lengths_of: Callable[[Block], np.ndarray]) -> WindowPlan:
    """The windows ``windows`` would make of the documents of ``blocks`` (in input order, every file's blocks in row
    order), reading lengths (``lengths_of``) only of blocks that a window ends inside or whose total is unknown."""
    planner = _Planner(window_tokens, window_documents)
    first_doc: dict[int, int] = {}
    docs: dict[int, int] = {}
    error: BaseException | None = None
    try:
        for block in blocks:
            first_doc.setdefault(block.file_index, planner.doc)
            if block.lengths is None and block.tokens is not None and planner.fits_whole(block.rows, block.tokens):
                planner.add_whole(block.rows, block.tokens)
            else:
                lengths = block.lengths if block.lengths is not None else lengths_of(block)
                if len(lengths) != block.rows:
                    raise ValueError(f"block of {block.rows} rows read as {len(lengths)} lengths")
                planner.add_lengths(lengths)
            docs[block.file_index] = planner.doc - first_doc[block.file_index]
    except Exception as exc:  # noqa: BLE001 -- handed to the engine, which raises it after the windows before it
        error = exc
    planner.close()
    n_files = max([*first_doc, -1]) + 1
    return WindowPlan(tuple(planner.specs), tuple(first_doc.get(i, 0) for i in range(n_files)),
                      tuple(docs.get(i, 0) for i in range(n_files)), error)
