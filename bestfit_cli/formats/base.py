"""The contract between the pipeline and an output format: the rows a shard holds, and what a format does with them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class PackedRows:
    """``n_rows`` sequences; row ``r`` holds pieces ``piece_offsets[r]:piece_offsets[r+1]``.

    Rows are ``ctx`` tokens each (padded), or, with ``token_offsets``, row ``r`` is
    ``tokens[token_offsets[r]:token_offsets[r+1]]`` (unpadded rows end after their last piece).
    ``training_columns`` names the per-token columns of ``training.TRAINING_COLUMNS`` to store beside them.
    """

    ctx: int
    tokens: np.ndarray  # n_rows * ctx, or token_offsets[-1]
    piece_offsets: np.ndarray  # n_rows + 1
    seq_lengths: np.ndarray
    doc_index: np.ndarray
    doc_offset: np.ndarray
    eos_id: int | None = None  # the EOS id appended to each document, when one was
    pad_id: int | None = None  # the id the rows are padded with
    token_offsets: np.ndarray | None = None  # n_rows + 1; None: every row is ctx tokens
    training_columns: tuple[str, ...] = ()

    @property
    def n_rows(self) -> int:
        return len(self.piece_offsets) - 1

    @property
    def row_offsets(self) -> np.ndarray:
        """Where each row starts in ``tokens`` (n_rows + 1 entries)."""
        if self.token_offsets is not None:
            return self.token_offsets
        return np.arange(self.n_rows + 1, dtype=np.int64) * self.ctx


class OutputFormat(Protocol):
    """A shard is one main file (``suffix``) plus, for some formats, companion files beside it with the same stem."""

    @property
    def name(self) -> str: ...

    @property
    def suffix(self) -> str: ...

    @property
    def companion_suffixes(self) -> tuple[str, ...]: ...

    @property
    def dtype_follows_option(self) -> bool:
        """Whether ``input_ids`` are stored in ``--dtype`` (else the format picks the type)."""
        ...

    def check_options(self, opts: Any) -> None:
        """Raise ``OptionError`` for pack options (a ``PackOptions``) this format cannot honour."""
        ...

    def encode(self, rows: PackedRows) -> bytes:
        """The main file's bytes."""
        ...

    def companions(self, rows: PackedRows) -> dict[str, bytes]:
        """The companion files' bytes, by suffix (empty for a one-file format)."""
        ...

    def decode(self, data: bytes, companions: dict[str, bytes]) -> pa.Table:
        """A shard's files back as a table of ``input_ids``, ``seq_lengths``, ``doc_index``, ``doc_offset`` (what
        ``bestfit verify`` checks); raises ``ValueError`` or ``pyarrow.ArrowException`` when they are malformed."""
        ...
