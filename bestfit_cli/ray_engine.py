"""The Ray engine: the local engine's windows, each packed by a Ray task that reads its own inputs and writes its own
shards; the driver plans, collects and commits.

An engine only schedules. The windows are ``window.plan_windows``'s, which are ``window.windows``' (the local
engine's) computed before reading, from the blocks a format knows without reading its documents
(``InputFormat.blocks``: Parquet row groups from the footer, Megatron runs of documents from the ``.idx``, local
Arrow record batches); only the blocks a window ends inside are read (lengths only). Any other input (JSONL, token
streams, Arrow on an object store), or any input under ``--on-bad-record skip``, is read once for its lengths, one
task per file, which also notes where its batches start (``Checkpoint``). A window task reads only its rows
(``InputFormat.read_rows``): from its row group, its first document, its record batch or the checkpoint at or
before its first row, never from the file's top. Each window task then packs with
``pipeline.pack_window`` and writes its shards as the local engine does (``write.ShardStager``: staged in OUT's
temporary folder and flushed before the task returns, or put into OUT on an object store, claimed first), so the
commit, the rollback and the output bytes are the local engine's. A task killed mid-way runs again
(``max_retries``) and writes the same names with the same bytes; only the shards the finished attempt returns are
committed. A bad record is returned as its typed error, and the driver raises the first in input order: the one
the local engine would have met first.

Carried columns (``--keep``, ``--keep-token``) are read by each task with its rows. The one thing a task cannot
know alone is where each ``--keep`` column's type was fixed (``carry.DocumentTypes``: by its first non-null values in
input order): the driver finds it from the footers' schemas and the lengths pass, and hands it to every task.

Ray is an optional dependency (``pip install 'bestfit-cli[ray]'``), imported only here and only when used.
"""

from __future__ import annotations

import bisect
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .carry import DocumentTypes, FirstType, note_first_types
from .errors import BestfitError, InputError, OptionError
from .formats.base import Checkpoint
from .fs import InputFile
from .read import (
    BadRecordLimit,
    InputCounts,
    LengthBatch,
    ReadOptions,
    Skipped,
    input_format,
    read_lengths,
    read_rows,
)
from .window import Block, WindowBuffer, WindowPlan, WindowSpec, plan_windows
from .write import ShardStager

if TYPE_CHECKING:
    from .pipeline import PackOptions, WindowResult

ENGINES = ("local", "ray")
RAY_ADDRESS_ENV = "RAY_ADDRESS"
MAX_RETRIES = 3  # a window task whose worker dies is run again this many times
FORWARDED_ENV = ("AWS_", "BESTFIT_TEST_")  # passed on to the tasks: object-store settings, test hooks
CANCEL_WAIT_SECONDS = 30.0
CONNECT_SECONDS = 5.0  # a cluster's address must accept a connection within this, or the run stops at once
WINDOWS_AHEAD_PER_CPU = 2  # window tasks in flight per cluster CPU (windows_ahead)
FINISH_WAIT_SECONDS = 3600.0  # after bad input, the windows being packed finish (each a window's work at most)
# After Ctrl-C or SIGTERM, the windows being packed get this long to finish before they are cancelled: cancelling a
# task just as it returns can abort the driver inside Ray ("Tried to complete task that was not pending"), so the
# run cancels only what is still running after it (a SIGTERM's sender, Slurm or Kubernetes, waits 30 s or more).
SIGNAL_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class FileLengths:
    """One input file's document lengths as its reader hands them on (batch by batch, with what it skipped)."""

    batches: tuple[LengthBatch, ...]
    content_sha256: str | None = None  # JSONL: sha256 of all its bytes, as the local engine records it
    checkpoints: tuple[Checkpoint, ...] = ()  # JSONL: where reads of its later rows may start (``read_from``)
    document_types: dict[str, FirstType] = field(default_factory=dict)  # --keep: where each type is fixed
    error: BestfitError | None = None  # what stopped the read after ``batches`` (a bad record)

    @property
    def documents(self) -> int:
        return sum(len(b.lengths) for b in self.batches)

    @property
    def lengths(self) -> np.ndarray:
        return np.concatenate([b.lengths for b in self.batches]) if self.batches else np.empty(0, dtype=np.int64)


def file_lengths(file: InputFile, index: int, opts: ReadOptions, full: bool = False) -> FileLengths:
    """Read one file's lengths (a task of the lengths pass); ``full`` reads it as ``pack`` does, so that the content
    hash the manifest records (a JSONL file's) comes with them."""
    if file.size == 0:
        raise InputError(file.name, "file is empty", fix="remove it from the inputs")
    if not full:
        return FileLengths(tuple(read_lengths(file, index, opts)))
    batches, sha = [], None
    checkpoints: list[Checkpoint] = []
    types: dict[str, FirstType] = {}
    try:
        for batch in input_format(file).read_checkpointed(file, index, opts, checkpoints):
            batches.append(LengthBatch(index, batch.first_row, batch.lengths, batch.fraction_done, batch.skipped,
                                       batch.notes))
            sha = batch.content_sha256 or sha
            note_first_types(types, index, file.name, batch.first_row,
                             {name: array.type for name, array in batch.columns.items()})
    except BestfitError as exc:
        # The rows before it still go into windows, whose tasks may meet an earlier failure: a value that cannot be
        # cast to its column's type, which only a reader of every file before it can tell.
        return FileLengths(tuple(batches), None, tuple(checkpoints), types, exc)
    return FileLengths(tuple(batches), sha, tuple(checkpoints), types)


def _lengths_task(file: InputFile, index: int, opts: ReadOptions, full: bool = False
                  ) -> FileLengths | BestfitError:
    try:
        return file_lengths(file, index, opts, full)
    except BestfitError as exc:  # a value, not a task failure: no retry, and the driver chooses which to raise
        return exc


class StopFlag:
    """Set by the driver when the run has failed on bad input (a Ray actor): a window task that starts after it
    does nothing. The driver then waits for the tasks instead of cancelling them, since a task cancelled while it
    returns can abort the driver inside Ray (``task_manager.cc``: "Tried to complete task that was not pending"),
    before the run's one-line error is shown."""

    def __init__(self) -> None:
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True

    def is_stopped(self) -> bool:
        return self.stopped


def _pack_task(spec: WindowSpec, sources: list[tuple[int, int, int]], starts: list[Checkpoint | None],
               files: Sequence[InputFile], read_opts: ReadOptions, opts: PackOptions, stager: ShardStager,
               document_types: dict[str, FirstType] | None = None, stop: Any = None
               ) -> tuple[WindowResult, np.ndarray] | BestfitError | None:
    """Read one planned window from shared storage, pack it and stage its shards (runs on a Ray worker); each
    source's reading starts at its checkpoint (``starts``), if it has one. Its --keep columns are cast to the types
    the driver found fixed before them (``document_types``), as the local engine casts them reading every input.
    Returns None, having done nothing, once the run has failed (``stop``, a ``StopFlag``)."""
    from .pipeline import kept_lengths, pack_window

    if stop is not None and _ray().get(stop.is_stopped.remote()):
        stager.close()
        return None
    try:
        buffer = WindowBuffer(max(spec.n_tokens, 1), expected_tokens=spec.n_tokens)
        dtype = np.dtype(np.int64)
        types = DocumentTypes(read_opts.keep, document_types)
        for (file_index, lo, hi), start in zip(sources, starts, strict=True):
            for batch in read_rows(files[file_index], file_index, read_opts, lo, hi, start):
                if batch.columns:
                    batch = replace(batch, columns=types.conform(files[file_index].name, batch.columns,
                                                                 (file_index, batch.first_row)))
                dtype = batch.tokens.dtype
                if buffer.filled + batch.n_tokens > spec.n_tokens:
                    raise _changed(files[file_index], batch.first_row)
                buffer.add(batch, 0, batch.n_docs)
        if buffer.n_docs != spec.n_docs or buffer.filled != spec.n_tokens:
            raise _changed(files[sources[-1][0]] if sources else files[0], spec.first_doc)
        window = buffer.take(spec.index, spec.first_doc, dtype)
        result = pack_window(window, opts, stager)
        stager.await_syncs()  # the window's shards are on the disk before the driver can count it done
        return result, kept_lengths(window, opts)
    except BestfitError as exc:
        return exc
    finally:
        stager.close()


def _checkpoint_before(checkpoints: list[Checkpoint], row: int) -> Checkpoint | None:
    """The last checkpoint at or before ``row`` (checkpoints are in row order), or None (read from the start)."""
    at = bisect.bisect_right([c.row for c in checkpoints], row)
    return checkpoints[at - 1] if at else None


def _changed(file: InputFile, row: int) -> InputError:
    return InputError(file.name, f"changed while it was read: its documents from row {row:,} on differ from what "
                                 "the windows were planned on", fix="let whatever writes it finish, then pack again")


# ------------------------------------------------------------------------------------------------ the driver


def check_inputs(files: Sequence[InputFile]) -> None:
    for file in files:
        if file.is_stdin:
            raise OptionError("--engine ray reads the inputs on the cluster's workers, which stdin (-) cannot be",
                              fix="save the input to a file on shared storage (or s3://), or use --engine local")


class RayEngine:
    """Runs the windows of ``pack`` and the lengths pass of ``stats`` and ``histogram`` as Ray tasks.

    ``address`` is a cluster's (``ray://host:10001`` or ``host:6379``); None takes ``RAY_ADDRESS`` or else starts a
    local Ray for the run.
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = address or os.environ.get(RAY_ADDRESS_ENV) or None
        self._from_env = not address and self.address is not None
        self._started = False

    def __enter__(self) -> RayEngine:
        ray = _ray()
        if not ray.is_initialized():
            if self.address is not None:
                self._check_reachable()
            env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                ray.init(address=self.address, runtime_env={"env_vars": env} if env else None,
                         logging_level="ERROR", log_to_driver=False, include_dashboard=False,
                         configure_logging=True)
            except Exception as exc:  # noqa: BLE001 -- Ray raises bare Exception when a local start times out
                where = self.address or "a new local Ray"
                detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                raise BestfitError(f"--engine ray: cannot connect to {where} ({detail})",
                                   fix="check --ray-address or RAY_ADDRESS, or start a cluster (ray start --head) "
                                       "and pass its address") from None
            finally:
                # Ray's core installs its own SIGTERM handler (print a stack, abort); the CLI's unwinds the run
                # so that the tasks are cancelled and OUT rolled back.
                if threading.current_thread() is threading.main_thread():
                    for sig, handler in handlers.items():
                        if callable(handler):
                            signal.signal(sig, handler)
            self._started = True
        return self

    def _check_reachable(self) -> None:
        """Refuse at once an address that nothing listens on: ``ray.init`` would retry it for many minutes (20
        tries of about 40 s each, ``NUM_REDIS_GET_RETRIES``), printing a warning per try, before it gives up."""
        assert self.address is not None
        target = _connect_target(self.address)
        if target is None:
            return  # "auto", "local", a URL: Ray's own lookup, which fails on its own
        host, port = target
        try:
            socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
        except OSError as exc:
            reason = (f"no answer within {CONNECT_SECONDS:g} s" if isinstance(exc, TimeoutError)
                      else (exc.strerror or type(exc).__name__).lower())
            if host not in self.address:
                reason += f" at {host}:{port}, the address Ray connects to for it"
            where = f"{RAY_ADDRESS_ENV}={self.address}" if self._from_env else self.address
            drop = f"unset {RAY_ADDRESS_ENV}" if self._from_env else "drop --ray-address"
            raise BestfitError(f"--engine ray: no Ray cluster at {where} ({reason})",
                               fix=f"start it with `ray start --head` and pass the address it prints, or {drop} to "
                                   "start a local Ray") from None

    def __exit__(self, *exc: object) -> None:
        if self._started:
            _ray().shutdown()
            self._started = False

    # -------------------------------------------------------------------------------------------- lengths pass

    @contextmanager
    def lengths_reader(self, files: Sequence[InputFile], opts: ReadOptions
                       ) -> Iterator[Callable[[InputFile, int, ReadOptions], Iterator[LengthBatch]]]:
        """A ``read.read_lengths`` stand-in for ``stats.read_corpus_lengths``: every file's lengths read at once,
        one task per file, handed on in input order (each file's error when its turn comes).

        Whatever ends the block (a file's error, the bad-record limit, Ctrl-C, or a reader done before the last
        file), the tasks not yet taken are cancelled as it ends, so none runs on in a cluster the process stays
        connected to."""
        check_inputs(files)
        opts = replace(opts, parse_workers=1)  # a task holds one CPU: it parses in its own process
        ray = _ray()
        task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_lengths_task)
        refs = {index: task.remote(file, index, opts) for index, file in enumerate(files)}

        def read(file: InputFile, index: int, _opts: ReadOptions) -> Iterator[LengthBatch]:
            result = _get(refs.pop(index))
            if isinstance(result, BaseException):
                raise result
            yield from result.batches

        try:
            yield read
        finally:
            self.cancel(list(refs.values()))

    # -------------------------------------------------------------------------------------------- pack

    def pack_windows(self, files: Sequence[InputFile], read_opts: ReadOptions, opts: PackOptions,
                     stager: ShardStager, progress: Callable[[int], None] | None = None
                     ) -> tuple[list[WindowResult], list[np.ndarray], InputCounts]:
        """Plan the windows, pack each as a task, and return the results, each window's kept lengths (for the
        concatenation baseline) and the per-file counts, in window order; raises the first failure in input
        order after cancelling every task still running."""
        read_opts = replace(read_opts, parse_workers=1)  # a task holds one CPU: it parses in its own process
        check_inputs(files)
        ray = _ray()
        counts = InputCounts.for_files(len(files))
        lengths_task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_lengths_task)
        footers: dict[int, list[tuple[int, int, int | None]]] = {}
        schema_types: dict[int, dict[str, Any]] = {}  # --keep columns' types of the files with footers
        passes: dict[int, Any] = {}
        for i, f in enumerate(files):
            blocks = input_format(f).blocks(f, read_opts) if f.size else None
            # With --keep, a file's blocks serve only where its format knows their columns' types without reading.
            known = input_format(f).document_types(f, read_opts) if blocks is not None and read_opts.keep else {}
            if blocks is not None and known is not None:
                footers[i] = blocks
                schema_types[i] = known
            else:
                passes[i] = lengths_task.remote(f, i, read_opts, True)
        limit = opts.bad_record_limit
        names = ", ".join(f.name for f in files)
        pending: list[Any] = []
        checkpoints: dict[int, list[Checkpoint]] = {}
        document_types: dict[str, FirstType] = {}
        stop = None
        try:
            plan = plan_windows(self._blocks(files, footers, passes, counts, limit, names, checkpoints,
                                             schema_types, document_types),
                                opts.window_tokens,
                                opts.window_documents,
                                lambda b: input_format(files[b.file_index]).block_lengths(
                                    files[b.file_index], read_opts, b.first_row, b.first_row + b.rows))
            self.cancel(list(passes.values()))
            pack_task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES,
                                   **({"memory": opts.memory} if opts.memory else {}))(_pack_task)
            files_ref = ray.put(list(files))
            stop = ray.remote(num_cpus=0)(StopFlag).remote()
            pending = []
            windows = iter(plan.windows)

            def submit() -> None:
                """Submit the next window's task, if any is left."""
                spec = next(windows, None)
                if spec is not None:
                    sources = plan.sources(spec)
                    starts = [_checkpoint_before(checkpoints.get(i, []), lo) for i, lo, _ in sources]
                    pending.append(pack_task.remote(spec, sources, starts, files_ref, read_opts, opts, stager,
                                                    document_types, stop))

            for _ in range(windows_ahead(ray)):
                submit()
            results, kept = self._collect(plan, pending, files, progress, submit)
        except BestfitError:
            if stop is None:
                self.cancel(pending + list(passes.values()))
            else:  # bad input: the tasks still to start end at once, those running finish their window
                ray.get(stop.stop.remote())
                self.cancel(list(passes.values()))
                self.finish(pending)
            raise
        except BaseException:  # Ctrl-C, SIGTERM: the same flag, but a short wait before cancelling the rest
            if stop is None or not self.raise_flag(stop):
                self.cancel(pending + list(passes.values()))
            else:
                self.cancel(list(passes.values()))
                self.finish(pending, SIGNAL_WAIT_SECONDS)
            raise
        if plan.error is not None:
            raise plan.error
        return results, kept, counts

    def _blocks(self, files: Sequence[InputFile], footers: dict[int, list[tuple[int, int, int | None]]],
                passes: dict[int, Any], counts: InputCounts, limit: BadRecordLimit, names: str,
                checkpoints: dict[int, list[Checkpoint]], schema_types: dict[int, dict[str, Any]],
                document_types: dict[str, FirstType]) -> Iterator[Block]:
        """Every file's blocks in input order: what its format knows without reading (Parquet row groups from the
        footer), or its lengths as the lengths pass read them (whose bad records are counted against the limit
        batch by batch, as the local engine counts them while it reads). Fills ``document_types`` on the way: for
        each --keep column, the first batch in input order whose values are typed (a footer's schema, else what
        the lengths pass saw), as the local engine's ``DocumentTypes`` meets it."""
        for index, file in enumerate(files):
            if file.size == 0:
                raise InputError(file.name, "file is empty", fix="remove it from the inputs")
            if index in footers:
                # A Parquet file hands on batches of its schema's types from row 0 (one even without rows).
                note_first_types(document_types, index, file.name, 0, schema_types[index])
                for first_row, rows, tokens in footers[index]:
                    counts.documents[index] += rows
                    yield Block(index, first_row, rows, tokens)
                continue
            result = _get(passes.pop(index))
            if isinstance(result, BaseException):
                raise result
            for name, first in result.document_types.items():
                document_types.setdefault(name, first)
            for batch in result.batches:
                counts.documents[index] += len(batch.lengths)
                counts.skipped[index] += batch.skipped
                counts.notes[index].extend(batch.notes)
                if batch.skipped.count:
                    limit.check(sum(counts.skipped, Skipped()), sum(counts.documents), names, final=False)
            counts.content_sha256[index] = result.content_sha256
            checkpoints[index] = list(result.checkpoints)
            if result.documents or result.error is None:
                yield Block(index, 0, result.documents, lengths=result.lengths)
            if result.error is not None:  # after the windows of the rows before it, which may fail first
                raise result.error

    def _collect(self, plan: WindowPlan, pending: list[Any], files: Sequence[InputFile],
                 progress: Callable[[int], None] | None, submit: Callable[[], None]
                 ) -> tuple[list[WindowResult], list[np.ndarray]]:
        """Each window's outcome in window order; each one collected lets the next window's task be submitted."""
        total_tokens = max(sum(s.n_tokens for s in plan.windows), 1)
        total_bytes = sum(f.size or 0 for f in files)
        results, kept = [], []
        done_tokens = shown = 0
        for index, spec in enumerate(plan.windows):
            outcome = _get(pending[index])
            if isinstance(outcome, BaseException):
                raise outcome
            submit()
            result, lengths = outcome
            results.append(result)
            kept.append(lengths)
            done_tokens += spec.n_tokens
            now = total_bytes * done_tokens // total_tokens
            if progress is not None and now > shown:
                progress(now - shown)
                shown = now
        return results, kept

    @staticmethod
    def raise_flag(stop: Any) -> bool:
        """Set the run's ``StopFlag``: True once it is set (within ``CANCEL_WAIT_SECONDS``)."""
        try:
            _ray().get(stop.stop.remote(), timeout=CANCEL_WAIT_SECONDS)
        except Exception:  # noqa: BLE001 -- the actor is gone or too slow: the caller cancels instead
            return False
        return True

    def finish(self, refs: list[Any], seconds: float = FINISH_WAIT_SECONDS) -> None:
        """Wait until the tasks of ``refs`` have ended on their own (at most ``seconds``, then cancel what is
        left): only then may the run remove its temporary folder."""
        ray = _ray()
        remaining = list(refs)
        deadline = time.monotonic() + seconds
        try:
            while remaining and time.monotonic() < deadline:
                _, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=1.0)
        finally:  # also on Ctrl-C while waiting
            self.cancel(remaining)

    @staticmethod
    def cancel(refs: list[Any]) -> None:
        """Stop tasks still running (their workers are killed, so they write nothing more) and wait until they
        have: only then may the run remove its temporary folder."""
        if not refs:
            return
        ray = _ray()
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001, S110 -- finished already, or its node is gone
                pass
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        remaining = list(refs)
        while remaining and time.monotonic() < deadline:
            _, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=1.0)


def windows_ahead(ray: Any) -> int:
    """How many window tasks are submitted ahead of the one the driver waits for: twice the cluster's CPUs, so
    every worker stays busy while the driver collects in order, and after bad input at most that many tasks are
    still to finish (each submitted task is scheduled, even to return at once)."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(2, WINDOWS_AHEAD_PER_CPU * cpus)


def _get(ref: Any) -> Any:
    """A task's value; a task that failed beyond its retries is an error that names the cause."""
    ray = _ray()
    try:
        return ray.get(ref)
    except SystemError as exc:
        # Ctrl-C or SIGTERM (the CLI's handler raises Terminated) landing inside Ray's C code comes out as a
        # SystemError caused by it: the run unwinds as for the signal itself.
        signalled = exc.__cause__ or exc.__context__
        if signalled is not None and not isinstance(signalled, Exception):
            raise signalled from None
        raise
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BestfitError):
            return cause
        raise BestfitError(f"a Ray task failed: {str(cause or exc).splitlines()[0][:300]}",
                           fix="see the worker's log (ray logs) for its traceback") from None
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError) as exc:
        raise BestfitError(f"a Ray task was lost after {MAX_RETRIES} retries ({type(exc).__name__})",
                           fix="check the cluster's nodes and their memory (ray status), then rerun") from None


def _connect_target(address: str) -> tuple[str, int] | None:
    """The host and port ``ray.init(address)`` connects to first: a Ray Client server's (``ray://host:port``) or
    a cluster's GCS (``host:port``, where Ray puts the machine's own address for ``localhost`` and ``127.0.0.1``);
    None for an address Ray looks up itself (``auto``, ``local``, a URL)."""
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    host, colon, port = rest.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or "/" in rest:
        return None
    if not client:
        try:
            from ray._private.services import resolve_ip_for_localhost  # what ray.init does to the host

            host = resolve_ip_for_localhost(host)
        except Exception:  # noqa: BLE001 -- a private helper of Ray's: without it, the host as given
            pass
    return host, int(port)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise OptionError("--engine ray needs Ray, which is not installed",
                          fix="pip install 'bestfit-cli[ray]'") from None
    return ray
