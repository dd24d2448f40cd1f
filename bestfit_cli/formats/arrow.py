"""Arrow: IPC files and streams (``.arrow``, ``.feather`` v2, ``.ipc``), and Hugging Face ``save_to_disk`` folders.

A ``save_to_disk`` folder (``Dataset.save_to_disk``) holds ``data-NNNNN-of-NNNNN.arrow`` files (Arrow IPC streams),
``dataset_info.json`` (the features) and ``state.json``, whose ``_data_files`` list the ``.arrow`` files in the order
``datasets.load_from_disk`` concatenates them; bestfit reads them in that order, so document numbers follow the
dataset's row numbers. (A folder with ``dataset_info.json`` but no ``state.json``, such as a ``datasets`` cache
folder, is no ``save_to_disk`` folder: its ``.arrow`` files are read as any others, in name order.) A ``DatasetDict``
folder (``dataset_dict.json`` and one folder a split) is refused: packing
every split together would mix evaluation data into training, so the split to pack is named explicitly.

Local files are memory-mapped and read one record batch at a time, so only the token column of the batch at hand is
touched; a batch is handed on in pieces of about ``read.BATCH_TOKENS`` tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import BestfitError, InputError
from ..fs import InputFile
from ..read import (
    BATCH_TOKENS,
    DocBatch,
    LengthBatch,
    ReadOptions,
    batch_from_arrow,
    check_carried_schema,
    check_list_type,
    lengths_from_arrow,
    unreadable,
    with_carried,
)
from .base import Checkpoint, DatasetFolder, Folder, InputFormat
from .json_depth import loads

STATE_JSON = "state.json"
INFO_JSON = "dataset_info.json"
DICT_JSON = "dataset_dict.json"
_FILE_MAGIC = b"ARROW1"
_FEATHER_V1_MAGIC = b"FEA1"
_SIGNATURE_BYTES = 1 << 16  # the head (schema) and tail (footer, last batch) hashed into the fingerprint
_REWRITE = "re-create or remove this file; an interrupted copy leaves a truncated file"


@dataclass
class _Opened:
    """An Arrow file or stream, open: its schema and its record batches in order."""

    source: pa.NativeFile
    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    n_batches: int | None  # the file format knows its batches; a stream does not
    is_stream: bool
    reader: pa.ipc.RecordBatchFileReader | None = None  # the file format: its batches by index

    def batches_from(self, index: int) -> Iterator[pa.RecordBatch]:
        """The record batches from the ``index``-th on: the file format gets them by index, a stream reads (but
        does not decode) the ones before it."""
        if self.reader is not None:
            reader = self.reader
            return (reader.get_batch(i) for i in range(index, reader.num_record_batches))
        for _ in range(index):
            next(self.batches, None)
        return self.batches

    def fraction(self, batches_read: int) -> float:
        if self.n_batches:
            return batches_read / self.n_batches
        size = self.source.size()
        return min(self.source.tell() / size, 1.0) if size else 0.0


def _open(file: InputFile) -> _Opened:
    assert file.fs is not None
    try:
        source = (pa.memory_map(file.fs_path, "r") if isinstance(file.fs, pafs.LocalFileSystem)
                  else file.fs.open_input_file(file.fs_path))
    except (pa.ArrowException, OSError) as exc:
        raise unreadable(file, exc, "cannot open", _REWRITE) from None
    try:
        head = source.read(8)
        source.seek(0)
        if head.startswith(_FEATHER_V1_MAGIC):
            raise InputError(file.name, "is a Feather version 1 file, which holds no Arrow IPC data",
                             fix="write it again as Feather version 2 (pyarrow.feather.write_feather(table, path))")
        if head.startswith(_FILE_MAGIC):
            reader = pa.ipc.open_file(source)
            count = reader.num_record_batches
            return _Opened(source, reader.schema, (reader.get_batch(i) for i in range(count)), count, False, reader)
        stream = pa.ipc.open_stream(source)
        return _Opened(source, stream.schema, iter(stream), None, True)
    except (pa.ArrowException, OSError) as exc:
        source.close()
        if isinstance(exc, OSError) and getattr(exc, "errno", None) is not None:
            raise unreadable(file, exc, "", "") from None
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(file.name, f"not a readable Arrow IPC file or stream ({detail})", fix=_REWRITE) from None


def _checked(file: InputFile, opts: ReadOptions) -> _Opened:
    """The file open, its token column checked (it exists once and holds lists of integers), and the columns
    --keep and --keep-token name."""
    opened = _open(file)
    schema = opened.schema
    found = schema.get_all_field_indices(opts.column)
    if len(found) != 1:
        opened.source.close()
        if found:
            raise InputError(file.name, f"{len(found)} columns are named '{opts.column}'",
                             fix="write the file again with one token column of that name")
        raise InputError(file.name, f"no column '{opts.column}'; columns are: {', '.join(schema.names)[:300]}",
                         fix="pass --column NAME")
    try:
        check_list_type(file, opts.column, schema.field(opts.column).type)
        check_carried_schema(file, schema, opts)
    except InputError:
        opened.source.close()
        raise
    return opened


def _corrupt(file: InputFile, row: int, exc: BaseException) -> BestfitError:
    if isinstance(exc, OSError) and getattr(exc, "errno", None) is not None:
        return unreadable(file, exc, "", "")
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InputError(file.name, f"truncated or corrupt Arrow data after row {row:,} ({detail})", fix=_REWRITE)


def _columns(file: InputFile, opts: ReadOptions, opened: _Opened, rows: tuple[int, int] | None = None,
             start: Checkpoint | None = None, checkpoints: list[Checkpoint] | None = None
             ) -> Iterator[tuple[int, pa.Array, pa.RecordBatch, float]]:
    """The token column in pieces of about ``BATCH_TOKENS`` tokens: (first row, list array, the record batch's
    same rows, fraction read); with ``rows`` (``lo, hi``) only those rows, record batches before them passed by
    their row counts without touching their columns, from ``start`` (the record batch of ``checkpoints``, which a
    whole read of an IPC file fills with where each record batch starts)."""
    lo, hi = rows if rows is not None else (0, None)
    row = start.row if start is not None else 0
    read = start.offset if start is not None else 0
    batches = opened.batches_from(read) if start is not None else opened.batches
    try:
        for record_batch in batches:
            if checkpoints is not None and not opened.is_stream:
                checkpoints.append(Checkpoint(row, read, 0))
            read += 1
            if row + record_batch.num_rows <= lo:  # before the rows asked for: not converted, not checked
                row += record_batch.num_rows
                continue
            if hi is not None and row >= hi:
                return
            column = record_batch.column(opts.column)
            if pa.types.is_fixed_size_list(column.type):
                column = column.cast(pa.list_(column.type.value_type))
            offsets = column.offsets.to_numpy()
            first = max(lo - row, 0)
            stop = len(column) if hi is None else min(hi - row, len(column))
            while first < stop:
                # The rows up to about BATCH_TOKENS tokens, at least one.
                end = int(np.searchsorted(offsets, offsets[first] + BATCH_TOKENS, side="right")) - 1
                end = min(max(end, first + 1), stop)
                yield (row + first, column.slice(first, end - first), record_batch.slice(first, end - first),
                       opened.fraction(read))
                first = end
            row += len(column)
    except (pa.ArrowException, OSError) as exc:
        raise _corrupt(file, row, exc) from None
    finally:
        opened.source.close()


def read_arrow(file: InputFile, file_index: int, opts: ReadOptions, rows: tuple[int, int] | None = None,
               start: Checkpoint | None = None, checkpoints: list[Checkpoint] | None = None) -> Iterator[DocBatch]:
    """The file's documents (with ``rows``, only rows ``lo .. hi - 1``: see ``_columns``)."""
    opened = _checked(file, opts)

    def label(row: int) -> dict[str, int]:
        return {"row": row}

    for first_row, column, rows_of, done in _columns(file, opts, opened, rows, start, checkpoints):
        batch = batch_from_arrow(file, file_index, first_row, column, opts, label)
        if opts.carried:
            batch = with_carried(file, batch, rows_of.column, opts)
        yield replace(batch, fraction_done=done)


def read_arrow_lengths(file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[LengthBatch]:
    """Lengths from the list offsets, without casting ids; rows ``read_arrow`` refuses are refused the same way."""
    opened = _checked(file, opts)
    for first_row, column, _, done in _columns(file, opts, opened):
        yield LengthBatch(file_index, first_row, lengths_from_arrow(file, first_row, column, opts), done)


def _ids_in(column: pa.Array) -> int:
    """The ids a list column's rows hold, from the ends of its offsets (a fixed-size list: rows times its size)."""
    if pa.types.is_fixed_size_list(column.type):
        return len(column) * int(column.type.list_size)
    offsets = column.offsets
    return int(offsets[len(offsets) - 1].as_py()) - int(offsets[0].as_py())


# --------------------------------------------------------------------------------------------- save_to_disk


def _split_names(folder: Folder) -> list[str]:
    try:
        splits = loads(folder.read_bytes(DICT_JSON)).get("splits")
    except (ValueError, AttributeError, OSError, pa.ArrowException):
        splits = None
    if isinstance(splits, list) and all(isinstance(s, str) for s in splits):
        return list(splits)
    return [name for name in folder.names if "." not in name]


def _state_files(folder: Folder) -> tuple[str, ...]:
    """The ``.arrow`` files ``state.json`` lists, in its order; InputError naming state.json when it cannot say."""
    shown = f"{folder.shown.rstrip('/')}/{STATE_JSON}"
    fix = "save the dataset again with Dataset.save_to_disk, or pass its .arrow files by name"
    try:
        state = loads(folder.read_bytes(STATE_JSON, 64 << 20))
    except (OSError, pa.ArrowException) as exc:
        raise InputError(shown, f"cannot be read ({str(exc).splitlines()[0] if str(exc) else exc})",
                         fix="check the file and its permissions") from None
    except ValueError as exc:
        raise InputError(shown, f"is not valid JSON ({str(exc).split(':')[0]})", fix=fix) from None
    entries = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(shown, "lists no data files (no '_data_files'), so it is not a save_to_disk state",
                         fix=fix)
    names = []
    for entry in entries:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise InputError(shown, f"lists a data file that is not a file name in its folder: {entry!r:.100}",
                             fix=fix)
        if name not in folder.names:
            raise InputError(shown, f"lists {name}, which is not in the folder", fix=fix)
        names.append(name)
    if len(set(names)) != len(names):
        raise InputError(shown, "lists a data file twice", fix=fix)
    return tuple(names)


class ArrowInput(InputFormat):
    """Arrow IPC files and streams; ``save_to_disk`` folders, read in the order their ``state.json`` lists."""

    name = "arrow"
    suffixes = (".arrow", ".feather", ".ipc")
    description = "Arrow"
    carries_columns = True
    reads_ahead = True

    def dataset_folder(self, folder: Folder) -> DatasetFolder | None:
        names = set(folder.names)
        if STATE_JSON in names:
            files = _state_files(folder)
            return DatasetFolder(files, tuple(n for n in (STATE_JSON, INFO_JSON) if n in names))
        if DICT_JSON in names:
            splits = _split_names(folder)
            first = f"{folder.shown.rstrip('/')}/{splits[0]}" if splits else f"{folder.shown.rstrip('/')}/SPLIT"
            raise InputError(folder.shown, f"is a DatasetDict of splits {', '.join(splits)[:200] or '(none)'}; "
                                           "bestfit packs the splits you name, not all of them",
                             fix=f"pass the split to pack, such as {first}")
        return None

    def check(self, file: InputFile, opts: ReadOptions) -> None:
        """The schema; and, for a stream on a local disk, every message (cheap: memory-mapped, no data touched),
        since a stream has no footer to tell a truncated copy by."""
        if file.size == 0:
            raise InputError(file.name, "file is empty", fix="remove it from the inputs")
        opened = _checked(file, opts)
        if not (opened.is_stream and isinstance(file.fs, pafs.LocalFileSystem)):
            opened.source.close()
            return
        row = 0
        try:
            for record_batch in opened.batches:
                row += record_batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise _corrupt(file, row, exc) from None
        finally:
            opened.source.close()

    def read(self, file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
        return read_arrow(file, file_index, opts)

    def read_lengths(self, file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[LengthBatch]:
        if opts.skip_bad:  # skipped records need the full reader
            return super().read_lengths(file, file_index, opts)
        return read_arrow_lengths(file, file_index, opts)

    # What the Ray engine asks: record batches are blocks, and a window's task reads only those it overlaps.

    def blocks(self, file: InputFile, opts: ReadOptions) -> list[tuple[int, int, int | None]] | None:
        """Each record batch's rows and ids, from its list offsets (two values of it) or its list size, for a local
        file (memory-mapped: the batches before a window cost their metadata only); a file on an object store, or
        any under ``--on-bad-record skip``, is read once by the lengths pass instead."""
        if opts.skip_bad or not isinstance(file.fs, pafs.LocalFileSystem):
            return None
        opened = _checked(file, opts)
        out: list[tuple[int, int, int | None]] = []
        row = 0
        try:
            for record_batch in opened.batches:
                if record_batch.num_rows:
                    out.append((row, record_batch.num_rows, _ids_in(record_batch.column(opts.column))))
                row += record_batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise _corrupt(file, row, exc) from None
        finally:
            opened.source.close()
        return out

    def block_lengths(self, file: InputFile, opts: ReadOptions, lo: int, hi: int) -> np.ndarray:
        opened = _checked(file, opts)
        lengths = [lengths_from_arrow(file, first, column, opts)
                   for first, column, _, _ in _columns(file, opts, opened, (lo, hi))]
        return np.concatenate(lengths) if lengths else np.empty(0, dtype=np.int64)

    def read_checkpointed(self, file: InputFile, file_index: int, opts: ReadOptions,
                          checkpoints: list[Checkpoint]) -> Iterator[DocBatch]:
        return read_arrow(file, file_index, opts, checkpoints=checkpoints)

    def read_rows(self, file: InputFile, file_index: int, opts: ReadOptions, lo: int, hi: int,
                  start: Checkpoint | None = None) -> Iterator[DocBatch]:
        start = start if start is not None and start.row <= lo else None
        return read_arrow(file, file_index, opts, (lo, hi), start)

    def signature(self, file: InputFile) -> str | None:
        """sha256 of the file's first and last 64 KiB: its schema, its footer (IPC file) or last batch (stream)."""
        assert file.fs is not None
        try:
            with file.fs.open_input_file(file.fs_path) as stream:
                size = stream.size()
                digest = hashlib.sha256(stream.read(min(size, _SIGNATURE_BYTES)))
                if size > _SIGNATURE_BYTES:
                    stream.seek(max(size - _SIGNATURE_BYTES, _SIGNATURE_BYTES))
                    digest.update(stream.read())
                return digest.hexdigest()
        except (OSError, pa.ArrowException):
            return None


