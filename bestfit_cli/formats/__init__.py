"""Output formats: one module per format, and the registry ``--format`` asks.

A format turns a shard's ``PackedRows`` into bytes (``base.OutputFormat``). Adding one is a new module here and
one entry in ``FORMATS``; the pipeline and the writer find it by name.
"""

from __future__ import annotations

from .base import OutputFormat, PackedRows
from .parquet import ParquetFormat

PARQUET: OutputFormat = ParquetFormat()
FORMATS: dict[str, OutputFormat] = {"parquet": PARQUET}

__all__ = ["FORMATS", "PARQUET", "OutputFormat", "PackedRows", "ParquetFormat"]
