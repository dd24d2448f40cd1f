"""Training columns computed from seq_lengths: positions restart per piece, no label crosses a boundary."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bestfit_cli.training import IGNORE_INDEX, cu_seqlens, labels, position_ids, segments


def test_worked_example() -> None:
    # Two rows of 8: pieces 3+4 and padding 1; piece 6 and padding 2.
    segs = segments(np.array([3, 4, 6]), np.array([0, 2, 3]), np.array([8, 8]))
    assert segs.lengths.tolist() == [3, 4, 1, 6, 2]
    assert segs.padding.tolist() == [False, False, True, False, True]
    assert position_ids(segs).tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 0, 1, 2, 3, 4, 5, 0, 1]
    ids = np.arange(100, 116, dtype=np.int32)
    out = labels(ids, segs)
    assert out.dtype == np.int64
    assert out.tolist() == [-100, 101, 102, -100, 104, 105, 106, -100,
                            -100, 109, 110, 111, 112, 113, -100, -100]
    assert cu_seqlens(segs).tolist() == [0, 3, 7, 8, 14, 16]


def test_full_and_unpadded_rows_have_no_padding_segment() -> None:
    segs = segments(np.array([5, 2]), np.array([0, 1, 2]), np.array([5, 2]))
    assert segs.lengths.tolist() == [5, 2]
    assert not segs.padding.any()
    assert segs.row_offsets.tolist() == [0, 1, 2]


def test_pieces_longer_than_the_row_are_refused() -> None:
    with pytest.raises(ValueError, match="row 0"):
        segments(np.array([5]), np.array([0, 1]), np.array([4]))


@given(st.lists(st.lists(st.integers(1, 9), max_size=4), min_size=1, max_size=6), st.integers(0, 3))
def test_matches_a_per_piece_loop(rows: list[list[int]], extra: int) -> None:
    ctx = max(sum(r) for r in rows) + extra
    ctx = max(ctx, 1)
    seq = np.array([n for r in rows for n in r], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    ids = np.random.default_rng(0).integers(0, 1000, size=len(rows) * ctx)
    segs = segments(seq, offsets, np.full(len(rows), ctx))
    want_pos, want_lab = [], []
    for r, pieces in enumerate(rows):
        row_ids = ids[r * ctx:(r + 1) * ctx]
        at = 0
        for n in pieces:
            want_pos += list(range(n))
            want_lab += [IGNORE_INDEX] + row_ids[at + 1:at + n].tolist()
            at += n
        want_pos += list(range(ctx - at))
        want_lab += [IGNORE_INDEX] * (ctx - at)
    assert position_ids(segs).tolist() == want_pos
    assert labels(ids, segs).tolist() == want_lab
    assert cu_seqlens(segs)[-1] == len(rows) * ctx
