"""Windows: consecutive documents of the input order, the self-contained unit of packing work.

A window carries its documents' tokens and global ``doc_index`` numbers, so it can be packed and written anywhere
(a thread here, a task on a cluster later) with the same result. ``make_pieces`` applies EOS and the long-document
policy and cuts documents into the pieces the planner places.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .histogram import LongDocs
from .read import DocBatch


@dataclass(frozen=True)
class Window:
    """Documents ``first_doc .. first_doc + n_docs - 1`` (global ``doc_index``) and their tokens."""

    index: int
    first_doc: int
    offsets: np.ndarray  # int64, n_docs + 1, offsets[0] == 0
    tokens: np.ndarray

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class _WindowBuffer:
    """Tokens of the window being filled, copied once into a buffer of the window's size.

    Copying each batch straight into place (instead of joining a list of batches at the end) keeps the peak at one
    window of tokens rather than two. ``np.empty`` only reserves address space, so a last, short window costs what
    it holds.
    """

    def __init__(self, window_tokens: int) -> None:
        self.window_tokens = window_tokens
        self.tokens: np.ndarray | None = None
        self.filled = 0
        self.lengths: list[np.ndarray] = []
        self.n_docs = 0

    def room(self) -> int:
        return self.window_tokens - self.filled

    def add(self, batch: DocBatch, lo: int, hi: int) -> None:
        """Append documents ``lo .. hi - 1`` of ``batch``."""
        a, b = int(batch.offsets[lo]), int(batch.offsets[hi])
        if b > a:
            if self.tokens is None:
                self.tokens = np.empty(self.window_tokens, dtype=batch.tokens.dtype)
            self.tokens[self.filled:self.filled + b - a] = batch.tokens[a:b]
        self.filled += b - a
        self.lengths.append(np.diff(batch.offsets[lo:hi + 1]))
        self.n_docs += hi - lo

    def take(self, index: int, first_doc: int, dtype: np.dtype) -> Window:
        offsets = np.zeros(self.n_docs + 1, dtype=np.int64)
        if self.lengths:
            np.cumsum(np.concatenate(self.lengths), out=offsets[1:])
        tokens = self.tokens[:self.filled] if self.tokens is not None else np.empty(0, dtype=dtype)
        self.tokens, self.filled, self.lengths, self.n_docs = None, 0, [], 0
        return Window(index, first_doc, offsets, tokens)


def windows(batches: Iterable[DocBatch], window_tokens: int) -> Iterator[Window]:
    """Group consecutive documents into windows of at most ``window_tokens`` tokens.

    A window ends before the first document that would take it past ``window_tokens``; a document longer than
    that is a window of its own. Window boundaries depend only on the documents' lengths and ``window_tokens``,
    never on how the input was batched, so the output does not either.
    """
    if window_tokens < 1:
        raise ValueError("window_tokens must be >= 1")
    buffer = _WindowBuffer(window_tokens)
    index = first_doc = 0
    dtype = np.dtype(np.int64)
    for batch in batches:
        dtype = batch.tokens.dtype
        pos = 0
        while pos < batch.n_docs:
            # Documents pos .. pos + fit - 1 still fit in the window being filled.
            ends = batch.offsets[pos + 1:] - batch.offsets[pos]
            fit = int(np.searchsorted(ends, buffer.room(), side="right"))
            if fit:
                buffer.add(batch, pos, pos + fit)
                pos += fit
                continue
            if buffer.n_docs:  # the next document does not fit: close the window
                window = buffer.take(index, first_doc, dtype)
            else:  # a document longer than a whole window: a window of its own, no copy
                a, b = int(batch.offsets[pos]), int(batch.offsets[pos + 1])
                window = Window(index, first_doc, np.array([0, b - a], dtype=np.int64), batch.tokens[a:b])
                pos += 1
            yield window
            index += 1
            first_doc += window.n_docs
            del window
    if buffer.n_docs:
        yield buffer.take(index, first_doc, dtype)


@dataclass(frozen=True)
class Pieces:
    """What the planner places: piece ``i`` is ``length[i]`` tokens of window document ``doc[i]`` from ``start[i]``.

    Lengths count the appended EOS token. ``dropped_*`` count what the long-document policy removed.
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


def packed_lengths(lengths: np.ndarray, eos: bool) -> np.ndarray:
    """Document lengths as packed: EOS appended to every non-empty document."""
    return lengths + ((lengths > 0) if eos else 0)


def make_pieces(lengths: np.ndarray, ctx: int, eos: bool, long_docs: LongDocs) -> Pieces:
    """Cut documents (given their token counts before EOS) into pieces of ``1..ctx`` tokens."""
    doc_lengths = packed_lengths(lengths, eos)
    nonempty = doc_lengths > 0
    long_ = doc_lengths > ctx
    n_long = int(long_.sum())
    dropped_documents = dropped_tokens = clipped = 0
    if long_docs == "split":
        n_pieces = np.where(nonempty, -(-doc_lengths // ctx), 0)
    else:
        n_pieces = nonempty.astype(np.int64)
        if long_docs == "drop":
            n_pieces[long_] = 0
            dropped_documents = n_long
            dropped_tokens = int(doc_lengths[long_].sum())
        else:
            clipped = n_long
            dropped_tokens = int((doc_lengths[long_] - ctx).sum())
    doc = np.repeat(np.arange(len(lengths), dtype=np.int64), n_pieces)
    first_piece = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(n_pieces[:-1], out=first_piece[1:])
    chunk = np.arange(len(doc), dtype=np.int64) - first_piece[doc]
    start = chunk * ctx
    length = np.minimum(doc_lengths[doc] - start, ctx)
    multi = n_pieces > 1
    return Pieces(doc, start, length, documents=int((n_pieces > 0).sum()),
                  empty_documents=int((~nonempty).sum()), tokens=int(length.sum()),
                  dropped_documents=dropped_documents, dropped_tokens=dropped_tokens, clipped_documents=clipped,
                  truncated_documents=int(multi.sum()), truncations=int((n_pieces[multi] - 1).sum()))
