"""The ``bestfit`` command line: thin commands over the library; library errors become one-line messages here."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from . import __version__
from .errors import BestfitError
from .formats import FORMATS
from .fs import storage_error
from .histogram import LONG_DOC_POLICIES
from .read import BAD_RECORD_POLICIES, DEFAULT_MAX_BAD_RECORDS, STREAM_DTYPES, TOKEN_DTYPES
from .strategies import STRATEGIES
from .window import EOS_MODES

MAX_BAD_RECORDS_HELP = ("With --on-bad-record skip: fail the run when more records than this are bad, a count (100) or "
                        "a share of the records read (1%).")
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended
EXIT_BROKEN_PIPE = 141
PIPE_CHUNK = 1 << 16


class _UsageFailure(click.ClickException):
    """A library OptionError: shown like any click error, with the usage-error exit code."""

    exit_code = 2


def _click_error(message: str, exit_code: int) -> click.ClickException:
    return _UsageFailure(message) if exit_code == 2 else click.ClickException(message)


class BestfitGroup(click.Group):
    """Turns the library's typed errors into click errors, once, for every command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BestfitError as exc:
            raise _click_error(str(exc), exc.exit_code) from None
        except BrokenPipeError:
            # click would end a closed stdout with exit 1; main() ends it quietly with 141, as a shell pipe does.
            raise StdoutClosed() from None
        except OSError as exc:
            # An object store's refusal that no stage wrapped (pyarrow raises OSError): still one line, exit 1.
            failure = storage_error(None, exc)
            if failure is None:
                raise
            raise _click_error(str(failure), failure.exit_code) from None

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        from .config import name_env_vars

        super().add_command(cmd, name)
        name_env_vars(cmd, name or cmd.name or "")


class StdoutClosed(Exception):
    """stdout was closed by the reader (``| head``): not an error of the run."""


class Terminated(BaseException):
    """SIGTERM (timeout, Slurm, Kubernetes): unwinds like Ctrl-C, so every writer cleans up on the way out."""


def _terminate(_signum: int, _frame: Any) -> None:
    raise Terminated()


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from .config import apply_config

    apply_config(ctx, value, cli.commands)  # an OptionError reaches BestfitGroup.invoke: one line, exit 2
    return value


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                        callback=_load_config,
                        help="TOML file of option defaults (flags and BESTFIT_* variables override it).")(f)


def input_options(f: Callable[..., Any] | None = None, *, long_docs: bool = True) -> Callable[..., Any]:
    """Options shared by every command that reads tokenized documents; ``long_docs=False`` for a command that has
    no ctx to cut documents at (``histogram``)."""
    decorators: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("--column", default="input_ids", show_default=True,
                     help="List-of-integers column (Parquet, Arrow) or field (JSONL) holding token ids."),
        click.option("--eos-id", type=click.IntRange(min=0), default=None,
                     help="Append this token to every non-empty document (it counts in the length)."),
        *([click.option("--long-docs", type=click.Choice(LONG_DOC_POLICIES), default="split", show_default=True,
                        help="Documents longer than ctx: split into ctx-sized chunks, truncate to ctx, or drop.")]
          if long_docs else []),
        click.option("--dtype", type=click.Choice(list(TOKEN_DTYPES)), default="int32", show_default=True,
                     help="Integer type of token ids in the output."),
        click.option("--split-at", type=click.IntRange(min=0), default=None, metavar="ID",
                     help="Flat token streams (.bin without .idx, .npy): split into documents after each ID (e.g. "
                          "the EOS already in the stream), which stays as the document's last token."),
        click.option("--stream-dtype", type=click.Choice(list(STREAM_DTYPES)), default=None,
                     help="Type of the ids in a raw .bin token stream (nanoGPT: uint16); a .npy or a Megatron "
                          ".idx gives its own."),
        config_option,
    ]

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply(f) if f is not None else apply


def engine_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Where the work runs: this machine, or a Ray cluster (docs/cluster.md); the output is the same."""
    f = click.option("--ray-address", metavar="ADDRESS", default=None,
                     help="The Ray cluster for --engine ray, such as head:6379 or ray://head:10001.  [default: "
                          "RAY_ADDRESS, else a local Ray started for the run]")(f)
    return click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="Run on this machine, or as Ray tasks that read inputs and write shards on shared "
                             "storage or s3:// (byte-identical output; docs/cluster.md).")(f)


def _parse_memory(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from .window import parse_size

    try:
        return parse_size(str(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _one_ctx(_ctx: click.Context, _param: click.Parameter, value: tuple[int, ...]) -> int:
    """pack takes one --ctx; a second one is a usage error rather than silently replacing the first."""
    if len(value) > 1:
        raise click.BadParameter(f"given {len(value)} times ({', '.join(map(str, value))}); pack takes one "
                                 "sequence length (bestfit stats compares several)")
    return value[0]


def _memory_or_window(memory: int | None, window_tokens: int | None) -> tuple[int | None, int | None]:
    """--memory and --window-tokens both set the window: a flag beats a BESTFIT_* variable, which beats the config
    file; both from one place is an error."""
    if memory is None or window_tokens is None:
        return memory, window_tokens
    from .config import stronger_option

    if stronger_option(click.get_current_context(), "memory", "window_tokens",
                       fix="--memory sets the window") == "memory":
        return memory, None
    return None, window_tokens


class ColumnList(click.ParamType):  # type: ignore[type-arg]
    """Training column names, comma-separated (a list in a config file); an unknown one is a usage error."""

    name = "columns"
    accepts_list = True  # config.py: a TOML list of names, or one comma-separated string

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        from .training import TRAINING_COLUMNS

        if isinstance(value, tuple):
            names = value
        elif isinstance(value, list):
            names = tuple(str(v) for v in value)
        else:
            names = tuple(n.strip() for n in str(value).split(",") if n.strip())
        unknown = [n for n in names if n not in TRAINING_COLUMNS]
        if unknown:
            self.fail(f"unknown column {unknown[0]!r} (known: {', '.join(TRAINING_COLUMNS)}, comma-separated)",
                      param, ctx)
        return names


def _progress(quiet: bool) -> Callable[[int], Any] | None:
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    def factory(total: int) -> Any:
        return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc="reading",
                    dynamic_ncols=True)

    return factory


def _notes(lines: list[str | None] | list[str]) -> None:
    """Notes of a run (inputs left out, ...) on stderr, one a line, even with --quiet: they say what was not read."""
    for line in lines:
        if line:
            click.echo(f"note: {line}", err=True)


def _print_table(renderable: Any) -> None:
    from rich.console import Console

    Console(stderr=True).print(renderable)


def _emit_json(payload: dict[str, Any]) -> None:
    """One JSON document on stdout, in pipe-sized writes: a reader that stops early (``| head``) then surfaces as
    BrokenPipeError (exit 141) instead of one large write being cut short without a word."""
    data = (json.dumps(payload, indent=2) + "\n").encode()
    stdout = sys.stdout.buffer
    sys.stdout.flush()
    for start in range(0, len(data), PIPE_CHUNK):
        stdout.write(data[start:start + PIPE_CHUNK])
        stdout.flush()


@click.group(cls=BestfitGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                  "max_content_width": 100})
@click.version_option(__version__, prog_name="bestfit")
def cli() -> None:
    """Best-fit packing of tokenized corpora into fixed-length training sequences.

    Data goes to stdout, tables and progress to stderr. Exit codes: 0 success, 1 bad input or failed run,
    2 usage error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
    """


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IN...")
@click.argument("out", metavar="OUT")
@click.option("--ctx", type=int, multiple=True, required=True, callback=_one_ctx, help="Sequence length in tokens.")
@input_options
@click.option("--eos-mode", type=click.Choice(EOS_MODES), default="always", show_default=True,
              help="With --eos-id: append it to every non-empty document, or only to those not already ending with "
                   "it (the report counts them either way).")
@click.option("--pad-id", type=click.IntRange(min=0), default=None,
              help="Padding token id.  [default: the EOS id if given, else 0]")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the shuffle of output sequences.")
@click.option("--shuffle/--no-shuffle", default=True, show_default=True,
              help="Shuffle output sequences (within each window).")
@click.option("--columns", type=ColumnList(), default="", metavar="NAMES",
              help="Training columns to add to each row, comma-separated: position_ids (restarting at 0 in every "
                   "piece), labels (the ids, -100 on padding and on each piece's first token).  [default: none]")
@click.option("--keep", multiple=True, metavar="COL",
              help="Carry this per-document column (id, source, url, ...) into the output: per row, one value per "
                   "piece, aligned with doc_index. Repeatable.")
@click.option("--keep-token", multiple=True, metavar="COL:FILL[:EOS]",
              help="Carry this per-token column (labels, loss_mask, ...) through packing, padded with FILL; an "
                   "appended EOS gets EOS (default: the EOS id for labels, else the document's last value). "
                   "Repeatable.")
@click.option("--pad/--no-pad", default=True, show_default=True,
              help="Pad every row to ctx tokens, or end each row after its last piece (for padding-free "
                   "trainers such as TRL's).")
@click.option("--rows-per-shard", type=click.IntRange(min=1), default=None,
              help="Sequences per output shard at most; a window's shards are of equal size.  [default: "
                   "16,777,216 tokens / ctx, e.g. 8192 at ctx 2048]")
@click.option("--window-tokens", type=click.IntRange(min=1), default=None,
              help="Pack documents in consecutive windows of this many tokens; bounds memory.  [default: 8192 x ctx "
                   "within 16,777,216..134,217,728: 16,777,216 at ctx 2048]")
@click.option("--memory", metavar="SIZE", default=None, callback=_parse_memory,
              help="Memory budget such as 4GB or 16GiB; sets --window-tokens to fit (docs/benchmarks.md).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Cores to use: windows packed in parallel, pyarrow's decoding threads, processes parsing JSONL, "
                   "and above 1 a thread reading ahead (0: one per usable core).")
@click.option("--format", "output_format", type=click.Choice(list(FORMATS)), default="parquet", show_default=True,
              help="Shard format: Parquet, or Megatron's indexed dataset (.bin + .idx; needs --eos-id and a --pad-id "
                   "other than it; docs/training.md#megatron).")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier bestfit output in OUT; it stays valid until the new one is complete, and only "
                   "what its manifest lists is deleted.")
@click.option("--on-bad-record", type=click.Choice(BAD_RECORD_POLICIES), default="error", show_default=True,
              help="A record that cannot be read (bad JSON, wrong type, bad id): stop with an error, or skip and "
                   "count it in the report and manifest.")
@click.option("--max-bad-records", metavar="N|P%", default=DEFAULT_MAX_BAD_RECORDS, show_default=True,
              help=MAX_BAD_RECORDS_HELP)
@engine_options
@click.option("--verify", is_flag=True, help="Run bestfit verify on OUT after packing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No table and no progress bar on stderr.")
def pack(inputs: tuple[str, ...], out: str, ctx: int, column: str, eos_id: int | None, long_docs: str, dtype: str,
         eos_mode: str, pad_id: int | None, seed: int, shuffle: bool, columns: tuple[str, ...],
         keep: tuple[str, ...], keep_token: tuple[str, ...], pad: bool,
         split_at: int | None, stream_dtype: str | None,
         rows_per_shard: int | None, window_tokens: int | None, memory: int | None, workers: int,
         output_format: str, overwrite: bool, on_bad_record: str, max_bad_records: str, engine: str,
         ray_address: str | None, verify: bool, as_json: bool, quiet: bool) -> None:
    """Pack token documents from IN (Parquet, JSONL, Arrow, folders, globs, - for stdin) into OUT.

    Writes fixed-length shards (Parquet, or Megatron's .bin + .idx), stats.json and, last, manifest.json to the
    folder OUT.
    """
    from .pipeline import PackOptions
    from .pipeline import pack as run_pack
    from .report import render_report
    from .resources import steady_heap

    memory, window_tokens = _memory_or_window(memory, window_tokens)
    opts = PackOptions(ctx=ctx, column=column, eos_id=eos_id, eos_mode=eos_mode, pad_id=pad_id,
                       long_docs=long_docs,  # type: ignore[arg-type]
                       seed=seed, shuffle=shuffle, rows_per_shard=rows_per_shard or 0, dtype=dtype,
                       window_tokens=window_tokens or 0, workers=workers, overwrite=overwrite,
                       on_bad_record=on_bad_record, max_bad_records=max_bad_records, memory=memory,
                       format=output_format, columns=columns, pad=pad, keep=keep, keep_token=keep_token,
                       split_at=split_at, stream_dtype=stream_dtype, engine=engine, ray_address=ray_address)
    if verify and "-" in inputs:
        raise click.UsageError("--verify reads the inputs again, which stdin (-) cannot do; run bestfit verify on "
                               "a saved copy instead")
    started = time.perf_counter()
    steady_heap()
    result = run_pack(inputs, out, opts, progress_factory=_progress(quiet))
    seconds = time.perf_counter() - started
    _notes(result.notes)
    if not quiet:
        _print_table(render_report(result.report))
        n_shards = len(result.manifest["shards"])
        click.echo(f"wrote {result.report.stats.sequences:,} sequences in {n_shards} shard{'s' * (n_shards != 1)} "
                   f"to {out} in {seconds:.1f}s", err=True)
    checked = _run_verify(inputs, out) if verify else None
    if checked is not None and not quiet:
        click.echo(checked.summary(), err=True)
    if as_json:
        _emit_json({**result.report.to_json(), "out": out, "shards": len(result.manifest["shards"]),
                    "wall_seconds": round(seconds, 3),
                    **({"verify": checked.to_json()} if checked is not None else {})})
    if checked is not None:
        _fail_unless_verified(checked)


def _run_verify(inputs: tuple[str, ...], out: str, max_problems: int = 20) -> Any:
    from .verify import verify as run_verify

    return run_verify(inputs, out, max_problems=max_problems)


def _fail_unless_verified(result: Any) -> None:
    """Notes and problems go to stderr, one a line; a failed check ends with a one-line error and exit 1."""
    from .errors import VerifyError

    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if result.ok:
        return
    for problem in result.problems[1:10]:
        click.echo(f"problem: {problem}", err=True)
    raise VerifyError(result.summary(), fix="rerun the same bestfit pack command with --overwrite")


@cli.command("verify")
@click.argument("inputs", nargs=-1, required=True, metavar="IN...")
@click.argument("out", metavar="OUT")
@click.option("--max-problems", type=click.IntRange(min=1), default=20, show_default=True,
              help="Problems to keep and show (all are counted).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document on stdout.")
def verify_command(inputs: tuple[str, ...], out: str, max_problems: int, as_json: bool) -> None:
    """Check that OUT holds exactly the documents of IN, as OUT/manifest.json describes.

    Reads IN again with the options the manifest records and checks every document, sequence, shard and
    sha256. Prints "verified: N documents, T tokens, S sequences" and exits 0, or names the first problems
    (document, shard, row) and exits 1.
    """
    result = _run_verify(inputs, out, max_problems)
    if as_json:
        _emit_json(result.to_json())
    elif result.ok:
        click.echo(result.summary())
    _fail_unless_verified(result)


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IN...")
@click.option("--ctx", type=click.IntRange(min=1), multiple=True, required=True,
              help="Sequence length in tokens; repeat for several. Given here, it replaces the config's ctx.")
@click.option("--strategy", "strategies", type=click.Choice(STRATEGIES), multiple=True,
              help="Strategy to evaluate; repeat for several.  [default: all]")
@input_options
@click.option("--window-tokens", type=click.IntRange(min=1), default=None,
              help="Window size pack would use, so bestfit matches it.  [default: pack's, 8192 x ctx within "
                   "16,777,216..134,217,728]")
@click.option("--memory", metavar="SIZE", default=None, callback=_parse_memory,
              help="pack's memory budget: bestfit then plans the windows pack would (it sets --window-tokens).")
@click.option("--rows-per-shard", type=click.IntRange(min=1), default=None,
              help="pack's --rows-per-shard; with --memory it changes pack's window, so bestfit follows it.")
@click.option("--on-bad-record", type=click.Choice(BAD_RECORD_POLICIES), default="error", show_default=True,
              help="A record that cannot be read: stop with an error, or skip it and count it.")
@click.option("--max-bad-records", metavar="N|P%", default=DEFAULT_MAX_BAD_RECORDS, show_default=True,
              help=MAX_BAD_RECORDS_HELP)
@engine_options
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document on stdout.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write truncations per document against document length to FILE.png or FILE.svg.")
@click.option("-q", "--quiet", is_flag=True, help="No table and no progress bar on stderr.")
def stats(inputs: tuple[str, ...], ctx: tuple[int, ...], strategies: tuple[str, ...], column: str,
          eos_id: int | None, long_docs: str, dtype: str, split_at: int | None, stream_dtype: str | None,
          window_tokens: int | None, memory: int | None,
          rows_per_shard: int | None, on_bad_record: str, max_bad_records: str, engine: str,
          ray_address: str | None, as_json: bool, plot: str | None, quiet: bool) -> None:
    """Compare packing strategies on IN without writing anything: sequences, padding and truncations.

    IN are token files or folders as for pack, or histograms written by `bestfit histogram`. One pass reads
    document lengths only, whatever the number of --ctx values and strategies.
    """
    from .stats import StatsOptions, render_stats, run_stats

    memory, window_tokens = _memory_or_window(memory, window_tokens)
    opts = StatsOptions(ctx=ctx, strategies=strategies or STRATEGIES, column=column, eos_id=eos_id,  # type: ignore[arg-type]
                        long_docs=long_docs, window_tokens=window_tokens or 0,  # type: ignore[arg-type]
                        on_bad_record=on_bad_record, max_bad_records=max_bad_records, dtype=dtype, memory=memory,
                        rows_per_shard=rows_per_shard or 0, split_at=split_at, stream_dtype=stream_dtype)
    if plot:
        from .plot import check_plot_target

        check_plot_target(plot)  # before the read pass, not after it
    started = time.perf_counter()
    result = run_stats(inputs, opts, progress_factory=_progress(quiet), engine=engine, ray_address=ray_address)
    seconds = time.perf_counter() - started
    from .fs import left_out_note

    _notes([left_out_note(result.left_out), *(note for item in result.inputs for note in item.get("notes", []))])
    if plot:
        from .plot import plot_truncations

        plot_truncations(result, plot)
    to_stdout = not as_json and sys.stdout.isatty()  # the table is the data when nothing else is printed
    if to_stdout or not quiet:
        from rich.console import Console

        console = Console(stderr=not to_stdout)
        for table in render_stats(result):
            console.print(table)
        console.print(f"{result.documents:,} documents read in {seconds:.1f}s" + (
            f"; plot written to {plot}" if plot else ""))
    if as_json:
        _emit_json({**result.to_json(), "wall_seconds": round(seconds, 3)})


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IN...")
@click.option("-o", "--output", default="-", show_default=True,
              help="Where to write the histogram JSON (- for stdout).")
@input_options(long_docs=False)
@click.option("--on-bad-record", type=click.Choice(BAD_RECORD_POLICIES), default="error", show_default=True,
              help="A record that cannot be read: stop with an error, or skip it and count it.")
@click.option("--max-bad-records", metavar="N|P%", default=DEFAULT_MAX_BAD_RECORDS, show_default=True,
              help=MAX_BAD_RECORDS_HELP)
@engine_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar on stderr.")
def histogram(inputs: tuple[str, ...], output: str, column: str, eos_id: int | None, dtype: str,
              split_at: int | None, stream_dtype: str | None,
              on_bad_record: str, max_bad_records: str, engine: str, ray_address: str | None, quiet: bool) -> None:
    """Write the exact document-length histogram of IN, for `bestfit stats HIST.json ...` to read later.

    Lengths are counted as read, before EOS and uncut: --ctx and --long-docs are given to stats. --eos-id is
    recorded and used by stats unless it gets its own.
    Histograms of separate shards merge when given to stats together.
    """
    from .fs import LeftOut, left_out_note
    from .stats import measure_histogram, save_json

    document = measure_histogram(inputs, column, eos_id, progress_factory=_progress(quiet),
                                 on_bad_record=on_bad_record, dtype=dtype, output=output,
                                 max_bad_records=max_bad_records, split_at=split_at, stream_dtype=stream_dtype,
                                 engine=engine, ray_address=ray_address)
    _notes([left_out_note([LeftOut.from_json(e) for e in document["inputs_left_out"]]),
            *(note for item in document["inputs"] for note in item.get("notes", []))])
    if output == "-":
        click.echo(json.dumps(document))
    else:
        save_json(document, output)
        if not quiet:
            click.echo(f"wrote the lengths of {document['documents']:,} documents to {output}", err=True)


def main() -> None:
    """Entry point: runs the CLI; Ctrl-C exits 130 and SIGTERM 143 with one line, a closed stdout ends quietly."""
    signal.signal(signal.SIGTERM, _terminate)
    from .formats import parquet

    parquet.WITHOUT_PANDAS = True  # this process is bestfit's own: nothing in it needs pandas
    try:
        try:
            cli.main(standalone_mode=False, prog_name="bestfit")
        finally:
            # The command is over (its writers have cleaned up or committed): a SIGTERM from here on ends the
            # process as SIGTERM does, never as a Terminated raised outside this try (a traceback and exit 1).
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except Terminated:
        click.echo("bestfit: terminated", err=True)
        sys.exit(EXIT_TERMINATED)
    except click.exceptions.Abort:
        click.echo("bestfit: interrupted", err=True)
        _interrupt_handled()
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("\nbestfit: interrupted", err=True)
        _interrupt_handled()
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (BrokenPipeError, StdoutClosed):
        _silence_stdout()
        sys.exit(EXIT_BROKEN_PIPE)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(EXIT_BROKEN_PIPE)


def _interrupt_handled() -> None:
    """Make the interpreter exit with our status, not by SIGINT.

    A Ctrl-C that lands while Python runs a string through ``exec`` or ``eval`` (``dataclasses`` and
    ``namedtuple`` build their methods that way, so any import can) raises its KeyboardInterrupt out of that
    ``exec``, and CPython sets its "unhandled Ctrl-C" flag, though bestfit catches and handles the interrupt.
    At exit the interpreter then kills itself with SIGINT instead of exiting 130 (seen on 3.11 under
    ``python -m``, which checks the flag; the installed ``bestfit`` script exits by another path). Each ``exec``
    of a string clears the flag before it runs (``run_eval_code_obj`` in Python/pythonrun.c): one that
    completes leaves it clear."""
    exec("")  # noqa: S102 - a constant empty string, run only for the side effect above


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail a second time.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
