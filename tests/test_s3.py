"""Object storage for real: every command against ``s3://`` on a moto server on loopback (tests/s3_server.py).

The commands run as subprocesses, as a user runs them, so the exit code is the process's own (a crash at
interpreter exit shows as 134, which CliRunner would never see).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import SAMPLES
from .s3_server import S3Server

PACK = ("--ctx", "2048", "--seed", "7", "--quiet")


def bestfit(server: S3Server, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bestfit_cli", *args], capture_output=True, text=True,
                          env=server.env(**env), timeout=300)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pack_to_s3_writes_the_bytes_of_a_local_pack(s3: S3Server, tmp_path: Path) -> None:
    local = tmp_path / "local"
    done = bestfit(s3, "pack", str(SAMPLES), str(local), *PACK)
    assert done.returncode == 0, done.stderr
    remote = f"s3://{s3.bucket}/out"
    done = bestfit(s3, "pack", str(SAMPLES), remote, *PACK)
    assert done.returncode == 0, done.stderr
    fetched = tmp_path / "fetched"
    s3.download(remote, fetched)
    assert files_of(fetched) == files_of(local)
    assert sorted(s3.keys(remote)) == sorted(files_of(local))  # no temporary folder or marker left behind


def test_verify_on_s3_exits_0(s3: S3Server) -> None:
    s3.upload(SAMPLES, f"s3://{s3.bucket}/in")
    remote = f"s3://{s3.bucket}/out"
    done = bestfit(s3, "pack", f"s3://{s3.bucket}/in", remote, *PACK)
    assert done.returncode == 0, done.stderr
    done = bestfit(s3, "verify", f"s3://{s3.bucket}/in", remote, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
