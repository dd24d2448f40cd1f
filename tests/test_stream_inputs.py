"""Flat token streams as input (issue 10, item 3): nanoGPT's raw ``.bin`` and OLMo's 1-D ``.npy``, split at
``--split-at``.

Streams are written by numpy (``tofile``, ``save``), packed and verified: the shards are byte for byte those of the
same documents read from Parquet. Bad inputs are one-line errors naming the file. Megatron datasets, written by
megatron-core, are tests/test_megatron_input.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from bestfit_cli import PackOptions, pack
from bestfit_cli.cli import cli
from bestfit_cli.formats import stream as stream_format
from bestfit_cli.fs import resolve_inputs
from bestfit_cli.read import ReadOptions, read_file
from bestfit_cli.verify import verify

from .synthetic import documents, tree_bytes, write_parquet

EOS = 50_001
CTX = 256


def corpus_docs(n: int = 120, seed: int = 3) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return documents(rng.integers(1, 700, size=n).tolist(), seed)


def packed(inputs: list[str] | str, out: Path, **options: object) -> dict[str, object]:
    result = pack(inputs, str(out), PackOptions(ctx=CTX, **options))  # type: ignore[arg-type]
    assert verify(inputs if isinstance(inputs, list) else [inputs], str(out)).ok
    return result.manifest


def shards(out: Path) -> dict[str, bytes]:
    return {name: data for name, data in tree_bytes(out).items() if name != "manifest.json"}


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result: Result, exit_code: int, *fragments: str) -> str:
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: "), result.stderr
    if exit_code == 1:
        assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


# ------------------------------------------------------------------------------------------------ streams


def stream_of(docs: list[list[int]]) -> np.ndarray:
    return np.concatenate([np.array([*d, EOS], dtype=np.int64) for d in docs])


@pytest.mark.parametrize("form", ["bin-uint16", "bin-uint32", "npy-uint16", "npy-int64"])
def test_a_stream_packs_as_the_documents_between_separators(tmp_path: Path, form: str) -> None:
    docs = corpus_docs()
    kind, dtype = form.split("-")
    ids = stream_of(docs).astype(dtype)
    path = tmp_path / f"train.{kind}"
    if kind == "bin":
        ids.tofile(path)
    else:
        np.save(path, ids)
    options = {"split_at": EOS, **({"stream_dtype": dtype} if kind == "bin" else {})}
    # The separator stays at the end of its document: the same documents as Parquet rows that end with the EOS.
    from_parquet = packed(str(write_parquet(tmp_path / "d.parquet", [[*d, EOS] for d in docs])), tmp_path / "p")
    from_stream = packed(str(path), tmp_path / "s", **options)
    assert from_stream["documents"] == len(docs)
    assert from_stream["sequences"] == from_parquet["sequences"]
    assert shards(tmp_path / "s") == shards(tmp_path / "p")
    assert from_stream["options"]["split_at"] == EOS  # type: ignore[index]


def test_splitting_across_chunks_keeps_every_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = corpus_docs(60) + [[], [], [5]]  # consecutive separators: documents of the separator alone
    ids = np.concatenate([stream_of(docs), [7, 8, 9]]).astype(np.uint32)  # and a tail without one
    np.save(tmp_path / "s.npy", ids)
    monkeypatch.setattr(stream_format, "CHUNK_TOKENS", 37)
    (file,) = resolve_inputs(tmp_path / "s.npy")
    batches = list(read_file(file, 0, ReadOptions(split_at=EOS)))
    got = [b.tokens[b.offsets[i]:b.offsets[i + 1]].tolist() for b in batches for i in range(b.n_docs)]
    assert got == [[*d, EOS] for d in docs] + [[7, 8, 9]]
    assert np.concatenate([b.tokens for b in batches]).tolist() == ids.tolist()
    notes = [n for b in batches for n in b.notes]
    assert any("last 3 tokens follow the last separator" in n for n in notes)
    assert any("2 documents are the separator" in n for n in notes)


def test_the_cli_reports_a_trailing_document(tmp_path: Path) -> None:
    np.concatenate([stream_of(corpus_docs(10)), [1, 2]]).astype(np.uint16).tofile(tmp_path / "s.bin")
    result = invoke("pack", tmp_path / "s.bin", tmp_path / "o", "--ctx", CTX, "--stream-dtype", "uint16",
                    "--split-at", EOS, "-q", "--verify")
    assert result.exit_code == 0, result.stderr
    assert "note: " in result.stderr and "last 2 tokens follow the last separator" in result.stderr
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["documents"] == 11 and manifest["options"]["stream_dtype"] == "uint16"
    (notes,) = [entry["notes"] for entry in manifest["inputs"]]  # the note stays with the output, per input
    assert len(notes) == 1 and "last 2 tokens follow the last separator" in notes[0], notes
    stats = invoke("stats", tmp_path / "s.bin", "--ctx", CTX, "--stream-dtype", "uint16", "--split-at", EOS, "-q")
    assert "last 2 tokens follow the last separator" in stats.stderr


def test_a_document_too_long_to_hold_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.concatenate([np.zeros(5000), [EOS]]).astype(np.uint16))
    (file,) = resolve_inputs(tmp_path / "s.npy")
    with pytest.raises(Exception, match="s.npy: holds no separator id 50001 in its first 100 ids"):
        list(read_file(file, 0, ReadOptions(split_at=EOS, max_line_bytes=800)))


@pytest.mark.parametrize(("make", "args", "exit_code", "fragments"), [
    (lambda d: np.arange(11, dtype=np.uint8).tofile(d / "s.bin"), ["--stream-dtype", "uint16", "--split-at", 3], 1,
     ("s.bin", "11 bytes, not a whole number of uint16 ids")),
    (lambda d: np.arange(10, dtype=np.uint16).tofile(d / "s.bin"), ["--split-at", 3], 2,
     ("s.bin", "--stream-dtype")),
    (lambda d: np.arange(10, dtype=np.uint16).tofile(d / "s.bin"), ["--stream-dtype", "uint16", "--split-at", 99], 1,
     ("s.bin", "no separator id 99")),
    (lambda d: np.save(d / "s.npy", np.arange(10, dtype=np.uint16)), [], 2, ("s.npy", "needs --split-at")),
    (lambda d: np.save(d / "s.npy", np.zeros((4, 8), dtype=np.uint16)), ["--split-at", 0], 1,
     ("s.npy", "shape (4, 8)", "1-D")),
    (lambda d: np.save(d / "s.npy", np.zeros(8, dtype=np.float32)), ["--split-at", 0], 1, ("s.npy", "float32")),
    (lambda d: (d / "s.npy").write_bytes(np.lib.format.magic(1, 0) + b"garbage"), ["--split-at", 0], 1,
     ("s.npy", "not a readable .npy")),
    (lambda d: _truncated_npy(d / "s.npy"), ["--split-at", 0], 1, ("s.npy", "truncated")),
    (lambda d: np.save(d / "s.npy", np.arange(10, dtype=np.uint16)), ["--split-at", 70_000], 2,
     ("--split-at 70000", "s.npy", "uint16")),
    (lambda d: write_parquet(d / "a.parquet", [[1, 2]]), ["--split-at", 3], 2, ("--split-at applies to flat",)),
])
def test_bad_streams_are_one_line_naming_the_file(tmp_path: Path, make: object, args: list[object], exit_code: int,
                                                  fragments: tuple[str, ...]) -> None:
    data = tmp_path / "in"
    data.mkdir()
    make(data)  # type: ignore[operator]
    for command in (("pack", data, tmp_path / "out", "--ctx", CTX), ("stats", data, "--ctx", CTX), ("histogram", data)):
        one_line_error(invoke(*command, *args), exit_code, *fragments)
    assert not (tmp_path / "out").exists()


def _truncated_npy(path: Path) -> None:
    np.save(path, np.arange(100, dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:-10])
