"""How deep JSON may nest, one limit for every way bestfit reads it: JSON Lines lines, and the JSON files it
reads whole (a manifest, a report, a histogram, a dataset's ``state.json``).

``json.loads`` and msgspec both stop at what the caller's stack leaves of Python's recursion limit (1,000): about
990 levels from a shallow stack, 190 from 800 frames down, and the parse workers' stack is not the reading
process's. So each path would take or refuse a deep line by where it was called from. Every path instead refuses
a line nested deeper than ``MAX_DEPTH`` (the fast paths hand such a line to ``json.loads``, which ``loads``
guards) and reads any line within it, on a fresh thread when the caller's stack has no room left for it. A whole
file goes through ``loads`` too, so the same manifest is never read from one call and refused from a deeper one, and
what bestfit reads can be walked and written again without running out of stack.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

MAX_DEPTH = 512  # the line's own object is level 1
# A line nested deeper than MAX_DEPTH holds at least this many bytes of brackets (an opening and a closing one a
# level): a line or the part of it besides a field shorter than this needs no look.
DEEP_BYTES = 2 * (MAX_DEPTH + 1)
_OPENERS = b"[{"
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


class TooDeep(ValueError):
    """A JSON line nested deeper than ``MAX_DEPTH``."""


def too_deep(raw: bytes | bytearray | memoryview) -> bool:
    """Whether the line's containers nest deeper than ``MAX_DEPTH``, brackets inside strings not counted.

    Nearly every line holds fewer than ``MAX_DEPTH`` opening brackets at all, which one vectorised count shows
    (about 0.3 ns a byte, a third of what msgspec takes to read the line). A line with more is measured exactly:
    msgspec reads it once more, handing over its top-level values as text, so a long string (a document's text
    full of brackets) is never scanned again; a value that is not a string, or a line msgspec does not take, has
    its strings cut out and its brackets summed (``_depth``)."""
    if len(raw) < DEEP_BYTES or _openings(raw) <= MAX_DEPTH:
        return False
    fields = _fields(raw)
    if fields is None:
        return _depth(raw) > MAX_DEPTH
    return any(len(value) >= DEEP_BYTES - 2 and memoryview(value)[0] in _OPENERS and _openings(value) >= MAX_DEPTH
               and _depth(value) >= MAX_DEPTH for value in fields)  # a string, a number: no nesting


def _openings(text: bytes | bytearray | memoryview) -> int:
    codes = np.frombuffer(text, dtype=np.uint8)
    return int(np.count_nonzero((codes | 0x20) == 0x7B))  # "[" | 0x20 is "{"


def _depth(text: bytes | bytearray | memoryview) -> int:
    """The deepest the text's containers nest. Exact for valid JSON; for text that is not, exact up to its first
    error, the most ``json.loads`` reads of it, so a line this calls shallow enough never runs out of room there."""
    codes = np.frombuffer(_STRING.sub(b'""', bytes(text)), dtype=np.uint8) | 0x20  # "[" "]" to "{" "}"
    steps = (codes == 0x7B).astype(np.int32)
    steps -= codes == 0x7D
    return int(np.cumsum(steps).max(initial=0))


@functools.cache
def _fields_decoder() -> tuple[Callable[[bytes | bytearray | memoryview], dict[str, Any]],
                               tuple[type[Exception], ...]] | None:
    """msgspec's decoder of a JSON object to its values' texts (``msgspec.Raw``) and what it raises; None
    without msgspec."""
    try:
        import msgspec
    except ImportError:
        return None
    return msgspec.json.Decoder(dict[str, msgspec.Raw]).decode, (msgspec.DecodeError, RecursionError)


def _fields(raw: bytes | bytearray | memoryview) -> list[Any] | None:
    """The texts of the line's top-level values, or None: no msgspec, not a JSON object, or bytes left unaccounted
    for that could hide a deep value (whitespace, or a field named twice, whose first value the decoded object
    drops)."""
    decoder = _fields_decoder()
    if decoder is None:
        return None
    decode, rejected = decoder
    try:
        fields = decode(raw)
    except rejected:
        return None
    # Every byte of the line but whitespace: braces, each key with its quotes and colon, each value, the commas
    # (a key's characters are at most its bytes, so escapes only make the unaccounted part look larger).
    accounted = 2 + sum(len(key) + 3 + len(value) for key, value in fields.items()) + max(len(fields) - 1, 0)
    if len(raw) - accounted >= DEEP_BYTES - 2:
        return None
    return list(fields.values())


def loads(raw: bytes | bytearray) -> Any:
    """``json.loads`` of one line or one whole JSON file, whatever the depth of the caller's stack: ``TooDeep`` (a
    ``ValueError``) for text nested deeper than ``MAX_DEPTH``; text within it that the caller's stack has no room
    for is parsed on a fresh thread."""
    if too_deep(raw):
        raise TooDeep(f"nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(raw)
    except RecursionError:  # the caller's stack is deep, not the line (json.loads counts both on one limit)
        pass
    outcome: list[Any] = []

    def parse() -> None:
        try:
            outcome.append(json.loads(raw))
        except Exception as exc:  # handed to the caller, as though raised there
            outcome.append(exc)

    thread = threading.Thread(target=parse, name="bestfit-json-line")
    thread.start()
    thread.join()
    if isinstance(outcome[0], RecursionError):  # no room even on a fresh stack: a recursion limit set below 600
        raise TooDeep(f"nested deeper than Python's recursion limit ({sys.getrecursionlimit()}) allows")
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]
