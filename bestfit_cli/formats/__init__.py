"""Formats: one module per format, holding its input reader and, where it has one, its output writer.

Two registries: ``INPUT_FORMATS``, which the folder scan (``fs.py``) asks which files and folders are data and the
readers (``read.py``) ask how to read a file, and ``FORMATS`` (output), which ``--format`` names. A new input
format is one module with an ``InputFormat`` (``base.py``) and one entry in ``INPUT_FORMATS``; a new output
format one ``OutputFormat`` and one entry in ``FORMATS``. The pipeline, the writer and ``verify`` find both by name.
"""

from __future__ import annotations

from .arrow import ArrowInput
from .base import DatasetFolder, Folder, InputFormat, OutputFormat, PackedRows
from .jsonl import JsonlInput
from .megatron import MegatronFormat, MegatronInput
from .parquet import ParquetFormat, ParquetInput
from .stream import BIN_STREAM, NPY_STREAM

PARQUET: OutputFormat = ParquetFormat()
MEGATRON: OutputFormat = MegatronFormat()
FORMATS: dict[str, OutputFormat] = {"parquet": PARQUET, "megatron": MEGATRON}

# In the order the folder scan asks them: the first format that recognizes a file reads it.
# A .bin is Megatron when its .idx is beside it, else a token stream: Megatron is asked first.
INPUT_FORMATS: dict[str, InputFormat] = {fmt.name: fmt for fmt in (ParquetInput(), JsonlInput(), ArrowInput(),
                                                                   MegatronInput(), BIN_STREAM, NPY_STREAM)}


__all__ = ["FORMATS", "INPUT_FORMATS", "MEGATRON", "PARQUET", "ArrowInput", "DatasetFolder", "Folder", "InputFormat",
           "JsonlInput", "MegatronFormat", "OutputFormat", "PackedRows", "ParquetFormat", "ParquetInput"]
