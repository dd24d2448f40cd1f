"""Carried columns: input columns that ride along with the documents into the output (``--keep``, ``--keep-token``).

A *document column* (``--keep id``) holds one scalar per document (``id``, ``source``, ``url``); each output row
stores it as a list aligned with ``doc_index``, one value per piece. A *token column* (``--keep-token labels:-100``)
holds one value per token (``labels``, ``loss_mask``); it goes through packing exactly as the token ids do and is
padded with its own fill value. Readers call ``document_values`` and ``token_values``; what reaches the window is
checked here, so every input format refuses bad columns with the same messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import InputError, OptionError

LABELS = "labels"


@dataclass(frozen=True)
class TokenColumn:
    """``--keep-token NAME:FILL[:EOS]``: padding gets ``fill``; an appended EOS gets ``eos`` (None: the default
    rule, ``eos_values``). An integer fill makes an int64 column, a fractional one a float32 column."""

    name: str
    fill: int | float
    eos: int | float | None = None

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.int64) if isinstance(self.fill, int) else np.dtype(np.float32)

    @property
    def arrow_type(self) -> pa.DataType:
        return pa.from_numpy_dtype(self.dtype)

    def spec(self) -> str:
        return f"{self.name}:{self.fill}" + (f":{self.eos}" if self.eos is not None else "")

    def to_json(self) -> dict[str, Any]:
        return {"fill": self.fill, "eos": self.eos if self.eos is not None else "default"}

    @classmethod
    def parse(cls, text: str) -> TokenColumn:
        parts = str(text).split(":")
        if len(parts) not in (2, 3) or not parts[0].strip():
            raise OptionError(f"--keep-token {text!r} is not NAME:FILL or NAME:FILL:EOS",
                              fix="give the column and its padding value, such as labels:-100 or loss_mask:0")
        name = parts[0].strip()
        fill = _number(text, parts[1])
        eos = _number(text, parts[2]) if len(parts) == 3 else None
        if isinstance(fill, int) and isinstance(eos, float):
            raise OptionError(f"--keep-token {text!r}: the EOS value {eos} is fractional, the fill an integer",
                              fix="give both as integers, or the fill as a float such as 0.0")
        return cls(name, fill, eos)


def _number(text: str, part: str) -> int | float:
    value = part.strip()
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not np.isfinite(number):
        raise OptionError(f"--keep-token {text!r}: {value!r} is not a number",
                          fix="give numbers, such as labels:-100 or weight:0.0")
    return number


def check_names(column: str, keep: Sequence[str], keep_token: Sequence[TokenColumn], reserved: Sequence[str]
                ) -> None:
    """Carried names must be distinct and must not be the token column or an output column of bestfit's own."""
    names = [*keep, *(t.name for t in keep_token)]
    for name in names:
        if names.count(name) > 1:
            raise OptionError(f"column {name!r} is carried twice (--keep / --keep-token)", fix="name it once")
        if name == column:
            raise OptionError(f"carried column {name!r} (--keep / --keep-token) is the token column itself",
                              fix="the token ids are in the output already as input_ids")
        if name in reserved and name != LABELS:
            raise OptionError(f"a carried column cannot be named {name!r}: the output has a column of that name",
                              fix="rename it in the input")
    if LABELS in keep:
        raise OptionError("--keep labels would store one value per document; labels are per token",
                          fix="pass --keep-token labels:-100")


# ------------------------------------------------------------------------------------------------ reading


def _row_at(offsets: np.ndarray, position: int) -> int:
    return int(np.searchsorted(offsets, position, side="right")) - 1


def token_values(file_name: str, column: TokenColumn, values: np.ndarray, lengths: np.ndarray,
                 ids_lengths: np.ndarray, first_row: int, where: Callable[[int], dict[str, int]]) -> np.ndarray:
    """One token column of a batch, flat, as ``column.dtype``, checked against the token ids' lengths.

    ``values`` are the column's values back to back and ``lengths`` how many each row has; ``where(row)`` names
    a row of the batch for messages (``row=`` or ``line=``).
    """
    wrong = np.flatnonzero(lengths != ids_lengths)
    if len(wrong):
        row = int(wrong[0])
        raise InputError(file_name, f"'{column.name}' has {int(lengths[row])} values, the token ids "
                                    f"{int(ids_lengths[row])}", **where(row),
                         fix=f"give '{column.name}' one value per token id, or leave out --keep-token "
                             f"{column.name}")
    kind = values.dtype.kind
    if kind == "f" and column.dtype.kind == "i":
        fractional = np.flatnonzero(values != np.round(values))
        if len(fractional):
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            raise InputError(file_name, f"'{column.name}' holds the fractional value {values[fractional[0]]}",
                             **where(_row_at(offsets, int(fractional[0]))),
                             fix=f"give a fractional fill, such as --keep-token {column.name}:0.0")
    elif kind not in "biuf":
        raise InputError(file_name, f"'{column.name}' holds {values.dtype} values, not numbers", **where(0),
                         fix=f"--keep-token carries numbers; leave out {column.name}")
    out: np.ndarray = values.astype(column.dtype, copy=False)
    return out


def arrow_token_values(file_name: str, column: TokenColumn, array: pa.Array, ids_lengths: np.ndarray,
                       first_row: int, where: Callable[[int], dict[str, int]]) -> np.ndarray:
    """A Parquet (Arrow) token column of a batch: lists of numbers, one per token id, no nulls."""
    if pa.types.is_fixed_size_list(array.type) or pa.types.is_large_list(array.type):
        array = array.cast(pa.list_(array.type.value_type))
    if not pa.types.is_list(array.type):
        raise InputError(file_name, f"column '{column.name}' has type {array.type}, not a list of numbers",
                         fix=f"--keep-token carries a list per row, one value per token; leave out {column.name}")
    value_type = array.type.value_type
    if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type) or pa.types.is_boolean(value_type)):
        raise InputError(file_name, f"column '{column.name}' holds {value_type}, not numbers",
                         fix=f"--keep-token carries numbers; leave out {column.name}")
    if array.null_count:
        row = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(file_name, f"'{column.name}' is null", **where(row),
                         fix=f"give every row its '{column.name}', or leave out --keep-token {column.name}")
    offsets = array.offsets.to_numpy().astype(np.int64)
    flat = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets -= offsets[0]
    if flat.null_count:
        row = _row_at(offsets, int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0]))
        raise InputError(file_name, f"'{column.name}' holds a null value", **where(row),
                         fix=f"fill it with a number, or leave out --keep-token {column.name}")
    return token_values(file_name, column, flat.to_numpy(zero_copy_only=False), np.diff(offsets), ids_lengths,
                        first_row, where)


def json_token_values(file_name: str, column: TokenColumn, value: Any, line: int) -> np.ndarray:
    """One JSONL record's token column: a list of numbers (``true``/``false`` count as 1/0)."""
    if not isinstance(value, list) or any(isinstance(v, (list, dict, str)) or v is None for v in value):
        kind = "null" if value is None else type(value).__name__ if not isinstance(value, list) else \
            "a list holding other values than numbers"
        raise InputError(file_name, f"'{column.name}' is {kind}, not a list of numbers", line=line,
                         fix=f"give '{column.name}' one number per token id, or leave out --keep-token "
                             f"{column.name}")
    array = np.array(value, dtype=np.float64 if any(isinstance(v, float) for v in value) else np.int64)
    return array


def check_document_type(file_name: str, name: str, value_type: pa.DataType) -> None:
    """--keep carries scalars: one value per document."""
    if pa.types.is_nested(value_type):
        raise InputError(file_name, f"column '{name}' has type {value_type}, not one value per document",
                         fix=f"--keep carries scalar columns (strings, numbers, ...); per-token lists go with "
                             f"--keep-token {name}:FILL")


def json_document_values(file_name: str, name: str, values: Sequence[Any], lines: Sequence[int]) -> pa.Array:
    """One JSONL document column of a batch: scalars or null, a missing field being an error."""
    for value, line in zip(values, lines, strict=True):
        if isinstance(value, (list, dict)):
            raise InputError(file_name, f"'{name}' is {'a list' if isinstance(value, list) else 'an object'}, "
                                        "not one value", line=line,
                             fix=f"--keep carries scalar fields (strings, numbers, ...); per-token lists go with "
                                 f"--keep-token {name}:FILL")
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return _first_misfit(file_name, name, values, lines)


def _first_misfit(file_name: str, name: str, values: Sequence[Any], lines: Sequence[int]) -> pa.Array:
    first = next(v for v in values if v is not None)
    for value, line in zip(values, lines, strict=True):
        if value is not None and type(value) is not type(first) and not (
                isinstance(value, (int, float)) and isinstance(first, (int, float))
                and not isinstance(value, bool) and not isinstance(first, bool)):
            raise InputError(file_name, f"'{name}' is {type(value).__name__} here, {type(first).__name__} in "
                                        "earlier records", line=line,
                             fix=f"give '{name}' one type in every record")
    raise InputError(file_name, f"'{name}' holds values of no one type", line=lines[0],
                     fix=f"give '{name}' one type in every record")


@dataclass(frozen=True)
class FirstType:
    """Where a document column's type is fixed: the batch of file ``file_index`` (named ``file_name``) starting at
    row ``row``, the first in input order whose values are not all null, and their type."""

    file_index: int
    row: int
    type: pa.DataType
    file_name: str


def note_first_types(found: dict[str, FirstType], file_index: int, file_name: str, row: int,
                     types: dict[str, pa.DataType]) -> None:
    """Add to ``found`` the document columns of a batch (of file ``file_index``, from ``row``; ``types`` their
    types) that are not of Arrow's ``null`` type (all null) and not in ``found`` yet: given every batch in input
    order, each column's ``FirstType``."""
    for name, value_type in types.items():
        if name not in found and not pa.types.is_null(value_type):
            found[name] = FirstType(file_index, row, value_type, file_name)


class DocumentTypes:
    """The type of each document column, fixed by its first non-null values: later batches are cast to it, so every
    shard of a run stores the same types (pack reads its inputs in order, so the types do not depend on workers).

    A reader of part of the inputs (a Ray window task) cannot see the batches before its own: it is given where
    each type was fixed (``planned``, from the lengths pass and the footers), and from that batch on casts as a
    reader of every input would."""

    def __init__(self, names: Sequence[str], planned: dict[str, FirstType] | None = None) -> None:
        self.types: dict[str, pa.DataType] = {}
        self.seen_in: dict[str, str] = {}
        self.names = tuple(names)
        self.planned = planned or {}

    def conform(self, file_name: str, columns: dict[str, pa.Array], at: tuple[int, int] | None = None
                ) -> dict[str, pa.Array]:
        """``columns`` of the batch at ``at`` (file index, first row; needed with ``planned``), cast to the types
        fixed so far."""
        out = {}
        for name, array in columns.items():
            check_document_type(file_name, name, array.type)
            planned = self.planned.get(name)
            if planned is not None and at is not None and at >= (planned.file_index, planned.row):
                self.types[name], self.seen_in[name] = planned.type, planned.file_name
            known = self.types.get(name)
            if known is None or pa.types.is_null(known):
                if not pa.types.is_null(array.type) or known is None:
                    self.types[name], self.seen_in[name] = array.type, file_name
                out[name] = array
                continue
            if array.type != known:
                try:
                    array = array.cast(known)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    raise InputError(file_name, f"column '{name}' is {array.type} here, {known} in "
                                                f"{self.seen_in[name]}",
                                     fix=f"give '{name}' one type in every input") from None
            out[name] = array
        return out


def eos_values(column: TokenColumn, values: np.ndarray, offsets: np.ndarray, eos_id: int | None) -> np.ndarray:
    """What each document's appended EOS gets in a token column: ``column.eos`` when given; else, for ``labels``,
    the EOS id (so the model learns to stop) unless the document's last label is the fill (not trained); for any
    other column (a loss or assistant mask) the value of the document's last token, so the EOS belongs to the turn
    it ends."""
    n_docs = len(offsets) - 1
    last = np.full(n_docs, column.fill, dtype=column.dtype)
    nonempty = offsets[1:] > offsets[:-1]
    last[nonempty] = values[offsets[1:][nonempty] - 1]
    if column.eos is not None:
        return np.full(n_docs, column.eos, dtype=column.dtype)
    if column.name == LABELS and eos_id is not None:
        return np.where(last == column.fill, column.fill, eos_id).astype(column.dtype)
    return last
