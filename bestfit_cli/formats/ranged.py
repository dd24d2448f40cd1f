"""Random access to the fixed-width arrays of a binary input (Megatron's ``.bin``/``.idx``, flat token streams).

A local file is memory-mapped (numpy ``memmap``): a slice costs no copy and the pages it touches are the kernel's
to drop again, so reading a file of any size holds about one batch at a time. On an object store each slice is one
ranged read of exactly its bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import InputError


class ByteRanges:
    """``array(offset, count, dtype)``: ``count`` values of ``dtype`` starting at byte ``offset`` of one file."""

    def __init__(self, name: str, fs: pafs.FileSystem, fs_path: str, size: int) -> None:
        self.name, self.size = name, size
        self._map: np.ndarray | None = None
        self._file: Any = None
        try:
            if isinstance(fs, pafs.LocalFileSystem):
                if size:
                    self._map = np.memmap(fs_path, dtype=np.uint8, mode="r", shape=(size,))
            else:
                self._file = fs.open_input_file(fs_path)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise InputError(name, f"cannot be read ({str(exc).splitlines()[0] if str(exc) else exc})",
                             fix="check the file and its permissions") from None

    def array(self, offset: int, count: int, dtype: np.dtype[Any]) -> np.ndarray:
        nbytes = count * dtype.itemsize
        if count == 0:
            return np.empty(0, dtype=dtype)
        if offset < 0 or offset + nbytes > self.size:
            raise InputError(self.name, f"bytes {offset:,} to {offset + nbytes:,} lie beyond its end at "
                                        f"{self.size:,} bytes (truncated?)", fix="re-create or restore the file")
        try:
            if self._map is not None:
                return self._map[offset:offset + nbytes].view(dtype)
            return np.frombuffer(self._file.read_at(nbytes, offset), dtype=dtype)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(self.name, f"cannot be read ({str(exc).splitlines()[0] if str(exc) else exc})",
                             fix="check the disk or the connection, then rerun") from None

    def close(self) -> None:
        self._map = None
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> ByteRanges:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def open_ranges(name: str, fs: pafs.FileSystem | None, fs_path: str, size: int | None = None) -> ByteRanges:
    """The byte ranges of a file; its size is asked of the filesystem when not known."""
    assert fs is not None
    if size is None:
        try:
            info = fs.get_file_info(fs_path)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(name, f"cannot be read ({exc})", fix="check the path and its permissions") from None
        if info.type != pafs.FileType.File:
            raise InputError(name, "does not exist", fix="restore the file, or leave its dataset out of the inputs")
        size = int(info.size)
    return ByteRanges(name, fs, fs_path, size)
