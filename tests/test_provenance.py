"""Where every piece came from (issue 10 items 5-7): the inputs as given and as resolved in the manifest,
``--eos-mode``, ``--keep`` and ``--keep-token``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from bestfit_cli.cli import cli

from .synthetic import corpus, tree_bytes

CTX = 64


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def manifest_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


# ------------------------------------------------------------------------------------------------ manifest inputs


def test_manifest_inputs_record_the_argument_and_the_resolved_path(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    source = corpus(tmp_path / "data", 30, seed=3, max_len=50)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (source / "b.parquet").rename(elsewhere / "b.parquet")
    os.symlink(elsewhere / "b.parquet", source / "b.parquet")  # a link: resolved is where the bytes are
    monkeypatch.chdir(tmp_path)
    result = invoke("pack", "data/a.parquet", "data/b.parquet", "data/*.jsonl", "out", "--ctx", CTX, "-q")
    assert result.exit_code == 0, result.output
    inputs = manifest_of(tmp_path / "out")["inputs"]
    assert [(i["path"], i["given"]) for i in inputs] == [("data/a.parquet", "data/a.parquet"),
                                                          ("data/b.parquet", "data/b.parquet"),
                                                          ("data/c.jsonl", "data/*.jsonl")]
    assert [i["resolved"] for i in inputs] == [str((source / "a.parquet").resolve()),
                                               str((elsewhere / "b.parquet").resolve()),
                                               str((source / "c.jsonl").resolve())]


def test_manifest_inputs_found_in_a_folder_name_the_folder(tmp_path: Path) -> None:
    source = corpus(tmp_path / "data", 30, seed=3, max_len=50)
    result = invoke("pack", source, tmp_path / "out", "--ctx", CTX, "-q")
    assert result.exit_code == 0, result.output
    inputs = manifest_of(tmp_path / "out")["inputs"]
    assert {i["given"] for i in inputs} == {str(source)}
    assert [Path(i["resolved"]).name for i in inputs] == ["a.parquet", "b.parquet", "c.jsonl"]


def test_manifest_inputs_from_stdin(tmp_path: Path) -> None:
    lines = "".join(json.dumps({"input_ids": [1, 2, 3]}) + "\n" for _ in range(4))
    result = CliRunner().invoke(cli, ["pack", "-", str(tmp_path / "out"), "--ctx", str(CTX), "-q"], input=lines)
    assert result.exit_code == 0, result.output
    (listed,) = manifest_of(tmp_path / "out")["inputs"]
    assert (listed["path"], listed["given"], listed["resolved"]) == ("-", "-", "-")


# ------------------------------------------------------------------------------------------------ rebuilding


def rebuild(out: Path) -> dict[int, dict[str, Any]]:
    """Every document of a Parquet output, rebuilt from its pieces: ``tokens`` (and each per-token column, under
    its name) in document order, and each per-document column with the one value all its pieces carry."""
    docs: dict[int, dict[str, Any]] = {}
    manifest = manifest_of(out)
    per_token = list(manifest["options"].get("keep_token", {}))
    per_doc = list(manifest["options"].get("keep", []))
    for shard in manifest["shards"]:
        table = pq.read_table(out / shard["path"])
        for row in table.to_pylist():
            position = 0
            for piece, (length, doc, offset) in enumerate(zip(row["seq_lengths"], row["doc_index"],
                                                              row["doc_offset"], strict=True)):
                entry = docs.setdefault(doc, {"pieces": {}})
                values = {"tokens": row["input_ids"][position:position + length]}
                values.update({c: row[c][position:position + length] for c in per_token})
                entry["pieces"][offset] = values
                for c in per_doc:
                    assert entry.setdefault(c, row[c][piece]) == row[c][piece], (c, doc)
                position += length
    for entry in docs.values():
        by_offset = entry.pop("pieces")
        pieces = [by_offset[o] for o in sorted(by_offset)]
        for key in pieces[0]:
            entry[key] = [v for p in pieces for v in p[key]]
    return docs


# ------------------------------------------------------------------------------------------------ --eos-mode

EOS = 7


def eos_corpus(folder: Path) -> tuple[Path, list[list[int]]]:
    """Parquet and JSONL documents, some already ending with EOS, one only an EOS, one empty, some long."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    docs = [rng.integers(8, 1000, size=int(n)).tolist() for n in rng.integers(1, 150, size=40)]
    for i in range(0, 40, 3):
        docs[i][-1] = EOS
    docs[4] = [EOS]
    docs[5] = []
    docs[6] = [*docs[6][:-1], EOS, 9]  # an EOS inside a document is not its end
    pq.write_table(pa.table({"input_ids": pa.array(docs[:25], type=pa.list_(pa.int32()))}), folder / "a.parquet",
                   row_group_size=7)
    (folder / "b.jsonl").write_text("".join(json.dumps({"input_ids": d}) + "\n" for d in docs[25:]))
    return folder, docs


@pytest.mark.parametrize("mode", ["always", "if-missing"])
def test_eos_mode_appends_eos_as_asked_and_counts_documents_already_ending_with_it(tmp_path: Path,
                                                                                    mode: str) -> None:
    source, docs = eos_corpus(tmp_path / "data")
    out = tmp_path / "out"
    result = invoke("pack", source, out, "--ctx", CTX, "--eos-id", EOS, "--eos-mode", mode, "--pad-id", 0, "-q",
                    "--verify")
    assert result.exit_code == 0, result.output
    ending = sum(1 for d in docs if d and d[-1] == EOS)
    expected = {i: (d if mode == "if-missing" and d[-1] == EOS else [*d, EOS]) for i, d in enumerate(docs) if d}
    got = {i: entry["tokens"] for i, entry in rebuild(out).items()}
    assert got == expected
    stats = json.loads((out / "stats.json").read_text())
    assert stats["documents_ending_with_eos"] == ending
    assert stats["eos_tokens"] == len(expected) - (ending if mode == "if-missing" else 0)
    note = f"note: {ending:,} documents already ended with --eos-id {EOS} and got a second one"
    assert (note in result.stderr) == (mode == "always"), result.stderr
    assert manifest_of(out)["options"].get("eos_mode") == (None if mode == "always" else mode)


def test_eos_mode_if_missing_is_deterministic_across_workers(tmp_path: Path) -> None:
    source, _ = eos_corpus(tmp_path / "data")
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        result = invoke("pack", source, out, "--ctx", CTX, "--eos-id", EOS, "--eos-mode", "if-missing",
                        "--window-tokens", 600, "--workers", workers, "-q")
        assert result.exit_code == 0, result.output
        outputs.append(tree_bytes(out))
    assert outputs[0] == outputs[1]


def test_verify_finds_output_packed_with_the_other_eos_mode(tmp_path: Path) -> None:
    source, _ = eos_corpus(tmp_path / "data")
    out = tmp_path / "out"
    assert invoke("pack", source, out, "--ctx", CTX, "--eos-id", EOS, "--eos-mode", "if-missing", "-q").exit_code == 0
    manifest = manifest_of(out)
    manifest["options"].pop("eos_mode")  # now it claims every document got an EOS
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("verify", source, out)
    assert result.exit_code == 1 and "problem" in result.output.lower(), result.output


def test_eos_mode_without_eos_id_is_a_usage_error(tmp_path: Path) -> None:
    source, _ = eos_corpus(tmp_path / "data")
    result = invoke("pack", source, tmp_path / "out", "--ctx", CTX, "--eos-mode", "if-missing")
    assert result.exit_code == 2 and "--eos-mode if-missing needs --eos-id" in result.output, result.output
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ --keep, --keep-token


def sft_docs(n: int, seed: int) -> list[dict[str, Any]]:
    """Chat-like documents: a prompt (labels -100, mask 0) then a response (labels = ids, mask 1), some long enough
    to be split at ctx, with ids, sources (some null) and scores."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        prompt, response = (int(x) for x in rng.integers(1, 60, size=2))
        if i % 9 == 4:
            response = 0  # a document that ends in a prompt
        if i % 7 == 3:
            response += 3 * CTX  # split across several rows
        ids = rng.integers(8, 5000, size=prompt + response).tolist()
        docs.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:],
                     "mask": [0] * prompt + [1] * response, "id": f"doc-{seed}-{i}",
                     "source": None if i % 5 == 0 else ["web", "code"][i % 2], "score": float(i) / 4})
    return docs


def write_sft(folder: Path) -> tuple[Path, list[dict[str, Any]]]:
    folder.mkdir(parents=True)
    docs = sft_docs(45, 1)
    pq.write_table(pa.Table.from_pylist(docs[:30]), folder / "a.parquet", row_group_size=8)
    (folder / "b.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[30:]))
    return folder, docs


KEEP = ("--keep", "id", "--keep", "source", "--keep", "score", "--keep-token", "labels:-100",
        "--keep-token", "mask:0")


@pytest.mark.parametrize("pad", ["--pad", "--no-pad"])
def test_keep_and_keep_token_survive_splitting_and_shuffling(tmp_path: Path, pad: str) -> None:
    source, docs = write_sft(tmp_path / "data")
    out = tmp_path / "out"
    result = invoke("pack", source, out, "--ctx", CTX, "--eos-id", 2, "--pad-id", 1, "--long-docs", "split",
                    "--window-tokens", 2000, *KEEP, pad, "-q", "--verify")
    assert result.exit_code == 0, result.output
    manifest = manifest_of(out)
    assert manifest["columns"][4:] == ["id", "source", "score", "labels", "mask"]
    assert json.loads((out / "stats.json").read_text())["truncated_documents"] > 0
    rebuilt = rebuild(out)
    assert sorted(rebuilt) == list(range(len(docs)))
    for index, doc in enumerate(docs):
        got = rebuilt[index]
        assert got["tokens"] == [*doc["input_ids"], 2]
        # The appended EOS belongs to the turn it ends: after a response it is trained (the EOS id as its label, the
        # response's mask), after a prompt it is not.
        trained = doc["labels"][-1] != -100
        assert got["labels"] == [*doc["labels"], 2 if trained else -100]
        assert got["mask"] == [*doc["mask"], 1 if trained else 0]
        assert (got["id"], got["source"], got["score"]) == (doc["id"], doc["source"], doc["score"])
    for shard in manifest["shards"]:
        table = pq.read_table(out / shard["path"])
        assert table.schema.field("labels").type == pa.list_(pa.int64())
        assert table.schema.field("score").type == pa.list_(pa.float64())
        for row in table.to_pylist():
            used = sum(row["seq_lengths"])
            assert len(row["labels"]) == len(row["input_ids"]) == (CTX if pad == "--pad" else used)
            assert row["labels"][used:] == [-100] * (len(row["labels"]) - used)  # padding gets the fill
            assert row["mask"][used:] == [0] * (len(row["mask"]) - used)
            assert len(row["id"]) == len(row["doc_index"])


def test_a_carried_labels_column_is_the_training_labels(tmp_path: Path) -> None:
    source, docs = write_sft(tmp_path / "data")
    out = tmp_path / "out"
    result = invoke("pack", source, out, "--ctx", CTX, "--eos-id", 2, "--pad-id", 1, "--keep-token", "labels:-100",
                    "--columns", "position_ids,labels", "-q", "--verify")
    assert result.exit_code == 0, result.output
    assert manifest_of(out)["columns"] == ["input_ids", "seq_lengths", "doc_index", "doc_offset", "position_ids",
                                           "labels"]
    by_doc: dict[int, dict[int, list[int]]] = {}
    for shard in manifest_of(out)["shards"]:
        for row in pq.read_table(out / shard["path"]).to_pylist():
            start = 0
            for length, doc, offset in zip(row["seq_lengths"], row["doc_index"], row["doc_offset"], strict=True):
                piece = row["labels"][start:start + length]
                assert piece[0] == -100  # no loss across a boundary
                by_doc.setdefault(doc, {})[offset] = piece
                start += length
            assert all(v == -100 for v in row["labels"][start:])
    for index, doc in enumerate(docs):
        expected = [*doc["labels"], 2 if doc["labels"][-1] != -100 else -100]
        for offset, piece in by_doc[index].items():
            # The carried labels, not the ids: the prompt stays -100, only a piece's first label is masked.
            assert piece[1:] == expected[offset + 1:offset + len(piece)]


def test_keep_is_byte_identical_with_one_or_two_workers(tmp_path: Path) -> None:
    source, _ = write_sft(tmp_path / "data")
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        result = invoke("pack", source, out, "--ctx", CTX, "--eos-id", 2, "--window-tokens", 1500,
                        "--workers", workers, *KEEP, "-q")
        assert result.exit_code == 0, result.output
        outputs.append(tree_bytes(out))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_token_column_of_another_length_names_the_file_and_row(tmp_path: Path, fmt: str) -> None:
    docs = sft_docs(12, 2)
    docs[9]["mask"] = docs[9]["mask"][:-1]
    path = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(docs), path, row_group_size=4)
    else:
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    result = invoke("pack", path, tmp_path / "out", "--ctx", CTX, "--keep-token", "mask:0")
    where = f"{path} row 9" if fmt == "parquet" else f"{path}:10"
    assert result.exit_code == 1, result.output
    message = result.output.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith(f"Error: {where}: 'mask' has {len(docs[9]['input_ids']) - 1} values, the token ids "
                              f"{len(docs[9]['input_ids'])}"), message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_missing_carried_column_names_the_file(tmp_path: Path, fmt: str) -> None:
    docs = [{"input_ids": [1, 2, 3]}] * 3
    path = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(docs), path)
    else:
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    result = invoke("pack", path, tmp_path / "out", "--ctx", CTX, "--keep", "url")
    assert result.exit_code == 1 and "\n" not in result.output.strip(), result.output
    assert result.output.startswith(f"Error: {path}") and "no " in result.output and "'url' to carry" in \
        result.output, result.output


@pytest.mark.parametrize(("args", "message"), [
    (("--keep-token", "labels"), "is not NAME:FILL"),
    (("--keep-token", "labels:x"), "'x' is not a number"),
    (("--keep", "input_ids"), "is the token column itself"),
    (("--keep", "doc_index"), "cannot be named 'doc_index'"),
    (("--keep", "id", "--keep", "id"), "carried twice"),
    (("--keep", "labels"), "pass --keep-token labels:-100"),
    (("--keep-token", "labels:-100", "--format", "megatron", "--eos-id", "2", "--pad-id", "1"),
     "cannot store --keep-token"),
])
def test_bad_carry_options_are_usage_errors(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    source, _ = write_sft(tmp_path / "data")
    result = invoke("pack", source, tmp_path / "out", "--ctx", CTX, *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_keep_in_megatron_goes_to_the_pieces_sidecar(tmp_path: Path) -> None:
    source, docs = write_sft(tmp_path / "data")
    out = tmp_path / "out"
    result = invoke("pack", source, out, "--ctx", CTX, "--eos-id", 2, "--pad-id", 1, "--format", "megatron",
                    "--keep", "id", "-q", "--verify")
    assert result.exit_code == 0, result.output
    seen = {}
    for path in sorted(out.glob("*.pieces.parquet")):
        for row in pq.read_table(path).to_pylist():
            for doc, value in zip(row["doc_index"], row["id"], strict=True):
                assert seen.setdefault(doc, value) == value
    assert seen == {i: d["id"] for i, d in enumerate(docs)}


def _tamper(out: Path, column: str, change: Any) -> None:
    """Rewrite the first shard with ``column`` changed by ``change(list of rows' values)``, and list its new bytes in
    the manifest, so only the re-read inputs can tell."""
    import hashlib

    manifest = manifest_of(out)
    shard = manifest["shards"][0]
    path = out / shard["path"]
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    change(values)
    index = table.column_names.index(column)
    table = table.set_column(index, column, pa.array(values, type=table.schema.field(column).type))
    pq.write_table(table, path)
    data = path.read_bytes()
    shard.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (out / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("column", "change"), [
    ("id", lambda rows: rows[0].__setitem__(0, "someone else")),
    ("mask", lambda rows: rows[0].__setitem__(0, 1 - rows[0][0])),
    ("labels", lambda rows: rows[0].__setitem__(1, 7)),
])
def test_verify_checks_carried_columns_against_the_inputs(tmp_path: Path, column: str, change: Any) -> None:
    source, _ = write_sft(tmp_path / "data")
    out = tmp_path / "out"
    training = ("--columns", "labels") if column == "labels" else ()
    result = invoke("pack", source, out, "--ctx", CTX, "--eos-id", 2, *KEEP, *training, "-q", "--verify")
    assert result.exit_code == 0, result.output
    _tamper(out, column, change)
    result = invoke("verify", source, out)
    assert result.exit_code == 1, result.output
    assert f"column {column} differs" in result.output, result.output


def test_skipped_bad_records_carry_nothing(tmp_path: Path) -> None:
    docs = sft_docs(10, 4)
    lines = [json.dumps(d) for d in docs]
    lines[3] = '{"input_ids": [1, -5], "id": "bad", "labels": [1, 2], "mask": [1, 1]}'
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = invoke("pack", path, out, "--ctx", CTX, "--eos-id", 2, *KEEP, "--on-bad-record", "skip",
                    "--max-bad-records", 1, "-q", "--verify")
    assert result.exit_code == 0, result.output
    rebuilt = rebuild(out)
    assert sorted(rebuilt) == [i for i in range(10) if i != 3]
    assert all(rebuilt[i]["id"] == docs[i]["id"] and rebuilt[i]["mask"][:-1] == docs[i]["mask"] for i in rebuilt)


def test_a_document_column_of_another_type_in_a_later_input_names_both(tmp_path: Path) -> None:
    pq.write_table(pa.table({"input_ids": [[1, 2]], "id": pa.array([7], pa.int32())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"input_ids": [[3, 4]], "id": pa.array([8], pa.int64())}), tmp_path / "b.parquet")
    (tmp_path / "c.jsonl").write_text('{"input_ids": [5], "id": "nine"}\n')
    safe = invoke("pack", tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "ok", "--ctx", 8, "--keep",
                  "id", "-q")
    assert safe.exit_code == 0, safe.output  # int64 values that fit are cast to the first input's int32
    assert rebuild(tmp_path / "ok")[1]["id"] == 8
    result = invoke("pack", tmp_path / "a.parquet", tmp_path / "c.jsonl", tmp_path / "out", "--ctx", 8, "--keep",
                    "id")
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (f"Error: {tmp_path / 'c.jsonl'}: column 'id' is string here, int32 in "
                                     f"{tmp_path / 'a.parquet'} (give 'id' one type in every input)")


@pytest.mark.parametrize(("line", "option", "message"), [
    ('{"input_ids": [1, 2], "meta": {"a": 1}}', ("--keep", "meta"), "'meta' is an object, not one value"),
    ('{"input_ids": [1, 2], "w": [0.5, 1]}', ("--keep-token", "w:0"), "'w' holds the fractional value 0.5"),
    ('{"input_ids": [1, 2], "w": null}', ("--keep-token", "w:0"), "'w' is null, not a list of numbers"),
])
def test_bad_carried_jsonl_values_name_the_line(tmp_path: Path, line: str, option: tuple[str, str],
                                                message: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"input_ids": [1], "meta": 1, "w": [1]}\n' + line + "\n")
    result = invoke("pack", path, tmp_path / "out", "--ctx", 8, *option)
    assert result.exit_code == 1 and "\n" not in result.output.strip(), result.output
    assert result.output.startswith(f"Error: {path}:2: {message}"), result.output


def test_a_fractional_fill_carries_floats(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"input_ids": [1, 2, 3], "w": [0.5, 1, 0.25]}\n')
    out = tmp_path / "out"
    result = invoke("pack", path, out, "--ctx", 8, "--keep-token", "w:0.0", "--eos-id", 9, "-q", "--verify")
    assert result.exit_code == 0, result.output
    (row,) = pq.read_table(next(out.glob("*.parquet"))).to_pylist()
    assert row["w"] == [0.5, 1.0, 0.25, 0.25, 0.0, 0.0, 0.0, 0.0]
    assert pq.read_schema(next(out.glob("*.parquet"))).field("w").type == pa.list_(pa.float32())


def test_keep_and_keep_token_from_a_config_file(tmp_path: Path) -> None:
    source, docs = write_sft(tmp_path / "data")
    config = tmp_path / "sft.toml"
    config.write_text(f'ctx = {CTX}\neos_id = 2\neos_mode = "if-missing"\nkeep = ["id"]\n'
                      'keep_token = ["labels:-100", "mask:0:1"]\n')
    out = tmp_path / "out"
    result = invoke("pack", source, out, "--config", config, "-q")
    assert result.exit_code == 0, result.output
    options = manifest_of(out)["options"]
    assert (options["keep"], options["eos_mode"]) == (["id"], "if-missing")
    assert options["keep_token"] == {"labels": {"fill": -100, "eos": "default"}, "mask": {"fill": 0, "eos": 1}}
    assert all(entry["mask"][-1] == 1 for entry in rebuild(out).values())  # the EOS value given: 1


@pytest.mark.parametrize("form", ["save_to_disk", "feather", "ipc-stream"])
def test_keep_and_keep_token_from_arrow_inputs_pack_like_parquet(tmp_path: Path, form: str) -> None:
    """The same documents with their columns as a ``datasets.save_to_disk`` folder, a Feather file or an Arrow IPC
    stream give the same shards, byte for byte, as in Parquet; every document rebuilds with its columns."""
    docs = sft_docs(45, 4)
    table = pa.Table.from_pylist(docs)
    parquet = tmp_path / "p" / "in.parquet"
    parquet.parent.mkdir()
    pq.write_table(table, parquet, row_group_size=8)
    if form == "save_to_disk":
        import datasets

        arrow: Path = tmp_path / "ds"
        datasets.Dataset.from_list(docs).save_to_disk(str(arrow), num_shards=2)
    elif form == "feather":
        import pyarrow.feather as feather

        arrow = tmp_path / "in.feather"
        feather.write_feather(table, arrow, chunksize=10)
    else:
        arrow = tmp_path / "in.arrow"
        with pa.ipc.new_stream(arrow, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=7):
                writer.write_batch(batch)
    outputs = {}
    for name, source in (("parquet", parquet), ("arrow", arrow)):
        out = tmp_path / f"out-{name}"
        result = invoke("pack", source, out, "--ctx", CTX, "--eos-id", 2, "--window-tokens", 2000, *KEEP, "-q",
                        "--verify")
        assert result.exit_code == 0, result.output
        outputs[name] = out
    assert shards_bytes(outputs["arrow"]) == shards_bytes(outputs["parquet"])
    rebuilt = rebuild(outputs["arrow"])
    assert sorted(rebuilt) == list(range(len(docs)))
    for index, doc in enumerate(docs):
        got = rebuilt[index]
        assert got["tokens"] == [*doc["input_ids"], 2]
        assert got["labels"][:-1] == doc["labels"] and got["mask"][:-1] == doc["mask"]
        assert (got["id"], got["source"], got["score"]) == (doc["id"], doc["source"], doc["score"])


def shards_bytes(out: Path) -> dict[str, bytes]:
    """The output's shards and stats.json by name (the manifest differs: it names the inputs)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "manifest.json"}


def test_keep_token_of_another_length_in_an_arrow_input_names_the_file_and_row(tmp_path: Path) -> None:
    import pyarrow.feather as feather

    docs = sft_docs(12, 2)
    docs[9]["mask"] = docs[9]["mask"][:-1]
    path = tmp_path / "in.feather"
    feather.write_feather(pa.Table.from_pylist(docs), path, chunksize=4)
    result = invoke("pack", path, tmp_path / "out", "--ctx", CTX, "--keep-token", "mask:0", "--keep", "id")
    assert result.exit_code == 1, result.output
    message = result.output.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith(f"Error: {path} row 9: 'mask' has {len(docs[9]['input_ids']) - 1} values"), message
    assert not (tmp_path / "out").exists()


def test_a_missing_carried_column_in_an_arrow_input_fails_before_any_work(tmp_path: Path) -> None:
    import pyarrow.feather as feather

    good, bad = tmp_path / "a.feather", tmp_path / "b.feather"
    feather.write_feather(pa.Table.from_pylist(sft_docs(12, 2)), good)
    feather.write_feather(pa.table({"input_ids": [[1, 2, 3]]}), bad)
    result = invoke("pack", good, bad, tmp_path / "out", "--ctx", CTX, "--keep", "id")
    assert result.exit_code == 1 and "\n" not in result.output.strip(), result.output
    assert result.output.startswith(f"Error: {bad}: no column 'id' to carry"), result.output
    assert not (tmp_path / "out").exists()


def test_keep_on_a_token_stream_is_a_one_line_error(tmp_path: Path) -> None:
    """A flat token stream holds token ids only: there is no column to carry (Megatron: test_megatron_input.py)."""
    path = tmp_path / "tokens.npy"
    np.save(path, np.array([5, 6, 2, 7, 2], dtype=np.uint16))
    result = invoke("pack", path, tmp_path / "out", "--ctx", 8, "--keep", "id", "--split-at", 2)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "\n" not in message, message
    assert message.startswith(f"Error: {path}: a token stream (.npy) holds token ids only, no columns for --keep "
                              "and --keep-token to carry"), message
    assert not (tmp_path / "out").exists()
