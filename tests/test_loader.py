"""The reader: real `bestfit pack` output of samples/ as batches, shuffled over all windows, even across ranks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bestfit_cli import PackOptions, pack
from bestfit_cli.errors import InputError, OptionError
from bestfit_cli.loader import PackedDataset
from bestfit_cli.training import IGNORE_INDEX, cu_seqlens, labels, position_ids, segments

from .conftest import EOS, SAMPLES

CTX = 512


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample packed at 512 tokens in 10 windows, 19 shards of at most 300 rows (one row group each)."""
    folder = tmp_path_factory.mktemp("loader") / "out"
    pack([str(SAMPLES)], str(folder), PackOptions(ctx=CTX, eos_id=EOS, window_tokens=200_000, rows_per_shard=300,
                                                  workers=1))
    return folder


def manifest_of(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    return data


def raw_rows(folder: Path) -> list[dict[str, Any]]:
    """Every row of the output, numbered as the reader's row_index numbers them, with its window."""
    rows = []
    for shard in manifest_of(folder)["shards"]:
        window = int(shard["path"].split("-")[1])
        for row in pq.read_table(folder / shard["path"]).to_pylist():
            rows.append({**row, "window": window})
    return rows


def row_order(ds: PackedDataset) -> list[int]:
    return [int(i) for batch in ds for i in batch["row_index"]]


def copy_output(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------------ the columns
def test_columns_are_the_rows_with_training_columns_from_training_py(out: Path) -> None:
    rows = raw_rows(out)
    ds = PackedDataset(str(out), batch_size=4, seed=5)
    seen = 0
    for batch in ds:
        for key in ("input_ids", "position_ids", "labels", "seq_lengths", "pieces_per_row", "row_index"):
            assert batch[key].dtype == np.int64, key
        assert batch["cu_seqlens"].dtype == np.int32
        assert batch["input_ids"].shape == (4, CTX)
        picked = [rows[i] for i in batch["row_index"]]
        pieces = np.array([n for r in picked for n in r["seq_lengths"]])
        offsets = np.concatenate([[0], np.cumsum([len(r["seq_lengths"]) for r in picked])])
        segs = segments(pieces, offsets, np.full(4, CTX))
        ids = np.array([r["input_ids"] for r in picked])
        assert (batch["input_ids"] == ids).all()
        assert (batch["position_ids"].ravel() == position_ids(segs)).all()
        assert (batch["labels"].ravel() == labels(ids.ravel(), segs)).all()
        assert (batch["cu_seqlens"] == cu_seqlens(segs)).all()
        assert batch["max_seqlen"] == int(np.diff(batch["cu_seqlens"]).max())
        assert batch["seq_lengths"].tolist() == pieces.tolist()
        assert batch["pieces_per_row"].tolist() == [len(r["seq_lengths"]) for r in picked]
        seen += 1
    assert seen == len(ds) == len(rows) // 4


def test_no_label_on_padding_or_across_a_boundary_and_every_eos_is_a_label(out: Path) -> None:
    batch = next(iter(PackedDataset(str(out), batch_size=16, seed=0)))
    pieces = np.split(batch["seq_lengths"], np.cumsum(batch["pieces_per_row"])[:-1])
    eos_seen = 0
    for ids, labs, lengths in zip(batch["input_ids"], batch["labels"], pieces, strict=True):
        at = 0
        for n in lengths:
            assert labs[at] == IGNORE_INDEX  # predicting it would cross from the previous piece
            assert (labs[at + 1:at + n] == ids[at + 1:at + n]).all()
            eos_seen += int(ids[at + n - 1] == EOS and labs[at + n - 1] == EOS)
            at += n
        assert (labs[at:] == IGNORE_INDEX).all()  # padding
    assert eos_seen > 0


# --------------------------------------------------------------------------------------------- order and split
def test_same_seed_same_order_new_epoch_or_seed_new_order(out: Path) -> None:
    first = row_order(PackedDataset(str(out), batch_size=8, seed=1))
    assert first == row_order(PackedDataset(str(out), batch_size=8, seed=1))
    assert first != row_order(PackedDataset(str(out), batch_size=8, seed=2))
    ds = PackedDataset(str(out), batch_size=8, seed=1)
    ds.set_epoch(1)
    second = row_order(ds)
    assert second != first and sorted(second) == sorted(first)
    ds.set_epoch(0)
    assert row_order(ds) == first


def test_without_shuffle_rows_come_in_output_order(out: Path) -> None:
    ds = PackedDataset(str(out), batch_size=8, shuffle=False)
    assert row_order(ds) == list(range(len(ds) * 8))


WINDOW_OF: dict[Path, list[int]] = {}


def windows_of(folder: Path) -> list[int]:
    if folder not in WINDOW_OF:
        WINDOW_OF[folder] = [r["window"] for r in raw_rows(folder)]
    return WINDOW_OF[folder]


@pytest.mark.parametrize("shuffle_rows", [600, 8192])
def test_windows_are_mixed(out: Path, shuffle_rows: int) -> None:
    window = windows_of(out)
    n_windows = len(set(window))
    assert n_windows >= 8  # the fixture really has many windows
    ds = PackedDataset(str(out), batch_size=32, seed=0, shuffle_rows=shuffle_rows)
    order = row_order(ds)
    batches = [[window[i] for i in order[k:k + 32]] for k in range(0, len(order), 32)]
    # bestfit's shards come window after window (all code, then all prose, ...); in the reader's stream the window
    # of a row no longer follows its position, and every batch draws from more than one window.
    assert abs(np.corrcoef(np.arange(len(order)), [window[i] for i in order])[0, 1]) < 0.5
    assert all(len(set(b)) >= 2 for b in batches)
    if shuffle_rows >= len(window):  # one block holds the whole output: the first tenth reaches most windows
        assert len({w for b in batches[: len(batches) // 10] for w in b}) >= n_windows // 2
    # The control: in output order, the window follows the position and a batch comes from one or two windows.
    plain = row_order(PackedDataset(str(out), batch_size=32, shuffle=False))
    assert np.corrcoef(np.arange(len(plain)), [window[i] for i in plain])[0, 1] > 0.95


def test_ranks_get_equal_disjoint_parts_and_the_remainder_is_counted(out: Path) -> None:
    total = len(windows_of(out))
    parts = [row_order(PackedDataset(str(out), batch_size=7, seed=3, rank=r, world_size=3)) for r in range(3)]
    ds = PackedDataset(str(out), batch_size=7, seed=3, rank=0, world_size=3)
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(ds) * 7
    flat = [i for p in parts for i in p]
    assert len(set(flat)) == len(flat)
    assert ds.dropped_rows == total - len(flat) == total % 21
    assert set(flat) <= set(range(total))


def test_resume_after_k_batches_continues_exactly(out: Path) -> None:
    whole = [b["row_index"].tolist() for b in PackedDataset(str(out), batch_size=8, seed=4)]
    ds = PackedDataset(str(out), batch_size=8, seed=4)
    ds.set_epoch(0)
    it = iter(ds)
    head = [next(it)["row_index"].tolist() for _ in range(13)]
    state = json.loads(json.dumps(ds.state_dict()))  # it survives a checkpoint file
    assert state["batches"] == 13
    fresh = PackedDataset(str(out), batch_size=8, seed=4)
    fresh.load_state_dict(state)
    rest = [b["row_index"].tolist() for b in fresh]
    assert head + rest == whole


def test_resume_in_a_later_epoch(out: Path) -> None:
    ds = PackedDataset(str(out), batch_size=8, seed=4)
    ds.set_epoch(2)
    whole = [b["row_index"].tolist() for b in ds]
    ds.set_epoch(2)
    it = iter(ds)
    for _ in range(5):
        next(it)
    fresh = PackedDataset(str(out), batch_size=8, seed=4)
    fresh.load_state_dict(ds.state_dict())
    assert [b["row_index"].tolist() for b in fresh] == whole[5:]


# --------------------------------------------------------------------------------------------- rows as written
def rewrite_shards(folder: Path, change: Any) -> None:
    """Rewrite each shard's table with change(table) (row groups of 1,024 rows, as pack writes them)."""
    for shard in manifest_of(folder)["shards"]:
        path = folder / shard["path"]
        pq.write_table(change(pq.read_table(path)), path, row_group_size=1024)


def unpad(table: pa.Table) -> pa.Table:
    rows = table.to_pylist()
    ids = [r["input_ids"][:sum(r["seq_lengths"])] for r in rows]
    return table.set_column(0, "input_ids", pa.array(ids, type=pa.list_(pa.int32())))


def test_rows_of_varying_length_are_padded_to_the_longest_of_the_batch(out: Path, tmp_path: Path) -> None:
    folder = copy_output(out, tmp_path / "unpadded")
    rewrite_shards(folder, unpad)
    rows = raw_rows(folder)
    pad = manifest_of(folder)["options"]["pad_id"]
    lengths = {len(r["input_ids"]) for r in rows}
    assert len(lengths) > 1
    for batch in PackedDataset(str(folder), batch_size=6, seed=0):
        picked = [rows[i] for i in batch["row_index"]]
        width = max(len(r["input_ids"]) for r in picked)
        assert batch["input_ids"].shape == (6, width)
        for ids, pos, labs, row in zip(batch["input_ids"], batch["position_ids"], batch["labels"], picked,
                                       strict=True):
            n = len(row["input_ids"])
            alone = segments(np.array(row["seq_lengths"]), np.array([0, len(row["seq_lengths"])]), np.array([n]))
            assert ids[:n].tolist() == row["input_ids"] and (ids[n:] == pad).all()
            assert (pos[:n] == position_ids(alone)).all() and (pos[n:] == np.arange(width - n)).all()
            assert (labs[:n] == labels(np.array(row["input_ids"]), alone)).all() and (labs[n:] == IGNORE_INDEX).all()
        assert batch["cu_seqlens"][-1] == 6 * width


def test_training_columns_written_in_the_shards_are_read_not_recomputed(out: Path, tmp_path: Path) -> None:
    folder = copy_output(out, tmp_path / "with-columns")

    def add_columns(table: pa.Table) -> pa.Table:
        n = table.num_rows
        marked = [[7] * CTX] * n  # values training.py would never compute: only reading them gives these
        table = table.append_column("position_ids", pa.array([[3] * CTX] * n, type=pa.list_(pa.int32())))
        return table.append_column("labels", pa.array(marked, type=pa.list_(pa.int64())))

    rewrite_shards(folder, add_columns)
    batch = next(iter(PackedDataset(str(folder), batch_size=4)))
    assert (batch["labels"] == 7).all() and (batch["position_ids"] == 3).all()
    assert batch["labels"].dtype == np.int64 and batch["position_ids"].dtype == np.int64


# ------------------------------------------------------------------------------------------------- bad input
def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_folder_without_a_manifest_is_refused(out: Path, tmp_path: Path) -> None:
    folder = copy_output(out, tmp_path / "unfinished")
    (folder / "manifest.json").unlink()
    with pytest.raises(InputError) as exc:
        PackedDataset(str(folder), batch_size=4)
    assert "no manifest.json" in one_line(exc) and str(folder) in one_line(exc)


def test_a_manifest_of_another_format_is_refused(out: Path, tmp_path: Path) -> None:
    folder = copy_output(out, tmp_path / "other")
    manifest = manifest_of(folder)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format": "something.else"}))
    with pytest.raises(InputError) as exc:
        PackedDataset(str(folder), batch_size=4)
    assert "bestfit.packed" in one_line(exc)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        PackedDataset(str(folder), batch_size=4)
    (folder / "manifest.json").write_text('{"format": "bestfit.packed", "shards": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(InputError, match="not valid JSON .nested deeper than 512 levels"):  # not a RecursionError
        PackedDataset(str(folder), batch_size=4)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "options": {**manifest["options"],
                                                                               "format": "megatron"}}))
    with pytest.raises(InputError, match="'megatron' shards"):
        PackedDataset(str(folder), batch_size=4)


def test_a_missing_or_short_shard_is_refused(out: Path, tmp_path: Path) -> None:
    folder = copy_output(out, tmp_path / "missing")
    shard = manifest_of(folder)["shards"][3]["path"]
    table = pq.read_table(folder / shard)
    (folder / shard).unlink()
    with pytest.raises(InputError) as exc:
        PackedDataset(str(folder), batch_size=4)
    assert shard in one_line(exc) and "missing" in one_line(exc)
    pq.write_table(table.slice(0, 10), folder / shard)
    with pytest.raises(InputError, match=f"{shard}: holds 10 rows"):
        PackedDataset(str(folder), batch_size=4)


def test_batch_sizes_that_cannot_work_are_refused(out: Path) -> None:
    with pytest.raises(OptionError) as exc:
        PackedDataset(str(out), global_batch_size=9, world_size=2, rank=0)
    assert "does not divide across 2 ranks" in one_line(exc)
    with pytest.raises(OptionError, match="cannot give each of 2 rank"):
        PackedDataset(str(out), batch_size=4000, world_size=2, rank=1)
    with pytest.raises(OptionError, match="exactly one of"):
        PackedDataset(str(out))
    with pytest.raises(OptionError, match="rank=2"):
        PackedDataset(str(out), batch_size=4, world_size=2, rank=2)
    assert PackedDataset(str(out), global_batch_size=8, world_size=2, rank=0).batch_size == 4


def test_a_state_of_another_reader_is_refused(out: Path) -> None:
    state = PackedDataset(str(out), batch_size=8, seed=1).state_dict()
    with pytest.raises(OptionError) as exc:
        PackedDataset(str(out), batch_size=8, seed=2).load_state_dict(state)
    assert "seed=1" in one_line(exc)
    with pytest.raises(OptionError, match="batches=10000"):
        PackedDataset(str(out), batch_size=8, seed=1).load_state_dict({**state, "batches": 10_000})


# ------------------------------------------------------------------------------------------------------ torch
def loader_order(loader: Any) -> list[list[int]]:
    return [batch["row_index"].tolist() for batch in loader]


def test_two_ranks_two_workers_see_disjoint_complete_equal_parts(out: Path) -> None:
    pytest.importorskip("torch")
    from bestfit_cli.loader import PackedLoader

    total = len(windows_of(out))
    parts = []
    for rank in range(2):
        ds = PackedDataset(str(out), batch_size=40, seed=9, rank=rank, world_size=2)
        batches = loader_order(PackedLoader(ds, num_workers=2))
        assert len(batches) == len(ds)
        # Whatever the number of workers, a rank's batches come in the same order as read in one process.
        assert batches == loader_order(PackedDataset(str(out), batch_size=40, seed=9, rank=rank, world_size=2))
        parts.append([i for b in batches for i in b])
    assert len(parts[0]) == len(parts[1])
    assert not set(parts[0]) & set(parts[1])
    assert len(set(parts[0] + parts[1])) + ds.dropped_rows == total
    assert ds.dropped_rows == total % 80 > 0


def test_torch_batches_are_int64_tensors(out: Path) -> None:
    torch = pytest.importorskip("torch")
    from bestfit_cli.loader import PackedLoader

    batch = next(iter(PackedLoader(PackedDataset(str(out), batch_size=4), num_workers=1)))
    for key in ("input_ids", "position_ids", "labels", "seq_lengths"):
        assert isinstance(batch[key], torch.Tensor) and batch[key].dtype == torch.int64, key
    assert batch["cu_seqlens"].dtype == torch.int32
    assert batch["input_ids"].shape == (4, CTX)


@pytest.mark.parametrize("workers_after", [0, 1, 2])
def test_resume_with_workers_continues_exactly(out: Path, workers_after: int) -> None:
    pytest.importorskip("torch")
    from bestfit_cli.loader import PackedLoader

    whole = loader_order(PackedDataset(str(out), batch_size=48, seed=2))
    loader = PackedLoader(PackedDataset(str(out), batch_size=48, seed=2), num_workers=2)
    head = []
    for batch in loader:
        head.append(batch["row_index"].tolist())
        if len(head) == 11:
            break
    state = loader.state_dict()
    assert state["batches"] == 11
    resumed = PackedLoader(PackedDataset(str(out), batch_size=48, seed=2), num_workers=workers_after)
    resumed.load_state_dict(state)
    assert head + loader_order(resumed) == whole
    assert loader_order(resumed) == whole  # the next iteration is a whole epoch again


def test_the_iterable_dataset_works_in_a_plain_dataloader(out: Path) -> None:
    torch = pytest.importorskip("torch")

    ds = PackedDataset(str(out), batch_size=48, seed=2)
    assert isinstance(ds.torch(), torch.utils.data.IterableDataset)
    plain = loader_order(torch.utils.data.DataLoader(ds.torch(), batch_size=None, num_workers=2))
    assert plain == loader_order(PackedDataset(str(out), batch_size=48, seed=2))


# ------------------------------------------------------------------------------------------------------- docs
TRAINING_DOC = Path(__file__).resolve().parent.parent / "docs" / "training.md"


def reader_section() -> str:
    """The reader's section of docs/training.md (tests/test_training_docs.py runs its example)."""
    text = TRAINING_DOC.read_text(encoding="utf-8")
    start = text.index("## Plain PyTorch: the bestfit reader")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_the_docs_describe_every_batch_key(out: Path) -> None:
    batch = next(iter(PackedDataset(str(out), batch_size=2)))
    section = reader_section()
    missing = [key for key in batch if f"| `{key}` |" not in section]
    assert not missing, f"docs/training.md does not describe batch keys {missing}"
