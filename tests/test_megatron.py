"""``--format megatron`` read by megatron-core itself, and trained on document-masked (docs/training.md#megatron).

megatron-core's ``IndexedDataset`` reads our shards back token-identical to the Parquet output of the same run;
its ``GPTDataset`` with the documented ``GPTDatasetConfig`` gives every row exactly once, one row per sample, with
labels only inside pieces; and the loss and gradients of a packed batch built from its samples equal those of
running every piece alone through a tiny Llama. With the default ``add_extra_token_to_sequence=True`` they do not.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("megatron.core", reason="megatron-core is not installed (pip install -e '.[train]')")
torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[train]')")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[train]')")

from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder  # noqa: E402
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig  # noqa: E402
from megatron.core.datasets.indexed_dataset import IndexedDataset  # noqa: E402
from megatron.core.tokenizers import MegatronTokenizerBase  # noqa: E402

from bestfit_cli import PackOptions, pack  # noqa: E402
from bestfit_cli.training import IGNORE_INDEX, labels, position_ids, segments  # noqa: E402

from .conftest import EOS, ROOT, SAMPLES  # noqa: E402
from .synthetic import documents, write_jsonl  # noqa: E402

CTX = 512
PAD = 100258  # cl100k's <|fim_prefix|>: in no document of the sample, and not the EOS id
VOCAB = 512  # the tiny model's vocabulary: ids are folded into it, the same way on both sides of a comparison


class Tokenizer(MegatronTokenizerBase):
    """What GPTDataset asks of a tokenizer: the EOD and pad ids (and an identity for its index cache)."""

    def __init__(self, eod: int, pad: int) -> None:
        self.eod, self.pad = eod, pad

    def tokenize(self) -> None: ...
    def detokenize(self) -> None: ...
    def vocab(self) -> None: ...
    def apply_chat_template(self) -> None: ...

    @property
    def vocab_size(self) -> int:
        return 100_352

    @property
    def unique_identifiers(self) -> OrderedDict[str, Any]:
        return OrderedDict(cls="bestfit-test", eod=self.eod, pad=self.pad)


def documented_config(prefixes: list[str], cache: Path, **overrides: Any) -> GPTDatasetConfig:
    """docs/training.md's GPTDatasetConfig, exactly."""
    settings: dict[str, Any] = dict(
        random_seed=1234, sequence_length=CTX, blend=(prefixes, None), split="100,0,0", path_to_cache=str(cache),
        tokenizer=Tokenizer(eod=EOS, pad=PAD), add_extra_token_to_sequence=False,
        reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=True, create_attention_mask=True)
    settings.update(overrides)
    return GPTDatasetConfig(**settings)


def train_split(config: GPTDatasetConfig) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BlendedMegatronDatasetBuilder(GPTDataset, [None, None, None], lambda: True, config).build()[0]


@pytest.fixture(scope="module", autouse=True)
def process_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """megatron-core's BlendedDataset asks torch.distributed for the rank, as in any Megatron run."""
    if not torch.distributed.is_initialized():
        store = tmp_path_factory.mktemp("pg") / "store"
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The shipped sample packed as Parquet and as Megatron by the same run options (several shards)."""
    root = tmp_path_factory.mktemp("megatron-core")
    for fmt in ("parquet", "megatron"):
        pack([str(SAMPLES)], str(root / fmt), PackOptions(ctx=CTX, eos_id=EOS, pad_id=PAD, rows_per_shard=1000,
                                                          format=fmt))
    return root / "parquet", root / "megatron"


def shards(out: Path) -> list[str]:
    return [s["path"] for s in json.loads((out / "manifest.json").read_text())["shards"]]


def prefixes(out: Path) -> list[str]:
    """The Megatron path prefixes of an output, in manifest order (docs/training.md#megatron)."""
    return [str(out / name.removesuffix(".bin")) for name in shards(out)]


def parquet_rows(out: Path) -> tuple[np.ndarray, list[list[int]]]:
    """Every row of a Parquet output (ctx tokens each) and its seq_lengths, in manifest order."""
    tokens, lengths = [], []
    for name in shards(out):
        table = pq.read_table(out / name).to_pydict()
        tokens.extend(table["input_ids"])
        lengths.extend(table["seq_lengths"])
    return np.array(tokens, dtype=np.int64), lengths


def expected_masks(row: np.ndarray, seq_lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """bestfit's own training columns, in Megatron's convention: which positions carry a label, and positions.

    ``training.labels`` marks the tokens that are labels (Hugging Face's shifted convention); in Megatron's the
    label of position t is token t + 1, so position t trains exactly when token t + 1 is a label.
    """
    segs = segments(np.array(seq_lengths), np.array([0, len(seq_lengths)]), np.array([CTX]))
    hf_labels = labels(row, segs)
    trains = np.zeros(CTX, dtype=bool)
    trains[:-1] = hf_labels[1:] != IGNORE_INDEX
    return trains, position_ids(segs)


# ------------------------------------------------------------------------------------------------ IndexedDataset


def test_indexed_dataset_reads_the_parquet_rows(outputs: tuple[Path, Path]) -> None:
    parquet, megatron = outputs
    rows, _ = parquet_rows(parquet)
    read = []
    for prefix in prefixes(megatron):
        dataset = IndexedDataset(prefix)
        assert dataset.index.dtype == np.int32  # cl100k ids need more than uint16
        assert dataset.document_indices.tolist() == list(range(len(dataset) + 1))  # one row per document
        assert (dataset.sequence_lengths == CTX).all()
        # Copies: IndexedDataset's items are views of its memory map, which it closes when it is freed.
        read.extend(np.array(dataset[i]) for i in range(len(dataset)))
    assert np.array_equal(np.array(read, dtype=np.int64), rows)


def test_indexed_dataset_reads_uint16_shards(tmp_path: Path) -> None:
    docs = documents([40, 300, 700, 90, 20], seed=4, high=60_000)
    source = write_jsonl(tmp_path / "in.jsonl", docs)
    pack([str(source)], str(tmp_path / "out"), PackOptions(ctx=256, eos_id=65_535, pad_id=65_534, format="megatron"))
    dataset = IndexedDataset(prefixes(tmp_path / "out")[0])
    assert dataset.index.dtype == np.uint16
    stream = np.concatenate([dataset[i][dataset[i] != 65_534] for i in range(len(dataset))])
    assert sorted(stream.tolist()) == sorted([t for doc in docs for t in doc] + [65_535] * len(docs))


# ------------------------------------------------------------------------------------------------ GPTDataset


def row_of_each_sample(dataset: Any, rows: np.ndarray) -> np.ndarray:
    """Which of our rows each sample of ``dataset`` holds (-1 for none), found by its tokens."""
    # GPTDataset hands padding to the model as id 0: the rows as they reach the model.
    as_fed = np.where(rows == PAD, 0, rows)
    row_of = {as_fed[r].tobytes(): r for r in range(len(rows))}
    assert len(row_of) == len(rows)
    return np.array([row_of.get(dataset[i]["tokens"].numpy().tobytes(), -1) for i in range(len(dataset))])


def test_docs_give_this_config() -> None:
    page = (ROOT / "docs" / "training.md").read_text()
    block = page.split("config = GPTDatasetConfig(", 1)[1].split("\n)\n", 1)[0]
    given = dict(re.findall(r"^\s+(\w+)=(.+?),\s*(?:#.*)?$", block, flags=re.M))
    config = documented_config(["unused"], Path("unused"))
    for key in ("add_extra_token_to_sequence", "reset_position_ids", "reset_attention_mask", "eod_mask_loss",
                "create_attention_mask", "split", "random_seed", "sequence_length"):
        assert ast.literal_eval(given[key]) == getattr(config, key), key
    assert given["blend"] == "(prefixes, None)"


@pytest.mark.parametrize("asked", [1, 2])
def test_unweighted_prefixes_give_one_epoch_each_row_once(outputs: tuple[Path, Path], tmp_path: Path,
                                                          asked: int) -> None:
    # Megatron-LM asks for train_iters * global_batch_size samples; unweighted prefixes still give one epoch.
    parquet, megatron = outputs
    rows, _ = parquet_rows(parquet)
    config = documented_config(prefixes(megatron), tmp_path / "cache", create_attention_mask=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = BlendedMegatronDatasetBuilder(GPTDataset, [asked * len(rows), None, None], lambda: True,
                                                config).build()[0]
    assert np.array_equal(np.sort(row_of_each_sample(dataset, rows)), np.arange(len(rows)))


def test_gpt_dataset_yields_every_row_once_with_labels_only_inside_pieces(outputs: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    parquet, megatron = outputs
    rows, lengths = parquet_rows(parquet)
    # The attention mask is left out of this scan only for speed (40 ms a sample); it changes none of the fields
    # checked here, and the training tests below use it.
    dataset = train_split(documented_config(prefixes(megatron), tmp_path / "cache", create_attention_mask=False))
    assert len(dataset) == len(rows)
    sample_rows = row_of_each_sample(dataset, rows)
    assert np.array_equal(np.sort(sample_rows), np.arange(len(rows)))  # every row once, one row a sample
    eos_labels = expected_eos_labels = padded_rows = 0
    for i, r in enumerate(sample_rows.tolist()):
        sample = dataset[i]
        trains, positions = expected_masks(rows[r], lengths[r])
        loss_mask = sample["loss_mask"].numpy() > 0
        assert np.array_equal(loss_mask, trains), f"row {r}: labels outside its pieces or a piece's label missing"
        assert np.array_equal(sample["position_ids"].numpy(), positions)
        sample_labels = sample["labels"].numpy()[loss_mask]
        assert np.array_equal(sample_labels, rows[r][1:][loss_mask[:-1]])
        eos_labels += int((sample_labels == EOS).sum())
        expected_eos_labels += int((rows[r][1:][trains[:-1]] == EOS).sum())
        padded_rows += int(sum(lengths[r]) < CTX)
    assert padded_rows and padded_rows < len(rows)  # rows with padding and rows without
    # Every real EOS is a label, except one that is a piece by itself (a document's last piece can be only its
    # EOS): nothing precedes it, alone or packed.
    starts = np.concatenate([np.cumsum([0, *piece[:-1]]) for piece in lengths])
    piece_rows = np.repeat(np.arange(len(rows)), [len(piece) for piece in lengths])
    lone_eos = int(((np.concatenate(lengths) == 1) & (rows[piece_rows, starts] == EOS)).sum())
    assert eos_labels == expected_eos_labels == int((rows == EOS).sum()) - lone_eos
    assert eos_labels >= 849  # of the sample's 850 documents


# ------------------------------------------------------------------------------------------------ training


def tiny_llama() -> Any:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CTX,
                                      attn_implementation="sdpa")
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).double()


def chosen_rows(rows: np.ndarray, lengths: list[list[int]]) -> list[int]:
    """A row of several pieces with padding, one of several pieces without, and a row that is one piece of a
    longer document (it ends without EOS: the row after it in Megatron's stream is another document)."""
    full = [sum(piece) == CTX for piece in lengths]
    several_padded = next(r for r in range(len(rows)) if len(lengths[r]) > 2 and not full[r])
    several_full = next(r for r in range(len(rows)) if len(lengths[r]) > 2 and full[r])
    chunk = next(r for r in range(len(rows)) if len(lengths[r]) == 1 and rows[r][-1] != EOS)
    return [several_padded, several_full, chunk]


def samples_of(config: GPTDatasetConfig, rows: np.ndarray, wanted: list[int]) -> list[dict[str, Any]]:
    """The samples of ``config``'s train split that hold the rows ``wanted``, attention mask included."""
    scan = train_split(dataclasses.replace(config, create_attention_mask=False))
    sample_rows = row_of_each_sample(scan, rows)
    dataset = train_split(config)
    return [dataset[int(np.flatnonzero(sample_rows == r)[0])] for r in wanted]


def packed_loss(model: Any, batch: list[dict[str, Any]]) -> tuple[Any, list[Any]]:
    """Loss and gradients of one packed batch, as Megatron trains it: its tokens, position_ids and attention_mask
    in, cross-entropy on its labels weighted by its loss_mask."""
    tokens = torch.stack([s["tokens"] for s in batch]) % VOCAB
    target = torch.stack([s["labels"] for s in batch]) % VOCAB
    loss_mask = torch.stack([s["loss_mask"] for s in batch]).double()
    masked = torch.stack([s["attention_mask"] for s in batch])  # (B, 1, ctx, ctx), True where attention is cut
    additive = torch.zeros(masked.shape, dtype=torch.float64).masked_fill(masked, torch.finfo(torch.float64).min)
    positions = torch.stack([s["position_ids"] for s in batch])
    model.zero_grad()
    logits = model(input_ids=tokens, position_ids=positions, attention_mask=additive, use_cache=False).logits
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), reduction="none")
    loss = (ce * loss_mask.reshape(-1)).sum() / loss_mask.sum()
    loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in model.parameters()]


def pieces_alone_loss(model: Any, rows: np.ndarray, lengths: list[list[int]], wanted: list[int]
                      ) -> tuple[Any, list[Any]]:
    """Loss and gradients of the same rows' pieces, each run through the model alone (no padding, no mask)."""
    model.zero_grad()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for r in wanted:
        start = 0
        for length in lengths[r]:
            ids = torch.from_numpy(rows[r][start:start + length] % VOCAB)[None]
            start += length
            if length < 2:
                continue
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
            total = total + torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
            count += length - 1
    loss = total / count
    loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in model.parameters()]


def relative_errors(packed: tuple[Any, list[Any]], alone: tuple[Any, list[Any]]) -> tuple[float, float]:
    loss_error = float(abs(packed[0] - alone[0]) / abs(alone[0]))
    diff = torch.cat([(a - b).flatten() for a, b in zip(packed[1], alone[1], strict=True)])
    norm = torch.cat([b.flatten() for b in alone[1]])
    return loss_error, float(diff.norm() / norm.norm())


@pytest.fixture(scope="module")
def training_inputs(outputs: tuple[Path, Path]) -> tuple[np.ndarray, list[list[int]], list[int]]:
    rows, lengths = parquet_rows(outputs[0])
    return rows, lengths, chosen_rows(rows, lengths)


def test_documented_config_trains_every_piece_as_if_alone(outputs: tuple[Path, Path], tmp_path: Path,
                                                          training_inputs: Any) -> None:
    rows, lengths, wanted = training_inputs
    batch = samples_of(documented_config(prefixes(outputs[1]), tmp_path / "cache"), rows, wanted)
    model = tiny_llama()
    loss_error, grad_error = relative_errors(packed_loss(model, batch),
                                             pieces_alone_loss(model, rows, lengths, wanted))
    assert loss_error <= 1e-5 and grad_error <= 1e-5, (loss_error, grad_error)


def test_default_add_extra_token_trains_across_rows(outputs: tuple[Path, Path], tmp_path: Path,
                                                    training_inputs: Any) -> None:
    # GPTDatasetConfig's default draws ctx + 1 tokens a sample: the last label of a row is the next row's first
    # token, from another document. The same comparison then fails.
    rows, lengths, wanted = training_inputs
    config = documented_config(prefixes(outputs[1]), tmp_path / "cache", add_extra_token_to_sequence=True)
    # and one row of every shard (every prefix) is never trained
    assert len(train_split(dataclasses.replace(config, create_attention_mask=False))) \
        == len(rows) - len(prefixes(outputs[1]))
    model = tiny_llama()
    loss_error, grad_error = relative_errors(packed_loss(model, samples_of(config, rows, wanted)),
                                             pieces_alone_loss(model, rows, lengths, wanted))
    # One extra label among ~1,500 moves the loss little (measured: 5e-6) but the gradients a lot (2e-2).
    assert not (loss_error <= 1e-5 and grad_error <= 1e-5), (loss_error, grad_error)
    assert grad_error > 1e-3, grad_error


def test_the_index_cache_ignores_add_extra_token(outputs: tuple[Path, Path], tmp_path: Path) -> None:
    # Why docs/training.md asks for a fresh --data-cache-path: megatron-core's cache key leaves the flag out, so an
    # index built with the default is silently reused under add_extra_token_to_sequence=False.
    megatron = outputs[1]
    n_rows = sum(IndexedDataset(p).sequence_lengths.shape[0] for p in prefixes(megatron))
    short = n_rows - len(prefixes(megatron))  # the default loses a row per prefix
    shared = tmp_path / "shared-cache"
    assert len(train_split(documented_config(prefixes(megatron), shared, add_extra_token_to_sequence=True))) == short
    assert len(train_split(documented_config(prefixes(megatron), shared))) == short  # the stale index
    assert len(train_split(documented_config(prefixes(megatron), tmp_path / "fresh"))) == n_rows
