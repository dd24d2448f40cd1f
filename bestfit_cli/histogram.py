"""Histogram: document lengths as a mergeable value.

``LengthHistogram`` holds exact counts per document length (sparse: only lengths that occur). Histograms of separate
shards or windows add up with ``+`` and round-trip through JSON, so lengths can be measured by separate jobs and
merged. ``piece_counts`` turns it into what the planner needs: counts of pieces per length ``1..ctx`` after the
long-document policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

LongDocs = Literal["split", "truncate", "drop"]
LONG_DOC_POLICIES: tuple[LongDocs, ...] = ("split", "truncate", "drop")
HISTOGRAM_SCHEMA = "bestfit.histogram/1"


@dataclass(frozen=True)
class LengthHistogram:
    """``counts[i]`` documents have exactly ``lengths[i]`` tokens; ``lengths`` is strictly increasing."""

    lengths: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    counts: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @classmethod
    def from_lengths(cls, doc_lengths: np.ndarray) -> LengthHistogram:
        lengths, counts = np.unique(np.asarray(doc_lengths, dtype=np.int64), return_counts=True)
        return cls(lengths, counts.astype(np.int64))

    def __add__(self, other: LengthHistogram) -> LengthHistogram:
        if not isinstance(other, LengthHistogram):
            return NotImplemented
        lengths = np.concatenate([self.lengths, other.lengths])
        counts = np.concatenate([self.counts, other.counts])
        merged, inverse = np.unique(lengths, return_inverse=True)
        return LengthHistogram(merged, np.bincount(inverse, weights=counts, minlength=len(merged)).astype(np.int64))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, LengthHistogram) and np.array_equal(self.lengths, other.lengths)
                and np.array_equal(self.counts, other.counts))

    @property
    def documents(self) -> int:
        return int(self.counts.sum())

    @property
    def tokens(self) -> int:
        return int((self.lengths * self.counts).sum())

    def expand(self) -> np.ndarray:
        """Every document's length, sorted ascending (for strategies that need one value per document)."""
        return np.repeat(self.lengths, self.counts)

    def to_json(self) -> dict[str, Any]:
        return {"schema": HISTOGRAM_SCHEMA, "documents": self.documents, "tokens": self.tokens,
                "lengths": self.lengths.tolist(), "counts": self.counts.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LengthHistogram:
        if data.get("schema") != HISTOGRAM_SCHEMA:
            raise ValueError(f"not a bestfit length histogram (schema {data.get('schema')!r})")
        lengths = _integers(data, "lengths")
        counts = _integers(data, "counts")
        if lengths.shape != counts.shape:
            raise ValueError(f"'lengths' has {len(lengths)} entries and 'counts' {len(counts)}")
        if np.any(np.diff(lengths) <= 0) or np.any(lengths < 0):
            raise ValueError("'lengths' must be non-negative and strictly increasing")
        if np.any(counts < 0):
            raise ValueError("'counts' must be non-negative")
        hist = cls(lengths, counts)
        # The totals are redundant; a file whose totals disagree with its counts was edited or damaged.
        for key, value in (("documents", hist.documents), ("tokens", hist.tokens)):
            if key in data and (type(data[key]) is not int or data[key] != value):
                raise ValueError(f"'{key}' is {data[key]!r} but the counts add up to {value}")
        return hist


def _integers(data: dict[str, Any], key: str) -> np.ndarray:
    """A JSON list of integers as int64; floats, booleans, strings and nesting are refused, not rounded."""
    values = data[key]
    if not isinstance(values, list) or any(type(v) is not int for v in values):
        raise ValueError(f"'{key}' must be a list of integers")
    try:
        return np.asarray(values, dtype=np.int64).reshape(-1)
    except OverflowError:
        raise ValueError(f"'{key}' holds a value beyond int64") from None


def piece_counts(hist: LengthHistogram, ctx: int, long_docs: LongDocs = "split") -> np.ndarray:
    """Counts of pieces by length: ``out[s]`` pieces of ``s`` tokens for ``s`` in ``1..ctx`` (``out[0]`` is 0).

    Under ``split`` a document of ``l > ctx`` tokens gives ``l // ctx`` pieces of ``ctx`` plus one of ``l % ctx``;
    ``truncate`` keeps one piece of ``ctx``; ``drop`` keeps nothing. Empty documents give no piece.
    """
    out = np.zeros(ctx + 1, dtype=np.int64)
    lengths, counts = hist.lengths, hist.counts
    short = (lengths > 0) & (lengths <= ctx)
    np.add.at(out, lengths[short], counts[short])
    long_ = lengths > ctx
    if long_docs == "split":
        out[ctx] += int((lengths[long_] // ctx * counts[long_]).sum())
        rem = lengths[long_] % ctx
        np.add.at(out, rem[rem > 0], counts[long_][rem > 0])
    elif long_docs == "truncate":
        out[ctx] += int(counts[long_].sum())
    out[0] = 0
    return out
