"""Megatron indexed datasets as input (issue 10, item 2).

Datasets are written by megatron-core's ``IndexedDatasetBuilder`` as Megatron-LM's preprocess_data.py writes them
(every document cut into sequences), packed and verified: the shards are byte for byte those of the same documents
read from Parquet. Bad datasets are one-line errors naming the file.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from bestfit_cli.fingerprint import fingerprint
from bestfit_cli.formats import megatron as megatron_format
from bestfit_cli.fs import resolve_inputs
from bestfit_cli.read import ReadOptions, read_file
from bestfit_cli.verify import verify

from .synthetic import write_parquet
from .test_stream_inputs import CTX, EOS, corpus_docs, invoke, one_line_error, packed, shards

pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[train]')")
pytest.importorskip("megatron.core", reason="megatron-core is not installed (pip install -e '.[train]')")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder  # noqa: E402


def write_megatron(prefix: Path, docs: list[list[int]], dtype: type = np.uint16, chunk: int = 100) -> Path:
    """A dataset as megatron's preprocess_data.py writes one, each document cut into sequences of ``chunk``."""
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in docs:
        lengths = [chunk] * (len(doc) // chunk) + ([len(doc) % chunk] if len(doc) % chunk else [])
        builder.add_document(np.array(doc, dtype=np.int64), lengths)  # type: ignore[arg-type]
    builder.finalize(f"{prefix}.idx")
    return prefix



# ------------------------------------------------------------------------------------------------ Megatron


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_megatron_dataset_packs_as_its_documents(tmp_path: Path, dtype: type) -> None:
    docs = corpus_docs()
    prefix = write_megatron(tmp_path / "corpus", docs, dtype)
    index = IndexedDataset(str(prefix))
    assert len(index) > len(docs)  # the sequences are chunks: documents are what must come back
    from_parquet = packed(str(write_parquet(tmp_path / "docs.parquet", docs)), tmp_path / "p", eos_id=EOS)
    from_megatron = packed(str(prefix), tmp_path / "m", eos_id=EOS)
    assert from_megatron["documents"] == len(docs)
    assert from_megatron["sequences"] == from_parquet["sequences"]
    assert shards(tmp_path / "m") == shards(tmp_path / "p")
    listed = from_megatron["inputs"][0]  # type: ignore[index]
    assert listed["format"] == "megatron" and listed["path"].endswith("corpus.bin")
    assert listed["index_bytes"] == (tmp_path / "corpus.idx").stat().st_size


def test_every_way_of_naming_a_dataset_reads_it_once(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    write_megatron(folder / "corpus", corpus_docs())
    named = {arg: resolve_inputs(arg) for arg in (folder / "corpus", folder / "corpus.bin", folder / "corpus.idx",
                                                 folder, folder / "*.bin")}
    for files in named.values():
        assert [(f.format, Path(f.fs_path).name) for f in files] == [("megatron", "corpus.bin")]
    assert len(resolve_inputs([folder, folder / "corpus.idx"])) == 1


def test_documents_across_batches_and_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = corpus_docs(200) + [[]] + corpus_docs(5, seed=9)  # an empty document keeps its place
    write_megatron(tmp_path / "c", docs, np.int32, chunk=7)
    monkeypatch.setattr(megatron_format, "BATCH_TOKENS", 500)
    monkeypatch.setattr(megatron_format, "DOC_STEP", 13)
    monkeypatch.setattr(megatron_format, "CHECK_ENTRIES", 11)
    (file,) = resolve_inputs(tmp_path / "c")
    batches = list(read_file(file, 0, ReadOptions()))
    assert len(batches) > 10
    got = [b.tokens[b.offsets[i]:b.offsets[i + 1]].tolist() for b in batches for i in range(b.n_docs)]
    assert got == docs
    assert [b.first_row for b in batches] == np.cumsum([0] + [b.n_docs for b in batches[:-1]]).tolist()


def test_stats_and_histogram_read_lengths_from_the_idx_alone(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    docs = corpus_docs()
    write_megatron(tmp_path / "c", docs)
    parquet = write_parquet(tmp_path / "docs.parquet", docs)

    def no_tokens(*_args: object) -> None:
        raise AssertionError("a token of the .bin was read")

    monkeypatch.setattr(megatron_format.MegatronDataset, "tokens", no_tokens)
    from_idx = json.loads(invoke("stats", tmp_path / "c", "--ctx", CTX, "--json", "-q").stdout)
    from_parquet = json.loads(invoke("stats", parquet, "--ctx", CTX, "--json", "-q").stdout)
    assert from_idx["results"] == from_parquet["results"]
    assert from_idx["documents"] == len(docs)
    hist = json.loads(invoke("histogram", tmp_path / "c").stdout)
    assert hist["lengths"] == json.loads(invoke("histogram", parquet).stdout)["lengths"]


def test_a_changed_idx_is_named_by_verify(tmp_path: Path) -> None:
    write_megatron(tmp_path / "c", corpus_docs())
    packed(str(tmp_path / "c"), tmp_path / "out")
    (file,) = resolve_inputs(tmp_path / "c")
    before = fingerprint(file)
    bin_bytes = (tmp_path / "c.bin").read_bytes()
    write_megatron(tmp_path / "c", corpus_docs(), chunk=50)  # the same tokens in more sequences: a new .idx
    assert (tmp_path / "c.bin").read_bytes() == bin_bytes
    assert before.differences(fingerprint(file)) == [f".idx size {before.index_bytes:,} -> "
                                                     f"{(tmp_path / 'c.idx').stat().st_size:,} bytes"]
    result = verify([str(tmp_path / "c")], str(tmp_path / "out"))
    assert not result.ok
    assert any("changed since packing" in p.message and ".idx size" in p.message for p in result.problems)


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize(("damage", "named", "fragment"), [
    (lambda p: _truncate(p.with_suffix(".idx"), 100), ".idx", "truncated"),
    (lambda p: _truncate(p.with_suffix(".idx"), 20), ".idx", "truncated"),
    (lambda p: _truncate(p.with_suffix(".bin"), 1000), ".bin", "its .idx describes"),
    (lambda p: p.with_suffix(".bin").write_bytes(p.with_suffix(".bin").read_bytes() + b"xx"), ".bin",
     "its .idx describes"),
    (lambda p: p.with_suffix(".idx").write_bytes(b"NOTANIDX" + p.with_suffix(".idx").read_bytes()[8:]), ".idx",
     "not a Megatron index"),
])
def test_a_damaged_dataset_is_one_line_naming_the_file(tmp_path: Path, damage: object, named: str,
                                                       fragment: str) -> None:
    prefix = write_megatron(tmp_path / "c", corpus_docs(20))
    damage(prefix)  # type: ignore[operator]
    for command in (("pack", prefix, tmp_path / "out", "--ctx", CTX), ("stats", prefix, "--ctx", CTX)):
        line = one_line_error(invoke(*command), 1, f"c{named}", fragment)
        assert line.startswith(f"Error: {tmp_path / 'c'}{named}") or f"c{named}:" in line
    assert not (tmp_path / "out").exists()


def test_a_prefix_without_its_idx_and_an_idx_without_its_bin(tmp_path: Path) -> None:
    prefix = write_megatron(tmp_path / "c", corpus_docs(10))
    (tmp_path / "c.idx").rename(tmp_path / "d.idx")
    one_line_error(invoke("pack", prefix, tmp_path / "o", "--ctx", CTX), 1, "c.idx", "does not exist")
    one_line_error(invoke("pack", tmp_path / "d.idx", tmp_path / "o", "--ctx", CTX), 1, "d.idx",
                   "without its .bin")
    # In a folder: the .bin alone is a raw stream (refused without --stream-dtype), the .idx alone is noted.
    result = invoke("pack", tmp_path, tmp_path.parent / f"{tmp_path.name}-o", "--ctx", CTX)
    one_line_error(result, 2, "c.bin", "--stream-dtype")
    (tmp_path / "c.bin").unlink()
    write_parquet(tmp_path / "a.parquet", corpus_docs(5))
    result = invoke("pack", tmp_path, tmp_path.parent / f"{tmp_path.name}-o", "--ctx", CTX, "-q")
    assert result.exit_code == 0, result.stderr
    assert "d.idx" in result.stderr and "a Megatron .idx without its .bin" in result.stderr


def test_keep_on_a_megatron_dataset_is_a_one_line_error(tmp_path: Path) -> None:
    """A Megatron dataset holds token ids only: there is no column for --keep or --keep-token to carry."""
    prefix = write_megatron(tmp_path / "corpus", [[5, 6, 7], [8, 9]])
    result = invoke("pack", f"{prefix}.bin", tmp_path / "out", "--ctx", CTX, "--keep-token", "labels:-100")
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "\n" not in message and "a Megatron dataset holds token ids only, no columns for --keep" in message, \
        message
    assert not (tmp_path / "out").exists()
