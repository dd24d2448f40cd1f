"""JSON Lines: an input format of one JSON object a line (``*.jsonl``, ``*.ndjson``, ``*.json``, optionally
compressed), and standard input (``-``)."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import IO, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from .. import carry
from ..errors import InputError
from ..fs import InputFile
from ..read import BATCH_TOKENS, DocBatch, ReadOptions, Skipped, check_ids, drop_bad_ids, unreadable
from . import json_ids
from .base import Checkpoint, InputFormat
from .json_depth import DEEP_BYTES, TooDeep, loads, too_deep


def _open_text(file: InputFile) -> tuple[IO[bytes], Callable[[], int]]:
    """The file's decompressed bytes, and how many bytes of the file itself have been read (for progress)."""
    if file.is_stdin:
        return sys.stdin.buffer, lambda: 0
    assert file.fs is not None
    try:
        raw = file.fs.open_input_file(file.fs_path)  # random access: its position gives progress
        codec = pa.Codec.detect(file.fs_path) if file.format_compressed else None
        stream: IO[bytes] = pa.CompressedInputStream(raw, codec.name) if codec is not None else raw
        size = file.size or 0
        return stream, lambda: size if raw.closed else raw.tell()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise unreadable(file, exc, "cannot open", "check the file and its compression") from None


class Readable(Protocol):
    """What the line reader needs of a stream: ``read(n)``, ``n`` bytes a time (fewer only at its end)."""

    def read(self, size: int = -1, /) -> bytes: ...


class LineTooLong(Exception):
    """A JSONL line longer than ``ReadOptions.max_line_bytes``; ``read_jsonl`` names the file and line."""

    def __init__(self, line_no: int) -> None:
        super().__init__(line_no)
        self.line_no = line_no


class LineEnds:
    """Where in the stream the lines ``_lines`` hands on end, asked only at a batch's last line: the chunk being
    split is kept, and its newlines are found when asked, so reading pays nothing per line for it."""

    def __init__(self, start: int = 0) -> None:
        self.chunk: bytes = b""
        self.chunk_start = start  # the stream offset of the chunk's first byte
        self.first_line = 1  # the number of the first line that ends in this chunk
        self._newlines: np.ndarray | None = None

    def next_chunk(self, chunk: bytes, first_line: int) -> None:
        self.chunk_start += len(self.chunk)
        self.chunk, self.first_line, self._newlines = chunk, first_line, None

    def after(self, line_no: int) -> int | None:
        """The stream offset just past line ``line_no``'s newline (the last line handed on, or one before it in the
        same chunk), or None when it has none (the file's last line)."""
        if self._newlines is None:
            self._newlines = np.flatnonzero(np.frombuffer(self.chunk, dtype=np.uint8) == 0x0A)
        index = line_no - self.first_line
        if not 0 <= index < len(self._newlines):
            return None
        return self.chunk_start + int(self._newlines[index]) + 1


# Bytes read from a JSONL stream at a time: under pack's mmap threshold (``resources.steady_heap``), so each read
# reuses heap memory instead of mapping fresh pages (measured: a third fewer page faults than 8 MiB reads).
READ_BYTES = 1 << 19


def _lines(stream: Readable, max_line_bytes: int, digest: Any = None, chunk_size: int = READ_BYTES,
           first_line: int = 1, ends: LineEnds | None = None, offset: int = 0) -> Iterator[bytes | bytearray]:
    """Lines of a binary stream, read in large chunks (pyarrow's streams have no readline), in linear time.

    The unfinished end of a chunk is kept in a growing buffer, so a line of any length is copied once, never
    re-joined chunk after chunk. A line longer than ``max_line_bytes`` raises ``LineTooLong``; a run of blank
    bytes is never buffered (leading blanks of a line are dropped, a blank chunk inside one counts one byte), so
    a file of nothing but spaces reads in bounded memory. Every chunk also goes into ``digest`` (a hashlib
    object): the input's content fingerprint (``fingerprint.py``). ``first_line`` numbers the first line (a stream
    that starts mid-file, at a line's start); ``ends`` is told of every chunk, to say where a line ends.
    ``offset`` is where the stream starts in the file: reads end where they would in a read from the file's start,
    so a part of a file read on its own splits and measures its lines exactly as the whole file's read does.
    """
    line_no = first_line - 1  # lines finished so far
    tail = bytearray()
    size = chunk_size - offset % chunk_size
    while True:
        chunk = stream.read(size)
        size = chunk_size
        if not chunk:
            break
        if digest is not None:
            digest.update(chunk)
        if ends is not None:
            ends.next_chunk(chunk, line_no + 1)
        lines: list[bytes | bytearray] = list(chunk.split(b"\n"))
        last = lines.pop()
        if lines:
            if tail:
                tail += lines[0]
                lines[0] = tail
                tail = bytearray()
            for line in lines:
                line_no += 1
                if len(line) > max_line_bytes:
                    raise LineTooLong(line_no)
                yield line
        if last.isspace():
            last = b" " if tail else b""  # separating whitespace is all JSON needs of it
        tail += last
        if len(tail) > max_line_bytes:
            raise LineTooLong(line_no + 1)
    if tail:
        yield tail


# The magic bytes of compressed streams, to say "decompress it" rather than "not valid JSON".
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2", b"\x04\x22\x4d\x18": "lz4"}


def _compression_of(raw: bytes | bytearray) -> str | None:
    return next((name for magic, name in _COMPRESSED_MAGIC.items() if raw.startswith(magic)), None)


def _not_json(file: InputFile, line_no: int, raw: bytes | bytearray, detail: str) -> InputError:
    compression = _compression_of(raw) if line_no == 1 else None
    if compression is not None:
        where = "stdin" if file.is_stdin else "this file"
        fix = (f"{where} is {compression}-compressed: decompress it first, for example zcat FILE | bestfit pack - ..."
               if file.is_stdin else f"{where} is {compression}-compressed: name it *.jsonl.{_SUFFIX[compression]} "
                                     "or decompress it")
        return InputError(file.name, f"not valid JSON ({compression}-compressed data)", line=line_no, fix=fix)
    return InputError(file.name, f"not valid JSON ({detail})", line=line_no,
                      fix="repair or remove this line, or pass --on-bad-record skip")


_SUFFIX = {"gzip": "gz", "zstd": "zst", "bzip2": "bz2", "lz4": "lz4"}
_INT64_MAX = int(np.iinfo(np.int64).max)


def _out_of_range(file: InputFile, line_no: int, ids: list[Any], column: str, dtype: str) -> InputError:
    """The first bad id of a line holding one beyond int64, named as Parquet input names a bad id."""
    value = next(v for v in ids if v < 0 or v > _INT64_MAX)
    if value < 0:
        return InputError(file.name, f"negative token id {value} in '{column}'", line=line_no,
                          fix="token ids must be >= 0; check the tokenizer output")
    return InputError(file.name, f"token id {value} in '{column}' does not fit the output dtype {dtype}",
                      line=line_no, fix="token ids must fit in int64; check the tokenizer output")


def _parse_line(file: InputFile, line_no: int, raw: bytes | bytearray, column: str, dtype: str,
                carried: tuple[str, ...] = (), found: list[Any] | None = None) -> np.ndarray:
    """The line's token ids; with ``carried`` names, their values are appended to ``found`` (the line is parsed
    once for both)."""
    record = _load_record(file, line_no, raw)
    ids = _record_ids(file, line_no, raw, record, column, dtype)
    if carried and found is not None:
        for name in carried:
            if name not in record:
                raise InputError(file.name, f"no field '{name}' to carry (--keep / --keep-token)", line=line_no,
                                 fix="every record needs the fields --keep and --keep-token name")
            found.append(record[name])
    return ids


def _load_record(file: InputFile, line_no: int, raw: bytes | bytearray) -> dict[str, Any]:
    """The line as a JSON object, or the one-line error saying why it is not one."""
    try:
        record = loads(raw)
    except TooDeep as exc:
        raise InputError(file.name, f"JSON {exc}", line=line_no,
                         fix="flatten or remove this line, or pass --on-bad-record skip") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _not_json(file, line_no, raw, f"{exc.__class__.__name__}: {str(exc).split(':')[0]}") from None
    if not isinstance(record, dict):
        raise InputError(file.name, "line is not a JSON object", line=line_no,
                         fix='each line must be an object such as {"input_ids": [1, 2, 3]}')
    return record


def _record_ids(file: InputFile, line_no: int, raw: bytes | bytearray, record: dict[str, Any], column: str,
                dtype: str) -> np.ndarray:
    """The record's token ids, checked: a list of integers within int64."""
    if column not in record:
        # Escaped: a field name may hold a newline, and the message is one line.
        keys = ", ".join(json.dumps(key, ensure_ascii=False)[1:-1] for key in record) or "none"
        raise InputError(file.name, f"no field '{column}'; fields are: {keys[:200]}", line=line_no,
                         fix="pass --column NAME")
    ids = record[column]
    if not isinstance(ids, list):
        kind = "null" if ids is None else type(ids).__name__
        raise InputError(file.name, f"'{column}' is {kind}, not a list of token ids", line=line_no,
                         fix="each line needs a list of integer token ids")
    if not ids:
        return np.empty(0, dtype=np.int64)
    try:
        arr = np.array(ids)
    except (ValueError, OverflowError):
        arr = np.array(ids, dtype=object)
    only_ints = arr.ndim == 1 and (arr.dtype.kind in "iu" or all(type(v) is int for v in ids))
    if not only_ints or ((b"true" in raw or b"false" in raw) and any(type(v) is bool for v in ids)):
        kinds = sorted({type(v).__name__ if v is not None else "null" for v in ids} - {"int"})
        what = "nested lists" if arr.ndim > 1 or "list" in kinds else ", ".join(kinds)
        raise InputError(file.name, f"'{column}' holds {what}, not only integer token ids", line=line_no,
                         fix="token ids must be non-negative integers")
    if arr.dtype.kind != "i":  # numpy picks uint64 or object only for ids beyond int64
        raise _out_of_range(file, line_no, ids, column, dtype)
    return arr


# The fast path for JSONL lines; tests switch it off to compare both paths (tests/test_jsonl_fast.py).
FAST_JSONL = True


def fast_line_parser(column: str) -> Callable[[bytes | bytearray], np.ndarray | None]:
    """A parser for a line that the grouped read (``raw_ids_decoder`` and ``json_ids``) does not take, such as one
    with a 9-digit id: an object whose ``column`` is a list of integers that fit int64.

    It gives the same int64 array ``_parse_line`` gives for such a line, or None for any other line, which then
    goes through ``_parse_line`` and gets its exact message. msgspec reads the line in one pass, checks the JSON
    and that ``column`` is a list of ints (no bools, floats or nulls), and skips the other fields without building
    them; that and ``np.fromiter`` on the list measured about 2.2x less CPU than ``json.loads`` plus ``np.array``.
    msgspec is stricter than ``json`` everywhere but one place (it lets invalid UTF-8 through in a field it skips),
    so a line that is not plain ASCII is checked as UTF-8 first, as ``json.loads`` checks it.
    """
    try:
        import msgspec
    except ImportError:  # the slow path reads every line the same, only slower
        return lambda raw: None
    record = msgspec.defstruct("Record", [("ids", list[int])], rename={"ids": column})
    decode = msgspec.json.Decoder(record).decode
    rejected = (msgspec.DecodeError, UnicodeDecodeError, OverflowError, RecursionError)

    def parse(raw: bytes | bytearray) -> np.ndarray | None:
        try:
            if not raw.isascii():
                raw.decode("utf-8")
            ids = decode(raw).ids  # type: ignore[attr-defined]  # a field of the Struct made above
            # msgspec's depth limit is what the caller's stack leaves of Python's: a line deeper than MAX_DEPTH
            # goes to the slow path, which refuses it. The ids take 2 bytes an id or more, so only a line with
            # many bytes besides them can be that deep (a line of ids alone is not counted through).
            if len(raw) - 2 * len(ids) >= DEEP_BYTES and too_deep(raw):
                return None
            return np.fromiter(ids, dtype=np.int64, count=len(ids))
        except rejected:  # ValidationError is a DecodeError; OverflowError: an id beyond int64; deep nesting
            return None

    return parse


def raw_ids_decoder(column: str) -> Callable[[bytes | bytearray], Any] | None:
    """A decoder that checks a line is a JSON object holding ``column`` and gives that field's JSON text unparsed
    (a ``msgspec.Raw``), or None for any other line; None when msgspec is not installed.

    The texts of a batch of lines are then read together by ``json_ids.flat_id_arrays``; a line this decoder
    refuses, or whose text that does not take, goes through ``fast_line_parser`` and ``_parse_line`` as before.
    msgspec checks the whole line (the skipped fields and the raw text too), but lets invalid UTF-8 through inside
    strings, so a line that is not plain ASCII is checked as UTF-8 first, as ``json.loads`` checks it.
    """
    try:
        import msgspec
    except ImportError:
        return None
    record = msgspec.defstruct("RawRecord", [("ids", msgspec.Raw)], rename={"ids": column})
    decode = msgspec.json.Decoder(record).decode
    rejected = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

    def text(raw: bytes | bytearray) -> Any:
        try:
            if not raw.isascii():
                raw.decode("utf-8")
            ids = decode(raw).ids  # type: ignore[attr-defined]  # a field of the Struct made above
        except rejected:
            return None
        # As in ``fast_line_parser``: only the bytes besides the id text can nest deeper than MAX_DEPTH (a nested
        # id text is no flat array, so it is parsed line by line anyway).
        if len(raw) - len(ids) >= DEEP_BYTES and too_deep(raw):
            return None
        return ids

    return text


@dataclass
class _Texts:
    """Deferred id texts of consecutive common lines, read together: their slots among the batch's lines, their raw
    lines (for the line-by-line fallback) and, once read, their ids and counts (``flat``; None: not all flat)."""

    slots: list[int] = field(default_factory=list)
    texts: list[Any] = field(default_factory=list)
    raws: list[bytes | bytearray] = field(default_factory=list)
    size: int = 0
    read: bool = False
    flat: tuple[np.ndarray, np.ndarray] | None = None

    def read_ids(self) -> None:
        if not self.read:
            self.flat, self.read = json_ids.flat_id_arrays(self.texts), True


class _Pending:
    """The lines of the batch being read, each resolved to its ids or its error only when the batch is handed on.

    A common line's id text is kept unparsed (``defer``), and every ``DEFERRED_BYTES`` of such texts are read
    together by ``json_ids.flat_id_arrays`` (small enough for the cache, and for pack's heap). Any other line is
    parsed as it is read (``add``) and its error kept in its place. So ``resolve`` meets every line's error in line
    order, whichever way the line was read: the first raises (or, skipping, each is recorded in order), exactly as
    parsing line by line would.
    """

    def __init__(self, file: InputFile, opts: ReadOptions, fast: Callable[[bytes | bytearray], np.ndarray | None]
                 | None) -> None:
        self.file, self.opts, self.fast = file, opts, fast
        self.slots: list[np.ndarray | InputError | None] = []  # None: a deferred text
        self.lines: list[int] = []  # each slot's line number
        self.chunks: list[_Texts] = []  # the deferred texts, in line order; the last one still filling
        self.tokens = 0  # ids so far (deferred texts: estimated from their length)
        self.held = 0  # bytes of the deferred lines, kept until the batch is resolved
        self.pure = True  # every line so far deferred

    def defer(self, line_no: int, raw: bytes | bytearray, text: Any) -> None:
        if not self.chunks or self.chunks[-1].read:
            self.chunks.append(_Texts())
        chunk = self.chunks[-1]
        chunk.slots.append(len(self.slots))
        chunk.texts.append(text)
        chunk.raws.append(raw)
        chunk.size += len(text)
        self.held += len(raw)
        self.slots.append(None)
        self.lines.append(line_no)
        self.tokens += len(text) // 4 + 1  # a flat id array takes 2 to 9 bytes an id
        if chunk.size >= DEFERRED_BYTES:
            chunk.read_ids()

    def add(self, line_no: int, ids: np.ndarray | InputError) -> None:
        self.slots.append(ids)
        self.lines.append(line_no)
        self.tokens += len(ids) if isinstance(ids, np.ndarray) else 0
        self.pure = False

    def _parse(self, line_no: int, raw: bytes | bytearray) -> np.ndarray | InputError:
        ids = self.fast(raw) if self.fast is not None else None
        if ids is not None:
            return ids
        try:
            return _parse_line(self.file, line_no, raw, self.opts.column, self.opts.dtype)
        except InputError as exc:
            return exc

    def resolve(self) -> tuple[np.ndarray, np.ndarray, Skipped]:
        """Every line's ids (joined) and their counts, and the bad lines skipped; raises the first bad line's error
        unless skipping. Leaves the batch empty."""
        for chunk in self.chunks:
            chunk.read_ids()
        read = [chunk.flat for chunk in self.chunks]
        skipped = Skipped()
        flats = [r for r in read if r is not None]
        if self.pure and len(flats) == len(read):  # the common batch: no bad line, nothing to place line by line
            if len(flats) == 1:
                ids, lengths = flats[0]
            else:
                ids = np.concatenate([f[0] for f in flats]) if flats else _EMPTY
                lengths = np.concatenate([f[1] for f in flats]) if flats else _EMPTY
        else:
            for chunk, flat in zip(self.chunks, read, strict=True):
                if flat is not None:
                    parts: list[np.ndarray | InputError] = list(np.split(flat[0], np.cumsum(flat[1])[:-1]))
                else:  # some text is no flat array of short ids: each on its own, those that are not line by line
                    parts = [one[0] if (one := json_ids.flat_id_arrays([t])) is not None
                             else self._parse(self.lines[slot], raw)
                             for t, raw, slot in zip(chunk.texts, chunk.raws, chunk.slots, strict=True)]
                for at, part in zip(chunk.slots, parts, strict=True):
                    self.slots[at] = part
            for at, line in enumerate(self.slots):
                if isinstance(line, InputError):
                    if not self.opts.skip_bad:
                        self._check_ids_before(at)  # an id out of range on an earlier line is the first error
                        self.clear()
                        raise line
                    skipped = skipped.record(line)
            arrays = [s if isinstance(s, np.ndarray) else _EMPTY for s in self.slots]  # a bad line: no ids
            lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
            ids = np.concatenate(arrays).astype(np.int64, copy=False) if int(lengths.sum()) else _EMPTY
        self.clear()
        return ids, lengths, skipped

    def _check_ids_before(self, at: int) -> None:
        arrays = [s for s in self.slots[:at] if isinstance(s, np.ndarray)]
        if not arrays:
            return
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        lines = self.lines[:at]
        try:
            check_ids(self.file, np.concatenate(arrays), offsets, 0, self.opts, lambda r: {"line": lines[r]})
        except InputError:
            self.clear()
            raise

    def raise_first_error(self) -> None:
        """Reading cannot go on (``--on-bad-record error``): the first bad line of the batch so far, bad JSON or a
        bad id, is the error, as it would be had the batch been read to its end; returns if there is none."""
        lines = list(self.lines)
        ids, lengths, _ = self.resolve()
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        check_ids(self.file, ids, offsets, 0, self.opts, lambda r: {"line": lines[r]})

    def clear(self) -> None:
        self.slots.clear()
        self.lines.clear()
        self.chunks.clear()
        self.tokens = 0
        self.held = 0
        self.pure = True


# Deferred lines are kept whole until their batch is handed on: a batch ends early once they hold this many bytes,
# so lines with large other fields (a "text" beside few ids) cost what parsing them one by one would.
HELD_BYTES = 1 << 26
DEFERRED_BYTES = 1 << 17  # id texts read at once: their arrays stay under pack's 1 MiB mmap threshold (steady_heap)
_EMPTY = np.empty(0, dtype=np.int64)


def read_jsonl(file: InputFile, file_index: int, opts: ReadOptions, start: Checkpoint | None = None,
               checkpoints: list[Checkpoint] | None = None) -> Iterator[DocBatch]:
    """The file's records, batch by batch; from ``start`` (a record's line, found by an earlier read) when given.

    ``checkpoints`` (any file but stdin) gets where each batch after the first starts, for a later read to start
    there: the Ray engine's lengths pass records them, so that a window's task seeks to the line its rows start
    at instead of parsing the file from its first line. A compressed file's offsets count decompressed bytes: it
    cannot seek, but skipping bytes (``_skip``) costs only their decompression, not splitting and parsing them.
    """
    stream, file_position = _open_text(file)
    positioned = not file.is_stdin
    start = start if positioned else None
    if start is not None:
        _skip(file, stream, start.offset)
    offset = start.offset if start is not None else 0
    ends = LineEnds(offset) if positioned and checkpoints is not None else None
    size = file.size

    def done() -> float:
        return min(file_position() / size, 1.0) if size else 0.0

    try:
        yield from read_lines(file, file_index, opts, stream, first_line=start.line if start is not None else 1,
                              row=start.row if start is not None else 0, offset=offset, digest=hashlib.sha256(),
                              done=done, ends=ends, checkpoints=checkpoints)
    finally:
        if not file.is_stdin:
            stream.close()


def read_lines(file: InputFile, file_index: int, opts: ReadOptions, stream: Readable, *, first_line: int = 1,
               row: int = 0, offset: int = 0, digest: Any = None, done: Callable[[], float] = lambda: 0.0,
               ends: LineEnds | None = None, checkpoints: list[Checkpoint] | None = None,
               read_bytes: int | None = None, batch_tokens: int | None = None) -> Iterator[DocBatch]:
    """The records of ``stream``, the part of ``file`` from byte ``offset`` (a line's start), batch by batch:
    its first line numbered ``first_line`` and its first record ``row``. The last batch, handed on even without
    documents, carries the SHA-256 of the bytes read when ``digest`` is given; ``done()`` is the share of the file
    read, for progress; ``read_bytes``, how much is read at a time (``READ_BYTES``); a batch ends once it holds
    ``batch_tokens`` ids (``BATCH_TOKENS``). Bad lines fail or are skipped as ``opts`` says, in line order, with
    their line numbers."""
    carried = opts.carried
    batch_tokens = batch_tokens or BATCH_TOKENS  # looked up now: tests make batches small
    fast = fast_line_parser(opts.column) if FAST_JSONL else None
    # The fast path reads only the ids; a line whose other fields are carried takes the full parse.
    deferred = raw_ids_decoder(opts.column) if FAST_JSONL and not carried else None
    pending = _Pending(file, opts, fast)
    pending_carried: list[list[Any]] = [[] for _ in carried]  # per carried name, the value of each record

    def flush() -> DocBatch:
        nonlocal row
        lines = list(pending.lines)
        ids, lengths, skipped = pending.resolve()
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        batch_start = row
        carried_values = [list(values) for values in pending_carried]
        for values in pending_carried:
            values.clear()

        def label(r: int) -> dict[str, int]:
            return {"line": lines[r - batch_start]}

        if opts.skip_bad:
            kept, offsets, _, more = drop_bad_ids(file, ids, offsets, opts, lambda i: {"line": lines[i]})
            batch = DocBatch(file_index, row, offsets, kept, done(), skipped.merged(more))
        else:
            batch = DocBatch(file_index, row, offsets, check_ids(file, ids, offsets, row, opts, label), done())
        if carried:
            batch = _carried_from_json(file, batch, carried_values, lines, opts)
        row += batch.n_docs
        if ends is not None and checkpoints is not None and lines:
            after = ends.after(lines[-1])
            if after is not None:
                checkpoints.append(Checkpoint(row, after, lines[-1] + 1))
        return batch

    def take(line_no: int, raw: bytes | bytearray) -> None:
        """One line into the batch: its id text deferred, or parsed now (its error kept in its place)."""
        text = deferred(raw) if deferred is not None else None
        if text is not None:
            pending.defer(line_no, raw, text)
            return
        found: list[Any] = []
        fast_ids = fast(raw) if fast is not None and not carried else None
        try:
            ids = fast_ids if fast_ids is not None else _parse_line(file, line_no, raw, opts.column, opts.dtype,
                                                                   carried, found)
        except InputError as exc:
            pending.add(line_no, exc)
            if not opts.skip_bad:
                pending.resolve()  # raises the first bad line's error: an earlier deferred one, or this one
            found = [None] * len(opts.keep) + [[] for _ in opts.keep_token]
        else:
            pending.add(line_no, ids)
        for values, value in zip(pending_carried, found, strict=True):
            values.append(value)

    try:
        lines = _lines(stream, opts.max_line_bytes, digest, read_bytes or READ_BYTES, first_line, ends, offset)
        for line_no, raw in enumerate(lines, start=first_line):
            if raw.strip():
                take(line_no, raw)
                if pending.tokens >= batch_tokens or pending.held >= HELD_BYTES:
                    yield flush()
    except LineTooLong as exc:
        if not opts.skip_bad:
            pending.raise_first_error()  # a bad line before this one is the first error
        raise line_too_long(file, opts, exc.line_no) from None
    except (pa.ArrowException, OSError, EOFError) as exc:
        if not opts.skip_bad:
            pending.raise_first_error()
        raise unreadable(file, exc, "cannot read", "check the file and its compression") from None
    # Always a last batch, even one without documents: it carries the content hash of the whole file.
    last = flush()
    yield replace(last, content_sha256=digest.hexdigest()) if digest is not None else last


def line_too_long(file: InputFile, opts: ReadOptions, line_no: int) -> InputError:
    return InputError(file.name, f"line longer than {opts.max_line_bytes:,} bytes, the most one line may hold in "
                                 "memory", line=line_no,
                      fix="give a larger --memory (one line costs about 8 bytes of memory a byte), or check that "
                          "the file really is JSON Lines")


SKIP_BYTES = 1 << 23  # decompressed bytes read and dropped per step while a compressed stream skips ahead


def _skip(file: InputFile, stream: IO[bytes], offset: int) -> None:
    """Put ``stream`` at byte ``offset`` of the decompressed text: a seek in a plain file; in a compressed one, the
    bytes before it decompressed and dropped (never split into lines nor parsed)."""
    try:
        if not file.format_compressed:
            stream.seek(offset)
            return
        left = offset
        while left > 0:
            dropped = len(stream.read(min(left, SKIP_BYTES)))
            if not dropped:
                raise EOFError(f"the decompressed text ends before byte {offset:,}")
            left -= dropped
    except (pa.ArrowException, OSError, EOFError) as exc:
        stream.close()
        raise unreadable(file, exc, "cannot read", "check the file and its compression") from None


def _carried_from_json(file: InputFile, batch: DocBatch, values: list[list[Any]], lines: list[int],
                      opts: ReadOptions) -> DocBatch:
    """The batch with its --keep and --keep-token columns, from each record's values (in ``opts.carried`` order)."""
    columns = {name: carry.json_document_values(file.name, name, values[i], lines)
               for i, name in enumerate(opts.keep)}
    token_columns = {}
    ids_lengths = batch.lengths
    for i, spec in enumerate(opts.keep_token):
        records = values[len(opts.keep) + i]
        if opts.skip_bad:  # a record skipped as bad is an empty document: its values go with it
            records = [r if n else [] for r, n in zip(records, ids_lengths.tolist(), strict=True)]
        arrays = [carry.json_token_values(file.name, spec, r, line) for r, line in zip(records, lines, strict=True)]
        flat = np.concatenate(arrays) if arrays else np.empty(0, dtype=spec.dtype)
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        token_columns[spec.name] = carry.token_values(file.name, spec, flat, lengths, ids_lengths, batch.first_row,
                                                      lambda r: {"line": lines[r]})
    return replace(batch, columns=columns, token_columns=token_columns)


class JsonlInput(InputFormat):
    """JSON Lines, one object a line holding the token ids (``--column``); ``.gz``/``.zst``/``.bz2``/``.lz4``
    decompressed on the fly. Lines are parsed in order, so there is nothing to check before reading."""

    name = "jsonl"
    suffixes = (".jsonl", ".ndjson", ".json")
    description = "JSONL"
    carries_columns = True

    def read(self, file: InputFile, file_index: int, opts: ReadOptions) -> Iterator[DocBatch]:
        if opts.parse_workers > 1:
            from .jsonl_workers import read_jsonl_parallel  # it imports this module

            return read_jsonl_parallel(file, file_index, opts)
        return read_jsonl(file, file_index, opts)

    def read_checkpointed(self, file: InputFile, file_index: int, opts: ReadOptions,
                          checkpoints: list[Checkpoint]) -> Iterator[DocBatch]:
        return read_jsonl(file, file_index, opts, checkpoints=checkpoints)

    def read_from(self, file: InputFile, file_index: int, opts: ReadOptions, start: Checkpoint | None
                  ) -> Iterator[DocBatch]:
        return read_jsonl(file, file_index, opts, start)

    def close(self) -> None:
        if "bestfit_cli.formats.jsonl_workers" in sys.modules:  # started only by a read on parse workers
            from .jsonl_workers import PARSE_WORKERS

            PARSE_WORKERS.close()

    def not_data(self, fs: pafs.FileSystem, path: str) -> str | None:
        """A ``*.json`` file that is one JSON document (indented metadata such as ``stats.json``, a JSON array) or
        Hugging Face ``datasets`` metadata is no JSON Lines; ``*.jsonl`` and ``*.ndjson`` are taken at their word,
        and a length histogram of ``bestfit histogram`` is data for ``bestfit stats``."""
        name = posixpath.basename(path).lower()
        if not (name.endswith(".json") or ".json." in name):
            return None
        if name in DATASETS_METADATA:
            return "Hugging Face datasets metadata, not JSON Lines"
        try:
            with fs.open_input_stream(path, compression="detect") as stream:
                head = bytes(stream.read(_PEEK_BYTES))
        except (OSError, pa.ArrowException):
            return None  # the reader names the file and the cause
        return json_document(head)


DATASETS_METADATA = ("state.json", "dataset_info.json", "dataset_dict.json")
_PEEK_BYTES = 1 << 16
_HISTOGRAM = re.compile(rb'^\s*\{\s*"schema"\s*:\s*"bestfit\.histogram/')


def json_document(head: bytes) -> str | None:
    """Why a file starting with ``head`` is one JSON document rather than JSON Lines, or None: it is an array, or
    its first line is no JSON value of its own (an indented object)."""
    text = head.lstrip()
    if not text or _HISTOGRAM.match(text):
        return None
    if text.startswith(b"["):
        return "a JSON array, not JSON Lines (one object a line)"
    first_line, newline, _ = text.partition(b"\n")
    if not newline and len(head) >= _PEEK_BYTES:
        return None  # a first line longer than the peek: a long record, most likely
    try:
        loads(first_line)
    except TooDeep:
        return None  # a line of JSON Lines, and the reader says it is too deep
    except ValueError:
        return "one JSON document, not JSON Lines (one object a line)"
    return None
