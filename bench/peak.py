"""Run a command and print its wall time and peak resident memory as JSON, on the last line of stderr.

``python -m bench.peak CMD...``: a small launcher. Linux carries a process's peak RSS across fork and exec, so a
command started straight from a benchmark process that once held gigabytes would report those gigabytes as its
own peak; started from this small process, it reports its own.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    cmd = sys.argv[1:]
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "peak_rss_bytes": usage.ru_maxrss * 1024}), file=sys.stderr)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
