"""Hugging Face on bestfit output: with the training columns, a packed batch trains exactly like its pieces alone.

Real ``bestfit pack`` output of the shipped sample, a tiny Llama built from a config, float64. See
``training_proof.py`` for what the equivalence proves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bestfit_cli.training import IGNORE_INDEX

from .conftest import EOS
from .training_proof import (
    TOLERANCE,
    gradient,
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

CTX = 64
PACK = f"bestfit pack samples/ out/ --ctx {CTX} --eos-id {EOS} --columns position_ids,labels"


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_pack(PACK, tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def rows(out: Path) -> list[dict[str, Any]]:
    return shard_rows(out)


@pytest.fixture(scope="module")
def batch_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rows[i] for i in sample_batch(rows, CTX)]


@pytest.fixture(scope="module")
def alone(batch_rows: list[dict[str, Any]]) -> tuple[float, Any]:
    """Loss and gradient of the batch's pieces run one at a time, by the seeded tiny Llama every test builds."""
    return pieces_alone(tiny_llama(), batch_rows)


def tensors(batch_rows: list[dict[str, Any]], *names: str) -> dict[str, Any]:
    return {name: torch.tensor([r[name] for r in batch_rows], dtype=torch.long) for name in names}


def test_labels_skip_padding_and_boundaries_and_keep_every_real_eos(out: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow.parquet as pq

    schema = pq.read_schema(next(out.glob("*.parquet")))
    assert str(schema.field("labels").type) == "list<element: int64>"
    assert str(schema.field("position_ids").type) == "list<element: int64>"
    pad_id = json.loads((out / "manifest.json").read_text())["options"]["pad_id"]
    assert pad_id == EOS  # the default, and the trap below
    real_eos = eos_labels = eos_opening_a_piece = eos_left_by_the_pad_rule = padded_rows = 0
    for row in rows:
        ids, labels, positions = (np.array(row[c]) for c in ("input_ids", "labels", "position_ids"))
        used = sum(row["seq_lengths"])
        padded_rows += used < CTX
        assert (labels[used:] == IGNORE_INDEX).all()  # no label on padding
        starts = np.cumsum([0, *row["seq_lengths"][:-1]])
        assert (labels[starts] == IGNORE_INDEX).all()  # nothing predicts across a boundary
        for start, length in zip(starts, row["seq_lengths"], strict=True):
            assert positions[start:start + length].tolist() == list(range(length))
            assert (labels[start + 1:start + length] == ids[start + 1:start + length]).all()
        real_eos += int((ids[:used] == EOS).sum())
        eos_labels += int((labels == EOS).sum())
        eos_opening_a_piece += int((ids[starts] == EOS).sum())  # a split document's last piece can be its EOS alone
        by_pad_rule = ids.copy()
        by_pad_rule[ids == pad_id] = IGNORE_INDEX  # the usual `labels[input_ids == pad_id] = -100`
        eos_left_by_the_pad_rule += int((by_pad_rule == EOS).sum())
    assert 0 < padded_rows < len(rows)
    assert real_eos > 0 and eos_labels == real_eos - eos_opening_a_piece  # every real EOS is trained
    assert eos_left_by_the_pad_rule == 0  # the pad rule would have taught the model never to stop


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_batch_trains_like_its_pieces_alone(batch_rows: list[dict[str, Any]], alone: tuple[float, Any],
                                                   attn_implementation: str) -> None:
    model = tiny_llama(attn_implementation)
    got = loss_and_gradient(model, **tensors(batch_rows, "input_ids", "position_ids", "labels"), use_cache=False)
    assert max(relative_errors(got, alone)) <= TOLERANCE


def test_default_output_used_the_obvious_way_mixes_documents(batch_rows: list[dict[str, Any]],
                                                             alone: tuple[float, Any]) -> None:
    # No position_ids, labels = input_ids: attention crosses pieces, padding and boundaries carry loss.
    ids = tensors(batch_rows, "input_ids")["input_ids"]
    got = loss_and_gradient(tiny_llama(), input_ids=ids, labels=ids, use_cache=False)
    loss_error, grad_error = relative_errors(got, alone)
    assert loss_error > TOLERANCE and grad_error > TOLERANCE


def test_a_hand_loop_with_the_default_use_cache_crosses_documents(batch_rows: list[dict[str, Any]],
                                                                  alone: tuple[float, Any]) -> None:
    # The right columns, but the config's use_cache=True: transformers then ignores the restarts in position_ids.
    model = tiny_llama()
    assert model.config.use_cache
    got = loss_and_gradient(model, **tensors(batch_rows, "input_ids", "position_ids", "labels"))
    assert relative_errors(got, alone)[1] > TOLERANCE


def test_flex_attention_has_no_backward_on_cpu(batch_rows: list[dict[str, Any]]) -> None:
    # docs/training.md says so; this test tells when a torch release changes it. TorchDynamo is off: with it,
    # transformers compiles its block-mask builder first (about a minute of this suite under load) before torch's
    # flex_attention refuses a backward on CPU the same way.
    model = tiny_llama("flex_attention")
    with torch._dynamo.config.patch(disable=True), pytest.raises(NotImplementedError, match="backward on CPU"):
        loss_and_gradient(model, **tensors(batch_rows[:1], "input_ids", "position_ids", "labels"), use_cache=False)


def test_the_stock_trainer_trains_document_masked(out: Path, rows: list[dict[str, Any]], alone: tuple[float, Any],
                                                  tmp_path: Path) -> None:
    import datasets
    from transformers import Trainer, TrainingArguments

    manifest = json.loads((out / "manifest.json").read_text())
    dataset = datasets.load_dataset("parquet", split="train",
                                    data_files=[str(out / shard["path"]) for shard in manifest["shards"]])
    assert len(dataset) == len(rows)
    picked = sample_batch(rows, CTX)
    model = tiny_llama()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=len(picked), max_steps=2,
                             learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True)
    # No data collator, no map, no glue: the columns are the model's own arguments.
    trainer = Trainer(model=model, args=args, train_dataset=dataset.select(picked))
    assert model.config.use_cache is False  # the Trainer sets it from TrainingArguments.use_cache
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) == {"input_ids", "position_ids", "labels"}  # the bookkeeping columns are left out
    assert batch["labels"].dtype == torch.int64
    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    got = (float(loss), gradient(model))
    assert max(relative_errors(got, alone)) <= TOLERANCE  # a mean over the batch: the sampler's order is moot

    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_data_collator_with_flattening_on_packed_rows_mixes_documents(batch_rows: list[dict[str, Any]],
                                                                      alone: tuple[float, Any]) -> None:
    # It treats each row as one sequence: pieces of a row see each other, and padding carries loss.
    from transformers import DataCollatorWithFlattening

    batch = DataCollatorWithFlattening()([{"input_ids": r["input_ids"]} for r in batch_rows])
    padded = next(r for r in batch_rows if sum(r["seq_lengths"]) < CTX)
    at = batch_rows.index(padded) * CTX + sum(padded["seq_lengths"])  # first padding token in the flat batch
    assert batch["labels"][0, at + 1] != IGNORE_INDEX
    got = loss_and_gradient(tiny_llama(), **batch, use_cache=False)
    assert relative_errors(got, alone)[1] > TOLERANCE
