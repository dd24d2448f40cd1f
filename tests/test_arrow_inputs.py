"""Arrow inputs: Hugging Face ``save_to_disk`` folders and Arrow IPC files, streams and Feather v2, written by the
real producers (``datasets``, pyarrow), packed and verified against a Parquet pack of the same documents."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from .test_bad_input import assert_fails, invoke

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()

PACK = ("--ctx", "512", "--eos-id", "0", "-q")


def make_documents(n_docs: int = 600, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 50_000, size=int(n)).tolist() for n in rng.integers(1, 900, size=n_docs)]


def token_table(docs: list[list[int]]) -> pa.Table:
    return pa.table({"input_ids": pa.array(docs, pa.list_(pa.int32())), "text": [f"doc {i}" for i in range(len(docs))]})


def save_to_disk(path: Path, docs: list[list[int]], shards: int = 3) -> Path:
    datasets.Dataset.from_dict({"input_ids": docs, "text": [f"doc {i}" for i in range(len(docs))]}).save_to_disk(
        str(path), num_shards=shards)
    return path


def packed_rows(out: Path) -> list[list[int]]:
    """Every packed row of OUT, in shard order."""
    manifest = json.loads((out / "manifest.json").read_text())
    return [row for shard in manifest["shards"] for row in pq.read_table(out / shard["path"])["input_ids"].to_pylist()]


def document(out: Path, doc: int) -> list[int]:
    """Document ``doc`` rebuilt from its pieces in OUT (``doc_index``, ``doc_offset``, ``seq_lengths``)."""
    pieces = []
    for shard in json.loads((out / "manifest.json").read_text())["shards"]:
        for row in pq.read_table(out / shard["path"]).to_pylist():
            start = 0
            for index, offset, length in zip(row["doc_index"], row["doc_offset"], row["seq_lengths"], strict=True):
                if index == doc:
                    pieces.append((offset, row["input_ids"][start:start + length]))
                start += length
    return [t for _, piece in sorted(pieces) for t in piece][:-1]  # without the EOS pack appended


def pack_and_verify(source: Path, out: Path, *extra: object) -> dict[str, object]:
    result = invoke("pack", source, out, *PACK, *extra)
    assert result.exit_code == 0, result.stderr
    checked = invoke("verify", source, out, *extra)
    assert checked.exit_code == 0, checked.stderr
    manifest: dict[str, object] = json.loads((out / "manifest.json").read_text())
    return manifest


@pytest.fixture(scope="module")
def docs() -> list[list[int]]:
    return make_documents()


@pytest.fixture(scope="module")
def parquet_pack(docs: list[list[int]], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], list]:
    folder = tmp_path_factory.mktemp("parquet")
    pq.write_table(token_table(docs), folder / "docs.parquet")
    manifest = pack_and_verify(folder / "docs.parquet", folder / "out")
    return manifest, packed_rows(folder / "out")


def test_save_to_disk_folder_packs_like_the_same_documents_in_parquet(
        tmp_path: Path, docs: list[list[int]], parquet_pack: tuple[dict[str, object], list]) -> None:
    source = save_to_disk(tmp_path / "ds", docs)
    manifest = pack_and_verify(source, tmp_path / "out")
    expected, rows = parquet_pack
    assert manifest["sequences"] == expected["sequences"] and manifest["documents"] == len(docs)
    assert packed_rows(tmp_path / "out") == rows  # the same documents, in the same order, packed the same
    inputs = manifest["inputs"]
    assert isinstance(inputs, list)
    assert [Path(i["path"]).name for i in inputs] == [f"data-0000{k}-of-00003.arrow" for k in range(3)]
    assert {i["format"] for i in inputs} == {"arrow"} and all("footer_sha256" in i for i in inputs)
    assert manifest["inputs_left_out"] == []  # state.json and dataset_info.json belong to the dataset


def test_save_to_disk_files_are_read_in_the_order_state_json_lists(tmp_path: Path, docs: list[list[int]]) -> None:
    source = save_to_disk(tmp_path / "ds", docs)
    state = json.loads((source / "state.json").read_text())
    state["_data_files"].reverse()
    (source / "state.json").write_text(json.dumps(state))
    loaded = datasets.load_from_disk(str(source))  # the order datasets itself reads them in
    manifest = pack_and_verify(source, tmp_path / "out")
    inputs = manifest["inputs"]
    assert isinstance(inputs, list)
    assert [Path(i["path"]).name for i in inputs] == [f["filename"] for f in state["_data_files"]]
    # Documents 0 and 1 of the pack are rows 0 and 1 of the dataset as datasets loads it.
    assert [document(tmp_path / "out", d) for d in (0, 1)] == [loaded[d]["input_ids"] for d in (0, 1)]


@pytest.mark.parametrize("kind", ["file.arrow", "stream.ipc", "stream.arrow", "v2.feather", "uncompressed.feather"])
def test_arrow_ipc_files_streams_and_feather_pack_like_parquet(
        tmp_path: Path, kind: str, docs: list[list[int]], parquet_pack: tuple[dict[str, object], list]) -> None:
    path = tmp_path / kind
    table = token_table(docs)
    if kind.endswith(".feather"):
        feather.write_feather(table, path, compression="uncompressed" if kind.startswith("un") else "lz4",
                              chunksize=100)
    else:
        with pa.OSFile(str(path), "wb") as sink:
            new = pa.ipc.new_file if kind.startswith("file") else pa.ipc.new_stream
            with new(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=100)
    manifest = pack_and_verify(path, tmp_path / "out")
    expected, rows = parquet_pack
    assert manifest["sequences"] == expected["sequences"] and manifest["documents"] == len(docs)
    assert packed_rows(tmp_path / "out") == rows


def test_stats_of_a_save_to_disk_folder_match_parquet(tmp_path: Path, docs: list[list[int]]) -> None:
    source = save_to_disk(tmp_path / "ds", docs)
    pq.write_table(token_table(docs), tmp_path / "docs.parquet")
    reports = []
    for path in (source, tmp_path / "docs.parquet"):
        result = invoke("stats", path, "--ctx", "512", "--json")
        assert result.exit_code == 0, result.stderr
        reports.append(json.loads(result.stdout)["results"])
    assert reports[0] == reports[1]


def test_a_large_record_batch_is_handed_on_in_bounded_pieces(tmp_path: Path) -> None:
    from bestfit_cli.fs import resolve_inputs
    from bestfit_cli.read import BATCH_TOKENS, ReadOptions, read_file

    docs = [[7] * 5000 for _ in range(600)]  # 3M tokens in one record batch
    path = tmp_path / "one-batch.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, token_table(docs).schema) as writer:
        writer.write_batch(token_table(docs).to_batches(max_chunksize=len(docs))[0])
    batches = list(read_file(resolve_inputs(path)[0], 0, ReadOptions()))
    assert len(batches) > 1 and max(b.n_tokens for b in batches) <= BATCH_TOKENS
    assert sum(b.n_docs for b in batches) == 600 and [b.first_row for b in batches] == list(
        np.cumsum([0] + [b.n_docs for b in batches[:-1]]))


# ------------------------------------------------------------------------------------------------ bad inputs


def test_a_dataset_dict_is_refused_naming_its_splits(tmp_path: Path, docs: list[list[int]]) -> None:
    split = datasets.Dataset.from_dict({"input_ids": docs[:50]})
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "dd"))
    out = tmp_path / "out"
    assert_fails(invoke("pack", tmp_path / "dd", out, *PACK), out, 1, "dd", "DatasetDict of splits train, test",
                 "such as", "dd/train")
    manifest = pack_and_verify(tmp_path / "dd" / "train", out)  # the split named explicitly
    assert manifest["documents"] == 50


def test_a_dataset_dict_inside_a_scanned_folder_is_refused_too(tmp_path: Path, docs: list[list[int]]) -> None:
    split = datasets.Dataset.from_dict({"input_ids": docs[:10]})
    datasets.DatasetDict({"train": split}).save_to_disk(str(tmp_path / "corpus" / "hf"))
    pq.write_table(token_table(docs[:5]), tmp_path / "corpus" / "a.parquet")
    out = tmp_path / "out"
    assert_fails(invoke("pack", tmp_path / "corpus", out, *PACK), out, 1, "hf", "DatasetDict")


@pytest.mark.parametrize(("damage", "fragment"), [
    ("not json", "state.json: is not valid JSON"),
    ('{"_fingerprint": "x"}', "state.json: lists no data files"),
    ('{"_data_files": ' + "[" * 5000 + "]" * 5000 + "}", "state.json: is not valid JSON (nested deeper than 512"),
    ('{"_data_files": [{"filename": "gone.arrow"}]}', "state.json: lists gone.arrow, which is not in the folder"),
    ('{"_data_files": [{"filename": "../escape.arrow"}]}', "not a file name in its folder"),
], ids=["not-json", "no-data-files", "too-deep", "missing-file", "escape"])
def test_a_damaged_state_json_is_one_line_naming_it(tmp_path: Path, docs: list[list[int]], damage: str,
                                                     fragment: str) -> None:
    source = save_to_disk(tmp_path / "ds", docs[:20], shards=1)
    (source / "state.json").write_text(damage)
    out = tmp_path / "out"
    assert_fails(invoke("pack", source, out, *PACK), out, 1, fragment, "save_to_disk")


def test_dataset_info_without_state_json_is_a_folder_of_arrow_files(tmp_path: Path, docs: list[list[int]]) -> None:
    # As a datasets cache folder holds them: the .arrow files are read in name order, the metadata named as left out.
    source = save_to_disk(tmp_path / "ds", docs, shards=3)
    (source / "state.json").unlink()
    result = invoke("pack", source, tmp_path / "out", *PACK, "--on-bad-record", "skip")
    assert result.exit_code == 0, result.stderr
    assert "dataset_info.json" in result.stderr and "Hugging Face datasets metadata" in result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["documents"] == len(docs) and manifest["skipped_records"]["count"] == 0


@pytest.mark.parametrize("kind", ["stream", "file"])
def test_a_truncated_arrow_file_fails_before_any_work(tmp_path: Path, docs: list[list[int]], kind: str) -> None:
    path = tmp_path / "docs.arrow"
    table = token_table(docs)
    with pa.OSFile(str(path), "wb") as sink:
        with (pa.ipc.new_stream if kind == "stream" else pa.ipc.new_file)(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=100)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    good = tmp_path / "a.parquet"
    pq.write_table(token_table(docs[:5]), good)
    out = tmp_path / "out"
    # The damaged file is the last input: it fails at the check before the first is packed, naming the file.
    message = assert_fails(invoke("pack", good, path, out, *PACK), out, 1, "docs.arrow")
    assert ("truncated or corrupt Arrow data after row" in message if kind == "stream"
            else "not a readable Arrow IPC file or stream" in message)
    assert not out.exists()


def test_a_truncated_file_in_a_save_to_disk_folder_names_it(tmp_path: Path, docs: list[list[int]]) -> None:
    source = save_to_disk(tmp_path / "ds", docs, shards=2)
    victim = source / "data-00001-of-00002.arrow"
    victim.write_bytes(victim.read_bytes()[:-5000])
    out = tmp_path / "out"
    assert_fails(invoke("pack", source, out, *PACK), out, 1, "data-00001-of-00002.arrow", "truncated")


def test_wrong_column_and_wrong_type_are_one_line_errors(tmp_path: Path, docs: list[list[int]]) -> None:
    source = save_to_disk(tmp_path / "ds", docs[:20], shards=1)
    out = tmp_path / "out"
    assert_fails(invoke("pack", source, out, *PACK, "--column", "tokens"), out, 1,
                 "data-00000-of-00001.arrow", "no column 'tokens'; columns are: input_ids, text", "--column")
    assert_fails(invoke("pack", source, out, *PACK, "--column", "text"), out, 1,
                 "column 'text' has type string, not a list of integer token ids")


def test_null_rows_and_bad_ids_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.feather"
    feather.write_feather(pa.table({"input_ids": pa.array([[1, 2], None, [3]], pa.list_(pa.int64()))}), path)
    out = tmp_path / "out"
    assert_fails(invoke("pack", path, out, *PACK), out, 1, "bad.feather", "row 1", "is null")
    skipped = invoke("pack", path, out, *PACK, "--on-bad-record", "skip", "--max-bad-records", "1")
    assert skipped.exit_code == 0, skipped.stderr
    feather.write_feather(pa.table({"input_ids": pa.array([[1], [-4]], pa.list_(pa.int64()))}), path)
    assert_fails(invoke("pack", path, tmp_path / "out2", *PACK), tmp_path / "out2", 1, "row 1", "negative token id")


def test_feather_v1_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "old.feather"
    feather.write_feather(pa.table({"x": [1, 2]}), path, version=1)
    out = tmp_path / "out"
    assert_fails(invoke("pack", path, out, *PACK), out, 1, "old.feather", "Feather version 1", "version 2")


def test_a_changed_arrow_input_fails_verify_even_with_its_time_restored(tmp_path: Path, docs: list[list[int]]) -> None:
    source = save_to_disk(tmp_path / "ds", docs[:100], shards=1)
    out = tmp_path / "out"
    pack_and_verify(source, out)
    victim = source / "data-00000-of-00001.arrow"
    before = victim.stat()
    changed = [[t + 1 for t in d] for d in docs[:100]]  # the same sizes, other ids
    save_to_disk(tmp_path / "other", changed, shards=1)
    data = (tmp_path / "other" / "data-00000-of-00001.arrow").read_bytes()
    assert len(data) == before.st_size
    victim.write_bytes(data)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = invoke("verify", source, out)
    assert result.exit_code == 1 and "data-00000-of-00001.arrow changed since packing (another footer)" in (
        result.stdout + result.stderr)


# ------------------------------------------------------------------------------------------------ what is data


def mixed_folder(root: Path) -> Path:
    """JSON Lines beside the JSON documents a corpus folder gathers: indented metadata, an array, datasets'."""
    root.mkdir()
    (root / "a.jsonl").write_text("".join(json.dumps({"input_ids": [i + 1] * (i + 2)}) + "\n" for i in range(3)))
    (root / "one-line.json").write_text('{"input_ids": [7, 8, 9]}\n')  # one record: JSON Lines
    (root / "stats.json").write_text(json.dumps({"schema_version": "1", "documents": 3}, indent=2))
    (root / "list.json").write_text(json.dumps([{"input_ids": [1]}]))
    (root / "meta").mkdir()
    (root / "meta" / "dataset_info.json").write_text('{"features": {}}')  # one line, yet datasets metadata
    return root


def test_a_folder_scan_reads_json_lines_and_names_the_json_documents_it_leaves_out(tmp_path: Path) -> None:
    source = mixed_folder(tmp_path / "corpus")
    out = tmp_path / "out"
    # With skip, a metadata file read as records would turn into bad records and empty documents.
    result = invoke("pack", source, out, *PACK, "--on-bad-record", "skip")
    assert result.exit_code == 0, result.stderr
    note = [line for line in result.stderr.splitlines() if line.startswith("note: inputs left out")]
    assert len(note) == 1
    for name in ("stats.json", "list.json", "dataset_info.json"):
        assert name in note[0]
    assert "one JSON document, not JSON Lines" in note[0] and "a JSON array" in note[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["documents"] == 4 and manifest["skipped_records"]["count"] == 0
    assert [Path(i["path"]).name for i in manifest["inputs"]] == ["a.jsonl", "one-line.json"]
    assert {Path(e["path"]).name for e in manifest["inputs_left_out"]} == {"stats.json", "list.json",
                                                                           "dataset_info.json"}


def test_a_json_document_named_directly_is_one_line_error(tmp_path: Path) -> None:
    source = mixed_folder(tmp_path / "corpus")
    out = tmp_path / "out"
    assert_fails(invoke("pack", source / "stats.json", out, *PACK, "--on-bad-record", "skip"), out, 1,
                 "stats.json: holds one JSON document, not JSON Lines")


def test_a_bestfit_output_given_as_input_is_refused_and_its_shards_can_be_named(tmp_path: Path) -> None:
    pq.write_table(token_table(make_documents(50)), tmp_path / "docs.parquet")
    first = tmp_path / "first"
    pack_and_verify(tmp_path / "docs.parquet", first)
    out = tmp_path / "out"
    assert_fails(invoke("pack", first, out, *PACK), out, 1, "first: is the output of bestfit pack",
                 "pack from the inputs its manifest.json lists", "train-*.parquet")
    (tmp_path / "corpus").mkdir()
    (first).rename(tmp_path / "corpus" / "old-pack")  # reached by a scan of a folder above it, too
    pq.write_table(token_table(make_documents(5)), tmp_path / "corpus" / "a.parquet")
    assert_fails(invoke("stats", tmp_path / "corpus", "--ctx", "512"), out, 1, "old-pack: is the output of bestfit")
    # Its shards, named, are read as any Parquet files (their rows as documents).
    result = invoke("pack", f"{tmp_path}/corpus/old-pack/train-*.parquet", out, "--ctx", "1024", "-q")
    assert result.exit_code == 0, result.stderr


def test_a_save_to_disk_folder_with_skip_reads_no_metadata(tmp_path: Path) -> None:
    docs = make_documents(40)
    source = save_to_disk(tmp_path / "ds", docs, shards=2)
    (source / "notes.txt").write_text("x")
    out = tmp_path / "out"
    result = invoke("pack", source, out, *PACK, "--on-bad-record", "skip")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["documents"] == 40 and manifest["skipped_records"]["count"] == 0
    assert [e["reason"] for e in manifest["inputs_left_out"]] == ["in a dataset folder, not one of its data files"]
