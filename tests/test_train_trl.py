"""TRL padding-free on bestfit's output, with no glue: a packed batch trains exactly like its pieces one by one.

The proof that documents are kept apart: the loss and the gradients of one ``SFTTrainer`` step on a batch of
packed rows equal those of running every piece of those rows through the model alone. A tiny Llama built from a
config (nothing downloaded) runs in float64 with sdpa attention. The rows come from real output of the shipped
sample: rows that fill ``ctx`` and rows whose pieces leave space (padding, in the default padded output).

Only ``--no-pad`` output with ``SFTConfig(padding_free=True, max_length=None)`` passes; today's padded output used
the obvious ways fails, and the tests show how (an IndexError, or a loss that differs).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

WHY = "the training stack is not installed (pip install -e '.[train]')"
torch = pytest.importorskip("torch", reason=WHY)
transformers = pytest.importorskip("transformers", reason=WHY)
trl = pytest.importorskip("trl", reason=WHY)
datasets = pytest.importorskip("datasets", reason=WHY)

from bestfit_cli import PackOptions, pack  # noqa: E402

from .conftest import EOS, ROOT, SAMPLES  # noqa: E402

CTX = 64
ROWS = 4  # one batch: two rows that fill ctx, two of several pieces that leave space
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sample packed as today (padded) and with --no-pad, with and without the training columns."""
    root = tmp_path_factory.mktemp("trl")
    runs: dict[str, dict[str, Any]] = {"today": {}, "no_pad": {"pad": False},
                                       "no_pad_labels": {"pad": False, "columns": ("position_ids", "labels")}}
    for name, extra in runs.items():
        pack([str(SAMPLES)], str(root / name), PackOptions(ctx=CTX, eos_id=EOS, **extra))
    return {name: root / name for name in runs}


def load(out: Path) -> Any:
    """The output as a user loads it: stock ``datasets`` over the shards."""
    return datasets.load_dataset("parquet", data_files=str(out / "train-*.parquet"), split="train")


@pytest.fixture(scope="module")
def chosen(outputs: dict[str, Path]) -> list[int]:
    """Row numbers (the same pieces in every output) of two full rows and two rows of several pieces."""
    seq_lengths = load(outputs["no_pad"])["seq_lengths"]
    full = [i for i, s in enumerate(seq_lengths) if sum(s) == CTX][:2]
    partial = [i for i, s in enumerate(seq_lengths) if len(s) >= 2 and sum(s) < CTX][:2]
    assert len(full) == len(partial) == 2
    return full + partial


def tiny_llama() -> Any:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=EOS + 1, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=CTX,
                                      attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(config).to(torch.float64)


def tokenizer() -> Any:
    """A tokenizer that knows only the EOS (the data is tokenized already; SFTTrainer wants a pad token)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    eos = "<|endoftext|>"
    return transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({eos: EOS}, unk_token=eos)),
                                                eos_token=eos, pad_token=eos)


def flat_grads(model: Any) -> Any:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def pieces_alone(rows: Any) -> tuple[float, Any, int]:
    """Loss, gradients and label count of every piece of ``rows`` run through the model on its own."""
    model = tiny_llama()
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for row in rows:
        start = 0
        for length in row["seq_lengths"]:
            piece = torch.tensor(row["input_ids"][start:start + length])
            start += length
            logits = model(input_ids=piece[None]).logits[0, :-1]
            total = total + torch.nn.functional.cross_entropy(logits, piece[1:], reduction="sum")
            count += length - 1
    loss = total / count
    loss.backward()
    return loss.item(), flat_grads(model), count


def harness_settings(tmp_path: Path) -> dict[str, Any]:
    """What the test adds to any config: float64 kept (no bf16 autocast), one step over the whole dataset, raw
    gradients (no clipping), nothing saved or reported."""
    return dict(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=ROWS, max_steps=1, bf16=False,
                use_cpu=True, max_grad_norm=0, report_to="none", save_strategy="no", disable_tqdm=True)


def sft_config(tmp_path: Path, **overrides: Any) -> Any:
    return trl.SFTConfig(**{**harness_settings(tmp_path), **overrides})


def recipe() -> dict[str, Any]:
    """The TRL recipe of docs/training.md, executed: its ``load_packed`` and ``sft_trainer``."""
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    section = text.split("## TRL padding-free", 1)[1].split("\n## ", 1)[0]
    [block] = [b for b in re.findall(r"```python\n(.*?)```", section, flags=re.S) if "def sft_trainer" in b]
    namespace: dict[str, Any] = {}
    exec(compile(block, "docs/training.md", "exec"), namespace)
    return namespace


def one_step(dataset: Any, config: Any) -> tuple[float, Any, dict[str, Any]]:
    """Loss and gradients of one SFTTrainer step, and the batch its collator made. ``config`` is an SFTConfig, or
    the settings to hand the docs' ``sft_trainer`` on top of its own."""
    model = tiny_llama()
    if isinstance(config, dict):
        trainer = recipe()["sft_trainer"](dataset, model, tokenizer(), **config)
    else:
        trainer = trl.SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer())
    batch = next(iter(trainer.get_train_dataloader()))
    grads: list[Any] = []

    class KeepGradients(transformers.TrainerCallback):  # type: ignore[misc]
        def on_pre_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
            grads.append(flat_grads(model).detach().clone())

    trainer.add_callback(KeepGradients())
    loss = trainer.train().training_loss
    return loss, grads[0], batch


def relative_error(found: Any, expected: Any) -> float:
    return float((torch.as_tensor(found) - torch.as_tensor(expected)).norm() / torch.as_tensor(expected).norm())


@pytest.mark.parametrize("name", ["no_pad", "no_pad_labels"])
def test_padding_free_step_equals_every_piece_alone(outputs: dict[str, Path], chosen: list[int], tmp_path: Path,
                                                    name: str) -> None:
    dataset = recipe()["load_packed"](outputs[name]).select(chosen)
    want_loss, want_grads, want_labels = pieces_alone(dataset)
    loss, grads, batch = one_step(dataset, harness_settings(tmp_path))  # the docs' SFTConfig
    assert relative_error(loss, want_loss) <= TOLERANCE
    assert relative_error(grads, want_grads) <= TOLERANCE
    # No glue was needed, and none happened: one flat row with no padding, positions restarting at every piece,
    # no label on a piece's first token, every other token (each EOS that ends a piece included) a label.
    labels, positions, ids = batch["labels"][0], batch["position_ids"][0], batch["input_ids"][0]
    assert batch["input_ids"].shape == (1, sum(sum(s) for s in dataset["seq_lengths"]))
    starts = torch.nonzero(positions == 0).flatten().tolist()
    segments = [b - a for a, b in zip(starts, [*starts[1:], len(positions)], strict=True)]
    assert sorted(segments) == sorted(n for s in dataset["seq_lengths"] for n in s)  # rows come in sampler order
    assert torch.equal(positions[1:][positions[1:] > 0], positions[:-1][positions[1:] > 0] + 1)
    assert torch.equal(labels == -100, positions == 0)
    assert torch.equal(labels[positions > 0], ids[positions > 0])
    eos = (ids == EOS) & (positions > 0)
    assert eos.sum() >= 4 and (labels[eos] == EOS).all()
    assert int((labels[1:] != -100).sum()) == want_labels


def test_todays_padded_output_breaks_padding_free(outputs: dict[str, Path], chosen: list[int],
                                                  tmp_path: Path) -> None:
    """Today's rows carry padding that seq_lengths do not cover: TRL's collator fails on the first such row."""
    dataset = load(outputs["today"]).select(chosen)
    with pytest.raises(IndexError):
        one_step(dataset, harness_settings(tmp_path))  # the docs' SFTConfig, on padded rows


@pytest.mark.parametrize(("name", "why"), [
    ("today", "padded rows under the default SFTConfig: documents attend to each other, padding is trained"),
    ("no_pad", "unpadded rows without padding_free: the documents of a row attend to each other"),
])
def test_the_obvious_ways_do_not_keep_documents_apart(outputs: dict[str, Path], chosen: list[int],
                                                      tmp_path: Path, name: str, why: str) -> None:
    dataset = load(outputs[name]).select(chosen)
    want_loss, want_grads, _ = pieces_alone(load(outputs["no_pad"]).select(chosen))
    loss, grads, _ = one_step(dataset, sft_config(tmp_path))
    assert relative_error(grads, want_grads) > 100 * TOLERANCE, why
    assert relative_error(loss, want_loss) > TOLERANCE, why  # small on a random model, whose loss is ~log(vocab)


def test_stock_datasets_gives_int64_training_columns(outputs: dict[str, Path]) -> None:
    dataset = load(outputs["no_pad_labels"])
    assert dataset.column_names == ["input_ids", "seq_lengths", "doc_index", "doc_offset", "position_ids", "labels"]
    assert dataset.features["input_ids"].feature.dtype == "int32"  # --dtype int32
    assert dataset.features["labels"].feature.dtype == dataset.features["position_ids"].feature.dtype == "int64"
    row = dataset.with_format("torch")[0]
    # datasets' torch format turns every integer column into int64, int32 ids included: what the loss needs.
    assert row["labels"].dtype == row["position_ids"].dtype == row["input_ids"].dtype == torch.int64
    assert len(row["labels"]) == len(row["input_ids"]) == int(row["seq_lengths"].sum())
