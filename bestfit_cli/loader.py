"""Load: a packed output folder as training batches, shuffled globally, split evenly across ranks and workers.

``PackedDataset`` reads the shards of a finished ``bestfit pack`` output (local or any URI ``fs.filesystem_for``
opens, such as ``s3://``) and yields batches of numpy arrays; ``PackedDataset.torch()`` wraps it as a
``torch.utils.data.IterableDataset`` and ``PackedLoader`` is a ``DataLoader`` that remembers how far it got.
Training columns come from ``training.py`` (or from the shards, when they were written with them).

The order of an epoch is a pure function of (seed, epoch) and the output's row groups:

1. every row group of every shard, of every window, is put in a random order (the whole output is mixed, not
   one window after another);
2. consecutive row groups are grouped into *blocks* of at least ``shuffle_rows`` rows, and the rows of each block
   are permuted: this is the only part held in memory;
3. the resulting stream of rows is cut after the largest multiple of ``world_size * batch_size`` rows (the rest is
   dropped for this epoch and counted in ``dropped_rows``), then into ``world_size`` equal contiguous parts, one per
   rank, and each part into batches of ``batch_size`` rows;
4. a rank's DataLoader worker ``w`` of ``W`` yields that rank's batches ``k + w, k + w + W, ...`` (``k`` the resume
   point), so the DataLoader, which takes one batch from each worker in turn, delivers them in order whatever ``W``.
"""

from __future__ import annotations

import posixpath
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import training
from .errors import InputError, OptionError
from .formats.json_depth import loads
from .formats.parquet_footer import FooterError
from .formats.parquet_footer import check_file as check_footer_file
from .fs import filesystem_for, storage_error
from .write import MANIFEST

MANIFEST_FORMAT = "bestfit.packed"
READABLE_FORMATS = ("parquet",)
DEFAULT_SHUFFLE_ROWS = 8192
STATE_VERSION = 1
Batch = dict[str, Any]


@dataclass(frozen=True)
class RowGroups:
    """Every row group of an output, in manifest order: group ``g`` is row group ``index[g]`` of shard
    ``shard[g]`` and holds ``rows[g]`` rows."""

    shard: np.ndarray  # int64
    index: np.ndarray  # int64
    rows: np.ndarray  # int64

    @property
    def first_row(self) -> np.ndarray:
        """Each row group's first row, numbered over the whole output."""
        return np.concatenate([[0], np.cumsum(self.rows)[:-1]]).astype(np.int64)

    @property
    def total_rows(self) -> int:
        return int(self.rows.sum())


@dataclass(frozen=True)
class EpochOrder:
    """The row groups of one epoch in stream order, cut into blocks: block ``b`` is ``groups[bounds[b]:bounds[b+1]]``
    and its rows start at stream row ``starts[b]``."""

    groups: np.ndarray
    bounds: np.ndarray
    starts: np.ndarray  # n_blocks + 1: the last entry is the total number of rows


def epoch_order(row_groups: RowGroups, *, seed: int, epoch: int, shuffle: bool, shuffle_rows: int) -> EpochOrder:
    """Row groups in a random order (seeded by seed and epoch), grouped into blocks of at least ``shuffle_rows``."""
    n = len(row_groups.rows)
    groups = (np.random.default_rng([seed, epoch, 0]).permutation(n) if shuffle
              else np.arange(n, dtype=np.int64))
    rows = row_groups.rows[groups]
    cumulative = np.cumsum(rows)
    bounds = [0]
    block_end = 0
    # A block ends at the first row group that brings it to shuffle_rows rows (so it holds whole row groups).
    while bounds[-1] < n:
        floor = (cumulative[bounds[-1] - 1] if bounds[-1] else 0) + shuffle_rows
        block_end = int(np.searchsorted(cumulative, floor, side="left")) + 1
        bounds.append(min(block_end, n))
    bounds_array = np.array(bounds, dtype=np.int64)
    starts = np.concatenate([[0], cumulative])[bounds_array].astype(np.int64)
    return EpochOrder(groups.astype(np.int64), bounds_array, starts)


def block_permutation(n_rows: int, *, seed: int, epoch: int, block: int, shuffle: bool) -> np.ndarray:
    """The order of a block's rows: a seeded permutation, new for every (seed, epoch, block)."""
    if not shuffle:
        return np.arange(n_rows, dtype=np.int64)
    return np.random.default_rng([seed, epoch, block + 1]).permutation(n_rows)


@dataclass
class _Rows:
    """Rows of a block as flat numpy arrays: row ``r`` of a list column is ``values[offsets[r]:offsets[r+1]]``."""

    columns: dict[str, tuple[np.ndarray, np.ndarray]]
    row_index: np.ndarray  # each row's number in the output (shards in manifest order, rows in file order)

    def take(self, rows: np.ndarray) -> _Rows:
        return _Rows({name: _take(values, offsets, rows) for name, (values, offsets) in self.columns.items()},
                     self.row_index[rows])


def _take(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths = offsets[rows + 1] - offsets[rows]
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    if len(rows) and (lengths == lengths[0]).all() and (np.diff(offsets) == lengths[0]).all():
        width = int(lengths[0])  # fixed-length rows (the usual case): one fancy index over a 2-D view
        return values.reshape(-1, width)[rows].reshape(-1), new_offsets
    index = np.repeat(offsets[rows] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1], dtype=np.int64)
    return values[index], new_offsets


def _list_column(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    array = column.combine_chunks()
    offsets = np.asarray(array.offsets, dtype=np.int64)
    values = np.asarray(array.values)
    return values[offsets[0]:offsets[-1]], offsets - offsets[0]


class PackedDataset:
    """Batches of a packed output folder, for one rank: seeded global shuffle, equal counts per rank, exact resume.

    ``batch_size`` is the number of rows per batch on each rank; or give ``global_batch_size`` (rows per step over
    all ranks), which must divide by ``world_size``. ``rank`` and ``world_size`` default to ``torch.distributed``'s
    when it is initialised, else 0 and 1. ``shuffle_rows`` bounds memory: a worker holds at most two blocks of about
    that many rows (whole row groups of up to 1,024 rows each).

    Iterating yields dicts of numpy arrays (see ``collate``); ``set_epoch`` chooses the epoch's order,
    ``state_dict``/``load_state_dict`` resume exactly after the batches already yielded.
    """

    def __init__(self, out: str, *, batch_size: int | None = None, global_batch_size: int | None = None,
                 seed: int = 0, shuffle: bool = True, rank: int | None = None, world_size: int | None = None,
                 shuffle_rows: int = DEFAULT_SHUFFLE_ROWS) -> None:
        self.out = out
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.batch_size = _batch_size(batch_size, global_batch_size, self.world_size)
        if shuffle_rows < 1:
            raise OptionError(f"shuffle_rows={shuffle_rows} must be at least 1", fix="pass a positive row count")
        self.seed = seed
        self.shuffle = shuffle
        self.shuffle_rows = shuffle_rows
        self.manifest = load_manifest(out)
        options = self.manifest["options"]
        self.ctx = int(options["ctx"])
        self.pad_id = int(options["pad_id"])
        self.shard_paths = [str(shard["path"]) for shard in self.manifest["shards"]]
        self.row_groups, schema = _scan_shards(out, self.manifest)
        self.stored_columns = tuple(c for c in training.TRAINING_COLUMNS if c in schema)
        self.rows = self.row_groups.total_rows
        step = self.batch_size * self.world_size
        self.batches_per_epoch = self.rows // step
        if self.batches_per_epoch == 0:
            raise OptionError(f"{out}: {self.rows} rows cannot give each of {self.world_size} rank(s) one batch of "
                              f"{self.batch_size} rows", fix="lower the batch size or use fewer ranks")
        self.dropped_rows = self.rows - self.batches_per_epoch * step
        self.epoch = 0
        self._resume_at = 0
        self._yielded = 0
        self._files: dict[int, pq.ParquetFile] = {}

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = {}  # open files stay with their process; a DataLoader worker opens its own
        return state

    # -------------------------------------------------------------------------------------------- epoch and state
    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order from the next iteration on, from its first batch."""
        self.epoch = epoch
        self._resume_at = 0
        self._yielded = 0

    def state_dict(self) -> dict[str, Any]:
        """Where iteration stands: the epoch and the batches of it already yielded, with what decides the order."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "batches": self._yielded, "seed": self.seed,
                "shuffle": self.shuffle, "shuffle_rows": self.shuffle_rows, "batch_size": self.batch_size,
                "world_size": self.world_size, "rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next iteration starts at the batch after the last one yielded."""
        mine = self.state_dict()
        for key in ("version", "seed", "shuffle", "shuffle_rows", "batch_size", "world_size", "rows"):
            if state.get(key) != mine[key]:
                raise OptionError(f"the saved reader state has {key}={state.get(key)!r}, this reader "
                                  f"{key}={mine[key]!r}, so its order would differ",
                                  fix=f"create the reader with the {key} it was saved with")
        batches = state.get("batches")
        if not isinstance(batches, int) or not 0 <= batches <= self.batches_per_epoch:
            raise OptionError(f"the saved reader state has batches={batches!r}, not 0..{self.batches_per_epoch}",
                              fix="pass a state_dict() of this reader")
        self.epoch = int(state["epoch"])
        self._resume_at = batches
        self._yielded = batches

    # -------------------------------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Batch]:
        worker, workers = _worker()
        start, self._resume_at = self._resume_at, 0
        self._yielded = start
        for batch in self.batches(start=start, worker=worker, workers=workers):
            self._yielded += 1
            yield batch

    def batches(self, *, start: int = 0, worker: int = 0, workers: int = 1) -> Iterator[Batch]:
        """This rank's batches ``start + worker, start + worker + workers, ...`` of the current epoch."""
        order = epoch_order(self.row_groups, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
                            shuffle_rows=self.shuffle_rows)
        per_rank = self.batches_per_epoch * self.batch_size
        cache: dict[int, tuple[np.ndarray, _Rows]] = {}
        for j in range(start + worker, self.batches_per_epoch, workers):
            first = self.rank * per_rank + j * self.batch_size
            yield self._batch(order, first, first + self.batch_size, cache)

    def _batch(self, order: EpochOrder, first: int, last: int, cache: dict[int, tuple[np.ndarray, _Rows]]) -> Batch:
        parts: list[_Rows] = []
        block = int(np.searchsorted(order.starts, first, side="right")) - 1
        at = first
        while at < last:
            if block not in cache:
                cache.clear()  # blocks are visited in order: one is held at a time
                cache[block] = self._load_block(order, block)
            perm, rows = cache[block]
            block_start, block_end = int(order.starts[block]), int(order.starts[block + 1])
            upto = min(last, block_end)
            parts.append(rows.take(perm[at - block_start:upto - block_start]))
            at = upto
            block += 1
        return collate(_concat_rows(parts), pad_id=self.pad_id)

    def _load_block(self, order: EpochOrder, block: int) -> tuple[np.ndarray, _Rows]:
        groups = order.groups[order.bounds[block]:order.bounds[block + 1]]
        names = ["input_ids", "seq_lengths", *self.stored_columns]
        tables = [self._file(int(self.row_groups.shard[g])).read_row_group(int(self.row_groups.index[g]),
                                                                            columns=names) for g in groups]
        table = pa.concat_tables(tables)
        first = self.row_groups.first_row[groups]
        row_index = np.concatenate([np.arange(f, f + n, dtype=np.int64)
                                    for f, n in zip(first, self.row_groups.rows[groups], strict=True)])
        rows = _Rows({name: _list_column(table.column(name)) for name in names}, row_index)
        perm = block_permutation(table.num_rows, seed=self.seed, epoch=self.epoch, block=block, shuffle=self.shuffle)
        return perm, rows

    def _file(self, shard: int) -> pq.ParquetFile:
        if shard not in self._files:
            fs, root = filesystem_for(self.out)
            self._files[shard] = pq.ParquetFile(fs.open_input_file(posixpath.join(root, self.shard_paths[shard])))
        return self._files[shard]

    # -------------------------------------------------------------------------------------------------- torch
    def torch(self) -> Any:
        """This dataset as a ``torch.utils.data.IterableDataset`` of torch tensors (use ``batch_size=None``)."""
        return _torch_dataset_class()(self)


def _concat_rows(parts: list[_Rows]) -> _Rows:
    if len(parts) == 1:
        return parts[0]
    merged = {}
    for name in parts[0].columns:
        values = np.concatenate([p.columns[name][0] for p in parts])
        lengths = np.concatenate([np.diff(p.columns[name][1]) for p in parts])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        merged[name] = (values, offsets)
    return _Rows(merged, np.concatenate([p.row_index for p in parts]))


def collate(batch_rows: _Rows, *, pad_id: int) -> Batch:
    """One batch from its rows' list columns (flat values and offsets), rows of any lengths.

    Rows shorter than the longest are padded with ``pad_id`` to its length; that padding is one more segment of its
    row, as a row's own padding is (positions restart, no labels). Returns int64 ``input_ids``, ``position_ids`` and
    ``labels`` of shape (rows, length); ``cu_seqlens`` (int32) and ``max_seqlen`` over the flattened batch, every
    piece and padding run one segment; the pieces' ``seq_lengths`` (int64, flat) and ``pieces_per_row``;
    ``row_index``, each row's number in the output (shards in manifest order).
    """
    rows = batch_rows.columns
    token_values, token_offsets = rows["input_ids"]
    row_lengths = np.diff(token_offsets)
    n_rows = len(row_lengths)
    width = int(row_lengths.max())
    piece_values, piece_offsets = rows["seq_lengths"]
    segs = training.segments(piece_values, piece_offsets, np.full(n_rows, width, dtype=np.int64))
    ragged = bool((row_lengths != width).any())
    in_row = np.arange(width)[None, :] < row_lengths[:, None] if ragged else None
    input_ids = np.full((n_rows, width), pad_id, dtype=np.int64)
    if in_row is None:
        input_ids[...] = token_values.reshape(n_rows, width)
    else:
        input_ids[in_row] = token_values
    columns = {"position_ids": training.position_ids(segs).reshape(n_rows, width),
               "labels": training.labels(input_ids.reshape(-1), segs).reshape(n_rows, width)}
    for name in training.TRAINING_COLUMNS:
        if name in rows:  # written by pack: the shards' values win over the computed ones within each row
            stored = rows[name][0].astype(np.int64)
            if in_row is None:
                columns[name][...] = stored.reshape(n_rows, width)
            else:
                columns[name][in_row] = stored
    return {"input_ids": input_ids, "position_ids": columns["position_ids"], "labels": columns["labels"],
            "cu_seqlens": training.cu_seqlens(segs), "max_seqlen": int(segs.lengths.max()),
            "seq_lengths": piece_values.astype(np.int64), "pieces_per_row": np.diff(piece_offsets),
            "row_index": batch_rows.row_index}


# ---------------------------------------------------------------------------------------------------- validation
def load_manifest(out: str) -> dict[str, Any]:
    """The manifest of a finished Parquet output, or a one-line ``InputError`` saying why it cannot be read."""
    fs, root = filesystem_for(out)
    fix = "point at the OUT folder of a bestfit pack run that finished (rerun it if it was interrupted)"
    try:
        with fs.open_input_stream(posixpath.join(root, MANIFEST)) as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise InputError(out, "has no manifest.json, so it is not a finished bestfit output", fix=fix) from None
    except (OSError, pa.ArrowException) as exc:
        failure = storage_error(out, exc)
        if failure is not None:
            raise failure from None
        raise InputError(out, f"manifest.json cannot be read ({str(exc).splitlines()[0] if str(exc) else exc!r})",
                         fix="check the path and its permissions") from None
    try:
        manifest = loads(raw)
    except ValueError as exc:  # not JSON, not UTF-8, or nested too deeply (json_depth.TooDeep)
        raise InputError(out, f"manifest.json is not valid JSON ({str(exc).split(':')[0]})", fix=fix) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(out, f"manifest.json is not a bestfit manifest (format is not {MANIFEST_FORMAT!r})", fix=fix)
    options = manifest.get("options")
    shards = manifest.get("shards")
    if not isinstance(options, dict) or not isinstance(shards, list) or not shards or not all(
            isinstance(s, dict) and isinstance(s.get("path"), str) and isinstance(s.get("rows"), int)
            for s in shards):
        raise InputError(out, "manifest.json lists no shards with their rows", fix=fix)
    for key in ("ctx", "pad_id"):
        if not isinstance(options.get(key), int):
            raise InputError(out, f"manifest.json has no integer options.{key}", fix=fix)
    fmt = options.get("format", "parquet")
    if fmt not in READABLE_FORMATS:
        raise InputError(out, f"holds {fmt!r} shards; the reader reads {', '.join(READABLE_FORMATS)} output",
                         fix="pack with --format parquet for this reader")
    return manifest


def _scan_shards(out: str, manifest: dict[str, Any]) -> tuple[RowGroups, list[str]]:
    """The row groups of every listed shard (from the Parquet footers), checked against the manifest's counts."""
    fs, root = filesystem_for(out)
    shard_ids: list[int] = []
    indices: list[int] = []
    rows: list[int] = []
    schema: list[str] = []
    for number, shard in enumerate(manifest["shards"]):
        path = posixpath.join(root, shard["path"])
        try:
            check_footer_file(fs, path)  # some damaged footers abort the process inside pyarrow
            metadata = pq.ParquetFile(fs.open_input_file(path)).metadata
        except FooterError as exc:
            raise InputError(f"{out}/{shard['path']}", f"has a damaged Parquet footer ({exc})",
                             fix="restore the shard, or rerun bestfit pack") from None
        except FileNotFoundError:
            raise InputError(f"{out}/{shard['path']}", "is listed in manifest.json but missing",
                             fix="restore the shard, or rerun bestfit pack") from None
        except (OSError, pa.ArrowException) as exc:
            failure = storage_error(f"{out}/{shard['path']}", exc)
            if failure is not None:
                raise failure from None
            raise InputError(f"{out}/{shard['path']}", f"is not a readable Parquet shard ({str(exc).splitlines()[0]})",
                             fix="restore the shard, or rerun bestfit pack") from None
        if metadata.num_rows != shard["rows"]:
            raise InputError(f"{out}/{shard['path']}", f"holds {metadata.num_rows} rows, manifest.json lists "
                             f"{shard['rows']}", fix="restore the shard, or rerun bestfit pack")
        names = metadata.schema.to_arrow_schema().names
        missing = [c for c in ("input_ids", "seq_lengths") if c not in names]
        if missing:
            raise InputError(f"{out}/{shard['path']}", f"has no {missing[0]} column",
                             fix="point at the output of bestfit pack")
        if number == 0:
            schema = names
        for index in range(metadata.num_row_groups):
            shard_ids.append(number)
            indices.append(index)
            rows.append(metadata.row_group(index).num_rows)
    as_array = np.asarray
    return RowGroups(as_array(shard_ids, dtype=np.int64), as_array(indices, dtype=np.int64),
                     as_array(rows, dtype=np.int64)), schema


def _batch_size(batch_size: int | None, global_batch_size: int | None, world_size: int) -> int:
    if (batch_size is None) == (global_batch_size is None):
        raise OptionError("give exactly one of batch_size (rows per rank) and global_batch_size (rows over all ranks)",
                          fix="pass batch_size=N")
    if global_batch_size is not None:
        if global_batch_size < 1 or global_batch_size % world_size:
            raise OptionError(f"global_batch_size={global_batch_size} does not divide across {world_size} ranks",
                              fix=f"use a positive multiple of {world_size}")
        return global_batch_size // world_size
    assert batch_size is not None
    if batch_size < 1:
        raise OptionError(f"batch_size={batch_size} must be at least 1", fix="pass a positive row count")
    return batch_size


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else torch.distributed's when it is initialised (torch is not imported for this), else 0, 1."""
    dist = sys.modules.get("torch.distributed")
    initialised = dist is not None and dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1  # type: ignore[union-attr]
    if rank is None:
        rank = dist.get_rank() if initialised else 0  # type: ignore[union-attr]
    if world_size < 1 or not 0 <= rank < world_size:
        raise OptionError(f"rank={rank} is not in 0..{world_size - 1} (world_size={world_size})",
                          fix="pass 0 <= rank < world_size")
    return rank, world_size


def _worker() -> tuple[int, int]:
    """This process's DataLoader worker and the number of workers (0, 1 outside a DataLoader worker)."""
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    return (0, 1) if info is None else (int(info.id), int(info.num_workers))


# ------------------------------------------------------------------------------------------------------- torch
_TORCH_CLASSES: dict[str, Any] = {}


def _to_torch(batch: Batch) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def _as_is(batch: Any) -> Any:
    return batch


def _torch_dataset_class() -> Any:
    """``TorchPackedDataset``, defined on first use so that numpy users never import torch."""
    if "dataset" not in _TORCH_CLASSES:
        import torch.utils.data

        class TorchPackedDataset(torch.utils.data.IterableDataset):  # type: ignore[type-arg,misc,unused-ignore]
            """A ``PackedDataset`` as an ``IterableDataset`` of dicts of tensors; give ``DataLoader(batch_size=None)``.

            With ``start`` (as ``PackedLoader`` gives it) every process reads from that batch on and the caller
            counts; without, it resumes where ``packed`` was loaded to, and ``packed`` counts when there are no
            workers.
            """

            def __init__(self, packed: PackedDataset, start: int | None = None, numpy: bool = False) -> None:
                self.packed = packed
                self.start = start
                self.numpy = numpy  # PackedLoader converts in its own process: see there

            def __iter__(self) -> Iterator[dict[str, Any]]:
                info = torch.utils.data.get_worker_info()
                if info is None and self.start is None:
                    batches = iter(self.packed)
                else:
                    worker, workers = (0, 1) if info is None else (int(info.id), int(info.num_workers))
                    start = self.packed._resume_at if self.start is None else self.start
                    batches = self.packed.batches(start=start, worker=worker, workers=workers)
                for batch in batches:
                    yield batch if self.numpy else _to_torch(batch)

            def __len__(self) -> int:
                return len(self.packed)

        _TORCH_CLASSES["dataset"] = TorchPackedDataset
    return _TORCH_CLASSES["dataset"]


class PackedLoader:
    """A ``torch.utils.data.DataLoader`` over a ``PackedDataset`` that counts the batches it delivered, so that
    ``state_dict()`` taken after k batches resumes at batch k+1, with any ``num_workers``.

    Extra keyword arguments go to ``DataLoader`` (``pin_memory``, ``prefetch_factor``, ...); workers are started
    afresh each epoch, so ``persistent_workers`` is not accepted.
    """

    def __init__(self, dataset: PackedDataset, *, num_workers: int = 0, **dataloader_kwargs: Any) -> None:
        for key in ("batch_size", "shuffle", "sampler", "batch_sampler", "collate_fn", "persistent_workers"):
            if key in dataloader_kwargs:
                raise OptionError(f"PackedLoader sets {key} itself", fix=f"leave {key} out; the dataset decides it")
        self.dataset = dataset
        self.num_workers = num_workers
        self.pin_memory = bool(dataloader_kwargs.pop("pin_memory", False))  # done here, on the tensors made here
        self.dataloader_kwargs = dataloader_kwargs

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import torch.utils.data

        start = self.dataset._resume_at
        # Workers send numpy arrays, pickled through the DataLoader's queue, and this process wraps them as tensors:
        # a tensor made in a worker travels as a shared-memory segment of its own, which costs several times more
        # per batch (measured in bench/reader.py).
        loader = torch.utils.data.DataLoader(_torch_dataset_class()(self.dataset, start, numpy=True), batch_size=None,
                                             num_workers=self.num_workers, collate_fn=_as_is, **self.dataloader_kwargs)
        # The workers got a copy with the resume point; this process counts what they deliver, in order.
        self.dataset._resume_at = 0
        self.dataset._yielded = start
        for batch in loader:
            self.dataset._yielded += 1
            tensors = _to_torch(batch)
            yield {k: v.pin_memory() if self.pin_memory and hasattr(v, "pin_memory") else v
                   for k, v in tensors.items()}
