"""The ratios issue 12 sets as targets, side by side, from the results this run wrote (``python -m bench`` prints
them at the end; ``python -m bench.targets`` prints them from whatever results are there)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from .common import RESULTS

Row = tuple[str, str, str, bool | None]  # what, measured, target, met (None: no target)


def _end_to_end(data: dict[str, Any]) -> Iterator[Row]:
    med = data["median_seconds"]
    yield ("Parquet pack --workers 2 / copy, 2 files in flight", f"{data['pack_over_copy']:.2f}x "
           f"({med['pack_workers_2']:.1f} s / {med['copy']:.1f} s)", "<= 1.1x", data["pack_over_copy"] <= 1.1)
    cpu = data.get("median_cpu_seconds")
    if cpu:
        yield ("  CPU time, pack --workers 2 / copy", f"{cpu['pack_workers_2'] / cpu['copy']:.2f}x "
               f"({cpu['pack_workers_2']:.1f} s / {cpu['copy']:.1f} s)", "", None)
    yield ("  the same against the copy with an fsync per file", f"{data['pack_over_copy_fsync']:.2f}x "
           f"({med['copy_fsync']:.1f} s)", "", None)
    if "pack_over_copy_with_bestfit_allocator_options" in data:
        yield ("  the same against the copy with bestfit's allocator options",
               f"{data['pack_over_copy_with_bestfit_allocator_options']:.2f}x "
               f"({med['copy_with_bestfit_allocator_options']:.1f} s)", "", None)
    peak = data["median_peak_rss_mib"]
    yield ("Parquet pack peak memory / copy's", f"{data['peak_over_copy']:.2f}x ({peak['pack_workers_2']:,.0f} MiB / "
           f"{peak['copy']:,.0f} MiB)", "<= 1.2x", data["peak_over_copy"] <= 1.2)
    yield ("pack --workers 2 speed-up over --workers 1", f"{data['speedup_workers_2_over_1']:.2f}x "
           f"({med['pack_workers_1']:.1f} s / {med['pack_workers_2']:.1f} s)", ">= 1.8x",
           data["speedup_workers_2_over_1"] >= 1.8)
    if "speedup_two_independent_runs" in data:
        yield ("  two independent --workers 1 runs at once (the machine's ceiling)",
               f"{data['speedup_two_independent_runs']:.2f}x ({med['two_workers_1_at_once']:.1f} s for both)", "", None)
    if "speedup_workers_2_over_1_per_round" in data:
        yield ("  per round: --workers 2 / --workers 1; the ceiling",
               " ".join(f"{x:.2f}" for x in data["speedup_workers_2_over_1_per_round"]) + "; "
               + " ".join(f"{x:.2f}" for x in data["speedup_two_independent_runs_per_round"]), "", None)


def _peers(data: dict[str, Any]) -> Iterator[Row]:
    planner = data["planner"]
    seconds = planner["median_seconds"]
    cpu_note = f" (CPU {planner['median_cpu_seconds']:.2f} s)" if "median_cpu_seconds" in planner else ""
    yield (f"planner: {planner['documents']:,} documents at ctx {data['ctx']}", f"{seconds:.2f} s{cpu_note}", "<= 8 s",
           seconds <= 8 if planner["documents"] >= 100_000_000 else None)
    fastest = data.get("fastest_peer")
    if fastest is None:
        yield ("planner lead over the fastest compiled peer", "no peer installed", ">= 8x", None)
        return
    peer = data["peers"][fastest]
    yield (f"planner lead over {fastest} {peer['version']} ({data['documents']:,} docs)",
           f"{data['lead_over_fastest_peer']:.1f}x ({peer['median_seconds']:.1f} s)", ">= 8x",
           data["lead_over_fastest_peer"] >= 8)
    if "bestfit_speedup_cpu" in peer:
        yield ("  the same in CPU time", f"{peer['bestfit_speedup_cpu']:.1f}x", "", None)


def _side_by_side(ratio: str, what: str, goal: float, floor: str) -> Callable[[dict[str, Any]], Iterator[Row]]:
    """A target of a benchmark that ran its contenders interleaved (``bench/timing.py``): wall ratio, then CPU."""

    def render(data: dict[str, Any]) -> Iterator[Row]:
        if ratio not in data:
            return
        yield (what, f"{data[ratio]:.2f}x of {floor}", f"<= {goal}x", data[ratio] <= goal)
        if ratio + "_cpu" in data:
            yield ("  CPU time", f"{data[ratio + '_cpu']:.2f}x", "", None)
        if "pack_workers_1_over_parse" in data:
            yield ("  pack --workers 1", f"{data['pack_workers_1_over_parse']:.2f}x", "", None)

    return render


def _ray_engine(data: dict[str, Any]) -> Iterator[Row]:
    med = {name: run["median_seconds"] for name, run in data["runs"].items()}
    yield ("issue 11: --engine ray, 1 node / local --workers 1", f"{data['ray_1_node_over_local_1_worker']:.2f}x "
           f"({med['ray_nodes_1']:.1f} s / {med['local_workers_1']:.1f} s)", "", None)
    yield ("issue 11: --engine ray speed-up, 2 nodes over 1", f"{data['speedup_ray_2_nodes_over_1']:.2f}x "
           f"({med['ray_nodes_1']:.1f} s / {med['ray_nodes_2']:.1f} s)", "", None)


SOURCES: dict[str, Callable[[dict[str, Any]], Iterator[Row]]] = {
    "end_to_end": _end_to_end, "peers": _peers,
    "jsonl": _side_by_side("pack_over_parse", "JSONL pack / per-line parse", 1.2, "the fastest parser"),
    "stats": _side_by_side("stats_over_lengths", "stats / lengths-only pyarrow read", 1.1, "the read"),
    "verify": _side_by_side("verify_over_pack", "verify / pack of the same output", 1.2, "pack"),
    "ray_engine": _ray_engine,
}


def rows(since: float | None = None) -> list[tuple[Row, dict[str, Any]]]:
    """Every target row of the results present (written at or after ``since``, a time.time(), when given)."""
    found = []
    for name, render in SOURCES.items():
        path = RESULTS / f"{name}.json"
        if not path.exists() or (since is not None and path.stat().st_mtime < since):
            continue
        data = json.loads(path.read_text())
        found.extend((row, data) for row in render(data))
    return found


def table(since: float | None = None) -> str:
    lines = [f"{'target':55s} {'measured':42s} {'goal':8s} met  load (1 min) / date"]
    for (what, measured, goal, met), data in rows(since):
        verdict = "-" if met is None else ("yes" if met else "NO")
        load_average = data.get("load_average", [float("nan")])
        if isinstance(load_average, dict):  # {"before": [...], "after": [...]}
            load_average = load_average.get("before", [float("nan")])
        load = load_average[0]
        lines.append(f"{what:55s} {measured:42s} {goal:8s} {verdict:4s} {load:4.1f} / {data['date']}")
    return "\n".join(lines)


def main() -> None:
    print(table())


if __name__ == "__main__":
    main()
