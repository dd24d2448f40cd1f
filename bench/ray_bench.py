"""Benchmark: ``--engine ray`` against ``--engine local`` on the same data, and one Ray worker node against two.

The cluster is real and on loopback (tests/ray_cluster.py: one CPU a node, ports picked free, its own folder). It
starts with one node; the local engine with one worker (the same single CPU) and the Ray engine run interleaved,
which gives the overhead ratio; then a second node joins, and the Ray engine (and the local engine with two workers,
for reference) run interleaved again, which gives the speed-up from one node to two. Every time is what a user
waits for: the driver's connection to the cluster, the plan, the tasks and the commit. Every output is compared
byte for byte with the first local one, as the tests do. CPU seconds are the driver's (and its children's) only:
the workers are the cluster's processes, not the driver's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tests.ray_cluster import CLIENT_ENV, RayCluster

from .common import BESTFIT, Run, dir_bytes, log, remove, save
from .timing import interleaved, summary

CTX = 2048
EOS = 100257


def _digest(out: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(out.iterdir()):
        sha.update(path.name.encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def main(folders: list[Path], scratch: Path, window_tokens: int = 1 << 22, repeats: int = 3) -> dict[str, Any]:
    outputs: dict[str, Path] = {}
    digests: dict[str, set[str]] = {}

    def pack(name: str, *extra: str) -> Any:
        out = scratch / f"ray-bench-{name}"  # the contender's own OUT
        outputs[name] = out
        return lambda: [*BESTFIT, "pack", *map(str, folders), str(out), "--ctx", str(CTX), "--eos-id", str(EOS),
                        "--quiet", "--json", "--window-tokens", str(window_tokens), *extra]

    def check_and_remove(name: str) -> None:
        digests.setdefault(name, set()).add(_digest(outputs[name]))
        remove(outputs[name])

    os.environ.update(CLIENT_ENV)  # the drivers' environment: no usage reports, no token authentication
    load_before = os.getloadavg()
    with RayCluster(nodes=1) as cluster:
        ray = ["--engine", "ray", "--ray-address", cluster.address]
        log(f"one Ray node on loopback ({cluster.address}): local --workers 1 against --engine ray, {repeats} rounds")
        one = interleaved({"local_workers_1": pack("local_workers_1", "--workers", "1"),
                           "ray_nodes_1": pack("ray_nodes_1", *ray)}, repeats, after=check_and_remove)
        cluster.add_node()
        log(f"two Ray nodes: --engine ray against local --workers 2, {repeats} rounds")
        two = interleaved({"ray_nodes_2": pack("ray_nodes_2", *ray),
                           "local_workers_2": pack("local_workers_2", "--workers", "2")},
                          repeats, after=check_and_remove)
    runs: dict[str, list[Run]] = {**one, **two}
    if len(set().union(*digests.values())) != 1:
        raise RuntimeError(f"--engine ray wrote other bytes than --engine local: {digests}")
    report = json.loads(runs["local_workers_1"][-1].stdout)
    med = {name: summary(r) for name, r in runs.items()}
    payload = {
        "ctx": CTX, "window_tokens": window_tokens, "repeats": repeats,
        "input_bytes": sum(dir_bytes(f) for f in folders), "input_tokens": report["input_tokens"],
        "windows": report["windows"], "byte_identical": True, "runs": med,
        "ray_1_node_over_local_1_worker": round(med["ray_nodes_1"]["median_seconds"]
                                                / med["local_workers_1"]["median_seconds"], 2),
        "speedup_ray_2_nodes_over_1": round(med["ray_nodes_1"]["median_seconds"]
                                            / med["ray_nodes_2"]["median_seconds"], 2),
        "ray_2_nodes_over_local_2_workers": round(med["ray_nodes_2"]["median_seconds"]
                                                  / med["local_workers_2"]["median_seconds"], 2),
        "load_average": load_before, "load_average_after": os.getloadavg(),
    }
    log(f"--engine ray on one node: {payload['ray_1_node_over_local_1_worker']}x the local engine's time with one "
        f"worker; two nodes {payload['speedup_ray_2_nodes_over_1']}x faster than one")
    save("ray_engine", payload)
    return payload
