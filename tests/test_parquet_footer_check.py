"""The footer check that keeps damaged Parquet footers away from pyarrow (bestfit_cli/formats/parquet_footer.py).

Two classes of footer make pyarrow 26's C++ code throw where nothing catches it, so the process aborts (SIGABRT,
a core dump, no message): a schema element whose repetition type is outside 0..2, and a column chunk whose level
histograms do not match the levels its schema gives (a valid repetition type changed, say OPTIONAL to REQUIRED).
Each test here runs the read in a forked child (``bounded``), so an abort fails the test instead of pytest.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bestfit_cli.cli import cli
from bestfit_cli.formats.parquet_footer import FooterError, check_bytes, check_file
from bestfit_cli.fs import resolve_inputs
from bestfit_cli.read import ReadOptions, read_file

from . import parquet_footer as footer
from .conftest import SAMPLES, SHARED
from .synthetic import documents
from .test_fuzz_hostile import assert_clean, bounded

REPETITION = 3  # SchemaElement.repetition_type


def _damaged(tmp_path: Path, element: int, value: int) -> Path:
    """A good file whose schema element ``element`` has its repetition type set to ``value``."""
    path = tmp_path / "damaged.parquet"
    table = pa.table({"input_ids": pa.array(documents([3, 0, 40, 7] * 30), pa.list_(pa.int32())),
                      "n": pa.array(range(120))})  # schema: root, input_ids, list, element, n
    pq.write_table(table, path, row_group_size=32)  # pyarrow writes level histograms (size_statistics)
    body, meta = footer.read_footer(path)
    schema = meta[2][1][1]
    schema[element][REPETITION] = (footer.I32, value)
    footer.write_footer(path, body, meta)
    return path


@pytest.mark.parametrize(("element", "value", "reason"), [
    (1, -1, "schema[1].repetition_type is -1, not 0..2"),  # the list column: repetition out of range
    (3, 3, "schema[3].repetition_type is 3, not 0..2"),  # its element
    (1, 0, "definition_level_histogram has 4 entries, the schema's levels need 3"),  # OPTIONAL -> REQUIRED
])
def test_footers_that_abort_pyarrow_are_one_line_errors(tmp_path: Path, element: int, value: int,
                                                        reason: str) -> None:
    path = _damaged(tmp_path, element, value)
    [file] = resolve_inputs([str(path)])
    kind, message = bounded(lambda: list(read_file(file, 0, ReadOptions())))
    assert kind == "error", message  # before the check: "the child died" (SIGABRT inside pyarrow)
    assert reason in message and "damaged.parquet" in message, message
    assert_clean((kind, message))
    for command in (["stats", str(path), "--ctx", "8"], ["histogram", str(path)],
                    ["pack", str(path), str(tmp_path / "out"), "--ctx", "8"]):
        result = bounded(lambda command=command: _cli(command))  # type: ignore[misc]
        assert result[0] == "error" and reason in result[1], (command, result)


def _cli(args: list[str]) -> None:
    from bestfit_cli.errors import BestfitError

    done = CliRunner().invoke(cli, args)
    if done.exit_code != 0:
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        raise BestfitError(lines[0])


def _honest_files(tmp_path: Path) -> list[Path]:
    ids = pa.array(documents([5, 0, 300, 12] * 50), pa.list_(pa.int32()))
    nested = pa.array([[[1, 2], [3]], None, [[4]]] * 20, pa.list_(pa.list_(pa.int64())))
    table = pa.table({"input_ids": ids, "n": pa.array(range(200)), "s": pa.array([str(i) for i in range(200)])})
    paths = []
    for name, kwargs in (("plain", {}), ("dictionary", {"use_dictionary": True, "compression": "zstd"}),
                         ("page-index", {"write_page_index": True, "write_statistics": True}),
                         ("v1", {"data_page_version": "1.0", "compression": "none"}),
                         ("small-groups", {"row_group_size": 7}),
                         ("no-statistics", {"write_statistics": False, "use_dictionary": False}),
                         ("page-index-only", {"write_page_index": True, "write_statistics": False}),
                         ("lz4", {"compression": "lz4", "data_page_size": 64})):
        paths.append(tmp_path / f"{name}.parquet")
        pq.write_table(table, paths[-1], **kwargs)
    paths.append(tmp_path / "nested.parquet")
    pq.write_table(pa.table({"x": nested, "input_ids": pa.array([[1]] * 60)}), paths[-1])
    paths.append(tmp_path / "empty.parquet")
    pq.write_table(table.slice(0, 0), paths[-1])
    ds.write_dataset(table, tmp_path / "dataset", format="parquet", max_rows_per_group=16,
                     max_rows_per_file=64)  # pyarrow.dataset: several files of several row groups
    paths += sorted((tmp_path / "dataset").rglob("*.parquet"))
    if importlib.util.find_spec("datasets"):  # Hugging Face datasets writes Parquet its own way (the train extra)
        import datasets

        hf = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]] * 40 + [[]] * 3, "text": ["x"] * 43})
        paths.append(tmp_path / "hf.parquet")
        hf.to_parquet(str(paths[-1]))
    packed = tmp_path / "packed"  # the project's own shards
    done = CliRunner().invoke(cli, ["pack", str(paths[0]), str(packed), "--ctx", "64", "-q",
                                    "--window-tokens", "4000"])
    assert done.exit_code == 0, done.output
    paths += sorted(packed.glob("*.parquet"))
    return paths


def test_honest_files_pass(tmp_path: Path) -> None:
    found = _honest_files(tmp_path) + sorted(SAMPLES.glob("*.parquet")) + sorted(SHARED.glob("*/*.parquet"))
    assert len(found) > 15 and any(p.name.startswith("train-") for p in found)
    for path in found:
        check_file(pafs.LocalFileSystem(), str(path.resolve()))
        check_bytes(path.read_bytes())


@pytest.mark.parametrize(("tail", "reason"), [
    (b"", "magic bytes not found"),
    (b"\xff\xff\xff\x7fPAR1", "the footer claims 2,147,483,647 bytes"),
    (b"\x02\x00\x00\x00PAR1", "the footer ends in the middle of a value"),  # b"\x0c\x00": a struct, cut off
    (b"\x03\x00\x00\x00PAR1", "footer.version has Thrift type 9"),  # b"\x19\x0c\x00": a whole struct, wrong type
])
def test_truncated_and_lying_tails(tmp_path: Path, tail: bytes, reason: str) -> None:
    data = b"PAR1" + b"\x19\x0c\x00" + tail if tail else b"PAR1"
    with pytest.raises(FooterError, match=reason):
        check_bytes(data)


def test_nesting_and_lengths_are_bounded() -> None:
    deep = b"PAR1" + b"\x1c" * 100_000 + b"\x00" * 100_000
    length = len(deep) - 4
    with pytest.raises(FooterError, match="nested more than"):
        check_bytes(deep + length.to_bytes(4, "little") + b"PAR1")
    huge_list = b"\x19\xfc\xff\xff\xff\xff\x0f"  # field 1: a list claiming 2^32 - 1 structs
    data = b"PAR1" + huge_list + len(huge_list).to_bytes(4, "little") + b"PAR1"
    with pytest.raises(FooterError, match="runs past the footer's end"):
        check_bytes(data)
