"""Megatron indexed datasets: each shard is a ``.bin`` + ``.idx`` pair that megatron-core's ``IndexedDataset`` reads.

Every packed row is one Megatron document of one sequence of exactly ``ctx`` tokens, so megatron-core's
``GPTDataset`` with ``add_extra_token_to_sequence=False`` draws exactly one row per sample (docs/training.md).
The ``.bin`` holds the rows' token ids back to back in the smallest integer type of Megatron's that holds them
(uint16, else int32, else int64); the ``.idx`` is Megatron's index layout, all little-endian:

    9 bytes   b"MMIDIDX\\x00\\x00"
    uint64    version, 1
    uint8     dtype code (uint16 = 8, int32 = 4, int64 = 5)
    uint64    sequence count S (the rows)
    uint64    document count D = S + 1 (the boundaries of the document index)
    int32[S]  sequence lengths (all ctx)
    int64[S]  byte offset of each sequence in the .bin
    int64[D]  document index: 0, 1, ..., S (one sequence per document)

Megatron finds a row's document boundaries only from its EOD token, so this format needs ``--eos-id``, a pad id
other than the EOS id, and neither id inside a document (both are checked). Where the pieces came from
(``seq_lengths``, ``doc_index``, ``doc_offset``) goes into a small Parquet sidecar per shard, ``.pieces.parquet``,
which ``bestfit verify`` reads to rebuild every document.

As an input (``read_megatron``), any dataset megatron-core's ``IndexedDatasetBuilder`` writes is read, one document
per entry of its document index; ``parse_head`` is shared by both directions.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, OptionError, OutputError
from ..fs import InputFile
from ..read import BATCH_TOKENS, DocBatch, LengthBatch, ReadOptions, Skipped, check_ids, drop_bad_ids
from .base import Checkpoint, InputFormat, PackedRows
from .parquet import _list_array, arrow_owned, kept_columns
from .parquet_footer import check_bytes
from .ranged import open_ranges

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# megatron-core's DType codes for the token types this format writes.
DTYPE_CODES: dict[np.dtype[Any], int] = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4, np.dtype(np.int64): 5}
_HEAD = struct.Struct("<9sQBQQ")
# Every integer token type of megatron-core's DType, by code, for reading datasets written by others.
READ_CODES: dict[int, np.dtype[Any]] = {1: np.dtype(np.uint8), 2: np.dtype(np.int8), 3: np.dtype(np.int16),
                                        4: np.dtype(np.int32), 5: np.dtype(np.int64), 8: np.dtype(np.uint16)}
FLOAT_CODES = {6: "float64", 7: "float32"}
PIECES_SUFFIX = ".pieces.parquet"
INDEX_SUFFIX = ".idx"


def token_dtype(max_id: int) -> np.dtype[Any]:
    """The smallest of Megatron's token types that holds ids up to ``max_id``."""
    for dtype in DTYPE_CODES:
        if max_id <= int(np.iinfo(dtype).max):
            return dtype
    raise OutputError(f"token id {max_id} does not fit in int64", fix="check --dtype")


def encode_index(n_rows: int, ctx: int, dtype: np.dtype[Any]) -> bytes:
    """The ``.idx`` of ``n_rows`` sequences of ``ctx`` tokens, one sequence per document."""
    head = _HEAD.pack(INDEX_HEADER, INDEX_VERSION, DTYPE_CODES[dtype], n_rows, n_rows + 1)
    lengths = np.full(n_rows, ctx, dtype="<i4")
    pointers = np.arange(n_rows, dtype="<i8") * (ctx * dtype.itemsize)
    documents = np.arange(n_rows + 1, dtype="<i8")
    return head + lengths.tobytes() + pointers.tobytes() + documents.tobytes()


@dataclass(frozen=True)
class IndexHead:
    """What an ``.idx`` header says: the token type, and how many sequences and document boundaries follow."""

    dtype: np.dtype[Any]
    n_seq: int
    n_doc: int  # entries of the document index: the documents plus one

    @property
    def size(self) -> int:
        """The bytes of a text (not multimodal) index with these counts."""
        return _HEAD.size + 12 * self.n_seq + 8 * self.n_doc


def parse_head(data: bytes, size: int, codes: dict[int, np.dtype[Any]]) -> IndexHead:
    """The header of an ``.idx`` of ``size`` bytes whose first bytes are ``data``; ValueError saying what is wrong.

    ``codes`` are the token types accepted (by megatron-core's code): what this format writes when checking its
    own output, every integer type when reading an input.
    """
    if size < _HEAD.size or len(data) < _HEAD.size:
        raise ValueError(f"truncated: {size:,} bytes is shorter than the {_HEAD.size}-byte header")
    header, version, code, n_seq, n_doc = _HEAD.unpack_from(data)
    if header != INDEX_HEADER:
        raise ValueError("not a Megatron index (its first bytes are not MMIDIDX)")
    if version != INDEX_VERSION:
        raise ValueError(f"Megatron index version {version}; bestfit reads version {INDEX_VERSION}")
    if code not in codes:
        what = FLOAT_CODES.get(code)
        writer = "megatron-core" if codes is READ_CODES else "this format"
        raise ValueError(f"token type {what} (code {code}) is not integer token ids" if what else
                         f"token type code {code} is not one {writer} writes")
    head = IndexHead(codes[code], n_seq, n_doc)
    if size == head.size + n_seq:
        raise ValueError("a multimodal index (one mode byte per sequence): bestfit reads text datasets only")
    if size < head.size:
        raise ValueError(f"truncated: {size:,} bytes, its header's counts ({n_seq:,} sequences, {n_doc:,} document "
                         f"boundaries) need {head.size:,}")
    if size != head.size:
        raise ValueError(f"{size:,} bytes, its header's counts ({n_seq:,} sequences, {n_doc:,} document "
                         f"boundaries) need {head.size:,}")
    return head


def decode_index(data: bytes) -> tuple[np.dtype[Any], np.ndarray, np.ndarray, np.ndarray]:
    """The token type, sequence lengths, byte pointers and document index of an ``.idx``; ValueError when malformed."""
    head = parse_head(data, len(data), {c: d for d, c in DTYPE_CODES.items()})
    n_seq, n_doc = head.n_seq, head.n_doc
    at = _HEAD.size
    lengths = np.frombuffer(data, dtype="<i4", count=n_seq, offset=at)
    pointers = np.frombuffer(data, dtype="<i8", count=n_seq, offset=at + 4 * n_seq)
    documents = np.frombuffer(data, dtype="<i8", count=n_doc, offset=at + 12 * n_seq)
    return head.dtype, lengths, pointers, documents


@dataclass(frozen=True)
class MegatronFormat:
    """``train-*.bin`` + ``train-*.idx`` (Megatron's IndexedDataset) and ``train-*.pieces.parquet`` (the pieces)."""

    name: str = "megatron"
    suffix: str = ".bin"
    companion_suffixes: tuple[str, ...] = (INDEX_SUFFIX, PIECES_SUFFIX)
    dtype_follows_option: bool = False  # the type is the smallest that holds the shard's ids, not --dtype

    def check_options(self, opts: Any) -> None:
        if opts.keep_token:
            raise OptionError("--format megatron cannot store --keep-token columns: Megatron's GPTDataset reads "
                              "token ids only (docs/training.md)", fix="drop --keep-token, or use --format parquet")
        if opts.columns:
            raise OptionError("--format megatron cannot store --columns: Megatron derives positions and loss masks "
                              "itself (docs/training.md)", fix="drop --columns, or use --format parquet")
        if not opts.pad:
            raise OptionError("--format megatron writes rows of exactly ctx tokens, so it cannot honour --no-pad",
                              fix="drop --no-pad, or use --format parquet")
        if opts.eos_id is None:
            raise OptionError("--format megatron needs --eos-id: Megatron finds where a packed document ends by "
                              "its EOD token", fix="pass --eos-id with your tokenizer's EOD id")
        if opts.resolved_pad_id == opts.eos_id:
            raise OptionError(f"--format megatron needs a --pad-id other than the EOS id {opts.eos_id}: with pad = "
                              "EOD, Megatron turns padding's loss masking off",
                              fix="pass --pad-id with an id no document uses (e.g. the tokenizer's pad id)")

    def _token_dtype(self, rows: PackedRows) -> np.dtype[Any]:
        return token_dtype(int(rows.tokens.max()) if len(rows.tokens) else 0)

    def encode(self, rows: PackedRows) -> bytes:
        self._check_ids(rows)
        data: bytes = rows.tokens.astype(self._token_dtype(rows).newbyteorder("<"), copy=False).tobytes()
        return data

    def companions(self, rows: PackedRows) -> dict[str, bytes]:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({
            "seq_lengths": _list_array(rows.piece_offsets, rows.seq_lengths.astype(np.int32), pa.int32()),
            "doc_index": _list_array(rows.piece_offsets, rows.doc_index.astype(np.int64), pa.int64()),
            "doc_offset": _list_array(rows.piece_offsets, rows.doc_offset.astype(np.int64), pa.int64()),
            **kept_columns(rows),
        }), sink, compression="zstd")
        return {INDEX_SUFFIX: encode_index(rows.n_rows, rows.ctx, self._token_dtype(rows)),
                PIECES_SUFFIX: sink.getvalue().to_pybytes()}

    def _check_ids(self, rows: PackedRows) -> None:
        """Megatron would cut a document at an EOD inside it, and train no label on a pad id inside it: refuse both."""
        if rows.eos_id is None or rows.pad_id is None:
            return
        n_rows, ctx = rows.n_rows, rows.ctx
        pieces_per_row = np.diff(rows.piece_offsets)
        piece_row = np.repeat(np.arange(n_rows, dtype=np.int64), pieces_per_row)
        lengths = rows.seq_lengths.astype(np.int64)
        fill = np.bincount(piece_row, weights=lengths, minlength=n_rows).astype(np.int64)
        # Pieces sit in row order, each row's from position 0: where each starts in the flat token array.
        start = piece_row * ctx + np.cumsum(lengths) - lengths - np.repeat(np.cumsum(fill) - fill, pieces_per_row)
        real = (np.arange(ctx) < fill[:, None]).reshape(-1)
        for token_id, what, consequence, fix in (
                (rows.eos_id, "EOS", "split the document there",
                 "pass --eos-mode if-missing if your documents already end with it, else remove it from the "
                 "document, or use --format parquet"),
                (rows.pad_id, "pad", "train no label on it", "choose a --pad-id that no document uses")):
            found = real & (rows.tokens == token_id)
            if what == "EOS":
                found[start + lengths - 1] = False  # a piece's last token is where Megatron may end a document
            if found.any():
                piece = int(np.searchsorted(start, int(np.flatnonzero(found)[0]), side="right")) - 1
                raise OutputError(f"document {int(rows.doc_index[piece])} holds the {what} id {token_id} inside it: "
                                  f"Megatron would {consequence}", fix=fix)

    def decode(self, data: bytes, companions: dict[str, bytes]) -> pa.Table:
        """The shard as the Parquet format's table (input_ids, seq_lengths, doc_index, doc_offset); ValueError when
        its files disagree with each other."""
        dtype, lengths, pointers, documents = decode_index(companions[INDEX_SUFFIX])
        n_rows = len(lengths)
        ctx = int(lengths[0]) if n_rows else 0
        if n_rows and (not (lengths == ctx).all()
                       or not np.array_equal(pointers, np.arange(n_rows, dtype=np.int64) * ctx * dtype.itemsize)):
            raise ValueError("the .idx sequences are not consecutive rows of one length")
        if not np.array_equal(documents, np.arange(n_rows + 1)):
            raise ValueError("the .idx document index is not one sequence per document")
        if len(data) != n_rows * ctx * dtype.itemsize:
            raise ValueError(f"the .bin holds {len(data)} bytes, its .idx describes {n_rows * ctx * dtype.itemsize}")
        tokens = np.frombuffer(data, dtype=dtype.newbyteorder("<"))
        check_bytes(companions[PIECES_SUFFIX])  # FooterError (a ValueError) rather than an abort in pyarrow
        pieces = pq.read_table(pa.BufferReader(arrow_owned(companions[PIECES_SUFFIX])))
        if pieces.num_rows != n_rows:
            raise ValueError(f"the .pieces.parquet holds {pieces.num_rows} rows, the .idx {n_rows}")
        offsets = np.arange(n_rows + 1, dtype=np.int64) * ctx
        input_ids = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(tokens))
        return pa.table([input_ids] + pieces.columns, names=["input_ids"] + pieces.column_names)


# --------------------------------------------------------------------------------------------- as input
#
# A Megatron dataset written by megatron-core's IndexedDatasetBuilder (or by this format) is read document by
# document: the document index groups its sequences into documents, so a corpus that was concatenated and chunked
# into sequences comes back as the documents it was built from. Only the .idx is read to learn the lengths.

BIN_SUFFIX = ".bin"
CHECK_ENTRIES = 1 << 22  # index entries checked per step: 80 MB of the .idx at most
DOC_STEP = 1 << 16  # documents whose offsets are looked up per step


def index_path(bin_path: str) -> str:
    """The ``.idx`` beside a ``.bin`` (its name with the suffix replaced)."""
    return bin_path[: -len(BIN_SUFFIX)] + INDEX_SUFFIX


class MegatronDataset:
    """One input dataset: its ``.bin`` (``file``) and the ``.idx`` beside it, opened for ranged reads."""

    def __init__(self, file: InputFile) -> None:
        """Open both files; the counts the ``.bin`` holds are known once ``check`` (or ``assume_checked``) ran."""
        self.file = file
        self.idx_name = index_path(file.name)
        self.index = open_ranges(self.idx_name, file.fs, index_path(file.fs_path))
        try:
            self.head = self._head()
            self.bin = open_ranges(file.name, file.fs, file.fs_path, file.size)
        except BaseException:
            self.index.close()
            raise
        self._lengths_at = _HEAD.size
        self._pointers_at = _HEAD.size + 4 * self.head.n_seq
        self._documents_at = _HEAD.size + 12 * self.head.n_seq
        self.total_tokens = 0

    def _head(self) -> IndexHead:
        first = self.index.array(0, min(_HEAD.size, self.index.size), np.dtype(np.uint8)).tobytes()
        try:
            return parse_head(first, self.index.size, READ_CODES)
        except ValueError as exc:
            raise InputError(self.idx_name, f"not a readable Megatron index: {exc}",
                             fix="re-create the dataset, or restore a complete copy of its .idx") from None

    @property
    def n_docs(self) -> int:
        return max(self.head.n_doc - 1, 0)

    def check(self) -> None:
        """Every sequence back to back in the ``.bin`` as megatron-core writes them, the ``.bin`` exactly as long as
        they are, and every sequence in one document: one pass over the ``.idx``, none over the ``.bin``."""
        head, itemsize = self.head, self.head.dtype.itemsize
        at = 0  # bytes of the .bin the sequences checked so far take
        for start in range(0, head.n_seq, CHECK_ENTRIES):
            count = min(CHECK_ENTRIES, head.n_seq - start)
            lengths = self.index.array(self._lengths_at + 4 * start, count, np.dtype("<i4")).astype(np.int64)
            pointers = self.index.array(self._pointers_at + 8 * start, count, np.dtype("<i8"))
            if (lengths < 0).any():
                seq = start + int(np.flatnonzero(lengths < 0)[0])
                raise self._bad(f"sequence {seq:,} has a negative length")
            expected = at + (np.cumsum(lengths) - lengths) * itemsize
            if not np.array_equal(pointers, expected):
                seq = start + int(np.flatnonzero(pointers != expected)[0])
                raise self._bad(f"sequence {seq:,} starts at byte {int(pointers[seq - start]):,} of the .bin, not "
                                f"{int(expected[seq - start]):,} where the one before it ends")
            at += int(lengths.sum()) * itemsize
        if at != self.bin.size:
            raise InputError(self.file.name, f"holds {self.bin.size:,} bytes, its .idx describes {at:,} "
                                             f"({at // itemsize:,} tokens of {head.dtype})",
                             fix="the .bin or the .idx is truncated or belongs to another dataset: re-create the "
                                 "dataset or restore both files")
        self.total_tokens = at // itemsize
        last = None
        for start in range(0, head.n_doc, CHECK_ENTRIES):
            documents = self.index.array(self._documents_at + 8 * start, min(CHECK_ENTRIES, head.n_doc - start),
                                         np.dtype("<i8"))
            steps = np.diff(documents, prepend=documents[0] if last is None else last)
            if (last is None and documents[0] != 0) or (steps < 0).any() or documents[-1] > head.n_seq:
                raise self._bad("its document index does not run from 0 up to the sequence count")
            last = int(documents[-1])
        if head.n_doc and last != head.n_seq:
            raise self._bad(f"its last {head.n_seq - (last or 0):,} sequences belong to no document (the builder "
                            "was finalized without end_document?)")

    def assume_checked(self) -> None:
        """Take the ``.bin``'s size for what ``check`` found: in a Ray task or a planner on the driver, whose run
        checked the whole pair before any work (``read.check_schemas``), so the ``.idx`` is not walked again."""
        self.total_tokens = self.bin.size // self.head.dtype.itemsize

    def _bad(self, what: str) -> InputError:
        return InputError(self.idx_name, f"not a readable Megatron index: {what}",
                          fix="re-create the dataset, or restore a complete copy of its .idx")

    def doc_offsets(self, first: int, stop: int) -> np.ndarray:
        """Token offsets in the ``.bin`` of documents ``first`` to ``stop`` (``stop - first + 1`` values, int64)."""
        bounds = self.index.array(self._documents_at + 8 * first, stop - first + 1, np.dtype("<i8")).astype(np.int64)
        offsets = np.full(len(bounds), self.total_tokens, dtype=np.int64)
        inside = bounds < self.head.n_seq
        if inside.any():
            lo, hi = int(bounds[inside][0]), int(bounds[inside][-1]) + 1
            pointers = self.index.array(self._pointers_at + 8 * lo, hi - lo, np.dtype("<i8"))
            offsets[inside] = pointers[bounds[inside] - lo] // self.head.dtype.itemsize
        return offsets

    def tokens(self, start: int, stop: int) -> np.ndarray:
        dtype = self.head.dtype.newbyteorder("<")
        return self.bin.array(start * dtype.itemsize, stop - start, dtype)

    def close(self) -> None:
        self.index.close()
        self.bin.close()

    def __enter__(self) -> MegatronDataset:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def check_input(file: InputFile) -> None:
    """The checks of ``MegatronInput.check``, run before any work so a bad pair fails in seconds."""
    with MegatronDataset(file) as data:
        data.check()


def _doc_steps(data: MegatronDataset, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(first document, token offsets)`` for runs of documents ``lo .. hi - 1`` (default: all) of about
    ``BATCH_TOKENS`` tokens each."""
    end = data.n_docs if hi is None else min(hi, data.n_docs)
    for first in range(lo, end, DOC_STEP):
        stop = min(end, first + DOC_STEP)
        offsets = data.doc_offsets(first, stop)
        targets = offsets[0] + np.arange(BATCH_TOKENS, int(offsets[-1] - offsets[0]), BATCH_TOKENS)
        cuts = np.unique(np.concatenate([[0], np.searchsorted(offsets, targets, side="left"), [stop - first]]))
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            yield first + a, offsets[a:b + 1]


def _row(first: int, i: int) -> dict[str, int]:
    return {"row": first + i}


def read_megatron(file: InputFile, file_index: int, opts: ReadOptions, rows: tuple[int, int] | None = None
                  ) -> Iterator[DocBatch]:
    """Documents of a Megatron dataset in document-index order, token ids checked and cast to ``--dtype``; with
    ``rows`` (``lo, hi``), only documents ``lo .. hi - 1``: their offsets are looked up in the ``.idx`` and only
    their tokens are read (the pair was checked before any work; skipped records are counted where the whole
    dataset is read)."""
    with MegatronDataset(file) as data:
        if rows is None:
            data.check()
        else:
            data.assume_checked()
        total = max(data.total_tokens, 1)
        for first, offsets in _doc_steps(data, *(rows or (0, None))):
            raw = data.tokens(int(offsets[0]), int(offsets[-1]))
            local = offsets - offsets[0]
            if opts.skip_bad:
                ids, local, _, skipped = drop_bad_ids(file, raw, local, opts, functools.partial(_row, first))
            else:
                ids = check_ids(file, raw, local, first, opts, lambda r: {"row": r})
                skipped = Skipped()
            if np.may_share_memory(ids, raw):  # own the ids: the mapping is closed when the file is done
                ids = ids.copy()
            yield DocBatch(file_index, first, local, ids, float(offsets[-1]) / total,
                           skipped if rows is None else Skipped())


def megatron_lengths(file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[LengthBatch]:
    """Document lengths from the ``.idx`` alone, no token read (so, unlike ``pack``, ids are not checked against
    ``--dtype``); ``--on-bad-record skip`` must find the bad documents, so with it the ids are read."""
    with MegatronDataset(file) as data:
        data.check()
        if opts.skip_bad:
            for batch in read_megatron(file, file_index, opts):
                yield LengthBatch(batch.file_index, batch.first_row, batch.lengths, batch.fraction_done,
                                  batch.skipped)
            return
        total = max(data.total_tokens, 1)
        for first in range(0, data.n_docs, DOC_STEP):
            offsets = data.doc_offsets(first, min(data.n_docs, first + DOC_STEP))
            yield LengthBatch(file_index, first, np.diff(offsets), float(offsets[-1]) / total)


class MegatronInput(InputFormat):
    """A Megatron indexed dataset: a ``.bin`` with its ``.idx`` beside it (the ``.idx`` is read with it)."""

    name = "megatron"
    suffixes = (BIN_SUFFIX, INDEX_SUFFIX)
    description = "a Megatron dataset"
    reads_ahead = True

    def recognizes(self, path: str, exists: Callable[[str], bool]) -> bool:
        return path.lower().endswith(BIN_SUFFIX) and exists(index_path(path))

    def companions(self, path: str) -> tuple[str, ...]:
        return (index_path(path),)

    def check(self, file: InputFile, opts: ReadOptions) -> None:
        check_input(file)

    def read(self, file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
        return read_megatron(file, file_index, opts)

    def read_lengths(self, file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[LengthBatch]:
        return megatron_lengths(file, file_index, opts)

    def blocks(self, file: InputFile, opts: ReadOptions) -> list[tuple[int, int, int | None]] | None:
        """Runs of ``DOC_STEP`` documents and their token counts, from the ``.idx`` alone (no token read); under
        ``--on-bad-record skip`` only reading the ids tells the lengths, so None."""
        if opts.skip_bad:
            return None
        with MegatronDataset(file) as data:
            data.assume_checked()
            starts = [*range(0, data.n_docs, DOC_STEP), data.n_docs]
            offsets = [int(data.doc_offsets(doc, doc)[0]) for doc in starts]  # two lookups a block
            return [(a, b - a, end - begin) for a, b, begin, end
                    in zip(starts[:-1], starts[1:], offsets[:-1], offsets[1:], strict=True)]

    def block_lengths(self, file: InputFile, opts: ReadOptions, lo: int, hi: int) -> np.ndarray:
        with MegatronDataset(file) as data:
            data.assume_checked()
            lengths: np.ndarray = np.diff(data.doc_offsets(lo, hi)) if hi > lo else np.empty(0, dtype=np.int64)
            return lengths

    def read_rows(self, file: InputFile, file_index: int, opts: ReadOptions, lo: int, hi: int,
                  start: Checkpoint | None = None) -> Iterator[DocBatch]:
        return read_megatron(file, file_index, opts, (lo, hi))  # the .idx says where every document starts
