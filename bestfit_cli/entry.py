"""The ``bestfit`` command's entry point (``bestfit`` and ``python -m bestfit_cli``).

A process started as ``bestfit`` is bestfit's own, so it may set what only such a process should: here, before
pyarrow is loaded (its allocator reads these once, when it starts), the options of that allocator. A program that
imports ``bestfit_cli`` as a library keeps its own.
"""

from __future__ import annotations

import os

# pyarrow allocates through mimalloc, which hands freed memory back to the system after a delay. A pack frees and
# allocates a decoded batch, a page or a gathered run every few milliseconds; with a short delay the same memory went
# back and came again all run long: each return costs the other core a TLB flush, each comeback a page fault and a
# zeroed page (2 MiB at a time: about 2 s of a 20 s pack went to zeroing pages, by `perf record`). Kept for 1 s, it
# is reused instead. Measured (docs/benchmarks.md, §2 and §3): a pack of 841 MiB of Parquet took 13.5-13.8 s with
# 1 s against 17.4-18.6 s with 10 ms, with a peak of 692-697 MiB against 607-608 MiB; 10 s bought no more speed.
# pyarrow 22 and newer (mimalloc 3) keep freed memory 1 s already; pyarrow 21 (mimalloc 2.2) keeps it 10 ms, and
# pyarrow 15-20 (mimalloc 2.0, where the option is called decommit_delay) 25 ms. Both names are set, so every
# pyarrow bestfit supports runs as the newest do by default.
ALLOCATOR_OPTIONS = {"MIMALLOC_PURGE_DELAY": "1000", "MIMALLOC_DECOMMIT_DELAY": "1000"}


def main() -> None:
    for name, value in ALLOCATOR_OPTIONS.items():
        os.environ.setdefault(name, value)  # a value the user set wins
    from .cli import main as run

    run()
