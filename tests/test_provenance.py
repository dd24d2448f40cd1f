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
