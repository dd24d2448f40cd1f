"""End-to-end tests of ``pack``: the paper's toy example, exact round trips, reproducibility, options, manifest."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from bestfit_cli import InputError, PackOptions, pack
from bestfit_cli.cli import cli

from .conftest import EOS, ROOT, SAMPLES
from .reference import reference_documents

TOY = [14, 7, 5, 2, 3]

# ------------------------------------------------------------------------------------------------ helpers


@dataclass
class Docs:
    """Documents as flat tokens plus offsets: document ``i`` is ``tokens[offsets[i]:offsets[i+1]]``."""

    offsets: np.ndarray
    tokens: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_lists(cls, docs: list[list[int]]) -> Docs:
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum([len(d) for d in docs], out=offsets[1:])
        tokens = np.array([t for d in docs for t in d], dtype=np.int64)
        return cls(offsets, tokens)

    @classmethod
    def from_arrow(cls, column: pa.ChunkedArray | pa.Array) -> Docs:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        offsets = column.offsets.to_numpy().astype(np.int64)
        tokens = column.values.to_numpy()[offsets[0]:offsets[-1]].astype(np.int64)
        return cls(offsets - offsets[0], tokens)

    @classmethod
    def concat(cls, parts: list[Docs]) -> Docs:
        lengths = np.concatenate([p.lengths for p in parts])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(offsets, np.concatenate([p.tokens for p in parts]))

    def with_eos(self, eos: int | None) -> Docs:
        """Each non-empty document with ``eos`` appended, as ``pack --eos-id`` sees it."""
        if eos is None:
            return self
        nonempty = self.lengths > 0
        tokens = np.insert(self.tokens, self.offsets[1:][nonempty], eos)
        offsets = self.offsets + np.concatenate([[0], np.cumsum(nonempty)])
        return Docs(offsets, tokens)

    def prefixes(self, keep: np.ndarray) -> Docs:
        """The first ``keep[i]`` tokens of each document (vectorised gather)."""
        keep = np.minimum(keep, self.lengths)
        offsets = np.zeros(len(keep) + 1, dtype=np.int64)
        np.cumsum(keep, out=offsets[1:])
        within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], keep)
        return Docs(offsets, self.tokens[np.repeat(self.offsets[:-1], keep) + within])

    def select(self, mask: np.ndarray) -> Docs:
        return self.prefixes(np.where(mask, self.lengths, 0)).drop_empty()

    def drop_empty(self) -> Docs:
        lengths = self.lengths[self.lengths > 0]
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return Docs(offsets, self.tokens)


def read_inputs(paths: list[Path]) -> Docs:
    """Documents of Parquet and JSONL files, in the order given (as bestfit numbers them)."""
    parts = []
    for path in paths:
        if path.suffix == ".parquet":
            parts.append(Docs.from_arrow(pq.read_table(path, columns=["input_ids"]).column("input_ids")))
        else:
            parts.append(Docs.from_arrow(pajson.read_json(path).column("input_ids")))
    return Docs.concat(parts)


def corpus_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".parquet", ".jsonl"))


@dataclass
class Output:
    ctx: int
    manifest: dict[str, Any]
    stats: dict[str, Any]
    input_ids: np.ndarray  # n_rows * ctx
    piece_row: np.ndarray
    seq_lengths: np.ndarray
    doc_index: np.ndarray
    doc_offset: np.ndarray
    token_type: pa.DataType

    @property
    def n_rows(self) -> int:
        return len(self.input_ids) // self.ctx


def load_output(out: Path) -> Output:
    manifest = json.loads((out / "manifest.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    ctx = manifest["options"]["ctx"]
    tables = [pq.read_table(out / shard["path"]) for shard in manifest["shards"]]
    if not tables:  # every document was dropped or empty
        empty = np.zeros(0, dtype=np.int64)
        return Output(ctx, manifest, stats, empty, empty, empty, empty, empty, pa.int32())
    table = pa.concat_tables(tables)
    assert table.column_names == ["input_ids", "seq_lengths", "doc_index", "doc_offset"]
    ids = table.column("input_ids").combine_chunks()
    lengths = table.column("seq_lengths").combine_chunks()
    piece_offsets = lengths.offsets.to_numpy().astype(np.int64)
    for name in ("doc_index", "doc_offset"):
        assert np.array_equal(table.column(name).combine_chunks().offsets.to_numpy(), piece_offsets)
    assert np.all(np.diff(ids.offsets.to_numpy()) == ctx), "every row holds exactly ctx tokens"
    return Output(ctx, manifest, stats, ids.values.to_numpy(), np.repeat(np.arange(len(lengths)),
                                                                          np.diff(piece_offsets)),
                  lengths.values.to_numpy().astype(np.int64),
                  table.column("doc_index").combine_chunks().values.to_numpy(),
                  table.column("doc_offset").combine_chunks().values.to_numpy(), ids.type.value_type)


def rebuild(output: Output, pad_id: int) -> tuple[np.ndarray, Docs]:
    """Documents rebuilt from the output alone: their ``doc_index`` values and their tokens.

    Checks on the way that pieces fill each row from the start without gaps or overlaps, that padding is ``pad_id``,
    and that each document's pieces are contiguous from offset 0.
    """
    ctx, lengths = output.ctx, output.seq_lengths
    assert lengths.min(initial=1) >= 1
    ends = np.cumsum(lengths)
    row_start_piece = np.searchsorted(output.piece_row, np.arange(output.n_rows))
    row_base = np.concatenate([[0], ends])[row_start_piece]
    within = ends - lengths - row_base[output.piece_row]
    fill = np.bincount(output.piece_row, weights=lengths, minlength=output.n_rows)
    assert fill.max(initial=0) <= ctx and fill.min(initial=1) >= 1
    padding = np.arange(ctx)[None, :] >= fill[:, None]
    assert np.all(output.input_ids.reshape(-1, ctx)[padding] == pad_id)

    if len(lengths) == 0:
        return np.zeros(0, dtype=np.int64), Docs(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    order = np.lexsort((output.doc_offset, output.doc_index))
    doc, piece_len = output.doc_index[order], lengths[order]
    source = output.piece_row[order] * ctx + within[order]
    first = np.concatenate([[True], doc[1:] != doc[:-1]])
    doc_ids = doc[first]
    starts = np.cumsum(piece_len) - piece_len
    doc_start = np.repeat(starts[first], np.diff(np.append(np.flatnonzero(first), len(doc))))
    assert np.array_equal(output.doc_offset[order], starts - doc_start), "pieces of a document are not contiguous"
    gather = np.repeat(source, piece_len) + np.arange(int(piece_len.sum())) - np.repeat(starts, piece_len)
    offsets = np.append(starts[first], piece_len.sum())
    return doc_ids, Docs(offsets, output.input_ids[gather].astype(np.int64))


def assert_docs_equal(got: Docs, expected: Docs) -> None:
    assert len(got.lengths) == len(expected.lengths)
    np.testing.assert_array_equal(got.lengths, expected.lengths)
    np.testing.assert_array_equal(got.tokens, expected.tokens)


def write_parquet(path: Path, docs: list[list[int]], column: str = "input_ids") -> Path:
    pq.write_table(pa.table({column: pa.array(docs, type=pa.list_(pa.int32()))}), path)
    return path


def toy_docs() -> list[list[int]]:
    """Documents of 14, 7, 5, 2 and 3 tokens with distinct ids (1..31), so a rebuild cannot get lucky."""
    docs, next_id = [], 1
    for n in TOY:
        docs.append(list(range(next_id, next_id + n)))
        next_id += n
    return docs


def run_cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


# ------------------------------------------------------------------------------------------------ toy example


def test_toy_example_library(tmp_path: Path) -> None:
    """The paper's example: concatenation cuts 3 of 5 documents, best-fit only the one longer than ctx."""
    source = write_parquet(tmp_path / "toy.parquet", toy_docs())
    result = pack([str(source)], str(tmp_path / "out"), PackOptions(ctx=8))
    stats = result.report.to_json()
    assert stats["documents"] == 5 and stats["tokens"] == 31
    assert stats["sequences"] == 4 and stats["concat"]["sequences"] == 4
    assert stats["sequences_lower_bound"] == 4
    assert stats["truncated_documents"] == 1 and stats["truncations"] == 1
    assert stats["concat"]["truncated_documents"] == 3 and stats["concat"]["truncations"] == 3
    assert stats["padding_tokens"] == 1
    output = load_output(tmp_path / "out")
    doc_ids, rebuilt = rebuild(output, pad_id=0)
    assert doc_ids.tolist() == [0, 1, 2, 3, 4]
    assert_docs_equal(rebuilt, Docs.from_lists(toy_docs()))
    # Only the 14-token document is in two pieces: 8 tokens from offset 0 and 6 from offset 8.
    pieces = sorted(zip(output.doc_index.tolist(), output.doc_offset.tolist(), output.seq_lengths.tolist(),
                        strict=True))
    assert pieces == [(0, 0, 8), (0, 8, 6), (1, 0, 7), (2, 0, 5), (3, 0, 2), (4, 0, 3)]


def test_toy_example_cli(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "toy.parquet", toy_docs())
    code, stdout, stderr = run_cli("pack", source, tmp_path / "out", "--ctx", 8, "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert (report["sequences"], report["truncated_documents"], report["truncations"]) == (4, 1, 1)
    assert report["concat"] == {"sequences": 4, "truncated_documents": 3, "truncations": 3}
    assert "best-fit" in stderr and "concat" in stderr  # the table goes to stderr, never stdout
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["sequences"] == 4


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.slow
@pytest.mark.parametrize("ctx", [2048, 8192])
def test_round_trip_shared_corpora(shared_corpora: Path, tmp_path: Path, ctx: int) -> None:
    """Every document of code and nl comes back exactly; the sequence count is the reference BFD's."""
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("pack", shared_corpora / "code", shared_corpora / "nl", out, "--ctx", ctx,
                                   "--eos-id", EOS, "--json", "--quiet")
    assert code == 0, stderr
    report = json.loads(stdout)
    files = corpus_files(shared_corpora / "code") + corpus_files(shared_corpora / "nl")
    source = read_inputs(files)
    expected = source.with_eos(EOS)
    output = load_output(out)
    doc_ids, rebuilt = rebuild(output, pad_id=EOS)
    nonempty = source.lengths > 0
    np.testing.assert_array_equal(doc_ids, np.flatnonzero(nonempty))
    assert_docs_equal(rebuilt, expected.select(nonempty))
    assert report["documents"] == int(nonempty.sum())
    assert report["tokens"] == len(expected.tokens) == int(output.seq_lengths.sum())
    assert report["sequences"] == output.n_rows
    assert report["sequences_lower_bound"] == -(-len(expected.tokens) // ctx)
    # Best-fit decreasing within each window (16M tokens at ctx 2048: the 30M tokens are two windows) opens what
    # the per-document reference opens over the same documents.
    windows = output.manifest["windows"]
    assert len(windows) == (2 if ctx == 2048 else 1)
    lengths = expected.lengths.tolist()
    assert report["sequences"] == sum(
        reference_documents(lengths[w["first_doc"]:w["first_doc"] + w["documents"]], ctx).sequences for w in windows)
    assert [i["documents"] for i in output.manifest["inputs"]] == [
        pq.ParquetFile(f).metadata.num_rows for f in files]


def test_round_trip_shipped_samples(tmp_path: Path) -> None:
    """Without ../shared: the shipped Parquet and JSONL sample, packed at ctx 512, comes back exactly."""
    out = tmp_path / "out"
    result = pack([str(SAMPLES)], str(out), PackOptions(ctx=512, eos_id=EOS))
    source = read_inputs(corpus_files(SAMPLES))
    output = load_output(out)
    doc_ids, rebuilt = rebuild(output, pad_id=EOS)
    np.testing.assert_array_equal(doc_ids, np.flatnonzero(source.lengths > 0))
    assert_docs_equal(rebuilt, source.with_eos(EOS).drop_empty())
    assert result.report.stats.sequences == reference_documents(source.with_eos(EOS).lengths.tolist(),
                                                                512).sequences
    assert [(i["format"], i["documents"]) for i in result.manifest["inputs"]] == [("parquet", 600),
                                                                                   ("jsonl", 250)]


def test_round_trip_many_windows_and_shards(tmp_path: Path) -> None:
    """Small windows and shards: doc_index stays global and the documents still come back exactly."""
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("pack", SAMPLES, out, "--ctx", 1024, "--eos-id", EOS, "--window-tokens",
                                   200_000, "--rows-per-shard", 100, "--json", "--quiet")
    assert code == 0, stderr
    output = load_output(out)
    assert json.loads(stdout)["windows"] > 1
    assert len({s["path"][:14] for s in output.manifest["shards"]}) > 1  # several windows wrote shards
    source = read_inputs(corpus_files(SAMPLES))
    doc_ids, rebuilt = rebuild(output, pad_id=EOS)
    np.testing.assert_array_equal(doc_ids, np.flatnonzero(source.lengths > 0))
    assert_docs_equal(rebuilt, source.with_eos(EOS).drop_empty())


# ------------------------------------------------------------------------------------------------ reproducibility


def test_reruns_are_byte_identical_and_seed_matters(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        code, _, stderr = run_cli("pack", SAMPLES, tmp_path / name, "--ctx", 2048, "--eos-id", EOS, "--quiet",
                                  "--rows-per-shard", 200, "--seed", seed)
        assert code == 0, stderr
    a, b, c = (files_of(tmp_path / name) for name in "abc")
    assert a == b
    assert a["stats.json"] == c["stats.json"]
    shards = [name for name in a if name.endswith(".parquet")]
    assert len(shards) > 1
    # Shard names carry a digest of their bytes: another seed gives other bytes, so other names.
    assert [n[:24] for n in shards] == [n[:24] for n in c if n.endswith(".parquet")]
    assert not set(shards) & set(c)
    # Another seed only reorders the same sequences.
    rows = [sorted(map(tuple, load_output(tmp_path / n).input_ids.reshape(-1, 2048)[:, :16].tolist()))
            for n in "ac"]
    assert rows[0] == rows[1]


def test_no_shuffle_keeps_plan_order(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 9)):
        code, _, stderr = run_cli("pack", SAMPLES, tmp_path / name, "--ctx", 2048, "--eos-id", EOS, "--quiet",
                                  "--no-shuffle", "--seed", seed)
        assert code == 0, stderr
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    assert a.pop("manifest.json") != b.pop("manifest.json")  # it records the seed...
    assert a == b  # ...which is unused without a shuffle
    output = load_output(tmp_path / "a")
    assert output.manifest["options"]["shuffle"] is False
    # Unshuffled rows come in the order best-fit opened them: the first piece of each row never grows.
    first_piece = np.searchsorted(output.piece_row, np.arange(output.n_rows))
    assert np.all(np.diff(output.seq_lengths[first_piece]) <= 0)
    shuffled = tmp_path / "c"
    assert run_cli("pack", SAMPLES, shuffled, "--ctx", 2048, "--eos-id", EOS, "--quiet")[0] == 0
    first_shuffled = load_output(shuffled).seq_lengths[first_piece]
    assert np.any(np.diff(first_shuffled) > 0)


# ------------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_long_docs_accounting(tmp_path: Path, policy: str) -> None:
    ctx = 2048
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("pack", SAMPLES, out, "--ctx", ctx, "--eos-id", EOS, "--long-docs", policy,
                                   "--json", "--quiet")
    assert code == 0, stderr
    report = json.loads(stdout)
    source = read_inputs(corpus_files(SAMPLES)).with_eos(EOS)
    lengths = source.lengths
    long_ = lengths > ctx
    assert long_.sum() > 10  # the sample has documents longer than ctx
    output = load_output(out)
    doc_ids, rebuilt = rebuild(output, pad_id=EOS)
    assert report["truncated_documents"] == report["truncations"] == 0
    assert np.all(output.doc_offset == 0)
    if policy == "truncate":
        assert report["clipped_documents"] == int(long_.sum())
        assert report["dropped_documents"] == 0
        assert report["dropped_tokens"] == int((lengths[long_] - ctx).sum())
        np.testing.assert_array_equal(doc_ids, np.arange(len(lengths)))
        assert_docs_equal(rebuilt, source.prefixes(np.minimum(lengths, ctx)))
    else:
        assert report["dropped_documents"] == int(long_.sum())
        assert report["dropped_tokens"] == int(lengths[long_].sum())
        assert report["documents"] == int((~long_).sum())
        np.testing.assert_array_equal(doc_ids, np.flatnonzero(~long_))
        assert_docs_equal(rebuilt, source.select(~long_))
    assert report["tokens"] + report["dropped_tokens"] == int(lengths.sum())
    kept = np.minimum(lengths, ctx) if policy == "truncate" else lengths[~long_]
    assert report["sequences"] == reference_documents(kept.tolist(), ctx).sequences
    # Concatenation is measured on the same kept documents, so it may cut only where it crosses a boundary.
    assert report["concat"]["sequences"] == -(-int(kept.sum()) // ctx)


@pytest.mark.parametrize(("flags", "pad"), [([], 0), (["--eos-id", 99], 99), (["--eos-id", 99, "--pad-id", 5], 5),
                                            (["--pad-id", 7], 7)])
def test_pad_id_default_rules(tmp_path: Path, flags: list[object], pad: int) -> None:
    source = write_parquet(tmp_path / "toy.parquet", toy_docs())
    code, _, stderr = run_cli("pack", source, tmp_path / "out", "--ctx", 8, "--quiet", *flags)
    assert code == 0, stderr
    output = load_output(tmp_path / "out")
    assert output.manifest["options"]["pad_id"] == pad
    eos = 99 if "--eos-id" in flags else None
    doc_ids, rebuilt = rebuild(output, pad_id=pad)  # checks that every padding position holds pad
    assert_docs_equal(rebuilt, Docs.from_lists(toy_docs()).with_eos(eos))
    assert output.n_rows * 8 > output.seq_lengths.sum()  # there is padding to check


@pytest.mark.parametrize(("dtype", "arrow_type"), [("int64", pa.int64()), ("uint16", pa.uint16()),
                                                   ("int32", pa.int32()), ("uint32", pa.uint32())])
def test_output_dtype(tmp_path: Path, dtype: str, arrow_type: pa.DataType) -> None:
    source = write_parquet(tmp_path / "toy.parquet", toy_docs())
    code, _, stderr = run_cli("pack", source, tmp_path / "out", "--ctx", 8, "--eos-id", 40, "--dtype", dtype,
                              "--quiet")
    assert code == 0, stderr
    output = load_output(tmp_path / "out")
    assert output.token_type == arrow_type
    _, rebuilt = rebuild(output, pad_id=40)
    assert_docs_equal(rebuilt, Docs.from_lists(toy_docs()).with_eos(40))


def test_uint16_rejects_wide_ids(tmp_path: Path) -> None:
    code, _, stderr = run_cli("pack", SAMPLES / "code.parquet", tmp_path / "out", "--ctx", 2048, "--dtype",
                              "uint16")
    assert code == 1
    assert "code.parquet" in stderr and "uint16" in stderr and "--dtype" in stderr
    assert not (tmp_path / "out" / "manifest.json").exists()
    code, _, stderr = run_cli("pack", SAMPLES / "code.parquet", tmp_path / "out2", "--ctx", 2048, "--dtype",
                              "uint16", "--eos-id", EOS)
    assert code == 2
    assert "--eos-id" in stderr


# ------------------------------------------------------------------------------------------------ pipes


def test_jsonl_from_stdin_through_a_real_pipe(tmp_path: Path) -> None:
    out = tmp_path / "out"
    jsonl = SAMPLES / "nl.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    producer = subprocess.Popen(["cat", str(jsonl)], stdout=subprocess.PIPE)
    consumer = subprocess.run([sys.executable, "-m", "bestfit_cli", "pack", "-", str(out), "--ctx", "1024",
                               "--eos-id", str(EOS), "--json"], stdin=producer.stdout, capture_output=True,
                              env=env, timeout=120, check=False)
    assert producer.stdout is not None
    producer.stdout.close()
    producer.wait()
    assert consumer.returncode == 0, consumer.stderr.decode()
    assert b"Traceback" not in consumer.stderr
    report = json.loads(consumer.stdout)  # stdout holds exactly one JSON document
    assert report["documents"] == 250
    output = load_output(out)
    [stdin] = output.manifest["inputs"]
    assert (stdin["path"], stdin["format"], stdin["documents"]) == ("-", "jsonl", 250)
    _, rebuilt = rebuild(output, pad_id=EOS)
    assert_docs_equal(rebuilt, read_inputs([jsonl]).with_eos(EOS).drop_empty())


# ------------------------------------------------------------------------------------------------ manifest


def test_manifest_contents(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("pack", SAMPLES / "code.parquet", SAMPLES / "nl.jsonl", out, "--ctx", 1024,
                                   "--eos-id", EOS, "--rows-per-shard", 300, "--seed", 3, "--json", "--quiet")
    assert code == 0, stderr
    report = json.loads(stdout)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "bestfit.packed" and manifest["format_version"] == 2
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", manifest["bestfit_version"])
    options = manifest["options"]
    assert options["ctx"] == 1024 and options["eos_id"] == EOS and options["pad_id"] == EOS
    assert options["seed"] == 3 and options["shuffle"] is True and options["rows_per_shard"] == 300
    assert options["long_docs"] == "split" and options["column"] == "input_ids" and options["dtype"] == "int32"
    assert [(Path(i["path"]).name, i["format"], i["documents"]) for i in manifest["inputs"]] == [
        ("code.parquet", "parquet", 600), ("nl.jsonl", "jsonl", 250)]
    assert manifest["documents"] == 850
    assert manifest["sequences"] == report["sequences"] == sum(s["rows"] for s in manifest["shards"])
    assert manifest["tokens"] == report["tokens"]
    names = [s["path"] for s in manifest["shards"]]
    assert len(names) == -(-report["sequences"] // 300)
    assert all(re.fullmatch(r"train-\d{8}-\d{8}-[0-9a-f]{16}\.parquet", n) for n in names)
    assert all(n.split("-")[3] == s["sha256"][:16] + ".parquet" for n, s in zip(names, manifest["shards"], strict=True))
    assert names == sorted(names)
    for shard in manifest["shards"]:
        data = (out / shard["path"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest()
        assert shard["bytes"] == len(data)
        assert pq.ParquetFile(out / shard["path"]).metadata.num_rows == shard["rows"]
    # Nothing else is left in OUT: no temporary folder, no stray file.
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "manifest.json", "stats.json"])
    assert json.loads((out / "stats.json").read_text())["sequences"] == report["sequences"]
    stats_bytes = (out / "stats.json").read_bytes()
    assert manifest["stats_sha256"] == hashlib.sha256(stats_bytes).hexdigest()
    assert manifest["stats_bytes"] == len(stats_bytes)


# ------------------------------------------------------------------------------------------------ random corpora


@st.composite
def small_runs(draw: st.DrawFn) -> tuple[list[list[int]], dict[str, Any]]:
    ctx = draw(st.integers(1, 40))
    lengths = draw(st.lists(st.one_of(st.integers(0, ctx + 1), st.integers(0, 5 * ctx)), min_size=1, max_size=40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    docs = [rng.integers(0, 1000, size=n).tolist() for n in lengths]
    opts = {"ctx": ctx, "eos_id": draw(st.sampled_from([None, 1000, 0])),
            "pad_id": draw(st.sampled_from([None, 1001])),
            "long_docs": draw(st.sampled_from(["split", "truncate", "drop"])),
            "window_tokens": draw(st.sampled_from([ctx, 7 * ctx, 50 * ctx, 1 << 27])),
            "rows_per_shard": draw(st.integers(1, 6)), "shuffle": draw(st.booleans()),
            "seed": draw(st.integers(0, 5)), "workers": draw(st.sampled_from([1, 2]))}
    return docs, opts


@given(small_runs())
def test_random_corpora_round_trip(run: tuple[list[list[int]], dict[str, Any]]) -> None:
    """Any small corpus and any options: the output holds exactly the kept part of every document."""
    docs, kwargs = run
    opts = PackOptions(**kwargs)
    ctx = opts.ctx
    with tempfile.TemporaryDirectory() as tmp:
        source = write_parquet(Path(tmp) / "in.parquet", docs)
        if not any(docs):
            with pytest.raises(InputError, match="no documents with tokens"):
                pack([str(source)], f"{tmp}/out", opts)
            return
        result = pack([str(source)], f"{tmp}/out", opts)
        output = load_output(Path(tmp) / "out")
        doc_ids, rebuilt = rebuild(output, pad_id=opts.resolved_pad_id)
    expected = Docs.from_lists(docs).with_eos(opts.eos_id)
    lengths = expected.lengths
    kept = (lengths > 0) & ((lengths <= ctx) | (opts.long_docs != "drop"))
    keep = np.where(kept, lengths if opts.long_docs == "split" else np.minimum(lengths, ctx), 0)
    np.testing.assert_array_equal(doc_ids, np.flatnonzero(kept))
    assert_docs_equal(rebuilt, expected.prefixes(keep).drop_empty())
    stats = result.report.to_json()
    assert stats["tokens"] == int(keep.sum())
    assert stats["tokens"] + stats["dropped_tokens"] == stats["input_tokens"] + stats["eos_tokens"]
    assert stats["sequences"] == output.n_rows >= stats["sequences_lower_bound"]
    if opts.window_tokens >= 1 << 27:
        assert stats["sequences"] == reference_documents(keep.tolist(), ctx).sequences
    pieces_per_doc = -(-keep // ctx)
    assert stats["truncated_documents"] == int((pieces_per_doc > 1).sum())
    assert stats["truncations"] == int((pieces_per_doc[keep > 0] - 1).sum())
    assert stats["concat"] == reference_concat(keep.tolist(), ctx)


def reference_concat(doc_lengths: list[int], ctx: int) -> dict[str, int]:
    """Concatenate documents in order and cut every ctx tokens: sequences, documents cut, cuts."""
    position = truncated = cuts = 0
    for length in doc_lengths:
        if length == 0:
            continue
        crossed = len(range((position // ctx + 1) * ctx, position + length, ctx))  # boundaries inside it
        truncated += crossed > 0
        cuts += crossed
        position += length
    return {"sequences": -(-position // ctx), "truncated_documents": truncated, "truncations": cuts}


def test_workers_do_not_change_the_output(tmp_path: Path) -> None:
    for name, workers in (("one", 1), ("two", 2)):
        code, _, stderr = run_cli("pack", SAMPLES, tmp_path / name, "--ctx", 1024, "--eos-id", EOS, "--quiet",
                                  "--window-tokens", 300_000, "--workers", workers)
        assert code == 0, stderr
    one = files_of(tmp_path / "one")
    assert sum(name.startswith("train-00000002") for name in one) > 0  # at least three windows
    assert one == files_of(tmp_path / "two")


def test_every_document_dropped_still_writes_a_finished_output(tmp_path: Path) -> None:
    """Documents all left out by --long-docs drop are accounted for, not reported as an empty input."""
    source = write_parquet(tmp_path / "toy.parquet", toy_docs())
    code, stdout, stderr = run_cli("pack", source, tmp_path / "out", "--ctx", 1, "--long-docs", "drop", "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert (report["documents"], report["sequences"], report["tokens"]) == (0, 0, 0)
    assert (report["dropped_documents"], report["dropped_tokens"]) == (5, 31)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["documents"] == 5 and manifest["shards"] == []


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_jsonl_and_glob_order(tmp_path: Path, codec: str) -> None:
    """A glob expands in sorted order; compressed JSONL reads like plain JSONL."""
    suffix = {"gzip": ".gz", "zstd": ".zst"}[codec]
    lines = (SAMPLES / "nl.jsonl").read_bytes().splitlines(keepends=True)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, chunk in (("b", lines[:100]), ("a", lines[100:180]), ("c", lines[180:])):
        with pa.CompressedOutputStream(str(folder / f"{name}.jsonl{suffix}"), codec) as stream:
            stream.write(b"".join(chunk))
    out = tmp_path / "out"
    code, _, stderr = run_cli("pack", str(folder / f"*.jsonl{suffix}"), out, "--ctx", 512, "--eos-id", EOS,
                              "--quiet")
    assert code == 0, stderr
    output = load_output(out)
    assert [(Path(i["path"]).name, i["documents"]) for i in output.manifest["inputs"]] == [
        (f"a.jsonl{suffix}", 80), (f"b.jsonl{suffix}", 100), (f"c.jsonl{suffix}", 70)]
    docs = [json.loads(line)["input_ids"] for line in lines]
    doc_ids, rebuilt = rebuild(output, pad_id=EOS)
    np.testing.assert_array_equal(doc_ids, np.arange(250))
    assert_docs_equal(rebuilt, Docs.from_lists(docs[100:180] + docs[:100] + docs[180:]).with_eos(EOS))


@pytest.mark.parametrize(("ctx", "rows"), [(2048, 8192), (8192, 2048), (1 << 18, 64)])
def test_default_shard_size_follows_ctx(tmp_path: Path, ctx: int, rows: int) -> None:
    # 16M tokens a shard by default: a fixed row count would overflow a shard's 2**31 tokens at large ctx.
    result = pack([str(SAMPLES / "code.parquet")], str(tmp_path / "out"), PackOptions(ctx=ctx))
    assert result.manifest["options"]["rows_per_shard"] == rows
    assert all(shard["rows"] <= rows for shard in result.manifest["shards"])


@pytest.mark.parametrize("dtype", ["int32", "uint16"])
def test_jsonl_pack_bytes_do_not_depend_on_workers(tmp_path: Path, dtype: str) -> None:
    """JSONL in, several windows and shards out, blank lines among the records: the same bytes with 1 and 2 workers."""
    rng = np.random.default_rng(3)
    path = tmp_path / "in.jsonl"
    with path.open("wb") as out:
        for i in range(400):
            ids = rng.integers(0, 60_000, int(rng.integers(0, 300))).tolist()
            out.write(json.dumps({"id": i, "input_ids": ids}).encode() + b"\n")
            if i % 97 == 0:
                out.write(b"\n   \n")
    outputs = []
    for workers in (1, 2):
        out_dir = tmp_path / f"out{workers}"
        result = CliRunner().invoke(cli, ["pack", str(path), str(out_dir), "--ctx", "256", "--eos-id", "0",
                                          "--dtype", dtype, "--rows-per-shard", "64", "--window-tokens", "20000",
                                          "--workers", str(workers), "--quiet"])
        assert result.exit_code == 0, result.stderr
        outputs.append({p.name: p.read_bytes() for p in sorted(out_dir.iterdir()) if p.is_file()})
    assert len(outputs[0]) > 3 and outputs[0] == outputs[1]


@given(lengths=st.lists(st.integers(0, 300), min_size=1, max_size=40), seed=st.integers(0, 2**16),
       layout=st.sampled_from(["contiguous", "strided", "other dtype"]))
def test_gathered_slices_are_the_pieces_whichever_way_they_are_copied(lengths: list[int], seed: int,
                                                                    layout: str) -> None:
    """``_copy_slices`` (the gather of pieces of LOOP_PIECE_TOKENS or more): memoryview copies for contiguous
    arrays of one dtype, numpy's slice copies otherwise; the same tokens in the same places either way."""
    from bestfit_cli.pipeline import _copy_slices

    rng = np.random.default_rng(seed)
    n = np.array(lengths, dtype=np.int64)
    source = rng.integers(0, 2**31 - 1, int(n.sum()) * 2 + 10, dtype=np.int64).astype(np.int32)
    if layout == "strided":
        source = np.repeat(source, 2)[::2]
    elif layout == "other dtype":
        source = source.astype(np.int64)
    src = rng.integers(0, len(source) - n + 1)
    order = rng.permutation(len(n))
    dst = np.zeros(len(n), dtype=np.int64)
    dst[order] = np.concatenate([[0], np.cumsum(n[order])[:-1]])  # the pieces tile `out` in a shuffled order
    out = np.full(int(n.sum()), -1, dtype=np.int32)
    _copy_slices(source, src, out, dst, n)
    expected = np.full_like(out, -1)
    for i in range(len(n)):
        expected[dst[i]:dst[i] + n[i]] = source[src[i]:src[i] + n[i]]
    assert np.array_equal(out, expected)


def _pieces_in_rows(rng: np.random.Generator, doc_lengths: np.ndarray, ctx: int, eos: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every document cut into pieces of at most ctx (plus an EOS slot on its last), shuffled, then rows filled
    first-fit in that order: (doc, start, length, row) in output order, each row's pieces back to back."""
    docs, starts, lengths = [], [], []
    for d, n in enumerate(doc_lengths.tolist()):
        if not n:  # pack_window makes no pieces of empty documents
            continue
        total = n + int(eos)
        for s in range(0, total, ctx):
            docs.append(d), starts.append(s), lengths.append(min(ctx, total - s))
    order = rng.permutation(len(docs))
    rows, fill = [], []
    for i in order.tolist():
        r = next((k for k, used in enumerate(fill) if used + lengths[i] <= ctx), len(fill))
        if r == len(fill):
            fill.append(0)
        rows.append(r)
        fill[r] += lengths[i]
    rows_arr = np.array(rows, dtype=np.int64)
    by_row = np.argsort(rows_arr, kind="stable")
    pick = order[by_row]
    return (np.array(docs, dtype=np.int32)[pick], np.array(starts, dtype=np.int16)[pick],
            np.array(lengths, dtype=np.int16)[pick], rows_arr[by_row])


def _shard_case(doc_lengths: list[int], seed: int, ctx: int, eos: bool) -> tuple[Any, ...] | None:
    """A window of random tokens and its pieces in rows (``_pieces_in_rows``): (rng, window, doc, start, length,
    row, the rows' lengths, each piece's offset in its row), or None when the documents are all empty."""
    from bestfit_cli.window import Window

    rng = np.random.default_rng(seed)
    lengths_np = np.array(doc_lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths_np)])
    window = Window(0, 0, offsets, rng.integers(1, 1000, int(offsets[-1]), dtype=np.int64).astype(np.int32))
    doc, start, length, row = _pieces_in_rows(rng, lengths_np, ctx, eos)
    if not len(doc):
        return None
    n_rows = int(row.max()) + 1
    row_lengths = np.bincount(row, weights=length, minlength=n_rows).astype(np.int64)
    within = np.arange(len(length)) - np.searchsorted(row, row)  # pieces before this one in its row
    piece_offset = np.array([int(length[row == r][:w].astype(np.int64).sum())
                             for r, w in zip(row, within, strict=True)], dtype=np.int64)
    return rng, window, doc, start, length, row, row_lengths, piece_offset


@given(doc_lengths=st.lists(st.integers(0, 70), min_size=1, max_size=30), seed=st.integers(0, 2**16),
       padded=st.booleans(), eos=st.booleans(), flat_tokens=st.sampled_from([1, 40, 1 << 20]))
def test_gather_rows_lays_out_what_gather_tokens_does(doc_lengths: list[int], seed: int, padded: bool,
                                                    eos: bool, flat_tokens: int) -> None:
    """The one-call gather (a list view over the tokens, flattened) gives the bytes of the piece-by-piece one for
    padded and unpadded rows, EOS slots included, the window's last document among them; it falls back only for a
    window smaller than one of its pieces (a view would start before its tokens), and a carried column of another
    dtype (which it cannot view) still comes out right."""
    from bestfit_cli import pipeline
    from bestfit_cli.pipeline import ShardRows, gather_rows, gather_tokens

    ctx = 32
    case = _shard_case(doc_lengths, seed, ctx, eos)
    if case is None:
        return
    _, window, doc, start, length, row, row_lengths, piece_offset = case
    n_rows = len(row_lengths)
    row_starts = np.concatenate([[0], np.cumsum(row_lengths)])
    dst = (row * ctx if padded else row_starts[row]) + piece_offset
    size = n_rows * ctx if padded else int(row_starts[-1])
    expected = np.full(size, -7, dtype=np.int32)
    gather_tokens(window, doc, start, length, dst, expected, -1 if eos else None)
    got = np.full(size, -7, dtype=np.int32)
    layout = ShardRows(row, row_lengths, ctx if padded else None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "FLAT_TOKENS", flat_tokens)  # a row at a time, a few rows, all at once
        if int(length.max()) <= len(window.tokens):
            patch.setattr(pipeline, "gather_tokens", lambda *a: pytest.fail("fell back"))
        gather_rows(window, doc, start, length, dst, layout, got, -1 if eos else None)
    assert np.array_equal(got, expected)
    wide = window.tokens.astype(np.int64)
    carried = np.full(size, -7, dtype=np.int16)
    gather_rows(window, doc, start, length, dst, layout, carried, None, wide)
    reference = np.full(size, -7, dtype=np.int16)
    gather_tokens(window, doc, start, length, dst, reference, None, wide)
    assert np.array_equal(carried, reference)


@given(doc_lengths=st.lists(st.integers(0, 70), min_size=1, max_size=30), seed=st.integers(0, 2**16),
       eos=st.booleans(), flat_tokens=st.sampled_from([1, 40, 1 << 20]))
def test_gather_rows_pads_what_no_piece_covers_whatever_the_buffer_held(doc_lengths: list[int], seed: int,
                                                                        eos: bool, flat_tokens: int) -> None:
    """With ``pad``, padded rows come out as a buffer filled with it and then gathered into, though the buffer
    held something else before (a thread's reused buffer holds the last shard): on the one-call path, on the
    piece-by-piece one it falls back to, and for a carried column of another dtype."""
    from bestfit_cli import pipeline
    from bestfit_cli.pipeline import ShardRows, gather_rows, gather_tokens

    ctx = 32
    case = _shard_case(doc_lengths, seed, ctx, eos)
    if case is None:
        return
    rng, window, doc, start, length, row, row_lengths, piece_offset = case
    n_rows = len(row_lengths)
    dst = row * ctx + piece_offset
    layout = ShardRows(row, row_lengths, ctx)
    expected = np.full(n_rows * ctx, 5, dtype=np.int32)
    gather_tokens(window, doc, start, length, dst, expected, -1 if eos else None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "FLAT_TOKENS", flat_tokens)
        got = rng.integers(-9, 9, n_rows * ctx).astype(np.int32)  # what a reused buffer held
        gather_rows(window, doc, start, length, dst, layout, got, -1 if eos else None, pad=5)
        assert np.array_equal(got, expected)
        fallback = rng.integers(-9, 9, n_rows * ctx).astype(np.int32)
        gather_rows(window, doc, start, length, dst, layout, fallback, -1 if eos else None,
                    window.tokens.astype(np.int64), pad=5)  # another dtype than out's: piece by piece
    assert np.array_equal(fallback, expected)
