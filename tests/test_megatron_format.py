"""``--format megatron`` without megatron-core: the files, the manifest, verify, and the options it refuses.

That megatron-core itself reads the files back, and trains on them document-masked, is tests/test_megatron.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from bestfit_cli import PackOptions, pack
from bestfit_cli.cli import cli
from bestfit_cli.formats.megatron import decode_index
from bestfit_cli.verify import verify

from .conftest import EOS, SAMPLES
from .synthetic import corpus, documents, write_jsonl

CTX = 64
PAD = 7


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def manifest_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """One corpus packed twice with the same options: as Parquet and as Megatron (several windows and shards)."""
    root = tmp_path_factory.mktemp("megatron")
    source = corpus(root / "in", 150, seed=3, max_len=100)
    for fmt in ("parquet", "megatron"):
        pack([str(source)], str(root / fmt), PackOptions(ctx=CTX, eos_id=EOS, pad_id=PAD, window_tokens=1500,
                                                         rows_per_shard=8, workers=2, format=fmt))
    return source, root / "parquet", root / "megatron"


@pytest.fixture
def damaged(packed: tuple[Path, Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    source, _, out = packed
    shutil.copytree(out, tmp_path / "out")
    return source, tmp_path / "out"


def read_bin(out: Path, shard: str) -> np.ndarray:
    """A shard's rows as the .idx describes them, read without bestfit's decoder."""
    idx = (out / shard.replace(".bin", ".idx")).read_bytes()
    header, version, code, n_seq, n_doc = struct.unpack_from("<9sQBQQ", idx)
    assert (header, version, n_doc) == (b"MMIDIDX\x00\x00", 1, n_seq + 1)
    dtype = {8: np.uint16, 4: np.int32, 5: np.int64}[code]
    return np.fromfile(out / shard, dtype=dtype).reshape(n_seq, CTX)


def test_rows_and_pieces_equal_the_parquet_output(packed: tuple[Path, Path, Path]) -> None:
    _, parquet, megatron = packed
    pq_manifest, mg_manifest = manifest_of(parquet), manifest_of(megatron)
    # The same windows and parts; the names' digests differ with the bytes.
    assert [s["path"].rsplit("-", 1)[0] for s in pq_manifest["shards"]] == \
        [s["path"].rsplit("-", 1)[0] for s in mg_manifest["shards"]]
    assert len(mg_manifest["windows"]) > 1 and mg_manifest["options"]["format"] == "megatron"
    for key in ("documents", "sequences", "tokens", "columns"):
        assert pq_manifest[key] == mg_manifest[key]
    assert (parquet / "stats.json").read_text() == (megatron / "stats.json").read_text()
    for pq_shard, mg_shard in zip(pq_manifest["shards"], mg_manifest["shards"], strict=True):
        table = pq.read_table(parquet / pq_shard["path"]).to_pydict()
        assert read_bin(megatron, mg_shard["path"]).tolist() == table["input_ids"]
        assert mg_shard["rows"] == pq_shard["rows"]
        pieces = pq.read_table(megatron / mg_shard["path"].replace(".bin", ".pieces.parquet")).to_pydict()
        for column in ("seq_lengths", "doc_index", "doc_offset"):
            assert pieces[column] == table[column]
        # Every file of the shard is listed with its size and sha256.
        listed = {f["path"]: f for f in mg_shard["files"]}
        assert sorted(listed) == sorted(mg_shard["path"].replace(".bin", s) for s in (".idx", ".pieces.parquet"))
        for name, entry in listed.items():
            data = (megatron / name).read_bytes()
            assert (entry["bytes"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


def test_smallest_type_that_holds_the_ids(tmp_path: Path) -> None:
    # Ids (pad and EOS included) below 65,536 fit uint16 whatever --dtype says; cl100k's EOS does not.
    source = write_jsonl(tmp_path / "in.jsonl", documents([30, 50, 20, 70], high=60_000))
    for eos, code in ((65_535, 8), (EOS, 4)):
        out = tmp_path / f"out{eos}"
        pack([str(source)], str(out), PackOptions(ctx=CTX, eos_id=eos, pad_id=PAD, format="megatron"))
        for shard in manifest_of(out)["shards"]:
            dtype, lengths, pointers, docs = decode_index((out / shard["path"].replace(".bin", ".idx")).read_bytes())
            assert dtype == {8: np.uint16, 4: np.int32}[code]
            assert (lengths == CTX).all() and (np.diff(pointers) == CTX * dtype.itemsize).all()
            assert docs.tolist() == list(range(len(lengths) + 1))
        assert verify([str(source)], str(out)).ok


def test_verify_passes_and_is_deterministic(packed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    source, _, megatron = packed
    result = verify([str(source)], str(megatron))
    assert result.ok, result.problems
    assert result.shards == len(manifest_of(megatron)["shards"])
    again = tmp_path / "again"
    pack([str(source)], str(again), PackOptions(ctx=CTX, eos_id=EOS, pad_id=PAD, window_tokens=1500,
                                                rows_per_shard=8, workers=1, format="megatron"))
    for entry in sorted(megatron.iterdir()):
        assert (again / entry.name).read_bytes() == entry.read_bytes(), entry.name


@pytest.mark.parametrize(("suffix", "damage", "expected"), [
    (".idx", lambda b: b[:-8], "not a readable megatron shard"),
    (".bin", lambda b: b[:-4], "not a readable megatron shard"),
    (".pieces.parquet", lambda b: b[:20], "not a readable megatron shard"),
])
def test_verify_names_a_damaged_file(damaged: tuple[Path, Path], suffix: str, damage: Any, expected: str) -> None:
    source, out = damaged
    shard = manifest_of(out)["shards"][0]["path"]
    path = out / shard.replace(".bin", suffix)
    path.write_bytes(damage(path.read_bytes()))
    found = [str(p) for p in verify([str(source)], str(out)).problems]
    assert any(shard in p and "sha256 differs" in p for p in found), found
    assert any(shard in p and expected in p for p in found), found


def test_verify_rebuilds_documents_from_the_bin(damaged: tuple[Path, Path]) -> None:
    # A changed token with the sha256 re-listed: only rebuilding the documents can tell.
    source, out = damaged
    manifest = manifest_of(out)
    shard = manifest["shards"][0]
    path = out / shard["path"]
    tokens = np.fromfile(path, dtype=np.int32)
    tokens[3] += 1
    tokens.tofile(path)
    shard["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    found = [str(p) for p in verify([str(source)], str(out)).problems]
    assert any(shard["path"] in p and "document" in p for p in found), found


def test_verify_reports_a_missing_companion(damaged: tuple[Path, Path]) -> None:
    source, out = damaged
    shard = manifest_of(out)["shards"][1]["path"]
    (out / shard.replace(".bin", ".idx")).unlink()
    found = [str(p) for p in verify([str(source)], str(out)).problems]
    assert any(shard in p and "missing" in p for p in found), found


def test_overwrite_replaces_a_megatron_output(packed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    source, _, megatron = packed
    out = tmp_path / "out"
    shutil.copytree(megatron, out)
    result = invoke("pack", source, out, "--ctx", CTX, "--eos-id", EOS, "--pad-id", PAD, "--overwrite", "-q")
    assert result.exit_code == 0, result.output
    assert not list(out.glob("*.idx")) and list(out.glob("*.parquet"))


@pytest.mark.parametrize(("args", "message"), [
    ((), "--format megatron needs --eos-id"),
    (("--eos-id", EOS), "--format megatron needs a --pad-id other than the EOS id"),
    (("--eos-id", EOS, "--pad-id", EOS), "--format megatron needs a --pad-id other than the EOS id"),
])
def test_options_it_cannot_honour_are_usage_errors(tmp_path: Path, args: tuple[object, ...], message: str) -> None:
    result = invoke("pack", SAMPLES, tmp_path / "out", "--ctx", 2048, "--format", "megatron", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("inside", "what"), [(EOS, "EOS"), (PAD, "pad")])
def test_an_id_megatron_would_misread_inside_a_document(tmp_path: Path, inside: int, what: str) -> None:
    docs = documents([10, 12, 9], seed=1, high=5_000)
    docs = [[t if t != PAD else PAD + 1 for t in doc] for doc in docs]
    docs[1][4] = inside
    source = write_jsonl(tmp_path / "in.jsonl", docs)
    result = invoke("pack", source, tmp_path / "out", "--ctx", CTX, "--eos-id", EOS, "--pad-id", PAD,
                    "--format", "megatron")
    assert result.exit_code == 1, result.output
    assert f"document 1 holds the {what} id {inside} inside it" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "manifest.json").exists()
