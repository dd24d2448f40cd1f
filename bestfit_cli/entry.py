"""The ``bestfit`` command's entry point (``bestfit`` and ``python -m bestfit_cli``).

A process started as ``bestfit`` is bestfit's own, so it may set what only such a process should: here, before
pyarrow is loaded (its allocator reads these once, when it starts), the options of that allocator. A program that
imports ``bestfit_cli`` as a library keeps its own.
"""

from __future__ import annotations

import os

# pyarrow allocates through mimalloc, which by default hands memory back to the system 10 ms after it is freed. A
# pack frees and allocates a decoded batch, a page or a gathered run every few milliseconds, so the same memory went
# back and came again all run long: each return costs the other core a TLB flush, each comeback a page fault and a
# zeroed page (2 MiB at a time: about 2 s of a 20 s pack went to zeroing pages, by `perf record`). Kept for 10 s,
# it is reused instead. Measured on the 0.95 GiB end-to-end corpus (docs/benchmarks.md, §2): page faults of a
# --workers 2 pack 129k → 28k, system time 3.2 → 2.4 s, wall 18.9 → 17.2 s; peak memory +5 % (at most the memory
# pyarrow held at once, since kept memory is what the next allocations take first).
ALLOCATOR_OPTIONS = {"MIMALLOC_PURGE_DELAY": "10000"}


def main() -> None:
    for name, value in ALLOCATOR_OPTIONS.items():
        os.environ.setdefault(name, value)  # a value the user set wins
    from .cli import main as run

    run()
