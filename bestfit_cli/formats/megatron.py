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
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import OptionError, OutputError
from .base import PackedRows
from .parquet import _list_array, kept_columns

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# megatron-core's DType codes for the token types this format writes.
DTYPE_CODES: dict[np.dtype[Any], int] = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4, np.dtype(np.int64): 5}
_HEAD = struct.Struct("<9sQBQQ")
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


def decode_index(data: bytes) -> tuple[np.dtype[Any], np.ndarray, np.ndarray, np.ndarray]:
    """The token type, sequence lengths, byte pointers and document index of an ``.idx``; ValueError when malformed."""
    if len(data) < _HEAD.size:
        raise ValueError(f"{len(data)} bytes is shorter than the {_HEAD.size}-byte header")
    header, version, code, n_seq, n_doc = _HEAD.unpack_from(data)
    if header != INDEX_HEADER or version != INDEX_VERSION:
        raise ValueError("not a Megatron index (bad header or version)")
    by_code = {c: d for d, c in DTYPE_CODES.items()}
    if code not in by_code:
        raise ValueError(f"dtype code {code} is not one this format writes")
    expected = _HEAD.size + 4 * n_seq + 8 * n_seq + 8 * n_doc
    if len(data) != expected:
        raise ValueError(f"{len(data)} bytes, the header's counts need {expected}")
    at = _HEAD.size
    lengths = np.frombuffer(data, dtype="<i4", count=n_seq, offset=at)
    pointers = np.frombuffer(data, dtype="<i8", count=n_seq, offset=at + 4 * n_seq)
    documents = np.frombuffer(data, dtype="<i8", count=n_doc, offset=at + 12 * n_seq)
    return by_code[code], lengths, pointers, documents


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
        pieces = pq.read_table(pa.BufferReader(companions[PIECES_SUFFIX]))
        if pieces.num_rows != n_rows:
            raise ValueError(f"the .pieces.parquet holds {pieces.num_rows} rows, the .idx {n_rows}")
        offsets = np.arange(n_rows + 1, dtype=np.int64) * ctx
        input_ids = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(tokens))
        return pa.table([input_ids] + pieces.columns, names=["input_ids"] + pieces.column_names)
