"""``pack --columns`` and ``--no-pad``: training columns and unpadded rows, written, recorded and verified."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from bestfit_cli import OptionError, PackOptions, pack
from bestfit_cli.cli import cli
from bestfit_cli.pipeline import MANIFEST_VERSION, UNPADDED_VERSION
from bestfit_cli.training import IGNORE_INDEX
from bestfit_cli.verify import verify

from .conftest import EOS, SAMPLES

CTX = 256
BASE = ["input_ids", "seq_lengths", "doc_index", "doc_offset"]


def invoke(*args: object, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def folder_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def rows_of(out: Path) -> list[dict[str, Any]]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [row for shard in manifest["shards"] for row in pq.read_table(out / shard["path"]).to_pylist()]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped sample packed four ways: as before, with both columns, unpadded, and unpadded with columns."""
    root = tmp_path_factory.mktemp("columns")
    runs = {"plain": {}, "columns": {"columns": ("labels", "position_ids")}, "unpadded": {"pad": False},
            "both": {"pad": False, "columns": ("position_ids", "labels")}}
    for name, extra in runs.items():
        pack([str(SAMPLES)], str(root / name), PackOptions(ctx=CTX, eos_id=EOS, rows_per_shard=700, **extra))  # type: ignore[arg-type]
    return {name: root / name for name in runs}


def test_default_output_has_no_trace_of_the_new_options(outputs: dict[str, Path], tmp_path: Path) -> None:
    manifest = json.loads((outputs["plain"] / "manifest.json").read_text())
    assert manifest["format_version"] == MANIFEST_VERSION
    assert manifest["columns"] == BASE
    assert "columns" not in manifest["options"] and "pad" not in manifest["options"]
    assert pq.read_schema(outputs["plain"] / manifest["shards"][0]["path"]).names == BASE
    # Asking for no columns and padding explicitly is the default, byte for byte.
    again = tmp_path / "again"
    pack([str(SAMPLES)], str(again), PackOptions(ctx=CTX, eos_id=EOS, rows_per_shard=700, columns=(), pad=True))
    assert folder_bytes(again) == folder_bytes(outputs["plain"])


def test_columns_follow_the_existing_ones_and_are_recorded(outputs: dict[str, Path]) -> None:
    manifest = json.loads((outputs["columns"] / "manifest.json").read_text())
    assert manifest["columns"] == [*BASE, "position_ids", "labels"]  # one order, whatever order was asked
    assert manifest["options"]["columns"] == ["position_ids", "labels"]
    assert manifest["format_version"] == MANIFEST_VERSION
    schema = pq.read_schema(outputs["columns"] / manifest["shards"][0]["path"])
    assert schema.names == manifest["columns"]
    assert schema.field("position_ids").type == schema.field("labels").type == pa.list_(pa.int64())
    # The base columns are the same bytes' worth of data as without the columns.
    # Shard names carry a digest of their bytes, so the two outputs' shards are paired by their place in the manifest.
    plain = json.loads((outputs["plain"] / "manifest.json").read_text())["shards"]
    assert len(plain) == len(manifest["shards"])
    for shard, plain_shard in zip(manifest["shards"], plain, strict=True):
        with_columns = pq.read_table(outputs["columns"] / shard["path"], columns=BASE)
        assert with_columns.equals(pq.read_table(outputs["plain"] / plain_shard["path"]))


def _check_row(row: dict[str, Any], padded: bool) -> tuple[int, int]:
    """position_ids and labels of one row, against a plain loop over its pieces; returns (EOS seen, EOS labelled)."""
    ids, positions, labels = row["input_ids"], row["position_ids"], row["labels"]
    fill = sum(row["seq_lengths"])
    assert len(ids) == (CTX if padded else fill) == len(positions) == len(labels)
    at = 0
    for n in row["seq_lengths"]:
        assert positions[at:at + n] == list(range(n))
        assert labels[at] == IGNORE_INDEX  # never trained on across a boundary
        assert labels[at + 1:at + n] == ids[at + 1:at + n]
        at += n
    assert positions[fill:] == list(range(len(ids) - fill))  # padding is a segment of its own
    assert labels[fill:] == [IGNORE_INDEX] * (len(ids) - fill)
    eos = [i for i in range(fill) if ids[i] == EOS]
    return len(eos), sum(labels[i] == EOS for i in eos)


@pytest.mark.parametrize("name", ["columns", "both"])
def test_columns_hold_positions_and_labels_of_every_piece(outputs: dict[str, Path], name: str) -> None:
    rows = rows_of(outputs[name])
    padded_rows = sum(sum(r["seq_lengths"]) < CTX for r in rows)
    assert padded_rows and padded_rows < len(rows)  # rows with padding and rows without
    eos_seen = eos_labelled = 0
    for row in rows:
        seen, labelled = _check_row(row, padded=name == "columns")
        eos_seen += seen
        eos_labelled += labelled
    # Every real EOS is a label except one that starts a piece (the tail of a document cut right before its EOS).
    starts_with_eos = sum(r["input_ids"][start] == EOS for r in rows
                          for start in np.cumsum([0, *r["seq_lengths"][:-1]]).tolist())
    assert eos_seen == json.loads((outputs[name] / "stats.json").read_text())["eos_tokens"]
    assert eos_labelled == eos_seen - starts_with_eos


def test_unpadded_rows_end_after_their_last_piece(outputs: dict[str, Path]) -> None:
    manifest = json.loads((outputs["unpadded"] / "manifest.json").read_text())
    assert manifest["format_version"] == UNPADDED_VERSION and manifest["options"]["pad"] is False
    padded, unpadded = rows_of(outputs["plain"]), rows_of(outputs["unpadded"])
    assert len(padded) == len(unpadded)
    for p, u in zip(padded, unpadded, strict=True):  # the same pieces in the same rows, less the padding
        fill = sum(p["seq_lengths"])
        assert u["input_ids"] == p["input_ids"][:fill]
        assert (u["seq_lengths"], u["doc_index"], u["doc_offset"]) == (p["seq_lengths"], p["doc_index"],
                                                                       p["doc_offset"])
    stats = json.loads((outputs["unpadded"] / "stats.json").read_text())
    plain_stats = json.loads((outputs["plain"] / "stats.json").read_text())
    assert stats["padding_tokens"] == 0 and stats["padding_fraction"] == 0.0
    assert plain_stats["padding_tokens"] > 0
    assert {k: v for k, v in stats.items() if not k.startswith("padding")} == \
        {k: v for k, v in plain_stats.items() if not k.startswith("padding")}


@pytest.mark.parametrize("name", ["plain", "columns", "unpadded", "both"])
def test_every_variant_verifies(outputs: dict[str, Path], name: str) -> None:
    result = verify([str(SAMPLES)], str(outputs[name]))
    assert result.ok, [str(p) for p in result.problems]


def _damage(out: Path, tmp_path: Path, change: Callable[[dict[str, list[Any]]], None]) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    shard = manifest["shards"][0]
    table = pq.read_table(copy / shard["path"])
    rows = table.to_pydict()
    change(rows)
    pq.write_table(pa.table(rows, schema=table.schema), copy / shard["path"])
    data = (copy / shard["path"]).read_bytes()
    shard.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _multi_piece_row(rows: dict[str, list[Any]]) -> int:
    return next(i for i, lengths in enumerate(rows["seq_lengths"]) if len(lengths) > 1)


def _label_across_boundary(rows: dict[str, list[Any]]) -> None:
    r = _multi_piece_row(rows)
    start = rows["seq_lengths"][r][0]
    rows["labels"][r][start] = rows["input_ids"][r][start]


def _positions_not_restarted(rows: dict[str, list[Any]]) -> None:
    r = _multi_piece_row(rows)
    rows["position_ids"][r] = list(range(len(rows["position_ids"][r])))


def _padding_kept(rows: dict[str, list[Any]]) -> None:
    r = _multi_piece_row(rows)
    rows["input_ids"][r] = rows["input_ids"][r] + [EOS]


@pytest.mark.parametrize(("change", "name", "message"), [
    (_label_across_boundary, "both", "column labels differs from what seq_lengths give"),
    (_positions_not_restarted, "columns", "column position_ids differs from what seq_lengths give"),
    (_padding_kept, "unpadded", "(rows are unpadded)"),
])
def test_verify_finds_damaged_columns_and_rows(outputs: dict[str, Path], tmp_path: Path,
                                               change: Callable[[dict[str, list[Any]]], None], name: str,
                                               message: str) -> None:
    result = verify([str(SAMPLES)], str(_damage(outputs[name], tmp_path, change)))
    assert not result.ok
    assert message in str(result.problems[0]), [str(p) for p in result.problems]


def test_verify_finds_a_listed_column_that_is_missing(outputs: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(outputs["plain"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["columns"].append("labels")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = verify([str(SAMPLES)], str(copy))
    assert not result.ok and "lacks column(s) labels" in str(result.problems[0])


def test_unknown_column_in_the_library_is_an_option_error(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="--columns: unknown column 'lables'"):
        pack([str(SAMPLES)], str(tmp_path / "out"), PackOptions(ctx=CTX, columns=("lables",)))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ command line


def test_cli_columns_and_no_pad(tmp_path: Path) -> None:
    result = invoke("pack", SAMPLES / "nl.jsonl", tmp_path / "out", "--ctx", CTX, "--eos-id", EOS,
                    "--columns", "labels, position_ids", "--no-pad", "-q", "--verify")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["columns"][4:] == ["position_ids", "labels"] and manifest["options"]["pad"] is False


@pytest.mark.parametrize("value", ["position_ids,label", "input_ids", "cu_seqlens"])
def test_cli_unknown_column_is_a_usage_error(tmp_path: Path, value: str) -> None:
    result = invoke("pack", SAMPLES / "nl.jsonl", tmp_path / "out", "--ctx", CTX, "--columns", value)
    assert result.exit_code == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "--columns" in result.stderr and "known: position_ids, labels" in result.stderr
    assert not (tmp_path / "out").exists()


def test_columns_and_pad_from_config_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('ctx = 256\ncolumns = ["labels"]\n[pack]\npad = false\n')
    result = invoke("pack", SAMPLES / "nl.jsonl", tmp_path / "a", "--config", config, "-q")
    assert result.exit_code == 0, result.stderr
    options = json.loads((tmp_path / "a" / "manifest.json").read_text())["options"]
    assert options["columns"] == ["labels"] and options["pad"] is False
    env = {"BESTFIT_PACK_COLUMNS": "position_ids", "BESTFIT_PACK_PAD": "1"}
    result = invoke("pack", SAMPLES / "nl.jsonl", tmp_path / "b", "--config", config, "-q", env=env)
    assert result.exit_code == 0, result.stderr
    options = json.loads((tmp_path / "b" / "manifest.json").read_text())["options"]
    assert options["columns"] == ["position_ids"] and "pad" not in options  # the variables beat the file
    bad = tmp_path / "bad.toml"
    bad.write_text('ctx = 256\ncolumns = ["labels", "nope"]\n')
    result = invoke("pack", SAMPLES / "nl.jsonl", tmp_path / "c", "--config", bad, "-q")
    assert result.exit_code == 2 and "columns" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flags", [("--columns", "labels"), ("--no-pad",)])
def test_megatron_refuses_what_it_cannot_store(tmp_path: Path, flags: tuple[str, ...]) -> None:
    result = invoke("pack", SAMPLES / "nl.jsonl", tmp_path / "out", "--ctx", CTX, "--eos-id", EOS, "--pad-id", 0,
                    "--format", "megatron", *flags)
    assert result.exit_code == 2, result.stderr
    assert "--format megatron" in result.stderr and flags[0] in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
