"""Strategies that packing is compared against. Pure numpy over document lengths.

``concat`` is the usual pretraining pipeline: documents concatenated in input order and cut every ``ctx`` tokens.
It depends on order, so it is computed in input order with the stream position carried from one window to the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConcatCounts:
    """Truncation counts of concatenate-and-chunk over a run of documents; ``end`` is the stream position after it."""

    end: int
    truncated_documents: int
    truncations: int

    def sequences(self, ctx: int) -> int:
        return -(-self.end // ctx)


def concat_counts(doc_lengths: np.ndarray, ctx: int, start: int = 0, before: ConcatCounts | None = None
                  ) -> ConcatCounts:
    """Cuts made by chunking the stream every ``ctx`` tokens, continuing from stream position ``start``.

    A document occupying stream positions ``[a, b)`` is cut ``(b - 1) // ctx - a // ctx`` times.
    """
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    lengths = lengths[lengths > 0]
    ends = start + np.cumsum(lengths)
    begins = ends - lengths
    cuts = (ends - 1) // ctx - begins // ctx
    counts = ConcatCounts(int(ends[-1]) if len(ends) else start, int((cuts > 0).sum()), int(cuts.sum()))
    if before is not None:
        counts = ConcatCounts(counts.end, counts.truncated_documents + before.truncated_documents,
                              counts.truncations + before.truncations)
    return counts
