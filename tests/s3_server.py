"""A real S3 protocol server on loopback for the tests: ``moto_server`` (the ``moto[server]`` dev extra).

One server per pytest process (``-n 2`` gives each worker its own), on a port picked at run time, run in its own
temporary folder, so several suites on one machine never share a server, a port or a file. Nothing is mocked in
the process under test: bestfit talks HTTP to the server through pyarrow's S3 filesystem, exactly as it would to
AWS or MinIO. When the server cannot start, the tests that need it fail (they are never skipped).

Fixtures (``conftest.py`` imports them, so every test module can ask for them):

- ``s3_server`` (session): the running ``S3Server``.
- ``s3`` (function): the server, with the process's environment pointing at it for the test (``monkeypatch``)
  and a fresh bucket of the test's own (``s3.bucket``); ``s3.env()`` is the environment for a subprocess.

Other fixtures or suites (the Ray tests) start their own with ``S3Server.start(folder)`` as a context manager.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"
_START_TIMEOUT = 30.0
# Variables of the AWS SDK's configuration chain that would send the process elsewhere than the test server.
_AWS_VARIABLES_CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                          "AWS_ENDPOINT_URL_S3", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                          "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*command, "-H", "127.0.0.1", "-p", str(port)]


@dataclass
class S3Server:
    """A ``moto_server`` process on 127.0.0.1 and the environment that points an AWS client at it."""

    folder: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path  # the server's request log: one line per HTTP request
    bucket: str = ""  # the test's own bucket (set by the ``s3`` fixture)
    _buckets: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, folder: Path, server_env: dict[str, str] | None = None) -> S3Server:
        """Start a server in ``folder``; a port another process took first is retried with a new one."""
        folder.mkdir(parents=True, exist_ok=True)
        last_log = ""
        for attempt in range(5):
            port = _free_port()
            log_path = folder / f"moto-{attempt}.log"
            with open(log_path, "wb") as log:
                process = subprocess.Popen(_moto_command(port), cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env={**os.environ, **(server_env or {})})
            server = cls(folder, port, process, log_path)
            if server._wait_ready(log_path):
                return server
            server.stop()
            last_log = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"moto_server did not start (is the moto[server] dev extra installed?): {last_log}")

    def _wait_ready(self, log_path: Path) -> bool:
        """Ready when this process says it listens (so the port is ours, not another suite's) and answers."""
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if "Running on" in log_path.read_text(errors="replace"):
                try:
                    with urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=5):
                        return self.process.poll() is None
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------------------------------------- clients

    def env(self, **overrides: str | None) -> dict[str, str]:
        """``os.environ`` for a subprocess that talks to this server: endpoint, credentials and region set, the
        user's AWS files and profile out of the way. An override of None removes that variable."""
        env = {k: v for k, v in os.environ.items() if k not in _AWS_VARIABLES_CLEARED}
        env.update(self.aws_variables())
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def aws_variables(self) -> dict[str, str]:
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",  # no 1-second probes of an instance metadata service
            "AWS_CONFIG_FILE": str(self.folder / "aws-config"),  # absent: the machine's ~/.aws plays no part
            "AWS_SHARED_CREDENTIALS_FILE": str(self.folder / "aws-credentials"),
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    def point_here(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this process's AWS clients (pyarrow) at the server for one test."""
        for key in _AWS_VARIABLES_CLEARED:
            monkeypatch.delenv(key, raising=False)
        for key, value in self.aws_variables().items():
            monkeypatch.setenv(key, value)

    def filesystem(self) -> Any:
        """A pyarrow S3 filesystem on this server that may create buckets (bestfit's own never does)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", access_key=ACCESS_KEY,
                                 secret_key=SECRET_KEY, region=REGION, allow_bucket_creation=True,
                                 allow_bucket_deletion=True)

    def make_bucket(self, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.filesystem().create_dir(name)
        self._buckets.append(name)
        return name

    def upload(self, local: Path, uri: str) -> None:
        """Copy a local file or folder to ``s3://bucket/key``."""
        import pyarrow.fs as pafs

        key = uri.removeprefix("s3://")
        fs = self.filesystem()
        if local.is_dir():
            pafs.copy_files(str(local), key, destination_filesystem=fs)
        else:
            with fs.open_output_stream(key) as stream, open(local, "rb") as source:
                shutil.copyfileobj(source, stream)

    def download(self, uri: str, local: Path) -> None:
        import pyarrow.fs as pafs

        local.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(uri.removeprefix("s3://"), str(local), source_filesystem=self.filesystem())

    def read(self, uri: str) -> bytes:
        with self.filesystem().open_input_stream(uri.removeprefix("s3://")) as stream:
            data: bytes = stream.read()
            return data

    def keys(self, uri: str) -> list[str]:
        """Every object below ``s3://bucket/prefix``, relative to it, sorted."""
        import pyarrow.fs as pafs

        root = uri.removeprefix("s3://").rstrip("/")
        infos = self.filesystem().get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        return sorted(i.path[len(root) + 1:] for i in infos if i.type == pafs.FileType.File)

    def require_auth(self, after_requests: int = 0) -> None:
        """From now on (after ``after_requests`` more), check every request's signature and IAM policy."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=str(after_requests).encode(),
                                         method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as response:
            json.load(response)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server.start(tmp_path_factory.mktemp("s3-server")) as server:
        yield server


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    s3_server.point_here(monkeypatch)
    s3_server.bucket = s3_server.make_bucket()
    return s3_server
