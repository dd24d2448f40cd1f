"""Stats: how much each packing strategy truncates and pads, from one streaming pass over document lengths.

``read_corpus_lengths`` reads every input once, keeping only document lengths in input order (8 bytes a document)
and folding saved length histograms in; ``compare`` runs every (ctx, strategy) pair on those lengths (pure numpy,
``strategies.py``); ``run_stats`` does both. ``measure_histogram`` is the first half alone, for ``bestfit
histogram``: its JSON file can stand in for the shards it measured.

Lengths are kept as read (before EOS), so a saved histogram can be evaluated with or without an EOS token.
"""

from __future__ import annotations

import errno
import json
import posixpath
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from . import __version__
from .errors import InputError, OptionError, OutputError, check_field_types
from .formats.json_depth import TooDeep, loads
from .fs import InputFile, InputScan, LeftOut, check_output_file, filesystem_for, scan_inputs, storage_error
from .histogram import LONG_DOC_POLICIES, LengthHistogram, LongDocs
from .pipeline import MAX_CTX, PackOptions
from .read import (
    BAD_RECORD_POLICIES,
    DEFAULT_MAX_BAD_RECORDS,
    TOKEN_DTYPES,
    BadRecordLimit,
    LengthBatch,
    ReadOptions,
    Skipped,
    check_schemas,
    close_readers,
    read_lengths,
    run_read_options,
)
from .resources import usable_cores
from .strategies import (
    STRATEGIES,
    Strategy,
    StrategyCounts,
    bestfit,
    bucket_count,
    concat,
    concat_expected,
    ffd,
    nextfit,
    truncate,
)
from .window import window_bounds

STATS_SCHEMA = "bestfit.compare/1"
_HISTOGRAM_PREFIX = re.compile(rb'^\s*\{\s*"schema"\s*:\s*"bestfit\.histogram/')
_PEEK_BYTES = 4096


@dataclass(frozen=True)
class StatsOptions:
    """Every option of a ``stats`` run; the JSON output echoes them as resolved."""

    ctx: tuple[int, ...]
    strategies: tuple[Strategy, ...] = STRATEGIES
    column: str = "input_ids"
    eos_id: int | None = None
    long_docs: LongDocs = "split"
    window_tokens: int = 0  # 0: pack's default at each ctx
    on_bad_record: str = "error"
    dtype: str = "int32"  # ids that do not fit are refused (or skipped), as pack refuses them
    memory: int | None = None  # pack's --memory: sets pack's windows, so bestfit here plans the same ones
    rows_per_shard: int = 0  # pack's --rows-per-shard: with memory, it changes pack's window
    window_documents: int = 0
    max_bad_records: str = DEFAULT_MAX_BAD_RECORDS  # with skip: a count or a share of the records read
    split_at: int | None = None  # pack's --split-at: flat token streams split at this separator id
    stream_dtype: str | None = None  # pack's --stream-dtype: the ids of a raw .bin stream

    def pack_windows(self, ctx: int) -> tuple[int, int]:
        """``(window_tokens, window_documents)`` of ``pack`` with these options at ``ctx``: the same definition."""
        opts = PackOptions(ctx=ctx, dtype=self.dtype, window_tokens=self.window_tokens, memory=self.memory,
                           rows_per_shard=self.rows_per_shard, window_documents=self.window_documents).resolved()
        return opts.window_tokens, opts.window_documents

    def validate(self) -> None:
        check_field_types(self)
        if not self.ctx:
            raise OptionError("no --ctx given", fix="pass --ctx N (repeat it for several lengths)")
        for ctx in self.ctx:
            if not 1 <= ctx <= MAX_CTX:
                raise OptionError(f"--ctx {ctx} is out of range", fix=f"choose a sequence length in 1..{MAX_CTX}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise OptionError(f"--strategy {', '.join(unknown) or '(none)'} is unknown",
                              fix=f"use any of {', '.join(STRATEGIES)}")
        if self.long_docs not in LONG_DOC_POLICIES:
            raise OptionError(f"--long-docs {self.long_docs!r} is unknown", fix="use split, truncate or drop")
        for ctx in self.ctx:  # what pack refuses at this ctx (a window smaller than ctx, a budget too small)
            PackOptions(ctx=ctx, window_tokens=self.window_tokens, memory=self.memory,
                        rows_per_shard=self.rows_per_shard, window_documents=self.window_documents,
                        split_at=self.split_at, stream_dtype=self.stream_dtype).validate()
            self.pack_windows(ctx)
        if self.on_bad_record not in BAD_RECORD_POLICIES:
            raise OptionError(f"--on-bad-record {self.on_bad_record!r} is unknown", fix="use error or skip")
        if self.dtype not in TOKEN_DTYPES:
            raise OptionError(f"--dtype {self.dtype!r} is unknown", fix=f"use one of {', '.join(TOKEN_DTYPES)}")
        BadRecordLimit.parse(self.max_bad_records)
        if self.eos_id is not None and self.eos_id > np.iinfo(TOKEN_DTYPES[self.dtype]).max:
            raise OptionError(f"--eos-id {self.eos_id} does not fit the token dtype {self.dtype}",
                              fix="use a smaller id, or a wider --dtype")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ctx"], data["strategies"] = list(self.ctx), list(self.strategies)
        for key in ("split_at", "stream_dtype"):  # recorded only when used, as pack's manifest records them
            if data[key] is None:
                data.pop(key)
        return data


# ------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class CorpusLengths:
    """Document lengths as read (before EOS, empty documents included).

    ``in_order`` holds them in input order; it is None when some input was a saved histogram, which has no order.
    """

    histogram: LengthHistogram
    in_order: np.ndarray | None
    inputs: list[dict[str, Any]] = field(default_factory=list)  # path, format, documents (eos_id for histograms)
    left_out: tuple[LeftOut, ...] = ()  # what the folder scans and globs left out (fs.scan_inputs)

    @property
    def ordered(self) -> bool:
        return self.in_order is not None


def _peek(file: InputFile) -> bytes:
    assert file.fs is not None
    try:
        with file.fs.open_input_stream(file.fs_path, compression="detect") as stream:
            return bytes(stream.read(_PEEK_BYTES))
    except (pa.ArrowException, OSError) as exc:
        raise storage_error(file.name, exc) or InputError(file.name, f"cannot open ({exc})",
                                                          fix="check the file and its compression") from None


def _is_json_document(file: InputFile, head: bytes) -> bool:
    """A ``.json`` file holding one indented JSON document (such as ``stats.json``) rather than JSON Lines."""
    name = file.name.lower()
    if not (name.endswith(".json") or ".json." in name) or not head.lstrip().startswith(b"{"):
        return False
    first_line = head.lstrip().split(b"\n", 1)[0]
    try:
        loads(first_line)
    except TooDeep:
        return False  # JSON Lines, and the reader says the line is too deep
    except ValueError:
        return True
    return False


def load_histogram_file(file: InputFile) -> tuple[LengthHistogram, dict[str, Any]]:
    """A histogram written by ``bestfit histogram``: the histogram and the options it was measured with."""
    assert file.fs is not None
    try:
        with file.fs.open_input_stream(file.fs_path, compression="detect") as stream:
            data = loads(stream.read())
        return LengthHistogram.from_json(data), data.get("options", {})
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(file.name, f"not a valid bestfit length histogram ({exc})",
                         fix="write it again with `bestfit histogram`") from None
    except (pa.ArrowException, OSError) as exc:
        raise storage_error(file.name, exc) or InputError(file.name, f"cannot read ({exc})",
                                                          fix="check the file") from None


def read_corpus_lengths(files: Sequence[InputFile], opts: ReadOptions | None = None,
                        progress: Callable[[int], None] | None = None,
                        limit: BadRecordLimit | None = None,
                        lengths_reader: Callable[[InputFile, int, ReadOptions], Iterator[LengthBatch]] = read_lengths,
                        ) -> CorpusLengths:
    """One streaming pass over ``files`` (``fs.resolve_inputs``): every document's length, in input order, and saved
    histograms merged.

    ``.json`` files written by ``bestfit histogram`` are recognised by their content; any other ``.json`` file that
    holds one JSON document (not JSON Lines) is refused with a message instead of being parsed line by line.
    ``lengths_reader`` reads one token file's lengths (``read_lengths``; the Ray engine's reads them all at once).
    """
    opts = run_read_options(files, opts or ReadOptions())
    chunks: list[np.ndarray] = []
    saved = LengthHistogram()
    described: list[dict[str, Any]] = []
    has_saved = False
    limit = limit or BadRecordLimit()
    all_skipped = Skipped()
    read_so_far = 0
    names = ", ".join(f.name for f in files)
    try:
        for index, file in enumerate(files):
            if file.size == 0:
                raise InputError(file.name, "file is empty", fix="remove it from the inputs")
            if file.format == "jsonl" and not file.is_stdin:
                head = _peek(file)
                if _HISTOGRAM_PREFIX.match(head):
                    hist, options = load_histogram_file(file)
                    saved, has_saved = saved + hist, True
                    described.append({"path": file.name, "format": "histogram", "documents": hist.documents,
                                      "eos_id": options.get("eos_id")})
                    if progress is not None:
                        progress(file.size or 0)
                    continue
                if _is_json_document(file, head):
                    raise InputError(file.name, "holds one JSON document, neither JSON Lines nor a length histogram",
                                     fix="pass token files, or histograms written by `bestfit histogram`")
            documents = 0
            done = 0
            skipped = Skipped()
            notes: list[str] = []
            for batch in lengths_reader(file, index, opts):
                chunks.append(batch.lengths)
                documents += len(batch.lengths)
                skipped += batch.skipped
                notes.extend(batch.notes)
                if batch.skipped.count:  # a count limit fails as soon as it is passed
                    limit.check(all_skipped + skipped, read_so_far + documents, names, final=False)
                now = int((file.size or 0) * batch.fraction_done)
                if progress is not None and now > done:
                    progress(now - done)
                    done = now
            described.append({"path": file.name, "format": file.format, "documents": documents})
            if skipped.count:
                described[-1].update(skipped_records=skipped.count, skipped_first=list(skipped.where))
            if notes:
                described[-1]["notes"] = notes
            all_skipped += skipped
            read_so_far += documents
    finally:
        close_readers()  # JSONL parse workers
    in_order = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    histogram = LengthHistogram.from_lengths(in_order) + saved
    if histogram.documents == 0:
        raise InputError(", ".join(f.name for f in files)[:200], "input holds no documents", fix="check the inputs")
    limit.check(all_skipped, read_so_far, names, final=True)
    return CorpusLengths(histogram, None if has_saved else in_order, described)


# ------------------------------------------------------------------------------------------------ comparing


def _packed(raw_lengths: np.ndarray, eos: bool) -> np.ndarray:
    """Non-empty documents' lengths as packed: EOS appended when there is one."""
    nonempty = raw_lengths[raw_lengths > 0]
    return nonempty + 1 if eos else nonempty


def _packed_histogram(hist: LengthHistogram, eos: bool) -> LengthHistogram:
    keep = hist.lengths > 0
    return LengthHistogram(hist.lengths[keep] + (1 if eos else 0), hist.counts[keep])


@dataclass(frozen=True)
class StatsResult:
    """The comparison: every (ctx, strategy) pair on one corpus."""

    options: StatsOptions
    eos_id: int | None
    inputs: list[dict[str, Any]]
    ordered: bool
    documents: int  # non-empty documents
    empty_documents: int
    input_tokens: int  # tokens read, before EOS
    tokens: int  # tokens with EOS, before any long-document policy
    n_buckets: int
    results: list[StrategyCounts]
    left_out: tuple[LeftOut, ...] = ()

    def get(self, ctx: int, strategy: str) -> StrategyCounts | None:
        return next((r for r in self.results if r.ctx == ctx and r.strategy == strategy), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": STATS_SCHEMA,
            "bestfit_version": __version__,
            "inputs": self.inputs,
            "inputs_left_out": [e.to_json() for e in self.left_out],
            "options": {**self.options.to_json(), "eos_id": self.eos_id},
            "order": "input" if self.ordered else "unknown",
            "documents": self.documents,
            "empty_documents": self.empty_documents,
            "input_tokens": self.input_tokens,
            "tokens": self.tokens,
            "results": [self._result_json(r) for r in self.results],
        }

    def _result_json(self, r: StrategyCounts) -> dict[str, Any]:
        data: dict[str, Any] = {
            "ctx": r.ctx, "strategy": r.strategy, "exact": r.exact, "method": r.method,
            "documents": r.documents, "tokens": r.tokens, "sequences": r.sequences,
            "sequences_lower_bound": r.sequences_lower_bound, "padding_tokens": r.padding_tokens,
            "padding_fraction": r.padding_fraction, "truncated_documents": r.truncated_documents,
            "truncations": r.truncations, "clipped_documents": r.clipped_documents,
            "dropped_documents": r.dropped_documents, "dropped_tokens": r.dropped_tokens,
        }
        base = self.get(r.ctx, "concat")
        if base is not None and r.strategy != "concat":
            data["vs_concat"] = {key: data[key] - getattr(base, key) for key in (
                "sequences", "padding_tokens", "padding_fraction", "truncated_documents", "truncations",
                "dropped_tokens")}
        data["buckets"] = bucket_rows(r, self.n_buckets)
        return data


def bucket_rows(r: StrategyCounts, n_buckets: int) -> list[dict[str, Any]]:
    """Per document-length bucket (``2**k .. 2**(k+1) - 1`` tokens, EOS included) of one result."""
    totals = r.per_document.buckets(n_buckets)
    rows = []
    for k in range(n_buckets):
        documents = int(round(totals["documents"][k]))
        truncated, truncations = float(totals["truncated_documents"][k]), float(totals["truncations"][k])
        rows.append({
            "min_length": 1 << k, "max_length": (1 << (k + 1)) - 1, "documents": documents,
            "truncated_documents": round(truncated) if r.exact else truncated,
            "truncations": round(truncations) if r.exact else truncations,
            "truncations_per_document": truncations / documents if documents else 0.0,
            "clipped_documents": int(round(totals["clipped_documents"][k])),
            "dropped_documents": int(round(totals["dropped_documents"][k])),
        })
    return rows


def resolve_eos(opts: StatsOptions, corpus: CorpusLengths) -> int | None:
    """``--eos-id`` if given, else what the saved histograms recorded (token files record nothing, so they do not
    disagree with a histogram)."""
    if opts.eos_id is not None:
        return opts.eos_id
    recorded = {item.get("eos_id") for item in corpus.inputs if item.get("format") == "histogram"}
    if len(recorded) > 1:
        raise OptionError("the inputs were measured with different --eos-id settings",
                          fix="pass --eos-id ID to choose one for all of them")
    return next(iter(recorded), None)


def compare(corpus: CorpusLengths, opts: StatsOptions) -> StatsResult:
    """Every (ctx, strategy) pair of ``opts`` on the corpus; nothing here reads a file."""
    opts.validate()
    eos_id = resolve_eos(opts, corpus)
    eos = eos_id is not None
    hist = _packed_histogram(corpus.histogram, eos)
    if hist.documents == 0:  # as pack refuses it: nothing to pack is not a comparison
        names = ", ".join(str(item["path"]) for item in corpus.inputs)[:200]
        raise InputError(names, f"input holds no documents with tokens ({corpus.histogram.documents:,} records read)",
                         fix="check the inputs and --column")
    raw = corpus.in_order
    in_order = _packed(raw, eos) if raw is not None else None
    planned: dict[tuple[int, int], list[LengthHistogram]] = {}
    results = []
    for ctx in sorted(set(opts.ctx)):
        # pack's windows at this ctx (with --memory they depend on it); a histogram has no order, so bestfit
        # plans it as one window, flagged when pack would have cut it into several.
        window_tokens, window_documents = opts.pack_windows(ctx)
        if raw is None:
            windows = [hist]
        else:
            key = (window_tokens, window_documents)
            if key not in planned:
                planned[key] = [LengthHistogram.from_lengths(_packed(raw[a:b], eos))
                                for a, b in window_bounds(raw, window_tokens, window_documents)]
            windows = planned[key]
        unwindowed = raw is None and (corpus.histogram.tokens > window_tokens
                                      or corpus.histogram.documents > window_documents)
        for strategy in dict.fromkeys(opts.strategies):  # each once, in the order given
            results.append(_run(strategy, ctx, opts, hist, in_order, windows, unwindowed))
    max_length = int(hist.lengths[-1]) if hist.lengths.size else 1
    raw_hist = corpus.histogram
    # Records skipped as bad keep their place as length-0 documents (as in pack); they are not empty documents.
    skipped = sum(int(item.get("skipped_records", 0)) for item in corpus.inputs)
    return StatsResult(
        options=opts, eos_id=eos_id, inputs=corpus.inputs, ordered=corpus.ordered, documents=hist.documents,
        empty_documents=int(raw_hist.counts[raw_hist.lengths == 0].sum()) - skipped, input_tokens=raw_hist.tokens,
        tokens=hist.tokens, n_buckets=bucket_count(max_length, max(opts.ctx)), results=results,
        left_out=corpus.left_out)


WINDOWLESS_METHOD = ("document order unknown (histogram input): one plan over the whole corpus, while pack plans "
                     "windows of --window-tokens tokens and may fill a few more sequences")


def _run(strategy: Strategy, ctx: int, opts: StatsOptions, hist: LengthHistogram, in_order: np.ndarray | None,
         windows: list[LengthHistogram], unwindowed: bool) -> StrategyCounts:
    long_docs = opts.long_docs
    if strategy == "concat":
        return concat(in_order, ctx, long_docs) if in_order is not None else concat_expected(hist, ctx, long_docs)
    if strategy == "bestfit":
        counts = bestfit(windows, ctx, long_docs)
        if unwindowed:
            counts = replace(counts, exact=False, method=WINDOWLESS_METHOD)
        return counts
    if strategy == "ffd":
        return ffd(hist, ctx, long_docs)
    if strategy == "nextfit":
        return nextfit(in_order if in_order is not None else hist, ctx, long_docs)
    return truncate(hist, ctx)


def run_stats(inputs: Sequence[str], opts: StatsOptions,
              progress_factory: Callable[[int], Any] | None = None, *, engine: str = "local",
              ray_address: str | None = None) -> StatsResult:
    """Read the lengths of ``inputs`` once and compare every strategy at every ctx of ``opts``.

    ``engine="ray"`` reads every file's lengths as a Ray task (``ray_engine.py``); the result is the same.
    """
    opts.validate()
    read_opts = ReadOptions(column=opts.column, dtype=opts.dtype, on_bad_record=opts.on_bad_record,
                            split_at=opts.split_at, stream_dtype=opts.stream_dtype, parse_workers=usable_cores())
    limit = BadRecordLimit.parse(opts.max_bad_records)
    return compare(_read_with_progress(scan_inputs(inputs), read_opts, progress_factory, limit, engine, ray_address),
                   opts)


def _read_with_progress(scan: InputScan, opts: ReadOptions, progress_factory: Callable[[int], Any] | None,
                        limit: BadRecordLimit | None = None, engine: str = "local",
                        ray_address: str | None = None) -> CorpusLengths:
    if engine not in ("local", "ray"):
        raise OptionError(f"--engine {engine!r} is unknown", fix="use local or ray")
    files = list(scan.files)
    check_schemas(files, opts)  # a wrong --column in the last file fails before the first is read
    bar = progress_factory(sum(f.size or 0 for f in files)) if progress_factory else None
    try:
        if engine == "ray":
            from .ray_engine import RayEngine

            with RayEngine(ray_address) as ray_engine, ray_engine.lengths_reader(files, opts) as reader:
                corpus = read_corpus_lengths(files, opts, bar.update if bar is not None else None, limit, reader)
        else:
            corpus = read_corpus_lengths(files, opts, bar.update if bar is not None else None, limit)
        return replace(corpus, left_out=scan.left_out)
    finally:
        if bar is not None:
            bar.close()


# ------------------------------------------------------------------------------------------------ histogram files


def measure_histogram(inputs: Sequence[str], column: str = "input_ids", eos_id: int | None = None,
                      progress_factory: Callable[[int], Any] | None = None, on_bad_record: str = "error",
                      dtype: str = "int32", output: str | None = None,
                      max_bad_records: str = DEFAULT_MAX_BAD_RECORDS, split_at: int | None = None,
                      stream_dtype: str | None = None, *, engine: str = "local",
                      ray_address: str | None = None) -> dict[str, Any]:
    """The JSON document ``bestfit histogram`` writes: exact counts per length (before EOS), inputs, options.

    Ids are checked against ``dtype`` as ``pack`` checks them, so a histogram counts the documents pack would pack.
    ``output``, where the document will be saved, is checked before anything is read (``check_histogram_output``).
    """
    if dtype not in TOKEN_DTYPES:
        raise OptionError(f"--dtype {dtype!r} is unknown", fix=f"use one of {', '.join(TOKEN_DTYPES)}")
    if eos_id is not None and eos_id > np.iinfo(TOKEN_DTYPES[dtype]).max:
        raise OptionError(f"--eos-id {eos_id} does not fit the token dtype {dtype}",
                          fix="use a smaller id, or a wider --dtype")  # the words pack and stats use
    PackOptions(ctx=1, split_at=split_at, stream_dtype=stream_dtype).validate()  # the words pack uses for them
    read_opts = ReadOptions(column=column, dtype=dtype, on_bad_record=on_bad_record, split_at=split_at,
                            stream_dtype=stream_dtype, parse_workers=usable_cores())
    scan = scan_inputs(inputs)
    if output is not None:
        check_histogram_output(output, inputs, scan)
    corpus = _read_with_progress(scan, read_opts, progress_factory, BadRecordLimit.parse(max_bad_records), engine,
                                 ray_address)
    return {**corpus.histogram.to_json(), "bestfit_version": __version__, "inputs": corpus.inputs,
            "inputs_left_out": [e.to_json() for e in corpus.left_out],
            "options": {"column": column, "eos_id": eos_id, "on_bad_record": on_bad_record, "dtype": dtype,
                        "max_bad_records": max_bad_records,
                        **{k: v for k, v in (("split_at", split_at), ("stream_dtype", stream_dtype)) if v is not None}},
            "note": "lengths are token counts as read, before EOS; empty documents have length 0"}


def check_histogram_output(output: str, inputs: Sequence[str], scan: InputScan) -> None:
    """Refuse an ``-o`` that would destroy an input or be read back as one, or that replaces a file bestfit did not
    write: an input file itself, a path inside an input folder, an existing file that is not a bestfit histogram, or
    a name that is a glob (``-o shard-0*.parquet``: the shell hands the first shard to ``-o``)."""
    if output == "-":
        return
    check_output_file(output, inputs, scan.files, what="-o")
    fs, path = filesystem_for(output)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound and any(ch in output for ch in "*?["):
        raise OutputError(f"-o {output}: looks like a glob; -o takes one file name",
                          fix="give -o the name of the histogram to write, such as -o hist.json")
    if info.type == pafs.FileType.File:
        try:
            with fs.open_input_stream(path) as stream:
                head = bytes(stream.read(_PEEK_BYTES))
        except (pa.ArrowException, OSError):
            head = b""
        if not _HISTOGRAM_PREFIX.match(head):
            raise OutputError(f"-o {output}: exists and is not a bestfit histogram, so it is not replaced",
                              fix="give -o a new file name (a glob after -o hands its first match to -o)")


def save_json(document: dict[str, Any], out: str) -> None:
    """Write a JSON document to ``out`` (local path or URI): to a temporary name beside it, then renamed.

    The temporary name is unique, so two runs writing the same file never share one, and it is removed whenever the
    write fails (full disk, Ctrl-C), so a failure leaves ``out`` as it was and nothing beside it.
    """
    fs, path = filesystem_for(out)
    folder, name = posixpath.split(path)
    temp = posixpath.join(folder, f"{name}.{uuid.uuid4().hex[:12]}.bestfit-tmp")
    try:
        with fs.open_output_stream(temp) as stream:
            stream.write(json.dumps(document).encode() + b"\n")
        fs.move(temp, path)
    except BaseException as exc:
        try:
            fs.delete_file(temp)
        except (pa.ArrowException, OSError):
            pass  # never created, or already renamed
        if not isinstance(exc, (pa.ArrowException, OSError)):
            raise
        failure = storage_error(out, exc)
        if failure is not None:
            raise failure from None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        raise OutputError(f"{out}: cannot write ({reason})", fix="free disk space, or choose another path" if full
                          else "check the path and its permissions") from None


# ------------------------------------------------------------------------------------------------ table


def _num(value: float, exact: bool) -> str:
    return f"{value:,.0f}" if exact else f"~{value:,.0f}"


def _delta(r: StrategyCounts, base: StrategyCounts | None, key: str) -> str:
    """Change against concat, in percent, dimmed after the value."""
    if base is None or r is base:
        return ""
    value, reference = getattr(r, key), getattr(base, key)
    if reference == 0:
        return "" if value == 0 else " [dim]new[/]"
    return f" [dim]{percent_change(value, reference)}[/]"


def percent_change(value: float, reference: float) -> str:
    """``value`` against ``reference`` in percent, with as many digits as it takes for a change never to look like
    none: ``-0.3%``, ``+0.0041%``, ``+12%``."""
    change = 100 * (value - reference) / reference
    if change == 0:
        return "0%"
    if abs(change) >= 10:
        return f"{change:+.0f}%"
    if abs(change) >= 1:
        return f"{change:+.1f}%"
    if abs(change) >= 1e-4:
        return f"{change:+.2g}%"
    return f"{'+' if change > 0 else '-'}<0.0001%"


def _size(n: int) -> str:
    for unit, scale in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _rows(rows: list[StrategyCounts], base: StrategyCounts | None, total_tokens: int) -> list[tuple[str, list[str]]]:
    """Label and cells of each line of the side-by-side table."""
    def share(part: float, whole: int) -> str:
        return f"{100 * part / whole:.1f}%" if whole else "-"

    lines = [
        ("sequences", [f"{r.sequences:,}{_delta(r, base, 'sequences')}" for r in rows]),
        ("  lower bound", [f"{r.sequences_lower_bound:,}" for r in rows]),
        ("padding", [f"{100 * r.padding_fraction:.2f}%" for r in rows]),
        ("truncated docs", [_num(r.truncated_documents, r.exact) + _delta(r, base, "truncated_documents")
                            for r in rows]),
        ("  share of docs", [f"{100 * r.truncated_documents / r.documents:.1f}%" if r.documents else "-"
                             for r in rows]),
        ("truncations", [_num(r.truncations, r.exact) + _delta(r, base, "truncations") for r in rows]),
    ]
    if any(r.clipped_documents for r in rows):
        lines.append(("clipped docs", [f"{r.clipped_documents:,}" for r in rows]))
    if any(r.dropped_documents for r in rows):
        lines.append(("dropped docs", [f"{r.dropped_documents:,}" for r in rows]))
    if any(r.dropped_tokens for r in rows):
        lines.append(("dropped tokens", [f"{r.dropped_tokens:,}" for r in rows]))
        lines.append(("  share of tokens", [share(r.dropped_tokens, total_tokens) for r in rows]))
    return lines


def render_stats(result: StatsResult) -> list[Any]:
    """Rich tables, one per ctx: strategies side by side (change against concat dimmed), then truncations per
    document by length bucket; estimated columns are starred and explained below."""
    from rich.table import Table

    tables: list[Any] = []
    for ctx in sorted(set(result.options.ctx)):
        rows = [r for r in result.results if r.ctx == ctx]
        eos = " incl. EOS" if result.eos_id is not None else ""
        table = Table(title=f"ctx {ctx:,}: {result.documents:,} documents, {result.tokens:,} tokens{eos}",
                      title_justify="left")
        table.add_column("", no_wrap=True)
        for r in rows:
            table.add_column(r.strategy + ("" if r.exact else " *"), justify="right")
        for label, cells in _rows(rows, result.get(ctx, "concat"), result.tokens):
            table.add_row(label, *cells)
        tables.append(table)
        tables.append(_bucket_table(result, rows, ctx))
    notes = sorted({f"{r.strategy}: {r.method}" for r in result.results if r.method})
    if notes:
        tables.append("\n".join(f"* {note}" for note in notes))
    return tables


def _bucket_table(result: StatsResult, rows: list[StrategyCounts], ctx: int) -> Any:
    from rich.table import Table

    table = Table(title=f"ctx {ctx:,}: truncations per document, by document length", title_justify="left")
    table.add_column("length")
    table.add_column("docs", justify="right")
    for r in rows:
        name = "truncate (clipped)" if r.strategy == "truncate" else r.strategy
        table.add_column(name + ("" if r.exact else " *"), justify="right")
    buckets = [bucket_rows(r, result.n_buckets) for r in rows]
    for k, first in enumerate(buckets[0]):
        if not first["documents"]:
            continue
        cells = []
        for r, per_bucket in zip(rows, buckets, strict=True):
            b = per_bucket[k]
            value = b["clipped_documents"] / b["documents"] if r.strategy == "truncate" else b[
                "truncations_per_document"]
            cells.append(f"{value:.2f}" if value else "0")
        label = f"{_size(first['min_length'])}-{_size(first['max_length'] + 1)}"
        table.add_row(label, f"{first['documents']:,}", *cells)
    return table
