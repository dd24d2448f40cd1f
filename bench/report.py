"""Markdown tables of the last results (``python -m bench.report``), for docs/benchmarks.md."""

from __future__ import annotations

import json
from typing import Any

from .common import RESULTS


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def peers(data: dict[str, Any]) -> str:
    def cpu(runs: list[float]) -> str:
        return f"{sorted(runs)[len(runs) // 2]:.2f} s" if runs else "-"

    lines = ["| packer | median wall | runs (wall) | median CPU | sequences | bestfit's lead (wall, CPU) |",
             "|---|---:|---|---:|---:|---:|",
             f"| bestfit (`make_pieces` + `place`) | {data['bestfit_median_seconds']:.2f} s | "
             f"{', '.join(f'{s:.2f}' for s in data['bestfit_seconds'])} | {cpu(data.get('bestfit_cpu_seconds', []))} | "
             f"{data['sequences']:,} | |"]
    for name, peer in data["peers"].items():
        if "median_seconds" not in peer:
            lines.append(f"| {name} | not installed: {peer['why']} | | | | |")
            continue
        lines.append(f"| {name} {peer['version']} (`obfd` on the same pieces) | {peer['median_seconds']:.1f} s | "
                     f"{', '.join(f'{s:.1f}' for s in peer['seconds'])} | {cpu(peer.get('cpu_seconds', []))} | "
                     f"{peer['sequences']:,} | {peer['bestfit_speedup']}×, {peer.get('bestfit_speedup_cpu', '-')}× |")
    return "\n".join(lines)


def planner(data: dict[str, Any]) -> str:
    lines = ["| documents | ctx | long docs | sequences | bestfit | bucketed BFD (Python) | speed-up | textbook BFD "
             "(Python) | speed-up |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        ref = f"{r['reference_seconds']:.1f} s" if "reference_seconds" in r else "not run"
        tb = f"{r['textbook_seconds']:.1f} s" if "textbook_seconds" in r else "not run"
        speedup = f"{r['speedup']}×" if "speedup" in r else "-"
        tb_speedup = f"{r['textbook_speedup']}×" if "textbook_speedup" in r else "-"
        lines.append(f"| {r['documents']:,} | {r['ctx']} | {r['long_documents']:,} | {r['sequences']:,} | "
                     f"{r['bestfit_seconds']:.2f} s | {ref} | {speedup} | {tb} | {tb_speedup} |")
    return "\n".join(lines)


def end_to_end(data: dict[str, Any]) -> str:
    med = data["median_seconds"]
    cpu = data.get("median_cpu_seconds", {})
    lines = ["| run | median wall time | runs | median CPU | largest peak RSS |", "|---|---:|---|---:|---:|"]
    for key, label in (("copy", "pyarrow copy, 2 files in flight, no dictionary (zstd)"),
                       ("copy_fsync", "the same copy, each file fsynced"),
                       ("copy_with_bestfit_allocator_options", "the copy with bestfit's allocator options"),
                       ("pack_workers_2", "`bestfit pack --workers 2`"),
                       ("pack_workers_1", "`bestfit pack --workers 1`"),
                       ("two_workers_1_at_once", "two `bestfit pack --workers 1` at once (time for both)")):
        if key not in data:
            continue
        runs = ", ".join(f"{r['seconds']:.1f}" for r in data[key])
        peak = max(r["peak_rss_mib"] for r in data[key])
        lines.append(f"| {label} | {med[key]:.1f} s | {runs} | {cpu[key]:.1f} s | {peak:,} MiB |"
                     if key in cpu else f"| {label} | {med[key]:.1f} s | {runs} | - | {peak:,} MiB |")
    if "speedup_workers_2_over_1_per_round" in data:
        lines += ["", f"`--workers 2` over `--workers 1`: {data['speedup_workers_2_over_1']}× (rounds "
                      f"{', '.join(map(str, data['speedup_workers_2_over_1_per_round']))}); two independent runs at "
                      f"once: {data['speedup_two_independent_runs']}× (rounds "
                      f"{', '.join(map(str, data['speedup_two_independent_runs_per_round']))})"]
    return "\n".join(lines)


def memory(data: dict[str, Any]) -> str:
    lines = ["| corpus | input | windows | wall time | peak RSS |", "|---|---:|---:|---:|---:|"]
    for label, r in data["runs"].items():
        lines.append(f"| {label} | {r['input_bytes'] / 2**20:,.0f} MiB | {r['windows']} | {r['seconds']:.1f} s | "
                     f"{r['peak_rss_mib']:,} MiB |")
    b = data["memory_budget"]
    lines.append(f"| 10x with `--memory {b['budget']}` | | {b['windows']} | {b['seconds']:.1f} s | "
                 f"{b['peak_rss_mib']:,} MiB |")
    return "\n".join(lines)


def window_quality(data: dict[str, Any]) -> str:
    lines = ["| ctx | --window-tokens | windows | sequences | per-window bound | global bound | extra over global |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        lines.append(f"| {r['ctx']} | {r['window_tokens']:,} | {r['windows']} | {r['sequences']:,} | "
                     f"{r['windows_lower_bound']:,} | {r['sequences_lower_bound']:,} | "
                     f"{100 * r['extra_sequences_fraction']:.4f} % |")
    return "\n".join(lines)


def short_docs(data: dict[str, Any]) -> str:
    lines = ["| documents | tokens | `--memory` | windows | `pack` | `verify` | `pack --verify` |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["runs"]:
        cells = [f"{r[key]['peak_rss_mib']:,} MiB ({r[key]['seconds']:.0f} s)" for key in ("pack", "verify",
                                                                                             "pack_verify")]
        lines.append(f"| {r['documents']:,} of {r['corpus']} | {r['tokens']:,} | {r['budget']} | {r['windows']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def side_by_side(data: dict[str, Any], title: str) -> str:
    """The interleaved runs of one benchmark (``bench/timing.py``): medians, every run, CPU time and peak."""
    load = data.get("load_average", {})
    lines = [f"### {data['benchmark']} ({data['date']}, load average {load.get('before', ['?'])[0]:.1f} before, "
             f"{load.get('after', ['?'])[0]:.1f} after)\n", title + "\n",
             "| run | median wall | runs | median CPU | peak RSS |", "|---|---:|---|---:|---:|"]
    for name, row in data["runs"].items():
        runs = ", ".join(f"{s:.1f}" for s in row["seconds"])
        lines.append(f"| {name} | {row['median_seconds']:.1f} s | {runs} | {row.get('median_cpu_seconds', 0):.1f} s | "
                     f"{row['peak_rss_mib']:,} MiB |")
    return "\n".join(lines) + "\n"


def main() -> None:
    for name, render in (("planner", planner), ("peers", peers), ("end_to_end", end_to_end), ("memory", memory),
                         ("window_quality", window_quality), ("short_docs", short_docs)):
        data = _load(name)
        if data is not None:
            print(f"### {name} ({data['date']})\n\n{render(data)}\n")
    for name, ratio, what in (("jsonl", "pack_over_parse", "JSONL pack over the fastest per-line parse"),
                              ("verify", "verify_over_pack", "verify over pack"),
                              ("stats", "stats_over_lengths", "stats over a lengths-only read")):
        data = _load(name)
        if data is not None and "runs" in data:
            print(side_by_side(data, f"{what}: {data[ratio]}× wall, {data.get(ratio + '_cpu', '?')}× CPU"))
    stats = _load("stats")
    if stats is not None and "skipped" not in stats:
        print(f"### stats ({stats['date']})\n\nstats {stats['stats']['seconds']} s, lengths alone "
              f"{stats['lengths_only']['seconds']} s: {stats['stats_over_lengths']}x\n")


if __name__ == "__main__":
    main()
