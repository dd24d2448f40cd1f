"""Where a ``pack``'s resident memory is, over the run: ``python -m bench.memory_trace [--every S] -- PACK-ARGS...``.

Runs ``bestfit pack PACK-ARGS`` in this process, as the ``bestfit`` command runs it (its allocator options set
before pyarrow loads), and samples every ``--every`` seconds: the process's resident memory, what pyarrow has
allocated (``pa.total_allocated_bytes``: decoded batches, encoded pages) and what glibc's malloc holds (numpy's
arrays: ``mallinfo2``'s mmapped blocks and heap). What is left of the resident memory is the interpreter and its
libraries, and the memory pyarrow's allocator keeps for reuse after it is freed (``entry.ALLOCATOR_OPTIONS``).
Prints, for each twelfth of the run, the sample of highest resident memory, then the run's peak (``VmHWM``):
whether the peak grows with the run or is the highest of highs that come and go (docs/benchmarks.md, §3).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import threading
import time
from typing import Any


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _status_mib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_trace", description=__doc__)
    parser.add_argument("--every", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("pack_args", nargs=argparse.REMAINDER, help="-- then the arguments of bestfit pack")
    args = parser.parse_args()
    pack_args = args.pack_args[1:] if args.pack_args[:1] == ["--"] else args.pack_args

    from bestfit_cli.entry import ALLOCATOR_OPTIONS

    for name, value in ALLOCATOR_OPTIONS.items():
        os.environ.setdefault(name, value)
    import pyarrow as pa

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    samples: list[tuple[float, int, int, int, int]] = []
    done = threading.Event()

    def sample() -> None:
        started = time.perf_counter()
        while not done.is_set():
            heap = libc.mallinfo2()
            samples.append((time.perf_counter() - started, _status_mib("VmRSS"), pa.total_allocated_bytes() >> 20,
                            heap.hblkhd >> 20, heap.arena >> 20))
            done.wait(args.every)

    sampler = threading.Thread(target=sample, name="memory-trace", daemon=True)
    sampler.start()
    from bestfit_cli.cli import main as bestfit

    sys.argv = ["bestfit", "pack", *pack_args]
    code: Any = 0
    try:
        bestfit()
    except SystemExit as exc:
        code = exc.code
    finally:
        done.set()
        sampler.join()
    print(f"{'seconds':>8} {'RSS MiB':>8} {'pyarrow':>8} {'malloc mmapped':>15} {'malloc heap':>12} {'rest':>6}",
          file=sys.stderr)
    step = max(1, len(samples) // 12)
    for lo in range(0, len(samples), step):
        at, rss, arrow, mapped, heap = max(samples[lo:lo + step], key=lambda s: s[1])
        print(f"{at:8.1f} {rss:8d} {arrow:8d} {mapped:15d} {heap:12d} {rss - arrow - mapped - heap:6d}",
              file=sys.stderr)
    print(f"peak resident memory (VmHWM): {_status_mib('VmHWM')} MiB", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
