"""The contract between the pipeline and an output format: the rows a shard holds, and what a format does with them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class PackedRows:
    """``n_rows`` sequences of ``ctx`` tokens; row ``r`` holds pieces ``piece_offsets[r]:piece_offsets[r+1]``."""

    ctx: int
    tokens: np.ndarray  # n_rows * ctx
    piece_offsets: np.ndarray  # n_rows + 1
    seq_lengths: np.ndarray
    doc_index: np.ndarray
    doc_offset: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.piece_offsets) - 1


class OutputFormat(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def suffix(self) -> str: ...

    def encode(self, rows: PackedRows) -> bytes: ...
