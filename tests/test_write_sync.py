"""Shards are flushed to the disk off the encoding threads, and every flush finishes before the first rename."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bestfit_cli import PackOptions, pack
from bestfit_cli.errors import OutputError
from bestfit_cli.write import ShardStager, ShardWriter

from .conftest import EOS


def corpus(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 1000, n).tolist() for n in rng.integers(1, 200, 300)]
    path = folder / "in.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(docs, type=pa.list_(pa.int32()))}), path)
    return path


OPTS = PackOptions(ctx=64, eos_id=EOS, rows_per_shard=100, workers=2)


def test_shards_are_flushed_on_the_sync_thread_before_any_rename(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    synced: dict[str, str] = {}
    original_sync, original_move = ShardStager.sync, ShardWriter._move

    def sync(self: ShardStager, path: str) -> None:
        original_sync(self, path)
        synced[os.path.basename(path)] = threading.current_thread().name

    def move(self: ShardWriter, name: str) -> None:
        shards = {n for n in os.listdir(self.tmp) if n.endswith(".parquet")}
        assert shards <= set(synced), f"renamed before its flush: {sorted(shards - set(synced))}"
        original_move(self, name)

    monkeypatch.setattr(ShardStager, "sync", sync)
    monkeypatch.setattr(ShardWriter, "_move", move)
    pack([str(corpus(tmp_path))], str(tmp_path / "out"), OPTS)
    shards = [n for n in synced if n.endswith(".parquet")]
    assert len(shards) > 2
    assert {synced[n] for n in shards} == {"bestfit-sync_0"}
    assert synced["manifest.json"] == threading.current_thread().name  # the journal is flushed in line


def test_a_failed_flush_is_an_error_naming_the_shard_and_out_is_left_as_it_was(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    original = ShardStager.sync

    def failing(self: ShardStager, path: str) -> None:
        if path.endswith(".parquet") and threading.current_thread().name.startswith("bestfit-sync"):
            raise OSError(errno.EIO, "Input/output error")
        original(self, path)

    monkeypatch.setattr(ShardStager, "sync", failing)
    out = tmp_path / "out"
    with pytest.raises(OutputError) as caught:
        pack([str(corpus(tmp_path))], str(out), OPTS)
    message = str(caught.value)
    assert "writing train-" in message and ".parquet failed" in message and "I/O error" in message
    assert not out.exists() or not any(out.iterdir())
