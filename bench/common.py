"""Shared helpers of the benchmarks: where data and results go, timing, peak memory of a child process."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SHARED_CORPORA = ROOT.parent / "shared" / "corpora"
BESTFIT = [sys.executable, "-m", "bestfit_cli"]


def scratch_dir() -> Path:
    """Where generated data goes (removed afterwards); ``BESTFIT_BENCH_TMP`` overrides it."""
    path = Path(os.environ.get("BESTFIT_BENCH_TMP", RESULTS / "tmp"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine() -> dict[str, Any]:
    import numpy
    import pyarrow

    return {"cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "numpy": numpy.__version__, "pyarrow": pyarrow.__version__,
            "platform": platform.platform()}


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
               **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_bytes: int
    stdout: str
    cpu_seconds: float = 0.0  # user + system time of the process and its children (less sensitive to load)
    helper_peak_rss_bytes: int = 0  # the largest helper process the command started (JSONL parse workers)


def run(cmd: list[str], *, env: dict[str, str] | None = None) -> Run:
    """Run a command to completion; its wall time and the peak resident memory of that one process.

    The command is started through ``bench.peak``, a small launcher, so its peak is its own (see there).
    """
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.run([sys.executable, "-m", "bench.peak", *cmd], stdout=subprocess.PIPE, stderr=errors,
                              cwd=ROOT, env={**os.environ, **(env or {})}, check=False)
        errors.seek(0)
        return _measured(cmd, proc.returncode, proc.stdout, errors.read())


def _measured(cmd: list[str], returncode: int, stdout: bytes, stderr: bytes) -> Run:
    """A ``bench.peak`` run's measures, from the JSON line it ends its stderr with."""
    lines = stderr.decode().strip().splitlines()
    if returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({returncode}): {chr(10).join(lines[-20:])}")
    measured = json.loads(lines[-1])
    return Run(measured["seconds"], measured["peak_rss_bytes"], stdout.decode(), measured["cpu_seconds"],
               measured.get("helper_peak_rss_bytes", 0))


def run_together(cmds: list[list[str]]) -> tuple[float, list[Run]]:
    """Run commands at the same time, each through ``bench.peak`` as ``run`` does; the wall time until the last
    one ended, and each one's own measures."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        logs = [Path(folder) / f"{i}.err" for i in range(len(cmds))]
        procs = []
        for cmd, errors in zip(cmds, logs, strict=True):
            with errors.open("wb") as sink:
                procs.append(subprocess.Popen([sys.executable, "-m", "bench.peak", *cmd], stdout=subprocess.PIPE,
                                              stderr=sink, cwd=ROOT))
        outputs = [proc.communicate()[0] for proc in procs]
        seconds = time.perf_counter() - started
        return seconds, [_measured(cmd, proc.returncode, out, errors.read_bytes())
                         for cmd, proc, out, errors in zip(cmds, procs, outputs, logs, strict=True)]


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
