"""Fingerprints of input files: what ``pack`` records for each input, checks again just before its manifest is
written, and ``verify`` compares, so an input that changes during a run fails it and one that changed since is named.

A fingerprint is the file's size and modification time (``mtime_ns``) as its filesystem reports them (an object
store's size and last-modified time), plus its format's signature (``InputFormat.signature``, recorded as
``footer_sha256``): for Parquet the sha256 of its footer (the schema, the row groups and their offsets: a rewritten
file has another), for Arrow the sha256 of its first and last 64 KiB (the schema, and the footer or last batch);
and for JSONL the sha256 of every byte read (after decompression), computed while reading
(``formats.jsonl.read_jsonl``). Standard input has only that content hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import InputError
from .fs import InputFile
from .read import input_format


@dataclass(frozen=True)
class Fingerprint:
    bytes: int | None = None
    mtime_ns: int | None = None
    footer_sha256: str | None = None  # the format's ``InputFormat.signature`` (Parquet: its footer and trailer)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"bytes": self.bytes, "mtime_ns": self.mtime_ns}
        if self.footer_sha256 is not None:
            data["footer_sha256"] = self.footer_sha256
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(data.get("bytes"), data.get("mtime_ns"), data.get("footer_sha256"))

    def differences(self, now: Fingerprint) -> list[str]:
        """What differs in ``now`` that the contents could have changed by (size, footer); the time is separate."""
        found = []
        if self.bytes != now.bytes:
            found.append(f"size {_count(self.bytes)} -> {_count(now.bytes)} bytes")
        if self.footer_sha256 != now.footer_sha256:
            found.append("another footer")
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
            raise InputError(file.name, f"cannot be read any more ({exc})",
                             fix="restore the file, then rerun") from None
        if info.type != pafs.FileType.File:
            raise InputError(file.name, "is gone (deleted or replaced while bestfit ran)",
                             fix="restore the file, then rerun")
        size, mtime_ns = info.size, info.mtime_ns
    return Fingerprint(size, mtime_ns, input_format(file).signature(file))


def check_unchanged(files: Sequence[InputFile], taken: Sequence[Fingerprint]) -> None:
    """Raise ``InputError`` naming the first input whose fingerprint differs from the one taken before reading."""
    for file, before in zip(files, taken, strict=True):
        if file.is_stdin:
            continue
        now = fingerprint(file)
        changed = before.differences(now)
        if before.mtime_ns != now.mtime_ns:
            changed.append("modified time changed")
        if changed:
            raise InputError(file.name, f"changed while bestfit read it ({', '.join(changed)}), so the output could "
                             "mix old and new documents; no manifest was written",
                             fix="rerun once the input no longer changes (pack a copy that nothing writes to)")
