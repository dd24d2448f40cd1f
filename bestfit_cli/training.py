"""Training columns: what a trainer needs to keep the documents of a packed row apart, computed in one place.

Everything here derives from a row's ``seq_lengths`` (and the row's length), so the shard writer, the reader and
the exporters all agree. A row is split into *segments*: each piece, then the row's padding (if any) as one more
segment. Positions restart at 0 in every segment, so attention implementations that infer document boundaries
from ``position_ids`` (or take ``cu_seqlens``) never let one document see another, or padding see a document.

Labels follow the Hugging Face convention: ``labels[i]`` is the token the model is trained to predict at position
``i - 1`` (the model shifts them itself). A piece's first token would be predicted from the previous piece's last
token, so it is ``IGNORE_INDEX``, as is all padding; every other token, each real EOS included, is a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100
TRAINING_COLUMNS = ("position_ids", "labels")  # per-token columns ``bestfit pack --columns`` can add, in this order


@dataclass(frozen=True)
class Segments:
    """The pieces and padding of consecutive rows, in row order.

    Segment ``s`` has ``lengths[s]`` tokens; ``padding[s]`` says it is a row's padding; the segments of row ``r``
    are ``row_offsets[r]:row_offsets[r+1]``.
    """

    lengths: np.ndarray  # int64
    padding: np.ndarray  # bool
    row_offsets: np.ndarray  # int64, n_rows + 1

    @property
    def n_rows(self) -> int:
        return len(self.row_offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def starts(self) -> np.ndarray:
        """Flat position of every segment's first token."""
        starts = np.zeros(len(self.lengths), dtype=np.int64)
        np.cumsum(self.lengths[:-1], out=starts[1:])
        return starts


def segments(seq_lengths: np.ndarray, piece_offsets: np.ndarray, row_lengths: np.ndarray) -> Segments:
    """Segments of rows whose pieces are ``seq_lengths[piece_offsets[r]:piece_offsets[r+1]]`` and whose lengths
    (pieces plus padding) are ``row_lengths``."""
    seq_lengths = np.asarray(seq_lengths, dtype=np.int64)
    piece_offsets = np.asarray(piece_offsets, dtype=np.int64)
    row_lengths = np.asarray(row_lengths, dtype=np.int64)
    n_rows = len(piece_offsets) - 1
    per_row = np.diff(piece_offsets)
    total = np.zeros(len(seq_lengths) + 1, dtype=np.int64)
    np.cumsum(seq_lengths, out=total[1:])
    used = total[piece_offsets[1:]] - total[piece_offsets[:-1]]
    pad = row_lengths - used
    if (pad < 0).any():
        row = int(np.flatnonzero(pad < 0)[0])
        raise ValueError(f"row {row}: its pieces hold {int(used[row])} tokens, "
                         f"more than the row's {int(row_lengths[row])}")
    has_pad = pad > 0
    n_segments = per_row + has_pad
    row_offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(n_segments, out=row_offsets[1:])
    lengths = np.empty(int(row_offsets[-1]), dtype=np.int64)
    padding = np.zeros(len(lengths), dtype=bool)
    # Pieces keep their order; each padded row gets one more segment after its last piece.
    piece_slot = np.arange(len(seq_lengths), dtype=np.int64) + np.repeat(row_offsets[:-1] - piece_offsets[:-1],
                                                                          per_row)
    lengths[piece_slot] = seq_lengths
    pad_slot = row_offsets[1:][has_pad] - 1
    lengths[pad_slot] = pad[has_pad]
    padding[pad_slot] = True
    return Segments(lengths, padding, row_offsets)


def position_ids(segs: Segments) -> np.ndarray:
    """Flat int64 positions, restarting at 0 in every segment."""
    positions: np.ndarray = np.arange(segs.n_tokens, dtype=np.int64) - np.repeat(segs.starts, segs.lengths)
    return positions


def labels(input_ids: np.ndarray, segs: Segments) -> np.ndarray:
    """Flat int64 labels: the ids, with ``IGNORE_INDEX`` on every segment's first token and on all padding."""
    if len(input_ids) != segs.n_tokens:
        raise ValueError(f"{len(input_ids)} token ids for segments of {segs.n_tokens} tokens")
    out = np.asarray(input_ids).astype(np.int64)
    starts = segs.starts
    out[starts[segs.lengths > 0]] = IGNORE_INDEX
    pad = segs.padding
    if pad.any():
        out[np.repeat(pad, segs.lengths)] = IGNORE_INDEX
    return out


def cu_seqlens(segs: Segments) -> np.ndarray:
    """Flat int32 cumulative segment lengths, starting at 0 (``cu_seqlens`` of varlen attention kernels)."""
    out = np.zeros(len(segs.lengths) + 1, dtype=np.int32)
    np.cumsum(segs.lengths, out=out[1:])
    return out


def row_columns(names: Sequence[str], input_ids: np.ndarray, seq_lengths: np.ndarray, piece_offsets: np.ndarray,
                row_lengths: np.ndarray, labels_from: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The training columns ``names`` (of ``TRAINING_COLUMNS``) of consecutive rows, flat and aligned with
    ``input_ids``: what the shard writer stores and what ``verify`` recomputes. ``labels_from`` (a carried
    ``labels`` column, ``--keep-token labels:-100``) replaces the ids as the labels' base."""
    unknown = [name for name in names if name not in TRAINING_COLUMNS]
    if unknown:
        raise ValueError(f"unknown training column {unknown[0]!r}; known: {', '.join(TRAINING_COLUMNS)}")
    segs = segments(seq_lengths, piece_offsets, row_lengths)
    columns: dict[str, np.ndarray] = {}
    for name in names:
        base = input_ids if labels_from is None else labels_from
        columns[name] = position_ids(segs) if name == "position_ids" else labels(base, segs)
    return columns
