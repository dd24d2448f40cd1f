"""The catalogue of bad input (issue 4): each case fails with one line naming the file and the row or line and
what to do, a non-zero exit, no traceback, and nothing complete-looking in OUT. ``--on-bad-record skip`` skips
bad records instead and counts them in the report and manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from bestfit_cli.cli import cli

from .synthetic import documents, write_parquet


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_fails(result: Result, out: Path, exit_code: int, *fragments: str) -> str:
    """Failed cleanly: exit code, one-line error holding each fragment, no traceback, no manifest in OUT."""
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr and result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: "), result.stderr
    if exit_code == 1:  # the library's own errors are exactly one line; click's usage errors add a usage hint
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in last, last
    assert not (out / "manifest.json").exists()
    assert not list(out.glob(".bestfit-tmp-*")) if out.is_dir() else True
    return last


GOOD = '{"input_ids": [1, 2, 3]}'

BAD_LINES = {
    "not-json": ("not json", "not valid JSON"),
    "missing-field": ('{"text": "a"}', "no field 'input_ids'; fields are: text"),
    "field-name-with-newline": ('{"a\\nb": 1}', "no field 'input_ids'; fields are: a\\nb"),
    "null": ('{"input_ids": null}', "'input_ids' is null"),
    "string": ('{"input_ids": "1 2"}', "'input_ids' is str"),
    "nested-lists": ('{"input_ids": [[1, 2], [3]]}', "holds nested lists"),
    "floats": ('{"input_ids": [1.5, 2]}', "holds float"),
    "booleans": ('{"input_ids": [true, 1]}', "holds bool"),
    "negative-ids": ('{"input_ids": [1, -2]}', "negative token id -2"),
    "not-an-object": ("[1, 2]", "not a JSON object"),
}


def bad_jsonl(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.jsonl"
    path.write_text(f"{GOOD}\n{BAD_LINES[case][0]}\n{GOOD}\n")
    return path


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, case: str) -> None:
    out = tmp_path / "out"
    result = invoke("pack", bad_jsonl(tmp_path, case), out, "--ctx", 8)
    message = assert_fails(result, out, 1, f"{case}.jsonl:2: ", BAD_LINES[case][1])
    assert message.endswith(")"), "the message ends with what to do"


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_skip_counts_bad_jsonl_line_in_report_and_manifest(tmp_path: Path, case: str) -> None:
    out = tmp_path / "out"
    result = invoke("pack", bad_jsonl(tmp_path, case), out, "--ctx", 8, "--on-bad-record", "skip",
                    "--max-bad-records", 1, "--json", "-q", "--verify")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["skipped_records"] == 1
    assert report["skipped_first"][0].startswith(f"{tmp_path / case}.jsonl:2 (")
    # The skipped record keeps its number: documents are counted, and numbered, as records read.
    assert report["verify"]["ok"] and report["verify"]["documents"] == 3
    assert report["documents"] == 2 and report["empty_documents"] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped_records"] == {"count": 1, "first": report["skipped_first"]}
    assert manifest["inputs"][0]["skipped_records"] == 1 and manifest["documents"] == 3
    doc_index = pq.read_table(out / manifest["shards"][0]["path"])["doc_index"].to_pylist()
    assert sorted(d for row in doc_index for d in row) == [0, 2]


def test_ids_beyond_the_output_dtype(tmp_path: Path) -> None:
    path = tmp_path / "wide.jsonl"
    path.write_text(f'{GOOD}\n{{"input_ids": [1, 70000]}}\n')
    out = tmp_path / "out"
    assert_fails(invoke("pack", path, out, "--ctx", 8, "--dtype", "uint16"), out, 1, "wide.jsonl:2: ",
                 "token id 70000 in 'input_ids' does not fit the output dtype uint16", "pass --dtype int32")
    parquet = write_parquet(tmp_path / "wide.parquet", [[1, 2], [3, 70000]], pa.int64())
    assert_fails(invoke("pack", parquet, out, "--ctx", 8, "--dtype", "uint16"), out, 1, "wide.parquet row 1: ",
                 "does not fit the output dtype uint16")


def test_ids_beyond_int64_in_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    path.write_text(f'{GOOD}\n{{"input_ids": [{2**63}]}}\n{{"input_ids": [1, {2**64}]}}\n')
    out = tmp_path / "out"
    assert_fails(invoke("pack", path, out, "--ctx", 8, "--dtype", "int64"), out, 1, "huge.jsonl:2: ",
                 f"token id {2**63} in 'input_ids' does not fit the output dtype int64")
    path.write_text(f'{GOOD}\n{{"input_ids": [1, {2**64}]}}\n')
    assert_fails(invoke("pack", path, out, "--ctx", 8, "--dtype", "int64"), out, 1, "huge.jsonl:2: ",
                 f"token id {2**64} in 'input_ids' does not fit the output dtype int64", "must fit in int64")


PARQUET_ROWS = {
    "null-row": (pa.array([[1, 2], None, [3]], pa.list_(pa.int64())), "row 1: 'input_ids' is null"),
    "null-id": (pa.array([[1, 2], [3, None]], pa.list_(pa.int64())), "row 1: 'input_ids' holds a null token id"),
    "negative": (pa.array([[1, 2], [3, -4]], pa.list_(pa.int64())), "row 1: negative token id -4"),
}


@pytest.mark.parametrize("case", sorted(PARQUET_ROWS))
def test_bad_parquet_row_names_file_and_row(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.parquet"
    pq.write_table(pa.table({"input_ids": PARQUET_ROWS[case][0]}), path)
    out = tmp_path / "out"
    assert_fails(invoke("pack", path, out, "--ctx", 8), out, 1, f"{case}.parquet {PARQUET_ROWS[case][1]}")
    result = invoke("pack", path, out, "--ctx", 8, "--on-bad-record", "skip", "--max-bad-records", "50%", "--json",
                    "-q", "--verify")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["skipped_records"] == 1 and report["skipped_first"][0].startswith(f"{path} row 1 (")


def test_parquet_truncated(tmp_path: Path) -> None:
    whole = write_parquet(tmp_path / "whole.parquet", documents([50] * 200))
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "out"
    assert_fails(invoke("pack", cut, out, "--ctx", 8), out, 1, "cut.parquet: not a readable Parquet file",
                 "an interrupted copy leaves a truncated file")


def test_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "text.parquet"
    path.write_text("these are not the bytes of a Parquet file\n")
    out = tmp_path / "out"
    assert_fails(invoke("pack", path, out, "--ctx", 8), out, 1, "text.parquet: not a readable Parquet file")


@pytest.mark.parametrize("column", [pa.array([["a"], ["b"]]), pa.array([1, 2]), pa.array([[1.5], [2.0]])])
def test_parquet_column_of_the_wrong_type(tmp_path: Path, column: pa.Array) -> None:
    path = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"input_ids": column}), path)
    out = tmp_path / "out"
    assert_fails(invoke("pack", path, out, "--ctx", 8), out, 1,
                 "typed.parquet: column 'input_ids' has type", "not a list of integer token ids", "pass --column")


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.parquet"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).touch()
    out = tmp_path / "out"
    assert_fails(invoke("pack", tmp_path / name, out, "--ctx", 8), out, 1, f"{name}: file is empty",
                 "remove it from the inputs")


def test_blank_jsonl_holds_no_documents(tmp_path: Path) -> None:
    (tmp_path / "blank.jsonl").write_text("\n\n")
    out = tmp_path / "out"
    assert_fails(invoke("pack", tmp_path / "blank.jsonl", out, "--ctx", 8), out, 1, "blank.jsonl",
                 "input holds no documents")


@pytest.mark.parametrize("lines", [['{"input_ids": []}'] * 3, ['{"ids": [1, 2]}'] * 3])
def test_nothing_to_pack_is_an_error_even_when_skipping(tmp_path: Path, lines: list[str]) -> None:
    # Only empty documents, or every record skipped (here: a wrong --column), must not end in an empty output.
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert_fails(invoke("pack", tmp_path / "in.jsonl", out, "--ctx", 8, "--on-bad-record", "skip"), out, 1,
                 "in.jsonl", "input holds no documents with tokens (3 records read")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    assert_fails(invoke("pack", tmp_path / "empty", out, "--ctx", 8), out, 1,
                 "empty: folder holds no input files")


def test_input_that_does_not_exist(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_fails(invoke("pack", tmp_path / "nope.jsonl", out, "--ctx", 8), out, 1, "nope.jsonl: does not exist",
                 "check the path")
    assert not out.exists()


def test_out_inside_in(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_parquet(folder / "a.parquet", documents([5, 6]))
    out = folder / "packed"
    assert_fails(invoke("pack", folder, out, "--ctx", 8), out, 1, "OUT lies inside the input folder",
                 "choose an OUT outside")
    assert not out.exists()


@pytest.mark.parametrize("spelling", ["link", "uri"])
def test_out_inside_in_through_a_link_or_uri(tmp_path: Path, spelling: str) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_parquet(folder / "a.parquet", documents([5, 6]))
    if spelling == "link":
        (tmp_path / "alias").symlink_to(folder)
        given = str(tmp_path / "alias")
    else:
        given = f"file://{folder}/"
    out = folder / "packed"
    assert_fails(invoke("pack", given, out, "--ctx", 8), out, 1, "OUT lies inside the input folder")
    assert not out.exists()


def test_out_not_writable(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "a.parquet", documents([5, 6]))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # Root ignores permission bits, so "not writable" is a path under a file, and OUT being a file itself.
    assert_fails(invoke("pack", source, blocker / "out", "--ctx", 8), blocker / "out", 1, "cannot write here",
                 "choose a folder you can write to")
    assert_fails(invoke("pack", source, blocker, "--ctx", 8), blocker, 1, "OUT is a file")


def test_out_not_empty_without_overwrite(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "a.parquet", documents([5, 6]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_fails(invoke("pack", source, out, "--ctx", 8), out, 1, "OUT is not empty", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"


def test_inputs_with_different_integer_widths_are_cast(tmp_path: Path) -> None:
    narrow = write_parquet(tmp_path / "narrow.parquet", [[1, 2, 3], [4]], pa.int16())
    wide = write_parquet(tmp_path / "wide.parquet", [[5, 6], [7, 8, 9]], pa.int64())
    unsigned = write_parquet(tmp_path / "unsigned.parquet", [[10]], pa.uint32())
    out = tmp_path / "out"
    result = invoke("pack", narrow, wide, unsigned, out, "--ctx", 8, "--verify", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["verify"]["documents"] == 5


def test_second_input_without_the_column(tmp_path: Path) -> None:
    good = write_parquet(tmp_path / "good.parquet", documents([5, 6]))
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"tokens": pa.array([[1, 2]])}), other)
    out = tmp_path / "out"
    assert_fails(invoke("pack", good, other, out, "--ctx", 8), out, 1,
                 "other.parquet: no column 'input_ids'; columns are: tokens", "pass --column NAME")


def test_second_input_with_a_column_of_another_type(tmp_path: Path) -> None:
    good = write_parquet(tmp_path / "good.parquet", documents([5, 6]))
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([["x", "y"]])}), other)
    out = tmp_path / "out"
    assert_fails(invoke("pack", good, other, out, "--ctx", 8), out, 1, "other.parquet: column 'input_ids' has type")


def test_bad_record_in_a_later_file_leaves_no_out_behind(tmp_path: Path) -> None:
    """Earlier windows were written (to the run's temporary folder); the failed run removes them and the OUT it
    created."""
    good = write_parquet(tmp_path / "good.parquet", documents([100] * 300))
    out = tmp_path / "new" / "out"
    result = invoke("pack", good, bad_jsonl(tmp_path, "not-json"), out, "--ctx", 64, "--window-tokens", 2000,
                    "--workers", 1)
    assert_fails(result, out, 1, "not-json.jsonl:2: not valid JSON")
    assert not (tmp_path / "new").exists()


def test_bad_record_at_the_end_leaves_the_old_output_valid(tmp_path: Path) -> None:
    good = write_parquet(tmp_path / "good.parquet", documents([100] * 300))
    out = tmp_path / "out"
    assert invoke("pack", good, out, "--ctx", 64, "--window-tokens", 2000).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = invoke("pack", good, bad_jsonl(tmp_path, "not-json"), out, "--ctx", 64, "--window-tokens", 2000,
                    "--workers", 1, "--overwrite")
    assert result.exit_code == 1 and "not-json.jsonl:2: not valid JSON" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert invoke("verify", good, out).exit_code == 0


@pytest.mark.parametrize(("value", "fragment"), [
    ("0", "--ctx 0 is out of range (choose a sequence length in 1..1048576)"),
    ("-5", "--ctx -5 is out of range"),
    (str(2**21), f"--ctx {2**21} is out of range"),
    ("many", "'many' is not a valid integer"),
])
def test_ctx_out_of_range(tmp_path: Path, value: str, fragment: str) -> None:
    source = write_parquet(tmp_path / "a.parquet", documents([5, 6]))
    out = tmp_path / "out"
    assert_fails(invoke("pack", source, out, "--ctx", value), out, 2, fragment)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--eos-id", "70000", "--dtype", "uint16"], "--eos-id 70000 does not fit the token dtype uint16"),
    (["--eos-id", "-1"], "-1 is not in the range x>=0"),
    (["--pad-id", str(2**31), "--dtype", "int32"], f"--pad-id {2**31} does not fit the token dtype int32"),
])
def test_special_ids_outside_the_dtype(tmp_path: Path, args: list[str], fragment: str) -> None:
    source = write_parquet(tmp_path / "a.parquet", documents([5, 6]))
    out = tmp_path / "out"
    assert_fails(invoke("pack", source, out, "--ctx", 8, *args), out, 2, fragment)


@pytest.mark.parametrize(("text", "fragment"), [
    ("ctx = 8\ncolour = 'red'\n", "unknown key 'colour'"),
    ("[pack]\nctx = 8\nshufle = false\n", "unknown key 'pack.shufle'"),
    ("ctx = 'big'\n", "ctx = 'big' is not a valid integer"),
    ("ctx = 8\neos_id = [1, 2]\n", "eos_id = [1, 2] is not a valid integer"),
    ("ctx = 8\nshuffle = 'maybe'\n", "shuffle = 'maybe' is not a valid boolean"),
    ("ctx = 8\nlong_docs = 'fold'\n", "long_docs = 'fold' is not a valid choice"),
    ("ctx = = 8\n", "is not valid TOML"),
])
def test_config_with_unknown_keys_or_wrong_types(tmp_path: Path, text: str, fragment: str) -> None:
    source = write_parquet(tmp_path / "a.parquet", documents([5, 6]))
    config = tmp_path / "bad.toml"
    config.write_text(text)
    out = tmp_path / "out"
    assert_fails(invoke("pack", source, out, "--config", config), out, 2, f"config file {config}", fragment)


def test_real_process_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "bestfit_cli", "pack", str(bad_jsonl(tmp_path, "floats")),
                           str(out), "--ctx", "8"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"Error: {tmp_path / 'floats.jsonl'}:2: 'input_ids' holds float, not only integer token ids "
        "(token ids must be non-negative integers)"]


@pytest.mark.parametrize(("ids", "dtype", "row", "value", "hint"), [
    ([[1], [2**31 + 7], [2**33]], "int32", 1, 2**31 + 7, "pass --dtype int64"),  # uint32 would fail again
    ([[1, 2], [70_000, 3_000_000_000]], "uint16", 1, 70_000, "pass --dtype uint32"),
    ([[5], [70_000], [-1]], "uint16", 1, 70_000, "pass --dtype int32"),
])
def test_too_large_id_names_first_bad_row_and_a_dtype_that_fits(tmp_path: Path, ids: list[list[int]], dtype: str,
                                                                row: int, value: int, hint: str) -> None:
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(ids, type=pa.list_(pa.int64()))}), path)
    out = tmp_path / "out"
    assert_fails(invoke("pack", path, out, "--ctx", 8, "--dtype", dtype), out, 1,
                 f"big.parquet row {row}: token id {value} ", hint)


def test_skip_lists_the_first_bad_records_in_row_order(tmp_path: Path) -> None:
    # Null rows and bad ids are found by separate checks; the report must still name the first five by row.
    rows: list[list[int | None] | None] = [[1, 2] for _ in range(20)]
    rows[2] = None
    rows[18] = [1, None]
    for bad in (*range(5, 12), 15):
        rows[bad] = [3, -1]
    path = tmp_path / "order.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(rows, type=pa.list_(pa.int64()))}), path)
    result = invoke("pack", path, tmp_path / "out", "--ctx", 8, "--on-bad-record", "skip", "--max-bad-records", 10,
                    "--json", "-q")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["skipped_records"] == 10
    assert [entry.split(" (")[0] for entry in report["skipped_first"]] == [
        f"{path} row {row}" for row in (2, 5, 6, 7, 8)]
