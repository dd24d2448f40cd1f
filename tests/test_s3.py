"""Object storage for real: every command against ``s3://`` on a moto server on loopback (tests/s3_server.py).

The commands run as subprocesses, as a user runs them, so the exit code is the process's own (a crash at
interpreter exit shows as 134, which CliRunner would never see).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


def test_a_save_to_disk_folder_on_s3_packs_like_the_local_one(s3: S3Server, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    rng = np.random.default_rng(3)
    docs = [rng.integers(1, 50_000, size=int(n)).tolist() for n in rng.integers(1, 900, size=300)]
    source = tmp_path / "ds"
    datasets.Dataset.from_dict({"input_ids": docs}).save_to_disk(str(source), num_shards=3)
    state = json.loads((source / "state.json").read_text())
    state["_data_files"].reverse()  # read in state.json's order, not the listing's
    (source / "state.json").write_text(json.dumps(state))
    (source / "notes.txt").write_text("not data")
    local = tmp_path / "local"
    done = bestfit(s3, "pack", str(source), str(local), *PACK)
    assert done.returncode == 0, done.stderr
    s3.upload(source, f"s3://{s3.bucket}/ds")
    fetched = tmp_path / "fetched"
    done = bestfit(s3, "pack", f"s3://{s3.bucket}/ds", str(fetched), *PACK)
    assert done.returncode == 0, done.stderr
    shards = {name: data for name, data in files_of(local).items() if name.startswith("train-")}
    assert shards and {name: files_of(fetched)[name] for name in shards} == shards
    manifest = json.loads((fetched / "manifest.json").read_text())
    assert [i["path"].rsplit("/", 1)[-1] for i in manifest["inputs"]] == [f["filename"] for f in state["_data_files"]]
    assert [e["reason"] for e in manifest["inputs_left_out"]] == ["in a dataset folder, not one of its data files"]
