"""The contracts of formats: what an input format reads, and, for an output format, the rows a shard holds and what
the format does with them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from ..fs import InputFile
from ..read import DocBatch, LengthBatch, ReadOptions


@dataclass(frozen=True)
class Checkpoint:
    """Where a read of a file may start instead of its first byte: record ``row`` starts on line ``line`` (1-based,
    for messages), at or after byte ``offset`` (of the decompressed text, for a compressed file). A JSONL reader
    records them as it reads (``read_checkpointed``); a token stream too, with ``offset`` the token that record
    starts at and ``line`` 0 (it has no lines)."""

    row: int
    offset: int
    line: int


@dataclass(frozen=True)
class PackedRows:
    """``n_rows`` sequences; row ``r`` holds pieces ``piece_offsets[r]:piece_offsets[r+1]``.

    Rows are ``ctx`` tokens each (padded), or, with ``token_offsets``, row ``r`` is
    ``tokens[token_offsets[r]:token_offsets[r+1]]`` (unpadded rows end after their last piece).
    ``training_columns`` names the per-token columns of ``training.TRAINING_COLUMNS`` to store beside them, then
    come the carried columns: ``kept`` (one value per piece) and ``token_columns`` (one per token, padding filled).
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
    kept: dict[str, pa.Array] = field(default_factory=dict)  # --keep: one value per piece, in piece order
    token_columns: dict[str, np.ndarray] = field(default_factory=dict)  # --keep-token: aligned with ``tokens``

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

    def encode(self, rows: PackedRows) -> bytes | memoryview:
        """The main file's bytes (a ``memoryview`` of an encoder's buffer is fine: it is hashed and written as is,
        before the same thread encodes another shard, which may reuse that buffer)."""
        ...

    def companions(self, rows: PackedRows) -> dict[str, bytes]:
        """The companion files' bytes, by suffix (empty for a one-file format)."""
        ...

    def decode(self, data: bytes, companions: dict[str, bytes]) -> pa.Table:
        """A shard's files back as a table of ``input_ids``, ``seq_lengths``, ``doc_index``, ``doc_offset`` (what
        ``bestfit verify`` checks); raises ``ValueError`` or ``pyarrow.ArrowException`` when they are malformed."""
        ...


# ------------------------------------------------------------------------------------------------ input formats


@dataclass(frozen=True)
class Folder:
    """A folder the input scan is about to enter: what an input format looks at to say whether it is one dataset."""

    fs: pafs.FileSystem
    path: str  # on ``fs``
    names: tuple[str, ...]  # the entries directly inside it (files and folders), sorted
    shown: str  # how messages name it

    def read_bytes(self, name: str, limit: int = 1 << 20) -> bytes:
        """The first ``limit`` bytes of the file ``name`` inside it (OSError or ArrowException when unreadable)."""
        with self.fs.open_input_stream(f"{self.path.rstrip('/')}/{name}") as stream:
            return bytes(stream.read(limit))


@dataclass(frozen=True)
class DatasetFolder:
    """A folder that is one dataset of an input format (a ``save_to_disk`` folder): the names of its data files in
    reading order, and of its other files (which belong to the dataset and are never read as records)."""

    files: tuple[str, ...]  # names inside the folder
    metadata: tuple[str, ...] = ()


class InputFormat:
    """What every input format declares (``formats/__init__.py`` registers one instance of each).

    A format reads one kind of input file into ``DocBatch`` values. It says which file names it reads
    (``suffixes``, or ``recognizes`` when siblings matter, as a Megatron ``.bin`` needs its ``.idx``), which files
    beside one of its files belong to it (``companions``), and which folders are one dataset of it
    (``dataset_folder``); the folder scan (``fs.py``) asks every registered format in registry order. Then, for one
    file: ``check`` (schema and footer, run on every input before any work), ``read`` (documents), ``read_lengths``
    (token counts only, for ``stats`` and ``histogram``) and ``signature`` (part of the input's fingerprint).
    """

    name: str = ""
    suffixes: tuple[str, ...] = ()  # lower-case name endings, such as ".parquet"
    description: str = ""  # how messages name the format, such as "Parquet"
    carries_columns: bool = False  # whether its files have columns beside the token ids (--keep, --keep-token)
    reads_ahead: bool = False  # whether ``read`` may run on a thread of its own (``read.ReadAhead``)

    def recognizes(self, path: str, exists: Callable[[str], bool]) -> bool:
        """Whether this format reads the file at ``path`` (compression suffixes already stripped from its name);
        ``exists(other_path)`` says whether a file beside it exists."""
        return path.lower().endswith(self.suffixes)

    def companions(self, path: str) -> tuple[str, ...]:
        """The files beside ``path`` read with it (a Megatron ``.idx``): never inputs of their own."""
        return ()

    def dataset_folder(self, folder: Folder) -> DatasetFolder | None:
        """The dataset ``folder`` is, or None when it is not one of this format's; raises ``InputError`` for a
        folder of this format that cannot be read as one (a DatasetDict, a damaged ``state.json``)."""
        return None

    def not_data(self, fs: pafs.FileSystem, path: str) -> str | None:
        """Why a file this format recognizes by name holds no records after all (a ``.json`` that is one JSON
        document, not JSON Lines), or None; a folder scan leaves such a file out, naming this reason."""
        return None

    def check(self, file: InputFile, opts: ReadOptions) -> None:
        """Raise ``InputError`` when the file cannot be read with these options (a missing column, a damaged
        footer), before any work; formats with nothing to check up front do nothing."""

    def read(self, file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
        """The file's documents in order, in batches of about ``read.BATCH_TOKENS`` tokens."""
        raise NotImplementedError

    def read_lengths(self, file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[LengthBatch]:
        """The documents' token counts, accepting exactly what ``read`` accepts; by default through ``read``."""
        for batch in self.read(file, file_index, opts):
            yield LengthBatch(batch.file_index, batch.first_row, batch.lengths, batch.fraction_done, batch.skipped,
                              batch.notes)

    # What an engine that plans windows before reading asks (``window.plan_windows``, ``ray_engine.py``).

    def read_checkpointed(self, file: InputFile, file_index: int, opts: ReadOptions,
                          checkpoints: list[Checkpoint]) -> Iterator[DocBatch]:
        """``read``, appending to ``checkpoints`` where later reads may start (``read_from``); none by default."""
        return self.read(file, file_index, opts)

    def read_from(self, file: InputFile, file_index: int, opts: ReadOptions, start: Checkpoint | None
                  ) -> Iterator[DocBatch]:
        """``read`` from one of ``read_checkpointed``'s checkpoints (None: the file's start); batches are numbered
        by their rows in the whole file."""
        return self.read(file, file_index, opts)

    def blocks(self, file: InputFile, opts: ReadOptions) -> list[tuple[int, int, int | None]] | None:
        """``(first_row, rows, tokens)`` of consecutive blocks of the file, known without reading its documents
        (``tokens`` None where unknown), or None when only reading tells (then the file's lengths are read once)."""
        return None

    def document_types(self, file: InputFile, opts: ReadOptions) -> dict[str, pa.DataType] | None:
        """The type of each --keep column in every batch ``read`` hands on, known without reading (a columnar
        schema), or None when only reading tells (JSONL: each batch's values); asked of files with ``blocks``."""
        return None

    def block_lengths(self, file: InputFile, opts: ReadOptions, lo: int, hi: int) -> np.ndarray:
        """Token counts of rows ``lo .. hi - 1``, refusing what ``read`` refuses; by default through ``read_rows``."""
        lengths = [batch.lengths for batch in self.read_rows(file, 0, opts, lo, hi)]
        return np.concatenate(lengths) if lengths else np.empty(0, dtype=np.int64)

    def read_rows(self, file: InputFile, file_index: int, opts: ReadOptions, lo: int, hi: int,
                  start: Checkpoint | None = None) -> Iterator[DocBatch]:
        """Documents of rows ``lo .. hi - 1``, as ``read`` reads them; by default ``read_from`` (the file's start,
        or ``start``, a checkpoint at or before ``lo``), sliced (a format that can seek by itself, as Parquet by row
        group, does better)."""
        from ..read import slice_batch

        start = start if start is not None and start.row <= lo else None
        for batch in self.read_from(file, file_index, opts, start):
            a, b = max(lo, batch.first_row), min(hi, batch.first_row + batch.n_docs)
            if a < b:
                yield slice_batch(batch, a, b)
            if batch.first_row + batch.n_docs >= hi:
                return

    def close(self) -> None:
        """Release what reading started (JSONL's parse workers); a later read starts it again. Nothing by default."""

    def signature(self, file: InputFile) -> str | None:
        """A hex digest of what identifies the file's contents beyond its size and time (a Parquet footer), cheap to
        compute, or None; recorded as the input's ``footer_sha256`` (``fingerprint.py``)."""
        return None
