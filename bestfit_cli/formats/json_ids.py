"""Token ids of many JSON arrays at once, parsed with numpy instead of one Python int at a time.

The JSONL reader's fast path: a JSON decoder checks each line and hands on the text of its token-id array
unparsed (``msgspec.Raw``); ``flat_id_arrays`` then reads the ids of a whole batch of such texts with a few
vectorised passes over their bytes. It takes only what it can read exactly: every text a flat array of
non-negative integers of at most 8 digits (every tokenizer's vocabulary fits), and answers None for anything
else, which the reader then parses line by line with its exact messages.

The ids are read eight bytes at a time: each number's first eight bytes are loaded as one little-endian
``uint64``, shifted so the number's digits end at its top byte, and the eight digits are combined pairwise in
three multiply-and-shift steps (the SIMD-within-a-register way of reading eight decimal digits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_DIGITS = 8  # one uint64 holds the digits of a number read in one load
# Every byte a flat array of non-negative integers may hold, except its opening bracket (JSON whitespace too).
_ARRAY_BYTES = b"0123456789,] \t\r\n"
_OPEN = ord("[")
_PAD = b"\0" * MAX_DIGITS  # after the last text, so every number's eight-byte load stays inside the buffer
_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_PAIRS = (  # (multiplier, shift, mask of the result) of the three steps: 2 digits, 4 digits, 8 digits
    (np.uint64(10 * 256 + 1), np.uint64(8), np.uint64(0x00FF00FF00FF00FF)),
    (np.uint64(100 * 65536 + 1), np.uint64(16), np.uint64(0x0000FFFF0000FFFF)),
    (np.uint64(10000 * (1 << 32) + 1), np.uint64(32), None),
)


def flat_id_arrays(texts: Sequence[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The ids of every text (bytes-like, each one whole, valid JSON value) and each text's count of them, as int64
    arrays; None unless every text is a flat array of non-negative integers of at most ``MAX_DIGITS`` digits.

    Validity is the caller's: these bytes are only checked for what a valid JSON value can still be that is not
    such an array (a string, an object, a float, a negative number, ``true``, a nested array, a long number).
    """
    n_texts = len(texts)
    if not n_texts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    data = b"".join([*texts, _PAD])
    size = len(data) - len(_PAD)
    # Only array bytes, and exactly one "[" a text, each its first byte (below): every text a flat array.
    if data[:size].translate(None, _ARRAY_BYTES) != b"[" * n_texts:
        return None
    starts = np.zeros(n_texts + 1, dtype=np.int64)
    np.cumsum([len(t) for t in texts], out=starts[1:])
    buffer = np.frombuffer(data, dtype=np.uint8)
    if not (buffer[starts[:-1]] == _OPEN).all():
        return None
    digit = np.less(np.subtract(buffer[:size], 48, dtype=np.uint8), 10)
    # Where a run of digits starts or ends (after byte ``edges[i]``); the buffer's first and last bytes are
    # brackets, so starts and ends alternate.
    edges = np.flatnonzero(digit[1:] != digit[:-1])
    before = edges[0::2]  # the byte before each number
    shift = edges[1::2] - before  # its digit count ...
    if len(shift) and int(shift.max()) > MAX_DIGITS:
        return None
    shift *= -8  # ... made the left shift that drops the bytes after its last digit: 8 * (8 - digits)
    shift += 64
    loads = np.ndarray((size - 1,), dtype="<u8", buffer=data, offset=1, strides=(1,))  # 8 bytes from each byte
    values = loads[before]
    values <<= shift.view(np.uint64)
    values &= _LOW_NIBBLES  # ASCII digits to their values (the zero bytes the shift brought in stay zero)
    for multiplier, step, mask in _PAIRS:
        values *= multiplier
        values >>= step
        if mask is not None:
            values &= mask
    counts = np.diff(np.searchsorted(before, starts))  # a text's numbers: those after its "["
    return values.view(np.int64), counts
