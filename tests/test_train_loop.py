"""A plain PyTorch loop: the varlen attention of docs/training.md, given cu_seqlens from bestfit_cli.training, trains
a packed batch exactly like its pieces alone; given only the rows' bounds, it mixes documents."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bestfit_cli import training

from .training_proof import (
    TOLERANCE,
    loss_and_gradient,
    pieces_alone,
    relative_errors,
    run_pack,
    sample_batch,
    shard_rows,
    tiny_llama,
)

torch = pytest.importorskip("torch", reason="the training stack is not installed (pip install -e '.[train]')")
pytest.importorskip("transformers", reason="the training stack is not installed (pip install -e '.[train]')")

SECTION = "A plain PyTorch loop with a varlen attention kernel"
CTX = 64


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The docs' recipe, run as written; it registers its varlen attention as "varlen_sdpa"."""
    from transformers import AttentionInterface

    from .test_training_docs import run_section

    namespace = run_section(SECTION, tmp_path_factory.mktemp("loop"))
    assert AttentionInterface()["varlen_sdpa"] is namespace["varlen_sdpa"]
    return "varlen_sdpa"


@pytest.fixture(scope="module")
def batch_rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    rows = shard_rows(run_pack(f"bestfit pack samples/ out/ --ctx {CTX} --eos-id 100257",
                               tmp_path_factory.mktemp("rows")))
    return [rows[i] for i in sample_batch(rows, CTX)]


def flat_batch(batch_rows: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    pieces = np.concatenate([r["seq_lengths"] for r in batch_rows])
    offsets = np.cumsum([0] + [len(r["seq_lengths"]) for r in batch_rows])
    segs = training.segments(pieces, offsets, np.full(len(batch_rows), CTX))
    ids = np.concatenate([r["input_ids"] for r in batch_rows])
    columns = {"input_ids": torch.from_numpy(ids.astype(np.int64))[None],
               "position_ids": torch.from_numpy(training.position_ids(segs))[None],
               "labels": torch.from_numpy(training.labels(ids, segs))[None]}
    return columns, torch.from_numpy(training.cu_seqlens(segs))


def varlen_kwargs(cu_seqlens: Any) -> dict[str, Any]:
    longest = int(cu_seqlens.diff().max())
    return {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": longest,
            "max_length_k": longest, "use_cache": False}


def test_varlen_attention_with_cu_seqlens_trains_like_the_pieces_alone(kernel: str,
                                                                      batch_rows: list[dict[str, Any]]) -> None:
    want = pieces_alone(tiny_llama(), batch_rows)
    columns, cu_seqlens = flat_batch(batch_rows)
    got = loss_and_gradient(tiny_llama(kernel), **columns, **varlen_kwargs(cu_seqlens))
    assert max(relative_errors(got, want)) <= TOLERANCE


def test_varlen_attention_given_only_row_bounds_mixes_documents(kernel: str,
                                                               batch_rows: list[dict[str, Any]]) -> None:
    want = pieces_alone(tiny_llama(), batch_rows)
    columns, _ = flat_batch(batch_rows)
    rows_only = torch.arange(0, CTX * len(batch_rows) + 1, CTX, dtype=torch.int32)
    got = loss_and_gradient(tiny_llama(kernel), **columns, **varlen_kwargs(rows_only))
    assert relative_errors(got, want)[1] > TOLERANCE
