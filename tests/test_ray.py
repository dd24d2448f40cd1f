"""--engine ray on a real two-node Ray cluster on loopback: byte-identical to --engine local, faults, errors.

One cluster for the module (tests/ray_cluster.py: every port picked at start, its own temporary folder), and every
test in one xdist group, so a suite run with -n 2 starts one cluster, not two. Each run is a real ``bestfit``
process, as a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import SAMPLES

ray = pytest.importorskip("ray")

from tests.ray_cluster import CLIENT_ENV, RayCluster  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")
BESTFIT = [sys.executable, "-m", "bestfit_cli"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with RayCluster(nodes=2) as started:
        yield started


def run(*args: str, cluster: RayCluster | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    engine = ["--engine", "ray", "--ray-address", cluster.address] if cluster is not None else []
    return subprocess.run([*BESTFIT, *args, *engine], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **CLIENT_ENV, **(env or {})})


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_same_pack(inputs: list[str], tmp_path: Path, cluster: RayCluster, *options: str) -> dict[str, bytes]:
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    done = run("pack", *inputs, str(local), *options, "-q")
    assert done.returncode == 0, done.stderr
    done = run("pack", *inputs, str(on_ray), *options, "-q", cluster=cluster)
    assert done.returncode == 0, done.stderr
    expected = contents(local)
    assert contents(on_ray) == expected
    return expected


def _long_jsonl(path: Path) -> Path:
    """A JSONL file of 1.4M tokens: its lengths pass records checkpoints, and its windows' tasks seek to them."""
    rng = np.random.default_rng(11)
    with path.open("w") as out:
        for i, n in enumerate(rng.integers(100, 800, 3200)):
            out.write(json.dumps({"input_ids": rng.integers(0, 50_000, int(n)).tolist()}) + "\n")
            if i % 50 == 7:
                out.write("\n")  # blank lines: rows and line numbers part ways
    return path


def test_sample_is_byte_identical(cluster: RayCluster, tmp_path: Path) -> None:
    from bestfit_cli.fs import resolve_inputs
    from bestfit_cli.ray_engine import file_lengths
    from bestfit_cli.read import ReadOptions

    long_jsonl = _long_jsonl(tmp_path / "long.jsonl")
    long_zst = tmp_path / "long.jsonl.zst"  # its checkpoints count decompressed bytes, skipped unparsed
    with pa.CompressedOutputStream(str(long_zst), "zstd") as out:
        out.write(long_jsonl.read_bytes())
    for path in (long_jsonl, long_zst):
        (long_file,) = resolve_inputs([str(path)])
        checkpoints = file_lengths(long_file, 0, ReadOptions(), full=True).checkpoints
        assert any(0 < c.row < 3000 for c in checkpoints)  # windows below start from one, not from the first line
    files = assert_same_pack([str(SAMPLES), str(long_jsonl), str(long_zst)], tmp_path, cluster, "--ctx", "2048",
                             "--window-tokens", "300000", "--eos-id", "100257", "--rows-per-shard", "64")
    manifest = json.loads(files["manifest.json"])
    assert len(manifest["windows"]) >= 13  # windows in the Parquet and the three JSONL inputs
    assert {i["path"].rsplit(".", 1)[1] for i in manifest["inputs"]} == {"parquet", "jsonl", "zst"}


@pytest.mark.slow
def test_shared_corpora_are_byte_identical(cluster: RayCluster, tmp_path: Path, shared_corpora: Path) -> None:
    # Windows that end inside row groups (read for their lengths) and others made of whole row groups (footers).
    files = assert_same_pack([str(shared_corpora / "nl"), str(shared_corpora / "jsonl" / "code.jsonl")], tmp_path,
                             cluster, "--ctx", "4096", "--window-tokens", "2000000", "--long-docs", "truncate")
    assert len(json.loads(files["manifest.json"])["windows"]) >= 5
    done = run("verify", str(shared_corpora / "nl"), str(shared_corpora / "jsonl" / "code.jsonl"),
               str(tmp_path / "ray"))
    assert done.returncode == 0, done.stderr


def test_worker_killed_mid_task_is_retried(cluster: RayCluster, tmp_path: Path) -> None:
    marker = tmp_path / "killed-once"
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    options = ["--ctx", "1024", "--window-tokens", "200000", "--rows-per-shard", "32", "-q"]
    assert run("pack", str(SAMPLES), str(local), *options).returncode == 0
    # The first worker to write a shard of a window after the first SIGKILLs itself, after staging that shard.
    done = run("pack", str(SAMPLES), str(on_ray), *options, cluster=cluster,
               env={"BESTFIT_TEST_KILL_ONCE": f"writing:{marker}"})
    assert done.returncode == 0, done.stderr
    assert marker.exists()  # the kill happened
    assert contents(on_ray) == contents(local)  # no duplicate, no orphan: the same shards, listed once
    verified = run("verify", str(SAMPLES), str(on_ray))
    assert verified.returncode == 0, verified.stderr


def _bad_inputs(tmp_path: Path) -> list[list[str]]:
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 1000, int(n)).tolist() for n in rng.integers(50, 400, 600)]
    good = tmp_path / "a.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(docs, pa.list_(pa.int32()))}), good, row_group_size=100)
    with_null = tmp_path / "b.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([*docs[:450], None, *docs[451:]], pa.list_(pa.int32()))}),
                   with_null, row_group_size=100)
    bad_json = tmp_path / "c.jsonl"
    lines = [json.dumps({"input_ids": d}) for d in docs[:300]]
    lines[240] = '{"input_ids": [1, 2,'
    bad_json.write_text("\n".join(lines) + "\n")
    return [[str(good), str(with_null)], [str(good), str(bad_json)]]


def test_bad_input_on_a_worker_fails_as_locally(cluster: RayCluster, tmp_path: Path) -> None:
    for case, inputs in enumerate(_bad_inputs(tmp_path)):
        options = ["--ctx", "512", "--window-tokens", "20000", "-q"]
        local = run("pack", *inputs, str(tmp_path / f"local{case}"), *options)
        out = tmp_path / f"ray{case}"
        on_ray = run("pack", *inputs, str(out), *options, cluster=cluster)
        assert local.returncode == on_ray.returncode == 1
        message = local.stderr.strip()
        assert len(message.splitlines()) == 1 and "Traceback" not in on_ray.stderr
        assert on_ray.stderr.strip() == message
        assert (" row 450" in message) if case == 0 else (":241:" in message)
        assert not out.exists()  # nothing complete-looking, not even the folder it created


def test_stats_and_histogram_equal_local(cluster: RayCluster, tmp_path: Path) -> None:
    stats = ["stats", str(SAMPLES), "--ctx", "2048", "--ctx", "512", "--window-tokens", "300000", "--json", "-q"]
    local, on_ray = run(*stats), run(*stats, cluster=cluster)
    assert local.returncode == on_ray.returncode == 0, on_ray.stderr
    drop_time = [{k: v for k, v in json.loads(r.stdout).items() if k != "wall_seconds"} for r in (local, on_ray)]
    assert drop_time[0] == drop_time[1]
    histogram = ["histogram", str(SAMPLES), "--eos-id", "100257", "-q"]
    local, on_ray = run(*histogram), run(*histogram, cluster=cluster)
    assert local.returncode == on_ray.returncode == 0, on_ray.stderr
    assert on_ray.stdout == local.stdout


def test_sigterm_on_the_driver_cancels_the_tasks(cluster: RayCluster, tmp_path: Path) -> None:
    import signal
    import time

    out = tmp_path / "out"
    command = [*BESTFIT, "pack", str(SAMPLES), str(out), "--ctx", "256", "--window-tokens", "10000", "-q",
               "--engine", "ray", "--ray-address", cluster.address]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, **CLIENT_ENV})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob(".bestfit-tmp-*/train-*")):
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.2)
    assert list(out.glob(".bestfit-tmp-*/train-*")), "no shard was written in time"
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=90)
    assert code == 143, process.stderr.read() if process.stderr else ""
    time.sleep(3)  # a task still running would write more shards by now
    assert not out.exists()  # the run's folder and its temporary shards are gone, and nothing came back


def test_s3_in_and_out_is_byte_identical_with_a_worker_killed(cluster: RayCluster, s3: Any, tmp_path: Path) -> None:
    # The driver hands its AWS_* variables (endpoint, credentials) to the tasks, which read and write s3:// too.
    # A worker SIGKILLs itself once, after putting a shard into OUT: the task run again puts the same names.
    s3.upload(SAMPLES, f"s3://{s3.bucket}/in")
    source, local_out, ray_out = (f"s3://{s3.bucket}/{name}" for name in ("in", "local", "ray"))
    options = ["--ctx", "2048", "--window-tokens", "300000", "--eos-id", "100257", "--rows-per-shard", "64", "-q"]
    local = run("pack", source, local_out, *options)
    assert local.returncode == 0, local.stderr
    marker = tmp_path / "killed-once"
    on_ray = run("pack", source, ray_out, *options, cluster=cluster,
                 env={"BESTFIT_TEST_KILL_ONCE": f"writing:{marker}"})
    assert on_ray.returncode == 0, on_ray.stderr
    assert marker.exists()  # the kill happened
    s3.download(local_out, tmp_path / "local")
    s3.download(ray_out, tmp_path / "ray")
    expected = contents(tmp_path / "local")
    assert contents(tmp_path / "ray") == expected
    assert len(json.loads(expected["manifest.json"])["windows"]) >= 5
    assert s3.keys(ray_out) == sorted(expected)  # no temporary folder, claim or run marker left
    verified = run("verify", source, ray_out)
    assert verified.returncode == 0, verified.stderr

    # Bad input: the shards the windows before it put into OUT are taken back, and no manifest is written.
    good, bad = _bad_inputs(tmp_path)[1]
    s3.upload(Path(good), f"s3://{s3.bucket}/bad/a.parquet")
    s3.upload(Path(bad), f"s3://{s3.bucket}/bad/c.jsonl")
    failed = run("pack", f"s3://{s3.bucket}/bad/a.parquet", f"s3://{s3.bucket}/bad/c.jsonl",
                 f"s3://{s3.bucket}/bad-out", "--ctx", "512", "--window-tokens", "20000", "-q", cluster=cluster)
    assert failed.returncode == 1 and ":241:" in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    assert s3.keys(f"s3://{s3.bucket}/bad-out") == []
