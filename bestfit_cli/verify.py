"""Verify: prove that a packed output holds exactly its inputs, window by window, with bounded memory.

``verify`` reads the inputs again with the options recorded in ``manifest.json`` and, for each window the manifest
lists, compares that window's documents with the window's shards: every document is rebuilt from ``input_ids``,
``seq_lengths``, ``doc_index`` and ``doc_offset`` (once and only once, EOS included, less what ``--long-docs``
truncated or dropped), every row holds exactly ctx tokens with padding only after its last piece, and every shard
matches its listed row count and sha256. Problems are collected, not raised; only an output that cannot be checked
at all (absent, no manifest, a manifest whose fields have the wrong type or value) raises ``VerifyError``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from .carry import TokenColumn, eos_values
from .errors import InputError, VerifyError
from .fingerprint import Fingerprint, fingerprint
from .formats import FORMATS
from .formats.json_depth import TooDeep, loads
from .fs import InputFile, check_bucket, filesystem_for, scan_inputs, storage_error
from .histogram import LONG_DOC_POLICIES
from .outdir import MANIFEST, STATS, TMP_PREFIX, companion_name, is_ignored, leftover_files, pending_report
from .pipeline import (
    BASE_COLUMNS,
    COLUMNS,
    LOOP_PIECE_TOKENS,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    MAX_CTX,
    UNPADDED_VERSION,
    default_window_tokens,
    gather_tokens,
)
from .read import (
    BAD_RECORD_POLICIES,
    STREAM_DTYPES,
    TOKEN_DTYPES,
    DocBatch,
    InputCounts,
    ReadOptions,
    Skipped,
    read_inputs,
)
from .resources import usable_cores
from .training import TRAINING_COLUMNS, row_columns
from .window import (
    EOS_MODES,
    UNBOUNDED_TOKENS,
    Window,
    WindowBuffer,
    eos_appended,
    packed_lengths,
    read_ahead_bytes,
    span_steps,
)

CHECK_TOKENS = 1 << 20  # tokens compared per vectorised step: bounds its index arrays (about 34 bytes a token)
KNOWN_VERSIONS = (MANIFEST_VERSION, UNPADDED_VERSION)  # manifest format versions this verify reads
RERUN = "rerun the same bestfit pack command with --overwrite"


@dataclass(frozen=True)
class Problem:
    """One way the output differs from its inputs or its manifest; names the document, shard and row when known."""

    message: str
    shard: str | None = None
    row: int | None = None
    document: int | None = None

    def __str__(self) -> str:
        where = []
        if self.shard is not None:
            where.append(self.shard if self.row is None else f"{self.shard} row {self.row}")
        if self.document is not None:
            where.append(f"document {self.document}")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "shard": self.shard, "row": self.row, "document": self.document}


@dataclass
class VerifyResult:
    """What ``verify`` found: counts checked, the first problems (``problem_count`` counts them all) and notes."""

    out: str
    documents: int = 0  # input documents checked, empty ones included
    tokens: int = 0  # tokens found in the output's pieces, EOS included
    sequences: int = 0
    shards: int = 0
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    notes: list[str] = field(default_factory=list)
    max_problems: int = 20
    stopped: str | None = None  # why the check ended before the last window (then the totals are not compared)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, problem: Problem) -> None:
        self.add_many(1, [problem])

    def add_many(self, count: int, first: Iterable[Problem]) -> None:
        """``count`` problems of one kind, of which ``first`` yields the first few (only those kept are built)."""
        self.problem_count += count
        for problem in first:
            if len(self.problems) >= self.max_problems:
                break
            self.problems.append(problem)

    def summary(self) -> str:
        if self.ok:
            return f"verified: {self.documents:,} documents, {self.tokens:,} tokens, {self.sequences:,} sequences"
        counted = f"{self.problem_count:,} problem(s)"
        if self.stopped:
            counted = f"at least {counted} (stopped: {self.stopped}; later windows and the totals not checked)"
        return f"{self.out}: verification failed with {counted}; first: {self.problems[0]}"

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "out": self.out, "documents": self.documents, "tokens": self.tokens,
                "sequences": self.sequences, "shards": self.shards, "problem_count": self.problem_count,
                "problems": [p.to_json() for p in self.problems], "notes": self.notes, "stopped": self.stopped}


@dataclass(frozen=True)
class _Options:
    """The manifest's options that decide what each document must look like in the output."""

    ctx: int
    eos_id: int | None
    pad_id: int
    long_docs: str
    read: ReadOptions
    format: str = "parquet"
    pad: bool = True  # False: rows end after their last piece (--no-pad)
    training_columns: tuple[str, ...] = ()
    eos_mode: str = "always"
    carried: tuple[str, ...] = ()  # the carried columns of every shard, after the training columns

    @property
    def shard_columns(self) -> tuple[str, ...]:
        return (*BASE_COLUMNS, *self.training_columns, *self.carried)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> _Options:
        """The options of a manifest that ``_check_shape`` accepted."""
        o = manifest["options"]
        keep_token = tuple(TokenColumn(name, spec["fill"], None if spec["eos"] == "default" else spec["eos"])
                           for name, spec in o.get("keep_token", {}).items())
        read = ReadOptions(column=o["column"], dtype=o["dtype"], on_bad_record=o.get("on_bad_record", "error"),
                           keep=tuple(o.get("keep", [])), keep_token=keep_token,
                           split_at=o.get("split_at"), stream_dtype=o.get("stream_dtype"))
        carried = carried_columns(manifest)
        extra = manifest.get("columns", BASE_COLUMNS)[len(BASE_COLUMNS):]
        return cls(o["ctx"], o["eos_id"], o["pad_id"], o["long_docs"], read, o.get("format", "parquet"),
                   pad=o.get("pad", True),
                   training_columns=tuple(c for c in extra[:len(extra) - len(carried)] if c in TRAINING_COLUMNS),
                   eos_mode=o.get("eos_mode", "always"), carried=carried)

    def kept_lengths(self, docs: Window) -> np.ndarray:
        """Tokens of each document that must appear in the output (EOS included)."""
        packed = self.packed_lengths(docs)
        if self.long_docs == "truncate":
            packed = np.minimum(packed, self.ctx)
        elif self.long_docs == "drop":
            packed = np.where(packed > self.ctx, 0, packed)
        return packed

    def packed_lengths(self, docs: Window) -> np.ndarray:
        return np.asarray(packed_lengths(docs.lengths, eos_appended(docs, self.eos_id, self.eos_mode)),
                          dtype=np.int64)


# ------------------------------------------------------------------------------------------------ entry point


def verify(inputs: Sequence[str], out: str, *, max_problems: int = 20) -> VerifyResult:
    """Check the packed folder ``out`` against ``inputs``; raises ``VerifyError`` only when it cannot be checked."""
    fs, root = filesystem_for(out)
    manifest = _load_manifest(fs, root, out)
    _check_shape(out, manifest)
    opts = _Options.from_manifest(manifest)
    result = VerifyResult(out, max_problems=max_problems)
    _check_shard_lists(manifest, result)
    shard_info = _check_listing(fs, root, manifest, result)
    scan = scan_inputs(inputs)
    files = list(scan.files)
    note = scan.note()
    if note:
        result.notes.append(note)
    listed_inputs = manifest.get("inputs", [])
    if len(files) != len(listed_inputs):
        result.add(Problem(f"{len(files)} input file(s) given, the manifest lists {len(listed_inputs)}"))
    _check_fingerprints(files, listed_inputs, result)
    _check_stats_file(fs, root, manifest, result)
    _check_window_claims(manifest, result)
    # Read ahead as far as a default pack at this ctx does (not as far as the manifest claims: it is not trusted).
    cores = usable_cores()
    ahead = read_ahead_bytes(default_window_tokens(opts.ctx), np.dtype(TOKEN_DTYPES[opts.read.dtype]).itemsize)
    reader = _InputDocs(files, replace(opts.read, parse_workers=cores, read_ahead_bytes=ahead if cores > 1 else 0),
                        reserve_limit=_reserve_limit(files))
    try:
        return _check_windows(fs, root, manifest, reader, opts, shard_info, result)
    finally:
        reader.close()


def _check_windows(fs: pafs.FileSystem, root: str, manifest: dict[str, Any], reader: _InputDocs, opts: _Options,
                   shard_info: dict[str, dict[str, Any]], result: VerifyResult) -> VerifyResult:
    """Each window of the manifest against the input documents it claims, in order, then the totals."""
    # Every window is checked, however many problems come up, so problem_count counts them all; only a window
    # that cannot be lined up with the inputs stops the check.
    for window in manifest["windows"]:
        if window["first_doc"] != reader.position:
            result.add(Problem(f"window {window['index']} starts at document {window['first_doc']}, "
                               f"expected {reader.position}"))
            result.stopped = f"window {window['index']} does not start where the one before it ended"
            return result
        # The window's input tokens are at most its packed tokens plus those --long-docs removed.
        docs = reader.take(window["documents"], _claimed_input_tokens(manifest, window))
        if docs.n_docs < window["documents"]:
            result.add(Problem(f"the inputs end after {reader.position:,} documents; the manifest lists "
                               f"{manifest['documents']:,}", document=reader.position))
            result.stopped = f"the inputs end inside window {window['index']}"
            _check_input_counts(manifest, reader, result)
            return result
        _check_window(fs, root, window, docs, opts, shard_info, result)
        del docs
    extra = reader.remaining()
    if extra:
        result.add(Problem(f"the inputs hold {extra:,} document(s) more than the manifest lists "
                           f"({manifest['documents']:,}); they are not in the output", document=reader.position))
    _check_totals(manifest, reader, result)
    return result


def _load_manifest(fs: pafs.FileSystem, root: str, out: str) -> dict[str, Any]:
    try:
        info = fs.get_file_info(root)
    except (OSError, pa.ArrowException) as exc:
        raise storage_error(out, exc) or VerifyError(f"{out}: cannot be read ({exc})",
                                                     fix="check the path and its permissions") from None
    if info.type == pafs.FileType.NotFound:
        check_bucket(out, fs, root)
        raise VerifyError(f"{out}: does not exist", fix="give the OUT folder of a bestfit pack run")
    if info.type != pafs.FileType.Directory:
        raise VerifyError(f"{out}: is not a folder", fix="give the OUT folder of a bestfit pack run")
    try:
        raw = read_regular(fs, root, MANIFEST)
    except Refused as exc:
        raise VerifyError(f"{out}: manifest.json {exc}", fix=RERUN) from None
    except (FileNotFoundError, OSError, pa.ArrowException) as exc:
        failure = storage_error(posixpath.join(out, MANIFEST), exc)
        if failure is not None:
            raise failure from None
        raise VerifyError(f"{out}: no manifest.json, so this output is incomplete (its pack run was interrupted, "
                          "failed or is still running)", fix=RERUN) from None
    try:
        manifest = loads(raw)
    except TooDeep as exc:
        raise VerifyError(f"{posixpath.join(out, MANIFEST)} is malformed: its JSON is {exc}", fix=RERUN) from None
    except ValueError:  # not JSON, or not UTF-8
        raise VerifyError(f"{out}: manifest.json is not valid JSON", fix=RERUN) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise VerifyError(f"{out}: manifest.json is not a bestfit manifest", fix="give the OUT folder of bestfit pack")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version < min(KNOWN_VERSIONS):
        raise VerifyError(f"{out}: manifest.json has format_version {version}, written by an older bestfit that "
                          "recorded less than this verify checks", fix=RERUN)
    if version not in KNOWN_VERSIONS or isinstance(version, bool):
        shown = json.dumps(version)[:40]
        raise VerifyError(f"{out}: manifest.json has format_version {shown}, which this bestfit does not know (it "
                          f"reads {', '.join(map(str, KNOWN_VERSIONS))})",
                          fix="verify with the bestfit that wrote it (its bestfit_version), or rerun pack")
    return manifest


def _raise_if_refused_by_store(fs: pafs.FileSystem, root: str, name: str, exc: BaseException) -> None:
    """A file an object store refuses to give (access denied, unreachable) is no problem of the output: say what
    the store said, instead of reporting the file as missing."""
    failure = None if isinstance(fs, pafs.LocalFileSystem) else storage_error(None, exc)
    if failure is not None:
        raise failure from None


class Refused(Exception):
    """A path in OUT that verify will not read: a link, a pipe, a device. ``str()`` says which, for messages."""


_REGULAR_ONLY = "verify reads only regular files inside OUT; it was not read"


def read_regular(fs: pafs.FileSystem, root: str, name: str, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``name`` directly in OUT (at most ``limit`` + 1 of them), never following a
    link: a shard that links to ``/dev/zero``, a FIFO or a file outside OUT raises ``Refused`` unread.

    Raises FileNotFoundError (or another OSError) when it cannot be opened.
    """
    path = posixpath.join(root, name)
    if not isinstance(fs, pafs.LocalFileSystem):  # an object store has no links, pipes or devices
        if limit is not None:  # read() reserves what it is asked for: ask no more than the object holds
            limit = min(limit, fs.get_file_info(path).size or 0)
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read() if limit is None else stream.read(limit + 1))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"is a link ({_REGULAR_ONLY})") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Refused(f"is not a regular file (a pipe or a device; {_REGULAR_ONLY})")
        size = os.fstat(fd).st_size
        want = size if limit is None else min(size, limit) + 1
        chunks, got = [], 0
        while got < want:
            chunk = os.read(fd, min(want - got, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ manifest shape


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_name(value: Any) -> bool:
    """A plain file name inside OUT, as pack writes them: no folder part, so nothing outside OUT is ever read."""
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _one_of(choices: Sequence[str]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and value in choices


def _either(choices: Sequence[str]) -> str:
    return f"{', '.join(choices[:-1])} or {choices[-1]}"


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_list(value: Any) -> bool:
    return isinstance(value, list)


class _Shape:
    """Reads manifest fields, raising one ``VerifyError`` that names the first field of the wrong type or value."""

    _absent = object()

    def __init__(self, out: str) -> None:
        self.where = posixpath.join(out, MANIFEST)

    def value(self, value: Any, key: str, check: Callable[[Any], bool], wanted: str) -> Any:
        if not check(value):
            try:
                shown = json.dumps(value)
            except RecursionError:  # nested almost as deep as json.loads allows
                shown = type(value).__name__
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise VerifyError(f"{self.where} is malformed: {key} is {shown}, expected {wanted}", fix=RERUN)
        return value

    def field(self, parent: dict[str, Any], key: str, prefix: str, check: Callable[[Any], bool], wanted: str,
              default: Any = _absent) -> Any:
        name = f"{prefix}.{key}" if prefix else key
        if key not in parent:
            if default is self._absent:
                raise VerifyError(f"{self.where} is malformed: {name} is missing", fix=RERUN)
            return default
        return self.value(parent[key], name, check, wanted)

    def entries(self, parent: dict[str, Any], key: str, default: Any = _absent) -> Iterator[tuple[str, Any]]:
        """The objects of the list ``parent[key]``, each with its name for messages (``shards[3]``)."""
        for index, entry in enumerate(self.field(parent, key, "", _is_list, "a list", default)):
            name = f"{key}[{index}]"
            yield name, self.value(entry, name, _is_object, "an object")


COUNT = "an integer >= 0"


def _check_shape(out: str, manifest: dict[str, Any]) -> None:
    """Every field verify reads must have the type and the values pack writes, so no check can crash on it."""
    shape = _Shape(out)
    options = shape.field(manifest, "options", "", _is_object, "an object")
    shape.field(options, "ctx", "options", lambda v: _is_count(v) and 1 <= v <= MAX_CTX, f"an integer in 1..{MAX_CTX}")
    shape.field(options, "column", "options", lambda v: isinstance(v, str) and v != "", "a column name")
    dtype = shape.field(options, "dtype", "options", _one_of(list(TOKEN_DTYPES)), _either(list(TOKEN_DTYPES)))
    top = int(np.iinfo(TOKEN_DTYPES[dtype]).max)
    shape.field(options, "eos_id", "options", lambda v: v is None or (_is_count(v) and v <= top),
                f"null or an id in 0..{top} ({dtype})")
    shape.field(options, "pad_id", "options", lambda v: _is_count(v) and v <= top, f"an id in 0..{top} ({dtype})")
    shape.field(options, "keep", "options", lambda v: _is_list(v) and all(isinstance(c, str) for c in v),
                "a list of column names", default=[])
    shape.field(options, "keep_token", "options", lambda v: _is_object(v) and all(
        _is_object(spec) and _is_number(spec.get("fill")) and (spec.get("eos") == "default" or _is_number(
            spec.get("eos"))) for spec in v.values()), 'an object of {"fill": N, "eos": N or "default"}', default={})
    shape.field(options, "eos_mode", "options", _one_of(EOS_MODES), _either(EOS_MODES), default="always")
    shape.field(options, "long_docs", "options", _one_of(LONG_DOC_POLICIES), _either(LONG_DOC_POLICIES))
    shape.field(options, "format", "options", _one_of(list(FORMATS)), _either(list(FORMATS)), default="parquet")
    shape.field(options, "on_bad_record", "options", _one_of(BAD_RECORD_POLICIES), _either(BAD_RECORD_POLICIES),
                default="error")
    shape.field(options, "pad", "options", lambda v: isinstance(v, bool), "true or false", default=True)
    shape.field(options, "split_at", "options", lambda v: v is None or _is_count(v), "null or an id >= 0",
                default=None)
    shape.field(options, "stream_dtype", "options", lambda v: v is None or v in STREAM_DTYPES,
                f"null or {_either(list(STREAM_DTYPES))}", default=None)
    shape.field(manifest, "columns", "", lambda v: _is_list(v) and all(isinstance(c, str) for c in v),
                "a list of column names", default=list(BASE_COLUMNS))
    for key in ("documents", "tokens", "sequences", "stats_bytes"):
        shape.field(manifest, key, "", _is_count, COUNT)
    shape.field(manifest, "stats_sha256", "", _is_sha256, "64 hex digits")
    shape.field(manifest, "columns", "", lambda v: _is_list(v) and all(isinstance(c, str) for c in v),
                "a list of column names")
    for name, shard in shape.entries(manifest, "shards"):
        shape.field(shard, "path", name, _is_name, "a file name in OUT")
        shape.field(shard, "rows", name, _is_count, COUNT)
        shape.field(shard, "bytes", name, _is_count, COUNT)
        shape.field(shard, "sha256", name, _is_sha256, "64 hex digits")
        for file_name, companion in shape.entries(shard, "files", default=[]):
            shape.field(companion, "path", f"{name}.{file_name}", _is_name, "a file name in OUT")
            shape.field(companion, "bytes", f"{name}.{file_name}", _is_count, COUNT)
            shape.field(companion, "sha256", f"{name}.{file_name}", _is_sha256, "64 hex digits")
    for name, window in shape.entries(manifest, "windows"):
        for key in ("index", "first_doc", "documents", "tokens", "sequences"):
            shape.field(window, key, name, _is_count, COUNT)
        for key in ("tokens", "dropped_documents", "dropped_tokens", "clipped_documents"):
            shape.field(window, key, name, _is_count, COUNT, default=0)
        shards = shape.field(window, "shards", name, _is_list, "a list of file names")
        for index, shard_name in enumerate(shards):
            shape.value(shard_name, f"{name}.shards[{index}]", _is_name, "a file name in OUT")
    for name, listed in shape.entries(manifest, "inputs", default=[]):
        shape.field(listed, "path", name, lambda v: isinstance(v, str), "a path")
        shape.field(listed, "documents", name, _is_count, COUNT)
        shape.field(listed, "skipped_records", name, _is_count, COUNT, default=0)
        for key in ("bytes", "mtime_ns", "index_bytes", "index_mtime_ns"):
            shape.field(listed, key, name, lambda v: v is None or _is_count(v), "null or an integer >= 0",
                        default=None)
        for key in ("footer_sha256", "content_sha256"):
            shape.field(listed, key, name, _is_sha256, "64 hex digits", default=None)
        shape.field(listed, "notes", name, lambda v: _is_list(v) and all(isinstance(n, str) for n in v),
                    "a list of strings", default=[])
    skipped = shape.field(manifest, "skipped_records", "", _is_object, "an object", default={})
    shape.field(skipped, "first", "skipped_records", lambda v: _is_list(v) and all(isinstance(w, str) for w in v),
                "a list of locations", default=[])


def carried_columns(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The carried columns a manifest's options ask for, as ``PackOptions.carried_columns`` orders them."""
    o = manifest["options"]
    training = o.get("columns", [])
    return (*o.get("keep", []), *(name for name in o.get("keep_token", {})
                                  if not (name == "labels" and "labels" in training)))


def _check_stats_file(fs: pafs.FileSystem, root: str, manifest: dict[str, Any], result: VerifyResult) -> None:
    """``stats.json`` (the report) must be the one written, and ``columns`` the columns every shard has."""
    columns = manifest.get("columns", list(COLUMNS))
    carried = list(carried_columns(manifest))
    extra = columns[len(COLUMNS):]
    training = extra[:len(extra) - len(carried)]
    if (columns[:len(COLUMNS)] != list(COLUMNS) or len(set(extra)) != len(extra) or extra[len(training):] != carried
            or [c for c in TRAINING_COLUMNS if c in training] != training):  # --columns adds these, in this order
        result.add(Problem(f"manifest.json lists the columns {', '.join(manifest['columns'])}; a bestfit shard has "
                           f"exactly {', '.join([*COLUMNS, *carried])}"))
    try:
        data: bytes | None = read_regular(fs, root, STATS, manifest["stats_bytes"])
    except Refused as exc:
        result.add(Problem(str(exc), shard=STATS))
        return
    except (OSError, pa.ArrowException) as exc:
        _raise_if_refused_by_store(fs, root, STATS, exc)
        data = None
    if data is not None and len(data) == manifest["stats_bytes"] and (
            hashlib.sha256(data).hexdigest() == manifest["stats_sha256"]):
        _check_report_totals(data, manifest, result)
        return
    pending = pending_report(fs, root, manifest["stats_sha256"])
    if pending is not None:
        # The swap's last step that OUT's files depend on: the shards and manifest are the new output's already.
        result.notes.append(f"stats.json is not yet this output's report: a pack run was stopped just after its "
                            f"manifest replaced the old one; the report is {pending}/stats.json (move it to "
                            "stats.json, or rerun pack with --overwrite)")
        return
    result.add(Problem("missing (manifest.json lists it)" if data is None else
                       "size or sha256 differs from manifest.json (the report changed after packing)", shard=STATS))


TOKENS_PER_INPUT_BYTE = 8  # far more than tokenized data packs into a byte (the shared corpora: 0.7), even gzipped


def _reserve_limit(files: Sequence[InputFile]) -> int | None:
    """The most tokens a window's buffer reserves before its tokens are read: what the inputs' real sizes could
    hold, so a manifest's claim cannot make verify reserve more than its inputs could fill (None: a size unknown)."""
    sizes = [file.size for file in files]
    if any(size is None for size in sizes):
        return None
    return TOKENS_PER_INPUT_BYTE * sum(size for size in sizes if size is not None)


def _claimed_input_tokens(manifest: dict[str, Any], window: dict[str, Any]) -> int:
    """The input tokens a window claims (its packed tokens plus those --long-docs removed), no more than the
    window limits recorded in the options allow: only a hint for what to reserve, never trusted further."""
    claimed = int(window["tokens"]) + int(window.get("dropped_tokens", 0))
    limit = manifest["options"].get("window_tokens")
    if _is_count(limit) and window["documents"] > 1:
        claimed = min(claimed, limit + window["documents"])  # + one EOS a document
    return claimed


def _check_report_totals(data: bytes, manifest: dict[str, Any], result: VerifyResult) -> None:
    """The report's totals must be the manifest's (which the shards are checked against): a report edited along
    with the sha256 the manifest records for it would otherwise tell a user numbers no check has seen."""
    try:
        report = loads(data)
    except ValueError:  # not JSON, not UTF-8, or nested too deeply (json_depth.TooDeep)
        result.add(Problem("is not valid JSON", shard=STATS))
        return
    if not isinstance(report, dict):
        result.add(Problem("is not a bestfit report", shard=STATS))
        return
    expected = {"ctx": manifest["options"]["ctx"], "tokens": manifest["tokens"], "sequences": manifest["sequences"],
                "windows": len(manifest["windows"])}
    found = report
    for key, value in expected.items():
        if found.get(key) != value:
            shown = json.dumps(found.get(key))[:40]
            result.add(Problem(f"says {key} = {shown}, manifest.json {value}", shard=STATS))


def _check_window_claims(manifest: dict[str, Any], result: VerifyResult) -> None:
    """What each window claims must be possible for the run the manifest records, before anything is reserved for
    it: windows numbered in order, and no more documents or input tokens than the recorded window limits allow.
    (Its tokens and sequences are compared with what its shards hold, window by window.)"""
    options = manifest["options"]
    window_tokens, window_documents = options.get("window_tokens"), options.get("window_documents")
    for position, window in enumerate(manifest["windows"]):
        name = f"window {window['index']}"
        if window["index"] != position:
            result.add(Problem(f"{name} is number {position} in manifest.json's windows (windows are numbered "
                               "0, 1, 2, ... in order)"))
        claimed = window["tokens"] + window.get("dropped_tokens", 0)
        if _is_count(window_tokens) and window["documents"] > 1 and claimed > window_tokens + window["documents"]:
            result.add(Problem(f"{name}: manifest.json says it holds {claimed:,} input tokens in "
                               f"{window['documents']:,} documents, more than its window_tokens {window_tokens:,} "
                               "allow (only a window of one document may be larger)"))
        if _is_count(window_documents) and window_documents and window["documents"] > window_documents:
            result.add(Problem(f"{name}: manifest.json says it holds {window['documents']:,} documents, more than "
                               f"its window_documents {window_documents:,}"))


def _check_shard_lists(manifest: dict[str, Any], result: VerifyResult) -> None:
    """``shards``, which trainers read, must list exactly the windows' shards, each once, in window order."""
    listed = [shard["path"] for shard in manifest["shards"]]
    owner: dict[str, int] = {}
    for window in manifest["windows"]:
        for name in window["shards"]:
            if name in owner:
                result.add(Problem(f"listed by window {owner[name]} and again by window {window['index']}",
                                   shard=name))
            owner.setdefault(name, window["index"])
    seen: set[str] = set()
    for name in listed:
        if name in seen:
            result.add(Problem("listed twice in manifest.json's shards (a trainer would read its rows twice)",
                               shard=name))
        elif name not in owner:
            result.add(Problem("listed in manifest.json's shards but in no window (a trainer would read its rows "
                               "as extra data)", shard=name))
        seen.add(name)
    for name, window_index in owner.items():
        if name not in seen:
            result.add(Problem(f"shard of window {window_index} is not listed in manifest.json's shards (a trainer "
                               "would never read it)", shard=name))
    if len(listed) == len(owner) == len(seen) and seen == set(owner) and listed != list(owner):
        result.add(Problem("manifest.json's shards are not in the order of its windows"))


def _check_listing(fs: pafs.FileSystem, root: str, manifest: dict[str, Any], result: VerifyResult
                   ) -> dict[str, dict[str, Any]]:
    """Listed shards must exist, and nothing else may sit beside them; returns the shard entries by name."""
    shards = {s["path"]: s for s in manifest["shards"]}
    companions = {f["path"]: s["path"] for s in manifest["shards"] for f in s.get("files", [])}
    present = set()
    interrupted = leftover_files(fs, root)
    for entry in fs.get_file_info(pafs.FileSelector(root)):
        name = posixpath.basename(entry.path)
        present.add(name)
        if name in (MANIFEST, STATS) or name in shards or name in companions or is_ignored(name):  # is_ignored: OS
            continue  # litter and the run lock
        if name in interrupted and name not in shards and name not in companions:
            # A file a run killed while swapping outputs was moving in, or had not yet removed: not this output's.
            result.notes.append(f"{name} is left over from an interrupted pack run (safe to delete; pack "
                                "--overwrite removes it)")
            continue
        if name.startswith(TMP_PREFIX) and entry.type == pafs.FileType.Directory:
            # The manifest is written only after every shard is in place, so this is the leftover of a run killed
            # between writing its manifest and removing its temp folder: harmless, never read.
            result.notes.append(f"leftover temporary folder {name} (safe to delete)")
            continue
        result.add(Problem("file not listed in manifest.json", shard=name))
    for name in shards:
        if name not in present:
            result.add(Problem("shard listed in manifest.json is missing", shard=name))
    for name, shard in companions.items():
        if name not in present:
            result.add(Problem(f"file {name} of the shard, listed in manifest.json, is missing", shard=shard))
    return shards


def _check_totals(manifest: dict[str, Any], reader: _InputDocs, result: VerifyResult) -> None:
    for label, found in (("documents", result.documents), ("tokens", result.tokens),
                         ("sequences", result.sequences)):
        if manifest.get(label) != found:
            result.add(Problem(f"manifest.json says {manifest.get(label)} {label}, the output holds {found}"))
    _check_input_counts(manifest, reader, result)


def _check_fingerprints(files: Sequence[InputFile], listed_inputs: Sequence[dict[str, Any]],
                        result: VerifyResult) -> None:
    """Each input's size and Parquet footer must be what pack recorded (``fingerprint.py``): a difference names the
    input that changed since packing, ahead of the documents that then differ. A new modified time alone (a copy)
    is a note: the documents are checked anyway."""
    for file, listed in zip(files, listed_inputs, strict=False):  # a count mismatch is reported on its own
        if file.is_stdin or listed.get("bytes") is None:  # packed from stdin: only its content hash is known
            continue
        try:
            now = fingerprint(file)
        except InputError as exc:
            result.add(Problem(f"input {file.name}: {exc.reason}"))
            continue
        before = Fingerprint.from_json(listed)
        changed = before.differences(now)
        if changed:
            result.add(Problem(f"input {file.name} changed since packing ({', '.join(changed)})"))
        elif before.times_differ(now):
            result.notes.append(f"input {file.name}: modified time differs from packing (a copy?); its documents "
                                "are checked all the same")


def _check_input_counts(manifest: dict[str, Any], reader: _InputDocs, result: VerifyResult) -> None:
    """Documents, skipped records and JSONL content hashes per input, as read again (complete once the inputs have
    been read to the end)."""
    for index, listed in enumerate(manifest.get("inputs", [])[: len(reader.documents)]):
        name = listed.get("path")
        content = listed.get("content_sha256")
        if content is not None and reader.content_sha256[index] not in (None, content):
            result.add(Problem(f"input {reader.files[index].name} changed since packing (the sha256 of its "
                               "contents differs)"))
        if listed.get("documents") != reader.documents[index]:
            result.add(Problem(f"input {name}: manifest.json says {listed.get('documents')} documents, "
                               f"the input holds {reader.documents[index]}"))
        if listed.get("skipped_records", 0) != reader.skipped[index].count:
            result.add(Problem(f"input {name}: manifest.json says {listed.get('skipped_records', 0)} bad records "
                               f"were skipped, reading it again skips {reader.skipped[index].count}"))
    skipped = sum(reader.skipped, Skipped())
    declared = manifest.get("skipped_records", {"count": 0, "first": []})
    if declared.get("first", []) != list(skipped.where):
        result.add(Problem("the skipped records listed in manifest.json differ from those found reading again"))


# ------------------------------------------------------------------------------------------------ inputs


class _InputDocs:
    """The input documents in order, handed out in runs of a given count (one manifest window at a time)."""

    def __init__(self, files: Sequence[Any], opts: ReadOptions, reserve_limit: int | None = None) -> None:
        self.files = files
        self.reserve_limit = reserve_limit
        counts = InputCounts.for_files(len(files))
        self.documents, self.skipped = counts.documents, counts.skipped
        self.content_sha256 = counts.content_sha256
        self.position = 0
        self._source = read_inputs(files, opts, counts)
        self._batches = (batch for batch in self._source if batch.n_docs)
        self._held: DocBatch | None = None

    def take(self, n_docs: int, expected_tokens: int) -> Window:
        """The next ``n_docs`` documents (fewer when the inputs end), their tokens copied once into one buffer as
        ``pack`` builds a window, so a window costs verify what it cost pack. ``expected_tokens`` (what the
        manifest implies, at most ``reserve_limit``) is reserved first; more is found room for as it is read."""
        if self.reserve_limit is not None:
            expected_tokens = min(expected_tokens, self.reserve_limit)
        buffer = WindowBuffer(UNBOUNDED_TOKENS, expected_tokens)
        first_doc = self.position
        dtype = np.dtype(np.int64)
        need = n_docs
        while need:
            batch = self._held if self._held is not None else next(self._batches, None)
            self._held = None
            if batch is None:
                break
            dtype = batch.tokens.dtype
            take = min(need, batch.n_docs)
            buffer.add(batch, 0, take)
            if batch.n_docs > take:
                cut = int(batch.offsets[take])
                self._held = DocBatch(batch.file_index, batch.first_row + take, batch.offsets[take:] - cut,
                                      batch.tokens[cut:],
                                      columns={n: a.slice(take) for n, a in batch.columns.items()},
                                      token_columns={n: v[cut:] for n, v in batch.token_columns.items()})
            need -= take
            del batch
        window = buffer.take(0, first_doc, dtype)
        self.position += window.n_docs
        return window

    def close(self) -> None:
        """Stop reading (the read-ahead thread and parse workers end here, not when the interpreter collects
        them): at the end of the check, however it ends."""
        self._held = None
        self._batches.close()
        self._source.close()

    def remaining(self) -> int:
        """Documents left after the last window (read to the end, to count them)."""
        count = self._held.n_docs if self._held is not None else 0
        self._held = None
        for batch in self._batches:
            count += batch.n_docs
        return count


# ------------------------------------------------------------------------------------------------ one window


@dataclass
class _Pieces:
    doc: list[np.ndarray] = field(default_factory=list)
    offset: list[np.ndarray] = field(default_factory=list)
    length: list[np.ndarray] = field(default_factory=list)


def _check_window(fs: pafs.FileSystem, root: str, window: dict[str, Any], docs: Window, opts: _Options,
                  shard_info: dict[str, dict[str, Any]], result: VerifyResult) -> None:
    first_doc = int(window["first_doc"])
    lengths = docs.lengths
    kept = opts.kept_lengths(docs)
    _check_dropped(window, docs, kept, opts, result)
    pieces = _Pieces()
    sequences = tokens_found = 0
    for name in window["shards"]:
        found = _check_shard(fs, root, name, shard_info.get(name), first_doc, kept, docs, opts, pieces, result)
        if found is not None:
            sequences += found[0]
            tokens_found += found[1]
            result.shards += 1
    _check_coverage(first_doc, kept, pieces, result)
    for label, held in (("sequences", sequences), ("tokens", tokens_found)):
        if window[label] != held:
            result.add(Problem(f"window {window['index']}: manifest.json says {window[label]} {label}, "
                               f"its shards hold {held}"))
    result.documents += len(lengths)
    result.tokens += tokens_found
    result.sequences += sequences


def _check_dropped(window: dict[str, Any], docs: Window, kept: np.ndarray, opts: _Options,
                   result: VerifyResult) -> None:
    packed = opts.packed_lengths(docs)
    long_ = packed > opts.ctx
    expected = {
        "dropped_documents": int(long_.sum()) if opts.long_docs == "drop" else 0,
        "dropped_tokens": int((packed - kept).sum()),
        "clipped_documents": int(long_.sum()) if opts.long_docs == "truncate" else 0,
    }
    for key, value in expected.items():
        if window.get(key, 0) != value:
            result.add(Problem(f"window {window['index']}: manifest.json says {key} = {window.get(key, 0)}, "
                               f"--long-docs {opts.long_docs} on the inputs gives {value}"))


def _read_file(fs: pafs.FileSystem, root: str, name: str, listed: dict[str, Any] | None, shard: str,
               result: VerifyResult) -> bytes | None:
    """A file's bytes (None when it cannot be read: the listing check reports it), checked against its listing."""
    try:
        data = read_regular(fs, root, name, listed["bytes"] if listed is not None else None)
    except Refused as exc:
        result.add(Problem(str(exc) if name == shard else f"{name}: {exc}", shard=shard))
        return None
    except (FileNotFoundError, OSError, pa.ArrowException) as exc:
        _raise_if_refused_by_store(fs, root, name, exc)
        return None
    if listed is not None and (listed["bytes"] != len(data) or listed["sha256"] != hashlib.sha256(data).hexdigest()):
        what = "size or sha256" if name == shard else f"{name}: size or sha256"
        result.add(Problem(f"{what} differs from manifest.json (the file changed after packing)", shard=shard))
    return data


def _read_shard(fs: pafs.FileSystem, root: str, name: str, info: dict[str, Any] | None, result: VerifyResult,
                output_format: str = "parquet", columns: Sequence[str] = BASE_COLUMNS) -> pa.Table | None:
    fmt = FORMATS[output_format]
    data = _read_file(fs, root, name, info, name, result)
    if data is None:
        return None
    companions: dict[str, bytes] = {}
    for suffix in fmt.companion_suffixes:
        companion = companion_name(name, fmt, suffix)
        listed = next((f for f in (info or {}).get("files", []) if f["path"] == companion), None)
        if info is not None and listed is None:
            result.add(Problem(f"manifest.json does not list its file {companion}", shard=name))
        content = _read_file(fs, root, companion, listed, name, result)
        if content is None:
            return None  # reported by the listing check
        companions[suffix] = content
    try:
        table = fmt.decode(data, companions)
    except (ValueError, pa.ArrowException, OSError) as exc:
        kind = "Parquet file" if output_format == "parquet" else f"{output_format} shard"
        result.add(Problem(f"not a readable {kind} ({str(exc).splitlines()[0] if str(exc) else exc!r})",
                           shard=name))
        return None
    if info is not None and info.get("rows") != table.num_rows:
        result.add(Problem(f"holds {table.num_rows} rows, manifest.json says {info.get('rows')}", shard=name))
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        result.add(Problem(f"lacks column(s) {', '.join(missing)}", shard=name))
        return None
    if table.column_names != list(columns):
        result.add(Problem(f"has the columns {', '.join(table.column_names)}, not exactly {', '.join(columns)}",
                           shard=name))
    return table


def _list_parts(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    column = table.column(name).combine_chunks()
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy(zero_copy_only=False)
    return offsets - offsets[0], values


def _check_shard(fs: pafs.FileSystem, root: str, name: str, info: dict[str, Any] | None, first_doc: int,
                 kept: np.ndarray, docs: Window, opts: _Options, pieces: _Pieces, result: VerifyResult
                 ) -> tuple[int, int] | None:
    """Check one shard's rows and pieces against the window's documents; returns (rows, tokens) or None."""
    table = _read_shard(fs, root, name, info, result, opts.format, opts.shard_columns)
    if table is None:
        return None
    ctx = opts.ctx
    n_rows = table.num_rows
    token_type = table.schema.field("input_ids").type.value_type
    if FORMATS[opts.format].dtype_follows_option and token_type != pa.from_numpy_dtype(TOKEN_DTYPES[opts.read.dtype]):
        result.add(Problem(f"input_ids hold {token_type}, the manifest's dtype is {opts.read.dtype}", shard=name))
    row_offsets, row_tokens = _list_parts(table, "input_ids")
    piece_offsets, length = _list_parts(table, "seq_lengths")
    parts = [_list_parts(table, c) for c in ("doc_index", "doc_offset")]
    if any(not np.array_equal(p[0], piece_offsets) for p in parts):
        result.add(Problem("seq_lengths, doc_index and doc_offset disagree on the pieces in a row", shard=name))
        return None
    doc, offset = parts[0][1].astype(np.int64), parts[1][1].astype(np.int64)
    length = length.astype(np.int64)
    row = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(piece_offsets))
    fill = np.bincount(row, weights=length, minlength=n_rows).astype(np.int64)
    for bad, message in ((np.diff(piece_offsets) == 0, "row holds no pieces"),
                         (fill > ctx, "pieces add up to more than ctx tokens")):
        if bad.any():
            rows = np.flatnonzero(bad)
            result.add_many(len(rows), (Problem(message, shard=name, row=int(r)) for r in rows))
            return None
    row_lengths = np.diff(row_offsets)
    wrong = np.flatnonzero(row_lengths != (ctx if opts.pad else fill))
    if len(wrong):
        want = f"ctx = {ctx}" if opts.pad else f"its pieces' {int(fill[wrong[0]])} (rows are unpadded)"
        result.add(Problem(f"row has {int(row_lengths[wrong[0]])} tokens, not {want}", shard=name,
                           row=int(wrong[0])))
        return None
    if opts.pad:
        grid = row_tokens.reshape(n_rows, ctx)
        padding = np.arange(ctx) >= fill[:, None]
        bad_pad = padding & (grid != opts.pad_id)
        if bad_pad.any():
            bad_row = int(np.flatnonzero(bad_pad.any(axis=1))[0])
            result.add(Problem(f"padding after the last piece is not the pad id {opts.pad_id}", shard=name,
                               row=bad_row))
    position = np.cumsum(length) - length - np.repeat(np.cumsum(fill) - fill, np.diff(piece_offsets))
    local = doc - first_doc
    in_window = (local >= 0) & (local < len(kept))
    fits = in_window & (length >= 1) & (offset >= 0)
    fits[fits] &= offset[fits] + length[fits] <= kept[local[fits]]
    if not fits.all():
        outside = np.flatnonzero(~fits)

        def misplaced(i: int) -> Problem:
            reason = ("doc_index is outside this window's documents" if not in_window[i]
                      else f"piece {offset[i]}..{offset[i] + length[i]} lies outside the document's "
                           f"{int(kept[local[i]])} packed tokens")
            return Problem(reason, shard=name, row=int(row[i]), document=int(doc[i]))

        result.add_many(len(outside), (misplaced(int(i)) for i in outside))
        _check_training_columns(table, name, row_offsets, row_tokens, length, piece_offsets, opts, result, None)
        keep = fits
        doc, offset, length, row, position, local = (a[keep] for a in (doc, offset, length, row, position, local))
    else:
        carried = _check_carried(table, name, docs, local, offset, length, row_offsets[row] + position,
                                 row_offsets, opts, result)
        _check_training_columns(table, name, row_offsets, row_tokens, length, piece_offsets, opts, result,
                                carried.get("labels"))
    _compare_tokens(row_tokens, row_offsets[row] + position, docs, local, offset, length, opts.eos_id,
                    _PieceNames(doc, row, name), result)
    pieces.doc.append(local)
    pieces.offset.append(offset)
    pieces.length.append(length)
    return n_rows, int(length.sum())


def _check_training_columns(table: pa.Table, name: str, row_offsets: np.ndarray, row_tokens: np.ndarray,
                            length: np.ndarray, piece_offsets: np.ndarray, opts: _Options,
                            result: VerifyResult, labels_from: np.ndarray | None) -> None:
    """Each training column must be list<int64>, one value per token, equal to what ``training.py`` computes (from
    the carried labels, as read from the inputs again, when ``--keep-token labels`` gave them)."""
    if not opts.training_columns:
        return
    if labels_from is None and "labels" in (c.name for c in opts.read.keep_token):
        return  # the pieces do not line up with the inputs (reported): there are no carried labels to start from
    expected = row_columns(opts.training_columns, row_tokens, length, piece_offsets, np.diff(row_offsets),
                           labels_from=labels_from)
    for column, want in expected.items():
        if table.schema.field(column).type != pa.list_(pa.int64()):
            result.add(Problem(f"{column} holds {table.schema.field(column).type}, expected list<int64>",
                               shard=name))
            continue
        offsets, values = _list_parts(table, column)
        if not np.array_equal(offsets, row_offsets):
            bad = int(np.flatnonzero(np.diff(offsets) != np.diff(row_offsets))[0])
            result.add(Problem(f"{column} has {int(np.diff(offsets)[bad])} values, the row "
                               f"{int(np.diff(row_offsets)[bad])} tokens", shard=name, row=bad))
            continue
        differs = np.flatnonzero(values != want)
        if len(differs):
            bad = int(np.searchsorted(row_offsets, differs[0], side="right")) - 1
            result.add(Problem(f"column {column} differs from what seq_lengths give at position "
                               f"{int(differs[0] - row_offsets[bad])}", shard=name, row=bad))


def _check_carried(table: pa.Table, name: str, docs: Window, local: np.ndarray, offset: np.ndarray,
                   length: np.ndarray, out_start: np.ndarray, row_offsets: np.ndarray, opts: _Options,
                   result: VerifyResult) -> dict[str, np.ndarray]:
    """Carried columns, rebuilt from the inputs read again exactly as ``pack`` gathers them, must equal the shard's:
    per document, the value of each piece's document; per token, each piece's span with its EOS value, padding
    filled. Returns the rebuilt token columns (a carried ``labels`` is the base of the training labels)."""
    rebuilt: dict[str, np.ndarray] = {}
    n_tokens = int(row_offsets[-1])
    for column in opts.read.keep_token:
        source = docs.token_columns.get(column.name, np.empty(0, column.dtype))
        want = np.full(n_tokens, column.fill, dtype=column.dtype)
        gather_tokens(docs, local, offset, length, out_start, want,
                      eos_values(column, source, docs.offsets, opts.eos_id)[local], source)
        rebuilt[column.name] = want
        if column.name not in opts.carried:
            continue  # the base of the training labels: checked by _check_training_columns
        offsets, values = _list_parts(table, column.name)
        if not np.array_equal(offsets, row_offsets) or not np.array_equal(values, want):
            differs = np.flatnonzero(np.diff(offsets) != np.diff(row_offsets)) if len(offsets) != len(
                row_offsets) or not np.array_equal(offsets, row_offsets) else np.array(
                [int(np.searchsorted(row_offsets, np.flatnonzero(values != want)[0], side="right")) - 1])
            result.add(Problem(f"carried column {column.name} differs from the inputs'", shard=name,
                               row=int(differs[0]) if len(differs) else None))
    for column_name in opts.read.keep:
        found = table.column(column_name).combine_chunks().flatten()
        expected = docs.columns[column_name].take(pa.array(local))
        if not found.equals(expected.cast(found.type) if found.type != expected.type else expected):
            result.add(Problem(f"carried column {column_name} differs from the inputs'", shard=name))
    return rebuilt


@dataclass(frozen=True)
class _PieceNames:
    """What a problem with piece ``i`` names: its document, row and shard."""

    doc: np.ndarray
    row: np.ndarray
    shard: str


def _compare_tokens(out_tokens: np.ndarray, out_start: np.ndarray, docs: Window, local: np.ndarray,
                    offset: np.ndarray, length: np.ndarray, eos_id: int | None, names: _PieceNames,
                    result: VerifyResult) -> None:
    """Each piece's tokens in the shard must equal the same span of its document as packed (EOS appended);
    every piece that differs is one problem.

    Read straight from the window's tokens, as ``pipeline.gather_tokens`` copied them: no expanded copy of the
    window. Pieces of ``LOOP_PIECE_TOKENS`` or more are compared slice by slice, the many short ones in steps of
    ``CHECK_TOKENS`` tokens, so index arrays stay bounded by the step, not the window.
    """
    if not len(length):
        return
    doc_start = docs.offsets[local]
    copy_len = np.clip(docs.offsets[local + 1] - doc_start - offset, 0, length)  # the piece's input tokens
    src = doc_start + offset
    tokens = docs.tokens
    bad: set[int] = set()
    if eos_id is not None:  # a piece that reaches past its document's tokens ends with its EOS
        ends = np.flatnonzero(copy_len < length)
        wrong = out_tokens[out_start[ends] + length[ends] - 1] != eos_id
        bad.update(ends[wrong].tolist())
    sliced = np.flatnonzero(copy_len >= LOOP_PIECE_TOKENS)
    for i, to, at, n in zip(sliced.tolist(), out_start[sliced].tolist(), src[sliced].tolist(),
                            copy_len[sliced].tolist(), strict=True):
        if not np.array_equal(out_tokens[to:to + n], tokens[at:at + n]):
            bad.add(i)
    short = np.flatnonzero(copy_len < LOOP_PIECE_TOKENS)
    short_out, short_src, short_len = out_start[short], src[short], copy_len[short]
    for lo, hi, within in span_steps(short_len, CHECK_TOKENS):
        n = short_len[lo:hi]
        differs = out_tokens[np.repeat(short_out[lo:hi], n) + within] != tokens[np.repeat(short_src[lo:hi], n) + within]
        if differs.any():
            pieces = np.searchsorted(np.cumsum(n), np.flatnonzero(differs), side="right")
            bad.update(short[lo + np.unique(pieces)].tolist())
    result.add_many(len(bad), (
        Problem(f"tokens differ from the input (piece of {int(length[p])} tokens)", shard=names.shard,
                row=int(names.row[p]), document=int(names.doc[p])) for p in sorted(bad)))


def _check_coverage(first_doc: int, kept: np.ndarray, pieces: _Pieces, result: VerifyResult) -> None:
    """The pieces of each document must tile its kept tokens exactly: from 0, no gap, no overlap, to the end."""
    if pieces.doc:
        doc, offset, length = (np.concatenate(p) for p in (pieces.doc, pieces.offset, pieces.length))
        pieces.doc, pieces.offset, pieces.length = [], [], []  # one copy of the window's pieces, not two
    else:
        doc = offset = length = np.zeros(0, dtype=np.int64)
    order = np.lexsort((offset, doc))
    doc, offset, length = doc[order], offset[order], length[order]
    first = np.ones(len(doc), dtype=bool)
    first[1:] = doc[1:] != doc[:-1]
    expected_offset = np.zeros(len(doc), dtype=np.int64)
    expected_offset[1:] = offset[:-1] + length[:-1]
    expected_offset[first] = 0
    broken = np.flatnonzero(offset != expected_offset)

    def misfit(i: int) -> Problem:
        what = "overlaps another piece" if offset[i] < expected_offset[i] else "leaves a gap"
        return Problem(f"a piece at offset {int(offset[i])} {what} (expected offset {int(expected_offset[i])})",
                       document=first_doc + int(doc[i]))

    result.add_many(len(broken), (misfit(int(i)) for i in broken))
    covered = np.bincount(doc, weights=length, minlength=len(kept)).astype(np.int64)
    short = np.flatnonzero(covered != kept)

    def incomplete(d: int) -> Problem:
        if covered[d] == 0:
            return Problem(f"missing from the output ({int(kept[d])} tokens expected)", document=first_doc + d)
        return Problem(f"the output holds {int(covered[d])} of its tokens, expected {int(kept[d])}",
                       document=first_doc + d)

    result.add_many(len(short), (incomplete(int(d)) for d in short))
