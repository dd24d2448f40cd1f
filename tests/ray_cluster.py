"""A real Ray cluster on 127.0.0.1 for tests and benchmarks: a head node and worker nodes, one CPU each.

Many test suites share this machine at once, so every port is picked free at start, the cluster has its own short
temporary folder (Unix socket paths are limited to about 107 bytes) and a small object store, and it is stopped by
ending the process groups it started (``ray stop`` would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE_BYTES = 80 << 20
# Per node: Ray workers each listen on one (8 ran out in a full run: the stop-flag actor, retried, restarted workers).
WORKER_PORTS = 24
# Ray replaces "127.0.0.1" and "localhost" by the machine's outward address (to be reachable from other machines);
# another address of the loopback range is taken as given, so the whole cluster stays on loopback.
NODE_IP = "127.0.0.2"
# What the nodes and every driver of this cluster run with: no usage reports, and no token authentication (the
# token would be a file in the home folder that every Ray on this machine shares; the cluster is on loopback only).
CLIENT_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class RayCluster:
    """``ray start --head`` plus ``nodes - 1`` nodes joined to it; ``address`` is what ``--ray-address`` takes."""

    def __init__(self, nodes: int = 2) -> None:
        self.nodes = nodes
        self.temp_dir = tempfile.mkdtemp(prefix="bfr", dir="/tmp")
        self.address = ""
        self._procs: list[subprocess.Popen[bytes]] = []
        self._log = Path(self.temp_dir) / "start.log"

    def _start_node(self, head: bool) -> None:
        ports = free_ports(9 + WORKER_PORTS)
        args = [RAY, "start", "--block", "--num-cpus", "1", "--object-store-memory", str(OBJECT_STORE_BYTES),
                "--node-ip-address", NODE_IP, "--disable-usage-stats",
                "--node-manager-port", str(ports[1]), "--object-manager-port", str(ports[2]),
                "--dashboard-agent-listen-port", str(ports[3]), "--dashboard-agent-grpc-port", str(ports[4]),
                "--metrics-export-port", str(ports[5]), "--runtime-env-agent-port", str(ports[6]),
                "--worker-port-list", ",".join(map(str, ports[9:]))]
        if head:
            self.address = f"{NODE_IP}:{ports[0]}"
            args += ["--head", "--port", str(ports[0]), "--include-dashboard", "false",
                     "--dashboard-port", str(ports[8]), "--ray-client-server-port", str(ports[7]),
                     "--temp-dir", self.temp_dir]
        else:
            args += ["--address", self.address]
        env = {**os.environ, **CLIENT_ENV}
        env.pop("RAY_ADDRESS", None)
        with open(self._log, "ab") as log:
            self._procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True))

    def start(self, timeout: float = 180.0) -> RayCluster:
        try:
            self._start_node(head=True)
            self._wait_for_nodes(1, timeout)
            for _ in range(self.nodes - 1):
                self._start_node(head=False)
            self._wait_for_nodes(self.nodes, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(self, timeout: float = 180.0) -> None:
        """One more node joined to the running cluster (a benchmark's second round)."""
        self._start_node(head=False)
        self.nodes += 1
        self._wait_for_nodes(self.nodes, timeout)

    def _wait_for_nodes(self, n: int, timeout: float) -> None:
        """Until ``n`` nodes say they started (``ray status`` would add a second connection on a busy machine)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self._procs):
                raise RuntimeError(f"a Ray node exited while starting:\n{self._log.read_text()[-3000:]}")
            if self._log.read_bytes().count(b"Ray runtime started") >= n:
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray cluster did not start {n} nodes in {timeout:.0f}s")

    def worker_pids(self) -> list[int]:
        """Processes of this cluster's Ray workers (their command line names this cluster's session folder)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "default_worker.py" in cmdline and self.temp_dir in cmdline:
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """End the nodes this object started, each by its process group (SIGKILL: a test cluster keeps nothing worth
        a graceful stop, which took 8-13 s of every suite run), then the folder."""
        groups = [proc.pid for proc in self._procs]
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self._procs:
            proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while groups and time.monotonic() < deadline:  # what a node started shares its group: none may outlive it
            for group in list(groups):
                try:
                    os.killpg(group, signal.SIGKILL)
                except ProcessLookupError:
                    groups.remove(group)
            if groups:
                time.sleep(0.1)
        self._procs.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
