"""Where every piece came from (issue 10 items 5-7): the inputs as given and as resolved in the manifest,
``--eos-mode``, ``--keep`` and ``--keep-token``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bestfit_cli.cli import cli

from .synthetic import corpus

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
