"""Hostile and broken input (issue 8, and the messages of issue 13): deep nesting, lying Parquet footers, duplicate
columns, wrongly typed config values, one huge line, endless blanks, unreadable files and mostly-bad inputs end in
one line naming the file and the cause, never a traceback, a hang or unbounded memory."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from bestfit_cli import read
from bestfit_cli.errors import InputError, OutputError
from bestfit_cli.formats import jsonl
from bestfit_cli.formats.jsonl import LineTooLong, _lines
from bestfit_cli.fs import InputFile, resolve_inputs
from bestfit_cli.read import BadRecordLimit, ReadOptions, line_limit, read_file

from . import parquet_footer as footer
from .synthetic import documents, write_parquet
from .test_bad_input import assert_fails, invoke

DEEP = 1200  # deeper than Python's recursion limit (json.loads raises RecursionError), and than MAX_DEPTH


def deep_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "deep.jsonl"
    path.write_text('{"input_ids": [1, 2, 3]}\n' + '{"input_ids": [4], "x": ' + "[" * DEEP + "]" * DEEP + "}\n"
                    + '{"input_ids": [5, 6]}\n')
    return path


@pytest.mark.parametrize("command", [["pack", "OUT", "--ctx", 8], ["stats", "--ctx", 8], ["histogram"]])
def test_deeply_nested_jsonl_is_a_bad_record(tmp_path: Path, command: list[Any]) -> None:
    out = tmp_path / "out"
    args = [command[0], deep_jsonl(tmp_path), *[out if a == "OUT" else a for a in command[1:]]]
    assert_fails(invoke(*args), out, 1, "deep.jsonl:2: JSON nested deeper than 512 levels")
    as_json = ["--json"] if command[0] != "histogram" else []
    skipped = invoke(*args, "--on-bad-record", "skip", "--max-bad-records", 1, *as_json)
    assert skipped.exit_code == 0, skipped.stderr
    assert "deep.jsonl:2 (JSON nested deeper than 512 levels)" in skipped.stdout


def test_deeply_nested_manifest_is_malformed(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "a.parquet", documents([5, 6]))
    out = tmp_path / "out"
    assert invoke("pack", source, out, "--ctx", 8, "-q").exit_code == 0
    (out / "manifest.json").write_text('{"format": "bestfit.packed", "windows": ' + "[" * 5000 + "]" * 5000 + "}")
    result = invoke("verify", source, out)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: {out}/manifest.json is malformed: its JSON is nested deeper than 512 levels "
        "(rerun the same bestfit pack command with --overwrite)"]


def test_a_deep_manifest_is_refused_alike_from_any_stack_depth(tmp_path: Path) -> None:
    """700 levels: json.loads reads that from a shallow stack and runs out of room from a deep one, so verify once
    said one thing or the other by where it was called from; the limit of every JSON bestfit reads says the same."""
    from bestfit_cli.verify import VerifyError, verify

    source = write_parquet(tmp_path / "a.parquet", documents([5, 6]))
    out = tmp_path / "out"
    assert invoke("pack", source, out, "--ctx", 8, "-q").exit_code == 0
    text = '{"format": "bestfit.packed", "windows": ' + "[" * 700 + "]" * 700 + "}"
    assert json.loads(text)  # Python itself reads it, from here
    (out / "manifest.json").write_text(text)

    def refusal(frames: int) -> str:
        if frames:
            return refusal(frames - 1)
        with pytest.raises(VerifyError) as exc:
            verify([str(source)], str(out))
        return str(exc.value)

    shallow = refusal(0)
    assert "nested deeper than 512 levels" in shallow
    assert refusal(600) == shallow


def test_a_deep_histogram_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"schema": "bestfit.histogram/1",\n"lengths": ' + "[" * 5000 + "]" * 5000 + "}\n")
    assert_fails(invoke("stats", path, "--ctx", 8), tmp_path / "out", 1,
                 "deep.json: not a valid bestfit length histogram (nested deeper than 512 levels)")


def test_parquet_with_two_token_columns(tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([[1, 2]]), pa.array([[3]])], names=["input_ids", "input_ids"]),
                   path)
    out = tmp_path / "out"
    assert_fails(invoke("pack", path, out, "--ctx", 8), out, 1, "dup.parquet: 2 columns are named 'input_ids'")
    assert_fails(invoke("stats", path, "--ctx", 8), out, 1, "dup.parquet: 2 columns are named 'input_ids'")


@pytest.mark.parametrize(("text", "fragment"), [
    ("ctx = 8\n[verify]\nx = 1\n", "'verify' is a table, not a value"),
    ("ctx = 8\njson = {x = 1}\n", "'json' is a table, not a value"),
    ("ctx = 8\n[pack]\njson = {x = 1}\n", "'pack.json' is a table, not a value"),
    ("ctx = true\n", "ctx = true is not a valid integer"),
    ("ctx = 4.9\n", "ctx = 4.9 is not a valid integer"),
    ("ctx = '8'\n", "ctx = '8' is not a valid integer"),
    ("ctx = 8\nseed = 1.5\n", "seed = 1.5 is not a valid integer"),
    ("ctx = 8\nquiet = 1\n", "quiet = 1 is not a valid boolean"),
    ("ctx = 8\ncolumn = 5\n", "column = 5 is not a valid text"),
    ("ctx = 8\nx = " + "[" * DEEP + "]" * DEEP + "\n", "not valid TOML (nested too deeply)"),
])
def test_config_values_of_the_wrong_toml_type(tmp_path: Path, text: str, fragment: str) -> None:
    source = write_parquet(tmp_path / "a.parquet", documents([5, 6]))
    config = tmp_path / "bad.toml"
    config.write_text(text)
    out = tmp_path / "out"
    assert_fails(invoke("pack", source, out, "--config", config), out, 2, f"config file {config}", fragment)
    assert not out.exists()


def test_config_size_may_be_a_number_of_bytes(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "a.parquet", documents([5, 6]))
    config = tmp_path / "c.toml"
    config.write_text(f"ctx = 8\nmemory = {2**30}\n")
    result = invoke("pack", source, tmp_path / "out", "--config", config, "--json", "-q")
    assert result.exit_code == 0, result.stderr


# ------------------------------------------------------------------------------------------ check before work


def test_wrong_column_in_the_last_file_fails_before_any_work(tmp_path: Path) -> None:
    first = write_parquet(tmp_path / "a.parquet", documents([100] * 300))
    last = tmp_path / "z.parquet"
    pq.write_table(pa.table({"tokens": pa.array([[1, 2]])}), last)
    out = tmp_path / "out"
    result = invoke("pack", first, last, out, "--ctx", 64, "--window-tokens", 2000, "--workers", 1)
    assert_fails(result, out, 1, "z.parquet: no column 'input_ids'; columns are: tokens")
    assert not out.exists(), "nothing is written, not even the first file's windows"
    assert_fails(invoke("stats", first, last, "--ctx", 64), out, 1, "z.parquet: no column 'input_ids'")


def lying_parquet(path: Path, edit: str) -> None:
    """``edit`` makes the footer of row group 1 (of three of 100 rows), or of the file, claim too much."""
    body, meta = footer.read_footer(path)
    group = footer.row_groups(meta)[1]
    column = footer.column_meta(group)
    if edit == "rows":
        footer.set_field(group, footer.GROUP_NUM_ROWS, 2**40)
        footer.set_field(meta, footer.FILE_NUM_ROWS, 2**40 + 200)
    elif edit == "values":
        footer.set_field(group, footer.GROUP_NUM_ROWS, 2**40)
        footer.set_field(meta, footer.FILE_NUM_ROWS, 2**40 + 200)
        footer.set_field(column, footer.META_NUM_VALUES, 2**41)
    elif edit == "bytes":
        footer.set_field(column, footer.META_COMPRESSED, 2**40)
    elif edit == "total":
        footer.set_field(meta, footer.FILE_NUM_ROWS, 2**40)
    footer.write_footer(path, body, meta)


@pytest.mark.parametrize(("edit", "claim"), [
    ("rows", "row group 1 (its first row is 100) claims 1,099,511,627,776 rows but only 2,000 values"),
    ("values", "row group 1 (its first row is 100) claims 2,199,023,255,552 values of 'input_ids' in"),
    ("bytes", "row group 1 (its first row is 100) claims 1,099,511,627,776 bytes of 'input_ids' in a file of"),
    ("total", "the footer claims 1,099,511,627,776 rows, its row groups 300"),
])
def test_footer_claims_are_checked_against_the_file(tmp_path: Path, edit: str, claim: str) -> None:
    path = write_parquet(tmp_path / "lie.parquet", documents([20] * 300), row_group_size=100)
    packed = tmp_path / "packed"
    assert invoke("pack", path, packed, "--ctx", 64, "-q").exit_code == 0
    lying_parquet(path, edit)
    out = tmp_path / "out"
    for command in (["pack", path, out, "--ctx", 64], ["stats", path, "--ctx", 64], ["verify", path, packed]):
        assert_fails(invoke(*command), out, 1, "lie.parquet: ", claim, "the footer is damaged")


def test_corrupt_row_group_is_named_alike_by_pack_and_stats(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    write_parquet(path, documents([20] * 3000), row_group_size=1000)
    meta = pq.ParquetFile(path).metadata.row_group(1).column(1)  # input_ids (column 0 is write_parquet's id)
    data = bytearray(path.read_bytes())
    start = meta.data_page_offset
    data[start:start + meta.total_compressed_size] = b"\xff" * meta.total_compressed_size  # page headers too
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    where = "bad.parquet: corrupt Parquet data in row group 1 (rows 1,000 to 1,999)"
    assert_fails(invoke("pack", path, out, "--ctx", 64), out, 1, where)
    assert_fails(invoke("stats", path, "--ctx", 64), out, 1, where)


# ------------------------------------------------------------------------------------------ long lines, blanks


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_lines_across_chunk_boundaries(chunk: int) -> None:
    text = b'{"a": 1}\n\n  \n{"b": [1, 2, 3]}\n' + b"x" * 50 + b"\n   {\"c\": 2}   \nlast"
    got = [bytes(line) for line in _lines(io.BytesIO(text), 1 << 20, chunk_size=chunk)]
    expected = text.split(b"\n")
    assert len(got) == len(expected)  # line numbers stay exact
    assert [g.strip() for g in got] == [e.strip() for e in expected]


def test_blank_runs_are_never_buffered() -> None:
    # 64 chunks of spaces (with and without a line in the middle and at the end): a limit of one chunk is never hit.
    chunk = 1 << 12
    stream = io.BytesIO(b" " * (64 * chunk) + b'{"input_ids": [1]}' + b" " * (64 * chunk) + b"\n" + b" " * (9 * chunk))
    lines = [bytes(line) for line in _lines(stream, 2 * chunk, chunk_size=chunk)]
    assert [line.strip() for line in lines] == [b'{"input_ids": [1]}']  # the blank last line is not even yielded
    assert max(len(line) for line in lines) < 2 * chunk + 64


def test_line_longer_than_the_limit() -> None:
    with pytest.raises(LineTooLong) as caught:
        list(_lines(io.BytesIO(b"[1]\n\n" + b"1," * 5000 + b"\n"), 4000, chunk_size=1024))
    assert caught.value.line_no == 3


def test_line_limit_follows_the_memory_budget() -> None:
    assert line_limit(None) == read.DEFAULT_MAX_LINE_BYTES
    assert line_limit(8 << 20) == 1 << 20
    assert line_limit(1 << 40) == read.DEFAULT_MAX_LINE_BYTES


def test_too_long_line_is_one_line_naming_file_line_and_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read, "DEFAULT_MAX_LINE_BYTES", 1000)
    path = tmp_path / "long.jsonl"
    path.write_text('{"input_ids": [1]}\n{"input_ids": [' + "7, " * 2000 + "7]}\n")
    out = tmp_path / "out"
    assert_fails(invoke("pack", path, out, "--ctx", 8), out, 1, "long.jsonl:2: line longer than 1,000 bytes",
                 "give a larger --memory")


def test_endless_blanks_in_compressed_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl.gz"
    with gzip.open(path, "wb") as f:
        for _ in range(64):
            f.write(b" " * (1 << 20))  # 64 MiB of spaces in one line, never held at once
        f.write(b'{"input_ids": [1, 2, 3]}\n')
    opts = ReadOptions(max_line_bytes=1 << 20)  # smaller than the run of blanks
    [file] = resolve_inputs([str(path)])
    batches = list(read_file(file, 0, opts))
    assert [b.tokens.tolist() for b in batches] == [[1, 2, 3]]


# ------------------------------------------------------------------------------------------ messages


class _Failing(pafs.FileSystemHandler):
    """The local filesystem, except that the methods named in ``fail`` raise ``error``: what a permission, a
    vanished file or a bad disk gives."""

    def __init__(self, error: OSError, *fail: str) -> None:
        self.error, self.fail, self.local = error, set(fail), pafs.LocalFileSystem()

    def _call(self, name: str, *args: Any) -> Any:
        if name in self.fail:
            raise self.error
        return getattr(self.local, name)(*args)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    def get_type_name(self) -> str:
        return "failing"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: Any) -> Any:
        return self._call("get_file_info", paths)

    def get_file_info_selector(self, selector: Any) -> Any:
        return self._call("get_file_info", selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._call("create_dir", path, recursive)

    def delete_dir(self, path: str) -> None:
        self._call("delete_dir", path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._call("delete_dir_contents", path, missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise NotImplementedError

    def delete_file(self, path: str) -> None:
        self._call("delete_file", path)

    def move(self, src: str, dest: str) -> None:
        self._call("move", src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self._call("copy_file", src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self._call("open_input_stream", path)

    def open_input_file(self, path: str) -> Any:
        return self._call("open_input_file", path)

    def open_output_stream(self, path: str, metadata: Any = None) -> Any:
        return self._call("open_output_stream", path)

    def open_append_stream(self, path: str, metadata: Any = None) -> Any:
        return self._call("open_append_stream", path)


@pytest.mark.parametrize(("error", "reason", "fix"), [
    (PermissionError(errno.EACCES, "Permission denied"), "cannot be read: permission denied", "permissions"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory"), "disappeared before it could be read",
     "moved or deleted during the run"),
    (OSError(errno.EIO, "Input/output error"), "cannot be read ([Errno 5] Input/output error)", "check the disk"),
])
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_unreadable_input_names_its_cause(error: OSError, reason: str, fix: str, fmt: str) -> None:
    failing = pafs.PyFileSystem(_Failing(error, "open_input_file", "open_input_stream"))
    file = InputFile(f"data.{fmt}", fmt, failing, f"data.{fmt}", 100)  # type: ignore[arg-type]
    with pytest.raises(InputError) as caught:
        list(read_file(file, 0, ReadOptions()))
    message = str(caught.value)
    assert message.startswith(f"data.{fmt}: {reason}") and fix in message, message
    assert "interrupted copy" not in message and "free disk space" not in message


def test_gzip_on_stdin_says_decompress(tmp_path: Path) -> None:
    out = tmp_path / "out"
    data = gzip.compress(b'{"input_ids": [1, 2]}\n')
    from click.testing import CliRunner

    from bestfit_cli.cli import cli

    result = CliRunner().invoke(cli, ["pack", "-", str(out), "--ctx", "8"], input=data)
    assert_fails(result, out, 1, "-:1: not valid JSON (gzip-compressed data)", "decompress it first")
    (tmp_path / "g.jsonl").write_bytes(data)
    assert_fails(invoke("pack", tmp_path / "g.jsonl", out, "--ctx", 8), out, 1, "gzip-compressed",
                 "name it *.jsonl.gz")


@pytest.mark.parametrize(("ids", "fragment"), [
    (f"[1, {2**64 - 1}]", f"token id {2**64 - 1} in 'input_ids' does not fit the output dtype int32"),
    (f"[{2**64 - 1}]", f"token id {2**64 - 1} in 'input_ids' does not fit the output dtype int32"),
    (f"[-1, {2**64 - 1}]", "negative token id -1 in 'input_ids'"),
])
def test_jsonl_id_beyond_int64_names_the_dtype(tmp_path: Path, ids: str, fragment: str) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text(f'{{"input_ids": {ids}}}\n')
    out = tmp_path / "out"
    assert_fails(invoke("pack", path, out, "--ctx", 8), out, 1, f"big.jsonl:1: {fragment}")


def test_hdfs_failure_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("pack", "hdfs://namenode/data/x.parquet", out, "--ctx", 8)
    assert_fails(result, out, 1, "hdfs://namenode/data/x.parquet: cannot open this location")


@pytest.mark.parametrize(("code", "fix"), [(errno.EIO, "I/O error"), (errno.ENOENT, "removed while"),
                                           (errno.ENOSPC, "free disk space")])
def test_write_failure_names_its_cause(tmp_path: Path, code: int, fix: str) -> None:
    from bestfit_cli.write import ShardWriter

    with ShardWriter(str(tmp_path / "out")) as writer:
        writer.fs = pafs.PyFileSystem(_Failing(OSError(code, os.strerror(code)), "open_output_stream"))
        writer.local = False
        with pytest.raises(OutputError) as caught:
            writer.write_json("stats.json", {})
    message = str(caught.value)
    assert fix in message, message
    if code != errno.ENOSPC:
        assert "free disk space" not in message


# ------------------------------------------------------------------------------------------ the skip limit


def mostly_bad(tmp_path: Path, good: int, bad: int) -> Path:
    path = tmp_path / "mostly.jsonl"
    path.write_text('{"input_ids": [1, 2]}\n' * good + "not json\n" * bad)
    return path


@pytest.mark.parametrize("command", [["pack", "OUT", "--ctx", 8], ["stats", "--ctx", 8], ["histogram"]])
def test_skipping_most_records_fails(tmp_path: Path, command: list[Any]) -> None:
    out = tmp_path / "out"
    args = [command[0], mostly_bad(tmp_path, 2, 98), *[out if a == "OUT" else a for a in command[1:]],
            "--on-bad-record", "skip", *(["--overwrite"] if command[0] == "pack" else [])]
    assert_fails(invoke(*args), out, 1, "98 of 100 records (98.0%) were bad and skipped, more than "
                 "--max-bad-records 1% allows", "first: ", "mostly.jsonl:3 (not valid JSON", "raise --max-bad-records")
    assert_fails(invoke(*args, "--max-bad-records", 97), out, 1, "more than --max-bad-records 97 allows")
    assert invoke(*args, "--max-bad-records", "98%").exit_code == 0
    assert invoke(*args, "--max-bad-records", 98).exit_code == 0


def test_skip_limit_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("pack", mostly_bad(tmp_path, 199, 1), out, "--ctx", 8, "--on-bad-record", "skip", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["max_bad_records"] == "1%"
    assert json.loads((out / "stats.json").read_text())["max_bad_records"] == "1%"
    assert json.loads((out / "manifest.json").read_text())["options"]["max_bad_records"] == "1%"
    assert invoke("verify", tmp_path / "mostly.jsonl", out).exit_code == 0


def test_count_limit_fails_before_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A count is exceeded as soon as it is passed (here: the first batch), not once every record is read.
    monkeypatch.setattr(jsonl, "BATCH_TOKENS", 1)
    path = tmp_path / "early.jsonl"
    path.write_text("not json\n" * 3 + '{"input_ids": [1]}\n' * 10 + "{broken\n")
    limit = BadRecordLimit.parse("2")
    assert limit.exceeded(3, 3, final=False) and not BadRecordLimit.parse("50%").exceeded(3, 3, final=False)
    out = tmp_path / "out"
    assert_fails(invoke("pack", path, out, "--ctx", 8, "--on-bad-record", "skip", "--max-bad-records", 2), out, 1,
                 "3 of 4 records (75.0%) were bad")


@pytest.mark.parametrize("value", ["-1", "many", "101%", "x%"])
def test_skip_limit_must_be_a_count_or_a_share(tmp_path: Path, value: str) -> None:
    source = write_parquet(tmp_path / "a.parquet", documents([5, 6]))
    out = tmp_path / "out"
    assert_fails(invoke("pack", source, out, "--ctx", 8, "--max-bad-records", value), out, 2,
                 f"--max-bad-records '{value}' is neither a count nor a share")
