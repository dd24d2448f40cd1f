"""Fuzzing pack → verify: random corpora (lengths 0, 1, ctx-1, ctx, ctx+1, many times ctx; random input types and
files) packed with random options must verify, with counts that match the report and an independent count.

CI runs the ``ci`` hypothesis profile (a bounded number of examples); ``make fuzz`` runs the ``fuzz`` profile.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bestfit_cli import InputError, PackOptions, pack
from bestfit_cli.histogram import LONG_DOC_POLICIES
from bestfit_cli.read import TOKEN_DTYPES
from bestfit_cli.verify import verify

from .synthetic import write_parquet

INPUT_TYPES = {"int16": pa.int16(), "uint16": pa.uint16(), "int32": pa.int32(), "int64": pa.int64()}


@dataclass(frozen=True)
class InputFileSpec:
    format: str  # "parquet" or "jsonl"
    value_type: str  # Parquet list value type
    lengths: list[int]
    bad_lines: list[int]  # JSONL: positions of lines that are not JSON (only with --on-bad-record skip)


@st.composite
def lengths_for(draw: st.DrawFn, ctx: int) -> list[int]:
    edge = st.sampled_from(sorted({0, 1, max(ctx - 1, 0), ctx, ctx + 1, 2 * ctx, 5 * ctx + 1}))
    return draw(st.lists(st.one_of(edge, st.integers(0, 3 * ctx + 2)), min_size=0, max_size=25))


@st.composite
def cases(draw: st.DrawFn) -> tuple[PackOptions, list[InputFileSpec]]:
    ctx = draw(st.integers(1, 40))
    skip = draw(st.booleans())
    files = []
    for _ in range(draw(st.integers(1, 3))):
        fmt = draw(st.sampled_from(["parquet", "jsonl"]))
        lengths = draw(lengths_for(ctx))
        if fmt == "jsonl" and not lengths:
            lengths = [draw(st.integers(0, 2 * ctx))]  # an empty JSONL file is an input error
        bad = draw(st.lists(st.integers(0, len(lengths)), max_size=3)) if skip and fmt == "jsonl" else []
        files.append(InputFileSpec(fmt, draw(st.sampled_from(sorted(INPUT_TYPES))), lengths, sorted(bad)))
    eos = draw(st.booleans())
    opts = PackOptions(
        ctx=ctx, eos_id=draw(st.integers(0, 1000)) if eos else None,
        pad_id=draw(st.one_of(st.none(), st.integers(0, 1000))),
        long_docs=draw(st.sampled_from(LONG_DOC_POLICIES)), seed=draw(st.integers(0, 2**16)),
        shuffle=draw(st.booleans()), rows_per_shard=draw(st.integers(1, 8)),
        dtype=draw(st.sampled_from(sorted(TOKEN_DTYPES))), window_tokens=draw(st.integers(ctx, 6 * ctx)),
        workers=draw(st.integers(1, 2)), on_bad_record="skip" if skip else "error",
        max_bad_records="100%")
    return opts, files


def write_inputs(folder: Path, files: list[InputFileSpec], rng: np.random.Generator) -> list[str]:
    paths = []
    for index, spec in enumerate(files):
        high = min(np.iinfo(INPUT_TYPES[spec.value_type].to_pandas_dtype()).max, 65_535)  # fits every output dtype
        docs = [rng.integers(0, high + 1, size=n).tolist() for n in spec.lengths]
        if spec.format == "parquet":
            path = write_parquet(folder / f"{index}.parquet", docs, INPUT_TYPES[spec.value_type], row_group_size=7)
        else:
            lines = [json.dumps({"input_ids": d}) for d in docs]
            for position in reversed(spec.bad_lines):
                lines.insert(position, "{not json")
            path = folder / f"{index}.jsonl"
            path.write_text("".join(line + "\n" for line in lines))
        paths.append(str(path))
    return paths


def expected_counts(opts: PackOptions, files: list[InputFileSpec]) -> tuple[int, int, int]:
    """Documents, tokens written and tokens dropped, counted straight from the lengths."""
    lengths = np.array([n for spec in files for n in spec.lengths], dtype=np.int64)
    packed = lengths + ((lengths > 0) if opts.eos_id is not None else 0)
    if opts.long_docs == "truncate":
        kept = np.minimum(packed, opts.ctx)
    elif opts.long_docs == "drop":
        kept = np.where(packed > opts.ctx, 0, packed)
    else:
        kept = packed
    return len(lengths), int(kept.sum()), int((packed - kept).sum())


@given(cases(), st.integers(0, 2**32 - 1))
def test_pack_then_verify(case: tuple[PackOptions, list[InputFileSpec]], token_seed: int) -> None:
    opts, files = case
    documents, tokens, dropped = expected_counts(opts, files)
    skipped = sum(len(spec.bad_lines) for spec in files)
    documents += skipped  # a skipped record keeps its doc_index: it is read, and numbered, as an empty document
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inputs = write_inputs(folder, files, np.random.default_rng(token_seed))
        out = str(folder / "out")
        if not any(n > 0 for spec in files for n in spec.lengths):
            # Nothing but empty or bad records: an error, not an empty output (documents --long-docs drop
            # removes are different: they were input, and the report says so).
            with pytest.raises(InputError, match="input holds no documents with tokens"):
                pack(inputs, out, opts)
            return
        result = pack(inputs, out, opts)
        checked = verify(inputs, out)
    stats = result.report.stats
    assert checked.ok, [str(p) for p in checked.problems]
    assert checked.documents == documents == result.manifest["documents"]
    assert checked.tokens == tokens == stats.tokens
    assert checked.sequences == stats.sequences
    assert stats.dropped_tokens == dropped
    assert result.report.skipped_records == skipped
    assert stats.sequences * opts.ctx >= tokens
