"""Windows: consecutive documents of the input order, the self-contained unit of packing work.

A window carries its documents' tokens and global ``doc_index`` numbers, so it can be packed and written anywhere
(a thread here, a task on a cluster later) with the same result. ``make_pieces`` applies EOS and the long-document
policy and cuts documents into the pieces the planner places.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

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


def _join(index: int, first_doc: int, parts: list[DocBatch]) -> Window:
    if len(parts) == 1:
        return Window(index, first_doc, parts[0].offsets, parts[0].tokens)
    lengths = np.concatenate([p.lengths for p in parts])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Window(index, first_doc, offsets, np.concatenate([p.tokens for p in parts]))


def _split_batch(batch: DocBatch, n_docs: int) -> tuple[DocBatch, DocBatch]:
    cut = int(batch.offsets[n_docs])
    head = DocBatch(batch.file_index, batch.first_row, batch.offsets[: n_docs + 1], batch.tokens[:cut],
                    batch.fraction_done)
    tail = DocBatch(batch.file_index, batch.first_row + n_docs, batch.offsets[n_docs:] - cut, batch.tokens[cut:],
                    batch.fraction_done)
    return head, tail


def windows(batches: Iterable[DocBatch], window_tokens: int) -> Iterator[Window]:
    """Group batches into windows of at least ``window_tokens`` tokens (the last may be smaller).

    A window ends at the first document boundary at or after ``window_tokens``; a document longer than the window
    makes a window of its own. Window boundaries depend only on the input and ``window_tokens``.
    """
    parts: list[DocBatch] = []
    held = 0
    index = 0
    first_doc = 0
    for batch in batches:
        while batch.n_docs:
            need = window_tokens - held
            ends = batch.offsets[1:]
            cut = int(np.searchsorted(ends, need, side="left")) + 1  # documents up to and including the one >= need
            if cut > batch.n_docs:
                parts.append(batch)
                held += batch.n_tokens
                break
            head, batch = _split_batch(batch, cut)
            parts.append(head)
            window = _join(index, first_doc, parts)
            yield window
            index += 1
            first_doc += window.n_docs
            parts, held = [], 0
    if parts and sum(p.n_docs for p in parts):
        yield _join(index, first_doc, parts)


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
