"""What the training tests share: real packed output of the shipped sample, a tiny Llama, and the proof that a packed
batch trains exactly like its pieces run one at a time.

The proof: the mean next-token loss of a packed batch, and its gradient with respect to every parameter, equal
those of running every piece alone (each piece predicts its own tokens after the first). That holds only when
positions restart per piece, attention stays inside a piece, no label crosses a boundary and padding carries no
loss, so a relative error of a few 1e-16 in float64 says documents are masked, and anything above 1e-5 says not.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from click.testing import CliRunner

from bestfit_cli.cli import cli

from .conftest import EOS, ROOT

VOCAB = EOS + 1  # cl100k ids and the end-of-text id 100257
TOLERANCE = 1e-5


def run_pack(command: str, cwd: Path) -> Path:
    """Run a documented ``bestfit pack ...`` command line inside ``cwd`` (``samples/`` is the shipped sample) and
    return OUT."""
    args = shlex.split(command)
    assert args[:2] == ["bestfit", "pack"], command
    args = args[2:]
    args[:2] = [str(ROOT / args[0]), str(cwd / args[1])]  # IN (samples/) and OUT, positional first
    result = CliRunner().invoke(cli, ["pack", *args, "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return Path(args[1])


def shard_rows(out: Path) -> list[dict[str, Any]]:
    return [row for shard in sorted(out.glob("*.parquet")) for row in pq.read_table(shard).to_pylist()]


def sample_batch(rows: list[dict[str, Any]], ctx: int) -> list[int]:
    """Indices of four rows of several pieces each: two with padding, two without."""
    padded = [i for i, r in enumerate(rows) if len(r["seq_lengths"]) > 1 and sum(r["seq_lengths"]) < ctx]
    full = [i for i, r in enumerate(rows) if len(r["seq_lengths"]) > 1 and sum(r["seq_lengths"]) == ctx]
    assert len(padded) >= 2 and len(full) >= 2, "the sample no longer gives padded and full rows of several pieces"
    return padded[:2] + full[:2]


def tiny_llama(attn_implementation: str = "sdpa", dtype: Any = None) -> Any:
    """A two-layer Llama over the whole cl100k vocabulary, from a config (nothing downloaded), seeded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         attn_implementation=attn_implementation)
    return LlamaForCausalLM(config).to(dtype or torch.float64)


def gradient(model: Any) -> Any:
    import torch

    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def loss_and_gradient(model: Any, **batch: Any) -> tuple[float, Any]:
    """The model's own loss on ``batch`` and its gradient."""
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return float(loss.detach()), gradient(model)


def pieces_alone(model: Any, rows: list[dict[str, Any]]) -> tuple[float, Any]:
    """Loss and gradient of running every piece of ``rows`` as its own sequence: each predicts its tokens after its
    first, and the mean is over all those predictions."""
    import torch

    model.zero_grad()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for row in rows:
        start = 0
        for length in row["seq_lengths"]:
            piece = torch.tensor(row["input_ids"][start:start + length], dtype=torch.long)[None]
            start += length
            if length < 2:
                continue
            loss = model(input_ids=piece, labels=piece, use_cache=False).loss
            total = total + loss * (length - 1)
            count += length - 1
    loss = total / count
    loss.backward()
    return float(loss.detach()), gradient(model)


def relative_errors(got: tuple[float, Any], want: tuple[float, Any]) -> tuple[float, float]:
    """Relative error of the loss, and of the gradient as one vector (Euclidean norm)."""
    loss_error = abs(got[0] - want[0]) / abs(want[0])
    grad_error = float((got[1] - want[1]).norm() / want[1].norm())
    return loss_error, grad_error
