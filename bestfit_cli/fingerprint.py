"""Fingerprints of input files: what ``pack`` records for each input, checks again just before its manifest is
written, and ``verify`` compares, so an input that changes during a run fails it and one that changed since is named.

A fingerprint is the file's size and modification time (``mtime_ns``) as its filesystem reports them (an object
store's size and last-modified time), plus its format's signature (``InputFormat.signature``, recorded as
``footer_sha256``): for Parquet the sha256 of its footer (the schema, the row groups and their offsets: a rewritten
file has another), for Arrow the sha256 of its first and last 64 KiB (the schema, and the footer or last batch);
and for JSONL the sha256 of every byte read (after decompression), computed while reading
(``formats.jsonl.read_jsonl``). A Megatron
dataset's fingerprint is its ``.bin``'s plus the size and time of its ``.idx`` (``index_bytes``, ``index_mtime_ns``).
Standard input has only that content hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import InputError
from .fs import InputFile, storage_error
from .read import input_format


@dataclass(frozen=True)
class Fingerprint:
    bytes: int | None = None
    mtime_ns: int | None = None
    footer_sha256: str | None = None  # the format's ``InputFormat.signature`` (Parquet: its footer and trailer)
    index_bytes: int | None = None  # Megatron: the .idx beside the .bin
    index_mtime_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"bytes": self.bytes, "mtime_ns": self.mtime_ns}
        if self.footer_sha256 is not None:
            data["footer_sha256"] = self.footer_sha256
        if self.index_bytes is not None:
            data.update(index_bytes=self.index_bytes, index_mtime_ns=self.index_mtime_ns)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(data.get("bytes"), data.get("mtime_ns"), data.get("footer_sha256"), data.get("index_bytes"),
                   data.get("index_mtime_ns"))

    def times_differ(self, now: Fingerprint) -> bool:
        return self.mtime_ns != now.mtime_ns or self.index_mtime_ns != now.index_mtime_ns

    def differences(self, now: Fingerprint) -> list[str]:
        """What differs in ``now`` that the contents could have changed by (size, footer); the time is separate."""
        found = []
        if self.bytes != now.bytes:
            found.append(f"size {_count(self.bytes)} -> {_count(now.bytes)} bytes")
        if self.footer_sha256 != now.footer_sha256:
            found.append("another footer")
        if self.index_bytes != now.index_bytes:
            found.append(f".idx size {_count(self.index_bytes)} -> {_count(now.index_bytes)} bytes")
        return found


def _count(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def fingerprint(file: InputFile, *, stat_again: bool = True) -> Fingerprint:
    """The fingerprint of ``file`` now (``stat_again=False``: size and time as the input scan found them)."""
    if file.is_stdin or file.fs is None:
        return Fingerprint()
    size, mtime_ns = file.size, file.mtime_ns
    if stat_again:
        try:
            info = file.fs.get_file_info(file.fs_path)
        except (OSError, pa.ArrowException) as exc:
            raise storage_error(file.name, exc) or InputError(file.name, f"cannot be read any more ({exc})",
                                                              fix="restore the file, then rerun") from None
        if info.type != pafs.FileType.File:
            raise InputError(file.name, "is gone (deleted or replaced while bestfit ran)",
                             fix="restore the file, then rerun")
        size, mtime_ns = info.size, info.mtime_ns
    index_bytes, index_mtime_ns = _index_stat(file) if file.format == "megatron" else (None, None)
    return Fingerprint(size, mtime_ns, input_format(file).signature(file), index_bytes, index_mtime_ns)


def _index_stat(file: InputFile) -> tuple[int | None, int | None]:
    """Size and time of a Megatron dataset's ``.idx``; a missing one is an error naming it."""
    assert file.fs is not None
    path = file.fs_path[: -len(".bin")] + ".idx"
    name = file.name[: -len(".bin")] + ".idx"
    try:
        info = file.fs.get_file_info(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(name, f"cannot be read any more ({exc})", fix="restore the file, then rerun") from None
    if info.type != pafs.FileType.File:
        raise InputError(name, "is gone (deleted or replaced while bestfit ran)", fix="restore the file, then rerun")
    return info.size, info.mtime_ns


def check_unchanged(files: Sequence[InputFile], taken: Sequence[Fingerprint]) -> None:
    """Raise ``InputError`` naming the first input whose fingerprint differs from the one taken before reading."""
    for file, before in zip(files, taken, strict=True):
        if file.is_stdin:
            continue
        now = fingerprint(file)
        changed = before.differences(now)
        if before.times_differ(now):
            changed.append("modified time changed")
        if changed:
            raise InputError(file.name, f"changed while bestfit read it ({', '.join(changed)}), so the output could "
                             "mix old and new documents; no manifest was written",
                             fix="rerun once the input no longer changes (pack a copy that nothing writes to)")
