"""Benchmark: a multi-window ``--engine ray`` pack of one large Megatron dataset and one large Arrow stream, with
this tree's code against an earlier commit's (before window tasks entered those files where their rows start).

    .venv/bin/python -m bench.ray_seek_bench --before 8f85627 [--tokens 268435456] [--window-tokens 4194304]

Each version gets its own one-node Ray cluster on loopback (tests/ray_cluster.py, one CPU), whose workers and
driver import that version (``PYTHONPATH``: the earlier commit's ``bestfit_cli`` exported with ``git archive``);
runs alternate between the versions, and both outputs are compared byte for byte. Times are what a user waits for
(the command's start to its exit). Not part of ``python -m bench``: it compares against a commit, not a target.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from tests.ray_cluster import CLIENT_ENV, RayCluster

ROOT = Path(__file__).resolve().parent.parent


def make_inputs(folder: Path, tokens: int) -> list[Path]:
    """``big.bin``/``big.idx`` (Megatron, uint16, one sequence a document) and ``big.arrow`` (an IPC stream of
    1,000 rows a record batch, as ``save_to_disk`` writes): the same documents of 1 to 1,999 tokens."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 2000, tokens // 1000)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), tokens)]
    ids = rng.integers(1, 50_000, int(lengths.sum()), dtype=np.uint16)
    ids.tofile(folder / "big.bin")
    n = len(lengths)
    head = b"MMIDIDX\x00\x00" + np.array([1], "<u8").tobytes() + bytes([8]) + np.array([n, n + 1], "<u8").tobytes()
    pointers = (np.cumsum(lengths) - lengths) * 2
    (folder / "big.idx").write_bytes(head + lengths.astype("<i4").tobytes() + pointers.astype("<i8").tobytes()
                                     + np.arange(n + 1, dtype="<i8").tobytes())
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    table = pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids.astype(np.int32)))})
    with pa.ipc.new_stream(str(folder / "big.arrow"), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1000):
            writer.write_batch(batch)
    return [folder / "big.bin", folder / "big.arrow"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="the commit to compare with")
    parser.add_argument("--tokens", type=int, default=1 << 28)
    parser.add_argument("--window-tokens", type=int, default=1 << 22)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bestfit-seek-bench-") as scratch:
        root = Path(scratch)
        (root / "before").mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "bestfit_cli"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root / "before")], input=archive, check=True)
        versions = {"before": str(root / "before"), "after": str(ROOT)}
        (root / "data").mkdir()
        inputs = make_inputs(root / "data", args.tokens)
        clusters = {}
        saved = dict(os.environ)
        try:
            for name, path in versions.items():
                os.environ["PYTHONPATH"] = path  # the cluster's workers import this version
                clusters[name] = RayCluster(nodes=1).__enter__()
            os.environ.clear()
            os.environ.update(saved)
            times: dict[str, list[float]] = {}
            for source in inputs:
                for _ in range(args.repeats):
                    for name, path in versions.items():
                        out = root / f"out-{name}"
                        subprocess.run(["rm", "-rf", str(out)], check=True)
                        command = [sys.executable, "-m", "bestfit_cli", "pack", str(source), str(out), "--ctx",
                                   "2048", "--window-tokens", str(args.window_tokens), "-q", "--engine", "ray",
                                   "--ray-address", clusters[name].address]
                        start = time.monotonic()
                        done = subprocess.run(command, capture_output=True, text=True, cwd=scratch,
                                              env={**os.environ, **CLIENT_ENV, "PYTHONPATH": path})
                        elapsed = time.monotonic() - start
                        if done.returncode:
                            raise SystemExit(done.stderr)
                        windows = len(json.loads((out / "manifest.json").read_text())["windows"])
                        times.setdefault(f"{source.name} {name}", []).append(elapsed)
                        print(f"{source.name} {name}: {elapsed:.1f} s, {windows} windows, load "
                              f"{os.getloadavg()[0]:.1f}", flush=True)
                    same = [{p.name: p.read_bytes() for p in (root / f"out-{n}").iterdir()} for n in versions]
                    if same[0] != same[1]:
                        raise SystemExit(f"{source.name}: the two versions' outputs differ")
        finally:
            for cluster in clusters.values():
                cluster.__exit__(None, None, None)
        for key, values in times.items():
            print(f"{key}: median {statistics.median(values):.1f} s ({', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
