"""A plain PyTorch loop: a batch of the packaged reader, fed flattened with its cu_seqlens to the varlen attention of
docs/training.md, trains exactly like its pieces alone; given only the rows' bounds, that attention mixes documents."""

from __future__ import annotations

from typing import Any

import pytest

from bestfit_cli import PackedDataset

from .training_proof import (
    TOLERANCE,
    loss_and_gradient,
    pieces_alone,
    relative_errors,
    run_pack,
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
def reader_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The reader's first batch that has a padded row and a full row, both of several pieces; and its rows as
    written in the shards."""
    out = run_pack(f"bestfit pack samples/ out/ --ctx {CTX} --eos-id 100257", tmp_path_factory.mktemp("rows"))
    rows = shard_rows(out)
    for batch in PackedDataset(str(out), batch_size=4, seed=0):
        picked = [rows[i] for i in batch["row_index"]]
        several = [r for r in picked if len(r["seq_lengths"]) > 1]
        if {sum(r["seq_lengths"]) < CTX for r in several} == {True, False}:
            return batch, picked
    raise AssertionError("no batch of the sample has padded and full rows of several pieces")


def flat(batch: dict[str, Any]) -> dict[str, Any]:
    return {name: torch.from_numpy(batch[name]).reshape(1, -1) for name in ("input_ids", "position_ids", "labels")}


def varlen_kwargs(cu_seqlens: Any) -> dict[str, Any]:
    longest = int(cu_seqlens.diff().max())
    return {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": longest,
            "max_length_k": longest, "use_cache": False}


def test_varlen_attention_with_cu_seqlens_trains_like_the_pieces_alone(kernel: str, reader_batch: Any) -> None:
    batch, rows = reader_batch
    want = pieces_alone(tiny_llama(), rows)
    got = loss_and_gradient(tiny_llama(kernel), **flat(batch), **varlen_kwargs(torch.from_numpy(batch["cu_seqlens"])))
    assert max(relative_errors(got, want)) <= TOLERANCE


def test_varlen_attention_given_only_row_bounds_mixes_documents(kernel: str, reader_batch: Any) -> None:
    batch, rows = reader_batch
    want = pieces_alone(tiny_llama(), rows)
    rows_only = torch.arange(0, CTX * len(rows) + 1, CTX, dtype=torch.int32)
    got = loss_and_gradient(tiny_llama(kernel), **flat(batch), **varlen_kwargs(rows_only))
    assert relative_errors(got, want)[1] > TOLERANCE
