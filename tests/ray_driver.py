"""Several ``bestfit`` commands, one after another, in one process connected once to a Ray cluster.

``python -m tests.ray_driver ADDRESS`` reads a JSON list of argument lists on stdin and prints, as its last line, a
JSON list of ``{"code": exit code, "stderr": what it wrote to stderr}``, one per command. Each command runs as
``bestfit`` runs it (``cli.main``: its signal handler, its error translation, its exit code); the process connects
to the cluster once (as ``RayEngine`` does), so the commands share the job's Ray workers instead of each starting
its own: what a test that runs a command per case of bad input saves. The tests that check a run from start to
end (connecting, the environment handed to the tasks, signals) run a ``bestfit`` process each.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback


def run_all(address: str, commands: list[list[str]]) -> list[dict[str, object]]:
    from bestfit_cli.cli import main
    from bestfit_cli.ray_engine import RayEngine

    results: list[dict[str, object]] = []
    with RayEngine(address):  # connected: each command's RayEngine finds Ray initialized and keeps it
        for args in commands:
            sys.argv = ["bestfit", *args, "--engine", "ray", "--ray-address", address]
            code: object = 0
            with tempfile.TemporaryFile() as err:
                sys.stderr.flush()
                saved = os.dup(2)
                os.dup2(err.fileno(), 2)  # file descriptor 2 itself: click's, Python's and Ray's output alike
                try:
                    main()
                except SystemExit as exc:
                    code = exc.code if exc.code is not None else 0
                except BaseException:  # noqa: BLE001 -- shown as the real process would show it, then counted
                    traceback.print_exc()
                    code = "traceback"
                finally:
                    sys.stderr.flush()
                    os.dup2(saved, 2)
                    os.close(saved)
                err.seek(0)
                results.append({"code": code, "stderr": err.read().decode(errors="replace")})
    return results


if __name__ == "__main__":
    outcomes = run_all(sys.argv[1], json.loads(sys.stdin.read()))
    print("\n" + json.dumps(outcomes))
