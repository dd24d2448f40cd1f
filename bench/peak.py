"""Run a command and print its wall time and peak resident memory as JSON, on the last line of stderr.

``python -m bench.peak CMD...``: a small launcher. Linux carries a process's peak RSS across fork and exec, so a
command started straight from a benchmark process that once held gigabytes would report those gigabytes as its
own peak; started from this small process, it reports its own.

CPU time counts every process the command starts, including helpers that outlive their parent (``pack`` of JSONL
parses on worker processes started from a fork server, which nobody waits for): this launcher makes itself the
subreaper of its descendants (Linux), so orphans come back to it and are waited for. Peak RSS is the command's own
process (``peak_rss_bytes``) and the largest of its helpers (``helper_peak_rss_bytes``): ``wait4`` reports a maximum
per process, never a sum.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: helpers' CPU time may then go uncounted


def main() -> None:
    cmd = sys.argv[1:]
    _become_subreaper()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    cpu = usage.ru_utime + usage.ru_stime
    helper_peak = 0
    while True:  # helpers still running (orphans reparented here): wait for them and count their CPU
        try:
            _, _, more = os.wait4(-1, 0)
        except ChildProcessError:
            break
        cpu += more.ru_utime + more.ru_stime
        helper_peak = max(helper_peak, more.ru_maxrss * 1024)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_bytes": usage.ru_maxrss * 1024,
                      "helper_peak_rss_bytes": helper_peak}), file=sys.stderr)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
