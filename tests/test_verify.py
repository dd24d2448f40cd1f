"""``bestfit verify``: passes on every honest output and names the document, shard and row of each kind of damage."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from bestfit_cli import PackOptions, pack
from bestfit_cli.cli import cli
from bestfit_cli.verify import verify

from .conftest import EOS, SAMPLES
from .synthetic import corpus, documents, write_jsonl

CTX = 64
PAD = 7


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A corpus of three files and its packed output: several windows, several shards per window."""
    root = tmp_path_factory.mktemp("verify")
    source = corpus(root / "in", 150, seed=3, max_len=100)
    out = root / "out"
    pack([str(source)], str(out), PackOptions(ctx=CTX, eos_id=EOS, pad_id=PAD, window_tokens=1500,
                                              rows_per_shard=8, workers=2))
    return source, out


@pytest.fixture
def damaged(packed: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the packed output, to damage."""
    source, out = packed
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return source, copy


def manifest_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


def save_manifest(out: Path, manifest: dict[str, Any]) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def rewrite_shard(out: Path, name: str, change: Callable[[dict[str, list[Any]]], None]) -> None:
    """Edit a shard's rows as Python lists and re-list its size and sha256, so only the deep checks can tell."""
    path = out / name
    table = pq.read_table(path)
    rows = table.to_pydict()
    change(rows)
    pq.write_table(pa.table(rows, schema=table.schema), path)
    data = path.read_bytes()
    manifest = manifest_of(out)
    for shard in manifest["shards"]:
        if shard["path"] == name:
            shard.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), rows=table.num_rows)
    save_manifest(out, manifest)


def first_shard(out: Path) -> str:
    return str(manifest_of(out)["shards"][0]["path"])


def find_row(out: Path, wanted: Callable[[list[int]], bool]) -> tuple[str, int, dict[str, list[Any]]]:
    """The first shard and row whose seq_lengths satisfy ``wanted``, with that shard's rows."""
    for shard in manifest_of(out)["shards"]:
        rows = pq.read_table(out / shard["path"]).to_pydict()
        for row, lengths in enumerate(rows["seq_lengths"]):
            if wanted(lengths):
                return shard["path"], row, rows
    raise AssertionError("no such row in the fixture")


def problems(source: Path, out: Path) -> list[str]:
    result = verify([str(source)], str(out))
    assert not result.ok
    return [str(p) for p in result.problems]


# ------------------------------------------------------------------------------------------------ honest outputs


def test_verify_passes_and_counts_match_the_manifest(packed: tuple[Path, Path]) -> None:
    source, out = packed
    manifest = manifest_of(out)
    assert len(manifest["windows"]) > 3 and len(manifest["shards"]) > len(manifest["windows"])
    result = invoke("verify", source, out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (f"verified: {manifest['documents']:,} documents, {manifest['tokens']:,} tokens, "
                             f"{manifest['sequences']:,} sequences\n")


def test_verify_json(packed: tuple[Path, Path]) -> None:
    source, out = packed
    result = invoke("verify", source, out, "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["ok"] and data["problems"] == [] and data["shards"] == len(manifest_of(out)["shards"])


def test_pack_verify_on_the_sample(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("pack", SAMPLES, out, "--ctx", 2048, "--eos-id", EOS, "--verify", "--window-tokens", 500_000)
    assert result.exit_code == 0, result.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert (f"verified: 850 documents, {stats['tokens']:,} tokens, {stats['sequences']:,} sequences"
            in result.stderr)


@pytest.mark.parametrize("long_docs", ["truncate", "drop"])
def test_verify_accepts_what_long_docs_declares_removed(tmp_path: Path, long_docs: str) -> None:
    source = write_jsonl(tmp_path / "docs.jsonl", documents([3, 20, 9, 0, 50, 16, 15]))
    out = tmp_path / "out"
    report = pack([str(source)], str(out), PackOptions(ctx=16, eos_id=EOS, long_docs=long_docs))  # type: ignore[arg-type]
    assert report.report.stats.dropped_tokens > 0
    result = verify([str(source)], str(out))
    assert result.ok, result.problems
    assert result.tokens == report.report.stats.tokens


def test_verify_without_eos_and_uint16(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "docs.jsonl", documents([1, 8, 9, 17, 0, 3], high=60_000))
    out = tmp_path / "out"
    pack([str(source)], str(out), PackOptions(ctx=8, dtype="uint16", shuffle=False))
    assert verify([str(source)], str(out)).ok


def test_leftover_temp_folder_is_only_a_note(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    (out / ".bestfit-tmp-0123456789ab").mkdir()
    result = invoke("verify", source, out)
    assert result.exit_code == 0
    assert "note: leftover temporary folder .bestfit-tmp-0123456789ab (safe to delete)" in result.stderr


# ------------------------------------------------------------------------------------------------ cannot be checked


def test_folder_without_manifest_is_incomplete(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    (out / "manifest.json").unlink()
    result = invoke("verify", source, out)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {out}: no manifest.json, so this output is incomplete (its pack run was "
                             "interrupted, failed or is still running) (rerun the same bestfit pack command with "
                             "--overwrite)\n")


def test_out_that_does_not_exist(packed: tuple[Path, Path], tmp_path: Path) -> None:
    result = invoke("verify", packed[0], tmp_path / "nowhere")
    assert result.exit_code == 1 and "nowhere: does not exist" in result.stderr


def test_manifest_that_is_not_json(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    (out / "manifest.json").write_text("{")
    result = invoke("verify", source, out)
    assert result.exit_code == 1 and "manifest.json is not valid JSON" in result.stderr


# ------------------------------------------------------------------------------------------------ damage found


def test_missing_shard(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    name = first_shard(out)
    (out / name).unlink()
    found = problems(source, out)
    assert f"{name}: shard listed in manifest.json is missing" in found
    assert any(p.startswith("document ") for p in found), found


def test_unlisted_shard(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    shutil.copy(out / first_shard(out), out / "train-00099999-00000000-0123456789abcdef.parquet")
    assert problems(source, out) == ["train-00099999-00000000-0123456789abcdef.parquet: file not listed in "
                                     "manifest.json"]


def test_changed_bytes_fail_the_sha256(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    name = first_shard(out)
    data = bytearray((out / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / name).write_bytes(bytes(data))
    found = problems(source, out)
    assert found[0] == f"{name}: size or sha256 differs from manifest.json (the file changed after packing)"


def test_changed_token_names_document_shard_and_row(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    name = first_shard(out)
    table = pq.read_table(out / name).to_pydict()
    doc, row = table["doc_index"][2][0], 2

    def change(rows: dict[str, list[Any]]) -> None:
        rows["input_ids"][row][0] += 1

    rewrite_shard(out, name, change)
    result = invoke("verify", source, out)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: {out}: verification failed with 1 problem(s); first: {name} row {row}, document {doc}: tokens differ "
        f"from the input (piece of {table['seq_lengths'][row][0]} tokens) (rerun the same bestfit pack command with "
        "--overwrite)")


@pytest.mark.parametrize("where", ["long piece", "short piece", "EOS"])
def test_a_changed_token_is_found_in_long_and_short_pieces_and_in_the_eos(damaged: tuple[Path, Path],
                                                                           where: str) -> None:
    """verify compares long pieces slice by slice, short ones in vectorised steps, and EOS tokens on their own."""
    source, out = damaged
    wanted = {"long piece": lambda n: n >= 60, "short piece": lambda n: 2 <= n <= 20, "EOS": lambda n: n >= 1}[where]
    for shard in manifest_of(out)["shards"]:
        rows = pq.read_table(out / shard["path"]).to_pydict()
        found = [(row, at, n) for row, lengths in enumerate(rows["seq_lengths"])
                 for at, n in zip(np.cumsum([0, *lengths[:-1]]).tolist(), lengths, strict=True) if wanted(n)
                 and (where != "EOS" or rows["input_ids"][row][at + n - 1] == EOS)]
        if found:
            name, (row, at, n) = shard["path"], found[0]
            break
    position = {"long piece": at + 30, "short piece": at, "EOS": at + n - 1}[where]

    def change(edited: dict[str, list[Any]]) -> None:
        edited["input_ids"][row][position] -= 1

    rewrite_shard(out, name, change)
    found_problems = problems(source, out)
    assert len(found_problems) == 1 and found_problems[0].startswith(f"{name} row {row}, document ")
    assert f"tokens differ from the input (piece of {n} tokens)" in found_problems[0]


def test_lost_piece_is_a_missing_document(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    name, row, rows = find_row(out, lambda lengths: len(lengths) > 1)
    lost_doc, lost_len = rows["doc_index"][row][-1], rows["seq_lengths"][row][-1]

    def change(rows: dict[str, list[Any]]) -> None:
        fill = sum(rows["seq_lengths"][row]) - lost_len
        rows["input_ids"][row][fill:] = [PAD] * (CTX - fill)
        for column in ("seq_lengths", "doc_index", "doc_offset"):
            rows[column][row].pop()

    rewrite_shard(out, name, change)
    found = problems(source, out)
    assert any(p.startswith(f"document {lost_doc}: ") for p in found), found
    assert any("sequences" not in p for p in found)


def test_piece_packed_twice_is_found(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    for shard in manifest_of(out)["shards"]:
        name, rows = shard["path"], pq.read_table(out / shard["path"]).to_pydict()
        pairs = [(s, t) for s, first in enumerate(rows["seq_lengths"]) for t, lengths in enumerate(rows["seq_lengths"])
                 if s != t and sum(lengths) + first[0] <= CTX]
        if pairs:
            source_row, target_row = pairs[0]
            break
    doc = rows["doc_index"][source_row][0]

    def change(rows: dict[str, list[Any]]) -> None:
        length = rows["seq_lengths"][source_row][0]
        fill = sum(rows["seq_lengths"][target_row])
        rows["input_ids"][target_row][fill:fill + length] = rows["input_ids"][source_row][:length]
        for column in ("seq_lengths", "doc_index", "doc_offset"):
            rows[column][target_row].append(rows[column][source_row][0])

    rewrite_shard(out, name, change)
    found = problems(source, out)
    assert any(p.startswith(f"document {doc}: ") and "overlaps another piece" in p for p in found), found


def test_padding_that_is_not_the_pad_id(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    name, row, rows = find_row(out, lambda lengths: sum(lengths) < CTX)

    def change(rows: dict[str, list[Any]]) -> None:
        rows["input_ids"][row][-1] = PAD + 1

    rewrite_shard(out, name, change)
    assert problems(source, out) == [f"{name} row {row}: padding after the last piece is not the pad id {PAD}"]


def test_row_shorter_than_ctx(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    name = first_shard(out)

    def change(rows: dict[str, list[Any]]) -> None:
        rows["input_ids"][1] = rows["input_ids"][1][:-1]

    rewrite_shard(out, name, change)
    assert f"{name} row 1: row has {CTX - 1} tokens, not ctx = {CTX}" in problems(source, out)


def test_inputs_with_an_extra_document(damaged: tuple[Path, Path], tmp_path: Path) -> None:
    source, out = damaged
    grown = tmp_path / "grown"
    shutil.copytree(source, grown)
    with (grown / "c.jsonl").open("a") as f:
        f.write('{"input_ids": [1, 2, 3]}\n')
    found = problems(grown, out)
    assert any("the inputs hold 1 document(s) more than the manifest lists" in p for p in found), found


def test_inputs_given_in_another_order(packed: tuple[Path, Path]) -> None:
    source, out = packed
    result = verify([str(source / "c.jsonl"), str(source / "a.parquet"), str(source / "b.parquet")], str(out))
    assert not result.ok
    assert any("tokens differ" in str(p) or "document" in str(p) for p in result.problems)


def test_declared_drops_must_match(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "docs.jsonl", documents([3, 20, 9, 50]))
    out = tmp_path / "out"
    pack([str(source)], str(out), PackOptions(ctx=16, long_docs="drop"))
    manifest = manifest_of(out)
    manifest["windows"][0]["dropped_documents"] = 1
    save_manifest(out, manifest)
    assert problems(source, out) == [
        "window 0: manifest.json says dropped_documents = 1, --long-docs drop on the inputs gives 2"]


def test_skipped_records_must_match(tmp_path: Path) -> None:
    source = tmp_path / "docs.jsonl"
    source.write_text('{"input_ids": [1, 2]}\nnot json\n{"input_ids": [3]}\n')
    out = tmp_path / "out"
    pack([str(source)], str(out), PackOptions(ctx=8, on_bad_record="skip", max_bad_records="1"))
    assert verify([str(source)], str(out)).ok
    source.write_text('{"input_ids": [1, 2]}\n{"input_ids": [3]}\n')
    found = problems(source, out)
    assert any("manifest.json says 1 bad records were skipped, reading it again skips 0" in p for p in found)


def test_problems_are_capped_but_counted(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    for shard in manifest_of(out)["shards"][:6]:
        (out / shard["path"]).unlink()
    result = verify([str(source)], str(out), max_problems=3)
    assert len(result.problems) == 3 and result.problem_count >= 6
    cli_result = invoke("verify", source, out, "--max-problems", 3)
    assert cli_result.exit_code == 1
    assert cli_result.stderr.count("problem: ") == 2  # the first is in the error line


def test_pack_verify_cannot_reread_stdin(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["pack", "-", str(tmp_path / "out"), "--ctx", "8", "--verify"],
                                input='{"input_ids": [1, 2]}\n')
    assert result.exit_code == 2
    assert "--verify reads the inputs again, which stdin (-) cannot do" in result.stderr
    assert not (tmp_path / "out").exists()


def test_verify_json_on_failure_still_prints_the_result(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    name = first_shard(out)
    (out / name).unlink()
    result = invoke("verify", source, out, "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert not data["ok"] and data["problems"][0] == {
        "message": "shard listed in manifest.json is missing", "shard": name, "row": None, "document": None}
    assert result.stderr.strip().splitlines()[-1].startswith(f"Error: {out}: verification failed with ")


# ------------------------------------------------------------------------------------------------ shards vs windows


def test_shard_listed_but_in_no_window(damaged: tuple[Path, Path]) -> None:
    """Trainers read ``shards``: a copy listed there with its true size and sha256 would be read twice."""
    source, out = damaged
    name = first_shard(out)
    copy = "train-00000099-00000000-0123456789abcdef.parquet"
    shutil.copy(out / name, out / copy)
    manifest = manifest_of(out)
    manifest["shards"].append(dict(manifest["shards"][0], path=copy))
    save_manifest(out, manifest)
    assert problems(source, out) == [f"{copy}: listed in manifest.json's shards but in no window "
                                     "(a trainer would read its rows as extra data)"]


def test_shard_listed_twice(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    manifest = manifest_of(out)
    manifest["shards"].append(manifest["shards"][0])
    save_manifest(out, manifest)
    assert problems(source, out) == [f"{first_shard(out)}: listed twice in manifest.json's shards (a trainer would "
                                     "read its rows twice)"]


def test_window_shard_missing_from_shards(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    manifest = manifest_of(out)
    name = manifest["shards"].pop()["path"]
    save_manifest(out, manifest)
    window = manifest["windows"][-1]["index"]
    assert (f"{name}: shard of window {window} is not listed in manifest.json's shards (a trainer would never read "
            "it)") in problems(source, out)


def test_shard_in_two_windows(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    manifest = manifest_of(out)
    name = manifest["windows"][0]["shards"][0]
    manifest["windows"][1]["shards"].append(name)
    save_manifest(out, manifest)
    assert f"{name}: listed by window 0 and again by window 1" in problems(source, out)


def test_shards_out_of_window_order(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    manifest = manifest_of(out)
    manifest["shards"].reverse()
    save_manifest(out, manifest)
    assert problems(source, out) == ["manifest.json's shards are not in the order of its windows"]


# ------------------------------------------------------------------------------------------------ malformed manifest


def set_key(manifest: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key such as ``options.dtype`` or ``windows[0].documents``."""
    *parents, last = key.replace("[0]", ".0").split(".")
    target: Any = manifest
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[last] = value


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("options.dtype", "float", 'options.dtype is "float", expected uint16, int32, uint32 or int64'),
    ("shards", None, "shards is null, expected a list"),
    ("windows[0].documents", "x", 'windows[0].documents is "x", expected an integer >= 0'),
    ("options.long_docs", "zzz", 'options.long_docs is "zzz", expected split, truncate or drop'),
    ("options.ctx", 0, "options.ctx is 0, expected an integer in 1..1048576"),
    ("options.ctx", True, "options.ctx is true, expected an integer in 1..1048576"),
    ("options.pad_id", 2**31, "options.pad_id is 2147483648, expected an id in 0..2147483647 (int32)"),
    ("options.on_bad_record", "ignore", 'options.on_bad_record is "ignore", expected error or skip'),
    ("windows", {}, "windows is {}, expected a list"),
    ("windows[0].shards", ["../stats.json"], 'windows[0].shards[0] is "../stats.json", expected a file name in OUT'),
    ("shards[0].sha256", "abc", 'shards[0].sha256 is "abc", expected 64 hex digits'),
    ("documents", "850", 'documents is "850", expected an integer >= 0'),
    ("inputs[0].documents", None, "inputs[0].documents is null, expected an integer >= 0"),
    ("skipped_records", [], "skipped_records is [], expected an object"),
])
def test_malformed_manifest_is_one_line(damaged: tuple[Path, Path], key: str, value: Any, expected: str) -> None:
    source, out = damaged
    manifest = manifest_of(out)
    set_key(manifest, key, value)
    save_manifest(out, manifest)
    result = invoke("verify", source, out)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {out}/manifest.json is malformed: {expected} (rerun the same bestfit pack "
                             "command with --overwrite)\n")


def test_missing_manifest_field_is_named(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    manifest = manifest_of(out)
    del manifest["options"]["eos_id"]
    save_manifest(out, manifest)
    result = invoke("verify", source, out)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {out}/manifest.json is malformed: options.eos_id is missing (rerun the same "
                             "bestfit pack command with --overwrite)\n")


def test_verify_holds_about_one_copy_of_the_window(tmp_path: Path) -> None:
    """numpy arrays alive at once (tracemalloc): the window's tokens once, plus bounded steps; not the copies and
    window-sized index arrays that cost six times the window before."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, 4000)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    tokens = rng.integers(0, 50_000, int(offsets[-1]), dtype=np.int32)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens))}), source)
    pack([str(source)], str(tmp_path / "out"), PackOptions(ctx=512, eos_id=50_001, rows_per_shard=64))
    tracemalloc.start()
    try:
        result = verify([str(source)], str(tmp_path / "out"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.ok, result.problems
    assert peak < 1.5 * tokens.nbytes


# ------------------------------------------------------------------------------------------------ trusts nothing


def verify_subprocess(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """``bestfit verify`` in its own process, so a read that never ends fails the test instead of hanging it."""
    return subprocess.run([sys.executable, "-m", "bestfit_cli", "verify", str(source), str(out)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "outside"])
def test_verify_reads_only_regular_files_inside_out(damaged: tuple[Path, Path], tmp_path: Path, kind: str) -> None:
    source, out = damaged
    name = first_shard(out)
    shard = out / name
    if kind == "outside":  # a valid copy of the shard, outside OUT: every byte right, but not OUT's file
        shard.rename(tmp_path / name)
        shard.symlink_to(tmp_path / name)
    else:
        shard.unlink()
        if kind == "fifo":
            os.mkfifo(shard)
        else:
            shard.symlink_to("/dev/zero")
    done = verify_subprocess(source, out)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    expected = "is not a regular file" if kind == "fifo" else "is a link"
    assert f"{name}: {expected}" in done.stderr.splitlines()[-1]
    assert "verify reads only regular files inside OUT; it was not read" in done.stderr


def test_shard_bytes_reach_pyarrow_only_as_pyarrow_memory(packed: tuple[Path, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """verify decodes each shard from bytes it read itself. If pyarrow reads them as Python memory, a scan thread
    may drop the last reference while the interpreter exits (verify found a problem) and the process aborts:
    "terminate called without an active exception", exit 134, about 1 run in 40 of the test above under load."""
    from bestfit_cli.formats import megatron, parquet

    data = (packed[1] / first_shard(packed[1])).read_bytes()

    def refs_inside_a_call(argument: bytes) -> int:
        return sys.getrefcount(data)

    baseline = refs_inside_a_call(data)  # decode's own argument is one reference
    held = []
    real = pq.read_table

    def watching(source: Any, *args: Any, **kwargs: Any) -> pa.Table:
        held.append(sys.getrefcount(data) - baseline)  # references to the caller's bytes while pyarrow reads
        return real(source, *args, **kwargs)

    monkeypatch.setattr(parquet.pq, "read_table", watching)
    table = parquet.ParquetFormat().decode(data, {})
    assert table.num_rows == pq.read_metadata(packed[1] / first_shard(packed[1])).num_rows
    assert held == [0], "pyarrow holds the Python bytes it reads from"
    assert megatron.pq is parquet.pq  # the Megatron sidecar is read the same way (megatron.py: arrow_owned)


def test_manifest_that_is_a_fifo(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    (out / "manifest.json").unlink()
    os.mkfifo(out / "manifest.json")
    done = verify_subprocess(source, out)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"Error: {out}: manifest.json is not a regular file (a pipe or a "
                                                "device; verify reads only regular files inside OUT; it was not "
                                                "read) (rerun the same bestfit pack command with --overwrite)"]


def test_edited_stats_json_is_found(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    report = json.loads((out / "stats.json").read_text())
    report["sequences"] -= 1
    (out / "stats.json").write_text(json.dumps(report, indent=2) + "\n")
    assert problems(source, out) == [
        "stats.json: size or sha256 differs from manifest.json (the report changed after packing)"]


def test_stats_json_edited_with_its_sha256_is_found(damaged: tuple[Path, Path]) -> None:
    """A report edited and re-hashed in the manifest still has to agree with the manifest's checked totals."""
    source, out = damaged
    report = json.loads((out / "stats.json").read_text())
    report["sequences"] -= 1
    data = (json.dumps(report, indent=2) + "\n").encode()
    (out / "stats.json").write_bytes(data)
    manifest = manifest_of(out)
    manifest.update(stats_bytes=len(data), stats_sha256=hashlib.sha256(data).hexdigest())
    save_manifest(out, manifest)
    assert problems(source, out) == [
        f"stats.json: says sequences = {report['sequences']}, manifest.json {manifest['sequences']}"]


@pytest.mark.parametrize("version", [999, "2", None, True])
def test_unknown_format_version_is_refused(damaged: tuple[Path, Path], version: Any) -> None:
    source, out = damaged
    manifest = manifest_of(out)
    manifest["format_version"] = version
    save_manifest(out, manifest)
    result = invoke("verify", source, out)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"manifest.json has format_version {json.dumps(version)}, which this bestfit does not know" in (
        result.stderr)


def test_edited_columns_are_found(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    manifest = manifest_of(out)
    manifest["columns"] = ["input_ids", "seq_lengths", "doc_index", "doc_offset", "attention_mask"]
    save_manifest(out, manifest)
    assert problems(source, out) == ["manifest.json lists the columns input_ids, seq_lengths, doc_index, doc_offset, "
                                     "attention_mask; a bestfit shard has exactly input_ids, seq_lengths, doc_index, "
                                     "doc_offset"]


def test_an_extra_shard_column_is_found(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    name = first_shard(out)
    table = pq.read_table(out / name)
    pq.write_table(table.append_column("labels", table.column("input_ids")), out / name)
    data = (out / name).read_bytes()
    manifest = manifest_of(out)
    manifest["shards"][0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    save_manifest(out, manifest)
    assert problems(source, out) == [f"{name}: has the columns input_ids, seq_lengths, doc_index, doc_offset, "
                                     "labels, not exactly input_ids, seq_lengths, doc_index, doc_offset"]


def test_edited_window_tokens_are_found(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    manifest = manifest_of(out)
    held = manifest["windows"][1]["tokens"]
    manifest["windows"][1]["tokens"] = held + 5
    save_manifest(out, manifest)
    assert problems(source, out) == [f"window 1: manifest.json says {held + 5} tokens, its shards hold {held}"]


def test_every_changed_document_is_counted(damaged: tuple[Path, Path], tmp_path: Path) -> None:
    source, out = damaged
    changed = tmp_path / "changed"
    shutil.copytree(source, changed)
    lines = [json.loads(line) for line in (changed / "c.jsonl").read_text().splitlines()]
    for doc in lines:
        doc["input_ids"] = [(i + 1) % 50_000 for i in doc["input_ids"]]
    (changed / "c.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in lines))
    nonempty = sum(1 for doc in lines if doc["input_ids"])
    result = verify([str(changed)], str(out), max_problems=5)
    differ = [p for p in result.problems if "tokens differ" in p.message]
    assert len(differ) == 5 and result.problem_count >= nonempty > 20
    assert result.stopped is None


def test_a_stop_never_claims_the_output_is_empty(damaged: tuple[Path, Path], tmp_path: Path) -> None:
    source, out = damaged
    shorter = tmp_path / "shorter"
    shutil.copytree(source, shorter)
    (shorter / "c.jsonl").unlink()
    result = invoke("verify", shorter, out)
    assert result.exit_code == 1
    assert "the output holds 0" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "verification failed with at least" in last
    assert "later windows and the totals not checked" in last
