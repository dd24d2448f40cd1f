"""Run every benchmark: ``python -m bench [--only NAME ...] [--quick] [--keep]``.

Generated data goes to ``bench/results/tmp`` (or ``$BESTFIT_BENCH_TMP``) and is removed at the end; results go to
``bench/results/*.json`` and are summarised in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import compileall
import time
from pathlib import Path

from . import (
    encoding,
    end_to_end,
    jsonl_bench,
    peers,
    planner,
    ray_bench,
    reader,
    short_docs,
    stats_bench,
    targets,
    verify_bench,
    window_quality,
)
from .common import log, remove, scratch_dir
from .corpus import build

BENCHMARKS = ("planner", "peers", "windows", "end_to_end", "encoding", "memory", "stats", "short_docs", "reader",
              "jsonl", "verify", "ray")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="run only these (repeatable)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for trying the benchmarks out")
    parser.add_argument("--peer-docs", type=int, help="documents the compiled peers pack (default 100M, 10M with "
                        "--quick); the planner's 100M target is timed at 100M whatever this says")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpus")
    args = parser.parse_args()
    chosen = set(args.only or BENCHMARKS)
    # Every contender runs bestfit from byte-compiled modules, as an installed package does: with
    # PYTHONDONTWRITEBYTECODE set (as on the machines these figures come from) each run would compile its
    # modules from source first, about 0.15 s of CPU a run that no user pays.
    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "bestfit_cli"), quiet=1)
    started = time.perf_counter()
    started_at = time.time()
    scratch = scratch_dir()
    try:
        if "planner" in chosen:
            sizes = [1_000_000, 10_000_000] if args.quick else [1_000_000, 10_000_000, 100_000_000]
            planner.main(sizes, reference_sizes=[1_000_000, 10_000_000], textbook_sizes=[1_000_000, 10_000_000],
                         ctxs=[2048, 8192])
        if "peers" in chosen:
            peers.main(args.peer_docs or (10_000_000 if args.quick else 100_000_000), ctx=2048, repeats=3)
        if "windows" in chosen:
            window_quality.main(scratch, [2048, 8192])
        if chosen & {"end_to_end", "memory", "stats", "encoding", "verify"}:
            # About 1 GB of Parquet: 23 copies of the 43 MB shared corpora (1x = 2 copies, 10x = 20 copies).
            copies = 4 if args.quick else 23
            folders = build(scratch / "corpus", copies)
            if "end_to_end" in chosen:
                end_to_end.end_to_end(folders, scratch)
            if "memory" in chosen:
                one = folders[: max(1, copies // 10)]
                end_to_end.memory(one, folders[: 10 * len(one)], scratch, window_tokens=1 << 24)
            if "stats" in chosen:
                stats_bench.main(folders, repeats=2 if args.quick else 3)
            if "encoding" in chosen:
                encoding.main(folders[:1], scratch)
            if "verify" in chosen:
                # verify re-reads the inputs and every shard; a third of the corpus keeps three rounds short.
                verify_bench.main(folders[: max(1, copies // 3)], scratch, repeats=2 if args.quick else 3)
        if "short_docs" in chosen:
            short_docs.main(scratch, scale=0.25 if args.quick else 1.0)
        if "reader" in chosen:
            # The shared corpora once (43 MB of Parquet, 30M tokens), packed in several windows, then read back.
            reader.main(build(scratch / "reader-corpus", 1), scratch, repeats=2 if args.quick else 3)
        if "jsonl" in chosen:
            # About 650 MB of JSONL (4 copies of the shared corpora's 30M tokens).
            jsonl_bench.main(scratch, copies=1 if args.quick else 4, repeats=2 if args.quick else 3)
        if "ray" in chosen:
            # --engine ray against --engine local, one node against two (a real cluster on loopback; needs the
            # ray extra): 2 copies of the shared corpora, 60M tokens in 15 windows of 4M tokens.
            ray_bench.main(build(scratch / "ray-corpus", 1 if args.quick else 2), scratch,
                           repeats=2 if args.quick else 3)
    finally:
        if not args.keep:
            remove(scratch)
    log(f"done in {time.perf_counter() - started:.0f}s; results in bench/results/")
    summary = targets.table(since=started_at)
    if summary.count("\n"):
        print(summary)


if __name__ == "__main__":
    main()
