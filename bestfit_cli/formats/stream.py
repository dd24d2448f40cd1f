"""Flat token streams: one long run of token ids, split into documents at a separator id (``--split-at``).

Two forms: a raw ``.bin`` of ids back to back with no header (nanoGPT's ``train.bin``, ``np.ndarray.tofile``), whose
type must be given (``--stream-dtype``: a header-less file cannot say, and guessing uint16 for uint32 data would
read garbage without an error), and a 1-D ``.npy`` (OLMo's token files, ``np.save``), whose header gives its type.
A ``.bin`` with a ``.idx`` beside it is a Megatron dataset instead (``megatron.py``).

Splitting: every separator ends the document it closes and stays in it as its last token, so the documents put back
together are the stream, byte for byte. Consecutive separators give documents that are the separator alone (kept,
and counted in a note); tokens after the last separator are a last document without one (kept, and noted). A stream
with no separator at all is refused: ``--split-at`` is then almost certainly not the id the stream uses. The stream
is read in chunks of ``CHUNK_TOKENS`` (memory-mapped locally) and split with ``np.flatnonzero``; a document held
while it spans chunks is bounded by ``ReadOptions.max_line_bytes``, as a JSONL line is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InputError, OptionError
from ..fs import InputFile
from ..read import STREAM_DTYPES, TOKEN_DTYPES, DocBatch, ReadOptions, Skipped, check_ids, drop_bad_ids
from .base import Checkpoint, InputFormat
from .ranged import open_ranges

STREAM_FORMATS = ("bin", "npy")
CHUNK_TOKENS = 1 << 22
CHECKPOINT_TOKENS = 1 << 20  # the Ray engine's lengths pass notes where a read may start about this often
DOC_BYTES_PER_TOKEN = 8  # a carried document costs its ids as read, their concatenation and the cast


@dataclass(frozen=True)
class StreamLayout:
    """Where the ids are: ``count`` values of ``dtype`` from byte ``offset``."""

    dtype: np.dtype[Any]
    offset: int
    count: int


def _npy_layout(file: InputFile) -> StreamLayout:
    assert file.fs is not None
    try:
        with file.fs.open_input_file(file.fs_path) as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise ValueError(f".npy format version {version[0]}.{version[1]} (bestfit reads 1.0 and 2.0)")
            offset = stream.tell()
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise InputError(file.name, f"not a readable .npy file ({str(exc).splitlines()[0] if str(exc) else exc})",
                         fix="write it again with numpy.save") from None
    if len(shape) != 1:
        raise InputError(file.name, f"holds an array of shape {shape}; a token stream is 1-D",
                         fix="save the ids flat (numpy.save(path, ids.reshape(-1))), or as Parquet rows")
    if dtype.kind not in "iu":
        raise InputError(file.name, f"holds {dtype} values, not integer token ids",
                         fix="save the ids as an integer array (e.g. uint16 or uint32)")
    need = offset + shape[0] * dtype.itemsize
    if file.size is not None and file.size != need:
        raise InputError(file.name, f"holds {file.size:,} bytes, its header's {shape[0]:,} ids of {dtype} need "
                                    f"{need:,}", fix="the file is truncated or was appended to: write it again")
    return StreamLayout(dtype, offset, int(shape[0]))


def stream_layout(file: InputFile, opts: ReadOptions) -> StreamLayout:
    """The ids of a stream input, or an error naming the file (and the option) that makes it unreadable."""
    if file.format == "npy":
        return _npy_layout(file)
    if opts.stream_dtype is None:
        raise OptionError(f"{file.name}: a .bin without a .idx beside it is a flat token stream, and a raw .bin does "
                          "not say the type of its ids",
                          fix="pass --stream-dtype uint16 (nanoGPT) or uint32 with --split-at ID; if it is a Megatron "
                              "dataset, restore its .idx")
    if opts.stream_dtype not in STREAM_DTYPES:
        raise OptionError(f"--stream-dtype {opts.stream_dtype!r} is unknown",
                          fix=f"use one of {', '.join(STREAM_DTYPES)}")
    dtype = np.dtype(opts.stream_dtype).newbyteorder("<")
    size = file.size or 0
    if size % dtype.itemsize:
        raise InputError(file.name, f"holds {size:,} bytes, not a whole number of {opts.stream_dtype} ids "
                                    f"({dtype.itemsize} bytes each)",
                         fix="the file is truncated, or its ids are of another type: check --stream-dtype")
    return StreamLayout(dtype, 0, size // dtype.itemsize)


def check_stream(file: InputFile, opts: ReadOptions) -> StreamLayout:
    """A stream input's layout and ``--split-at``, before any work."""
    layout = stream_layout(file, opts)
    if opts.split_at is None:
        raise OptionError(f"{file.name}: a flat token stream needs --split-at to be split into documents",
                          fix="pass --split-at with the separator id the stream holds between documents (usually "
                              "the tokenizer's EOS id)")
    info = np.iinfo(layout.dtype)
    if opts.split_at > info.max:
        raise OptionError(f"--split-at {opts.split_at} cannot occur in {file.name}, whose ids are {layout.dtype}",
                          fix=f"give the separator id the stream uses (0..{info.max})")
    return layout


def read_stream(file: InputFile, file_index: int, opts: ReadOptions, start: Checkpoint | None = None,
                checkpoints: list[Checkpoint] | None = None) -> Iterator[DocBatch]:
    """Documents of a stream in order; the last batch carries the notes on what the split found.

    ``checkpoints`` gets where each batch after the first starts (its row, and the token its first document starts
    at, as ``offset``); a read from one (``start``) reads the stream from that token on, numbering rows as the
    whole read does. It gives no notes and no "no separator" error: those are about the whole stream, which the
    read that recorded the checkpoint (the Ray engine's lengths pass) has reported.
    """
    layout = check_stream(file, opts)
    separator = opts.split_at
    assert separator is not None
    itemsize = layout.dtype.itemsize
    max_doc = max(1, opts.max_line_bytes // DOC_BYTES_PER_TOKEN)
    carried: list[np.ndarray] = []  # the unfinished document, in pieces (copied once, when it ends)
    carried_tokens = 0
    row = start.row if start is not None else 0
    first_token = start.offset if start is not None else 0
    separators = 0
    before = int(start is not None)  # a read from a checkpoint has separators before it
    alone = 0  # documents that are the separator alone
    with open_ranges(file.name, file.fs, file.fs_path, file.size) as data:
        for start_token in range(first_token, layout.count, CHUNK_TOKENS):
            chunk = data.array(layout.offset + start_token * itemsize,
                               min(CHUNK_TOKENS, layout.count - start_token), layout.dtype)
            ends = np.flatnonzero(chunk == separator) + 1
            if not len(ends):
                carried.append(chunk)
                carried_tokens += len(chunk)
                if carried_tokens > max_doc:
                    raise _too_long(file, separator, start_token + len(chunk) - carried_tokens, max_doc,
                                    separators + before)
                continue
            if carried_tokens + int(ends[0]) > max_doc:
                raise _too_long(file, separator, start_token - carried_tokens, max_doc, separators + before)
            separators += len(ends)
            offsets = np.concatenate([[0], carried_tokens + ends]).astype(np.int64)
            alone += int(np.count_nonzero(np.diff(offsets) == 1))
            if checkpoints is not None:
                _mark(checkpoints, row, start_token - carried_tokens + offsets[1:])
            raw = np.concatenate([*carried, chunk[: int(ends[-1])]])
            carried, carried_tokens = [chunk[int(ends[-1]):]], len(chunk) - int(ends[-1])
            yield _batch(file, file_index, row, offsets, raw, opts, (start_token + int(ends[-1])) / layout.count)
            row += len(offsets) - 1
        if start is not None:  # what the notes and the separator check say was said by the read from the start
            if carried_tokens:
                yield _batch(file, file_index, row, np.array([0, carried_tokens], dtype=np.int64),
                             np.concatenate(carried), opts, 1.0)
            return
        if separators == 0:
            raise InputError(file.name, f"holds no separator id {separator} in its {layout.count:,} ids, so "
                                        "--split-at cannot split it into documents",
                             fix="give --split-at the id the stream holds between documents (usually the EOS id)")
        notes = []
        if carried_tokens:
            raw = np.concatenate(carried)
            yield _batch(file, file_index, row, np.array([0, carried_tokens], dtype=np.int64), raw, opts, 1.0)
            notes.append(f"{file.name}: its last {carried_tokens:,} tokens follow the last separator {separator}; "
                         "they are packed as a last document without one")
        if alone:
            notes.append(f"{file.name}: {alone:,} documents are the separator {separator} alone (consecutive "
                         "separators); each is packed as a one-token document")
    if notes:
        yield DocBatch(file_index, row + (1 if carried_tokens else 0), np.zeros(1, dtype=np.int64),
                       np.empty(0, dtype=TOKEN_DTYPES[opts.dtype]), 1.0, notes=tuple(notes))


def _mark(checkpoints: list[Checkpoint], row: int, ends: np.ndarray) -> None:
    """Checkpoints about every ``CHECKPOINT_TOKENS`` tokens among the documents ``row, row + 1, ...`` that end at
    tokens ``ends`` (of the stream): each names the row after such an end, and the token it starts at."""
    last = checkpoints[-1].offset if checkpoints else 0
    at = int(np.searchsorted(ends, last + CHECKPOINT_TOKENS, side="left"))
    while at < len(ends):
        last = int(ends[at])
        checkpoints.append(Checkpoint(row + at + 1, last, 0))
        at = int(np.searchsorted(ends, last + CHECKPOINT_TOKENS, side="left"))


def _too_long(file: InputFile, separator: int, start: int, max_doc: int, separators: int) -> InputError:
    if separators == 0:
        return InputError(file.name, f"holds no separator id {separator} in its first {max_doc:,} ids",
                          fix="give --split-at the id the stream holds between documents (usually the EOS id)")
    return InputError(file.name, f"the document starting at token {start:,} runs for more than {max_doc:,} tokens "
                                 f"without the separator {separator}, the most one document may hold in memory",
                      fix="give a larger --memory, or check --split-at")


def _batch(file: InputFile, file_index: int, row: int, offsets: np.ndarray, raw: np.ndarray, opts: ReadOptions,
           done: float) -> DocBatch:
    if opts.skip_bad:
        ids, offsets, _, skipped = drop_bad_ids(file, raw, offsets, opts, lambda i: {"row": row + i})
    else:
        ids, skipped = check_ids(file, raw, offsets, row, opts, lambda r: {"row": r}), Skipped()
    if np.may_share_memory(ids, raw):  # own the ids: the mapping is closed when the stream is done
        ids = ids.copy()
    return DocBatch(file_index, row, offsets, ids, done, skipped)


class StreamInput(InputFormat):
    """A flat token stream: a raw ``.bin`` (no ``.idx`` beside it; ``--stream-dtype``) or a 1-D ``.npy``."""

    reads_ahead = True

    def __init__(self, name: str, suffix: str, description: str) -> None:
        self.name, self.suffixes, self.description = name, (suffix,), description

    def check(self, file: InputFile, opts: ReadOptions) -> None:
        check_stream(file, opts)

    def read(self, file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
        return read_stream(file, file_index, opts)

    def read_checkpointed(self, file: InputFile, file_index: int, opts: ReadOptions,
                          checkpoints: list[Checkpoint]) -> Iterator[DocBatch]:
        return read_stream(file, file_index, opts, checkpoints=checkpoints)

    def read_from(self, file: InputFile, file_index: int, opts: ReadOptions, start: Checkpoint | None
                  ) -> Iterator[DocBatch]:
        return read_stream(file, file_index, opts, start)


BIN_STREAM = StreamInput("bin", ".bin", "a token stream (.bin)")
NPY_STREAM = StreamInput("npy", ".npy", "a token stream (.npy)")
