"""A plain best-fit-decreasing packer, one piece at a time, for tests to compare the planner against.

Written for clarity, not speed, and on purpose independent of ``bestfit_cli``: documents are cut into pieces with
a Python loop, pieces are sorted longest first, and each piece goes into the open sequence with the least free
space that still holds it (the lowest-numbered such sequence on ties), or into a new sequence when none does.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass


def reference_pieces(doc_lengths: Iterable[int], ctx: int, long_docs: str = "split") -> list[tuple[int, int, int]]:
    """``(doc, start, length)`` of every piece, in document order; empty documents give none."""
    pieces = []
    for doc, length in enumerate(doc_lengths):
        length = int(length)
        if length == 0:
            continue
        if length > ctx:
            if long_docs == "drop":
                continue
            if long_docs == "truncate":
                pieces.append((doc, 0, ctx))
                continue
        start = 0
        while start < length:
            pieces.append((doc, start, min(ctx, length - start)))
            start += ctx
    return pieces


@dataclass
class ReferencePacking:
    ctx: int
    bins: list[list[int]]  # piece indices in each sequence, in placement order
    fill: list[int]  # tokens in each sequence

    @property
    def sequences(self) -> int:
        return len(self.bins)

    def free_space(self) -> list[int]:
        return [self.ctx - f for f in self.fill]


def reference_bfd(piece_lengths: Iterable[int], ctx: int) -> ReferencePacking:
    """Textbook best-fit decreasing over ``piece_lengths`` (each in ``1..ctx``)."""
    lengths = [int(n) for n in piece_lengths]
    if any(not 1 <= n <= ctx for n in lengths):
        raise ValueError("pieces must have 1..ctx tokens")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    open_bins: list[tuple[int, int]] = []  # (free space, bin id) of sequences with room left, sorted
    bins: list[list[int]] = []
    fill: list[int] = []
    for piece in order:
        size = lengths[piece]
        i = bisect.bisect_left(open_bins, (size, -1))
        if i < len(open_bins):
            free, b = open_bins.pop(i)
        else:
            free, b = ctx, len(bins)
            bins.append([])
            fill.append(0)
        bins[b].append(piece)
        fill[b] += size
        if free - size:
            bisect.insort(open_bins, (free - size, b))
    return ReferencePacking(ctx, bins, fill)


def reference_documents(doc_lengths: Iterable[int], ctx: int, long_docs: str = "split") -> ReferencePacking:
    """Cut documents into pieces, then pack the pieces with best-fit decreasing."""
    return reference_bfd([n for _, _, n in reference_pieces(doc_lengths, ctx, long_docs)], ctx)
