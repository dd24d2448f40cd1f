"""Output formats: one module per format, and the registry ``--format`` asks.

A format turns a shard's ``PackedRows`` into the bytes of its files and back (``base.OutputFormat``). Adding one
is a new module here and one entry in ``FORMATS``; the pipeline, the writer and ``verify`` find it by name.
"""

from __future__ import annotations

from .base import OutputFormat, PackedRows
from .megatron import MegatronFormat
from .parquet import ParquetFormat

PARQUET: OutputFormat = ParquetFormat()
MEGATRON: OutputFormat = MegatronFormat()
FORMATS: dict[str, OutputFormat] = {"parquet": PARQUET, "megatron": MEGATRON}

__all__ = ["FORMATS", "MEGATRON", "PARQUET", "MegatronFormat", "OutputFormat", "PackedRows", "ParquetFormat"]
