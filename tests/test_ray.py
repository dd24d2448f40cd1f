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
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, SAMPLES

ray = pytest.importorskip("ray")

from tests.ray_cluster import CLIENT_ENV, RayCluster, free_ports  # noqa: E402

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


def run_in_one_driver(cluster: RayCluster, commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Each of ``commands`` run with --engine ray, one after another in one process connected once to the cluster
    (tests/ray_driver.py), so that they share its workers: for cases that differ only in their inputs."""
    done = subprocess.run([sys.executable, "-m", "tests.ray_driver", cluster.address], input=json.dumps(commands),
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, **CLIENT_ENV})
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout.splitlines()[-1])
    return [subprocess.CompletedProcess(args, o["code"], "", o["stderr"])
            for args, o in zip(commands, outcomes, strict=True)]


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


def _seekable_inputs(folder: Path) -> list[str]:
    """A Megatron dataset, token streams (.bin, .npy), an Arrow IPC file, an Arrow stream (as save_to_disk writes)
    and a Feather file of about 500k tokens each (the streams 1.3M, past their first checkpoint at 1M tokens), so
    each holds several windows whose tasks enter it mid-way."""
    from tests.synthetic import write_arrow, write_megatron, write_stream

    rng = np.random.default_rng(12)

    def docs(n_docs: int = 1100) -> list[list[int]]:
        return [rng.integers(1, 30_000, int(n)).tolist() for n in rng.integers(0, 900, n_docs)]

    folder.mkdir()
    stream_docs = docs(3000)
    stream_docs[7] = []  # consecutive separators, and tokens after the last one: the stream's notes
    npy = write_stream(folder / "tokens.npy", stream_docs, separator=0)
    np.save(npy, np.concatenate([np.load(npy), [3, 4, 5]]).astype(np.uint16))
    table = pa.table({"input_ids": pa.array(docs(), pa.list_(pa.int32()))})
    import pyarrow.feather as feather

    feather.write_feather(table, folder / "docs.feather", chunksize=150)
    return [str(write_megatron(folder / "mega", docs())), str(write_stream(folder / "tokens.bin", docs(3000), 0)),
            str(npy), str(write_arrow(folder / "file.arrow", docs(), stream=False, batch_rows=200)),
            str(write_arrow(folder / "stream.arrow", docs(), stream=True, batch_rows=1000)),
            str(folder / "docs.feather")]


def test_megatron_arrow_and_stream_inputs_are_byte_identical(cluster: RayCluster, tmp_path: Path) -> None:
    from bestfit_cli.fs import resolve_inputs
    from bestfit_cli.ray_engine import file_lengths
    from bestfit_cli.read import ReadOptions, input_format

    inputs = _seekable_inputs(tmp_path / "in")
    options = ["--ctx", "2048", "--window-tokens", "300000", "--split-at", "0", "--stream-dtype", "uint16",
               "--rows-per-shard", "64"]
    opts = ReadOptions(split_at=0, stream_dtype="uint16")
    for file in resolve_inputs(inputs):  # what the driver plans from, and where the window tasks start
        if file.format in ("bin", "npy"):
            assert input_format(file).blocks(file, opts) is None
            assert any(0 < c.row < 2900 for c in file_lengths(file, 0, opts, full=True).checkpoints)
        else:  # a Megatron dataset's 1,100 documents are one block of the .idx; Arrow's, record batches
            assert len(input_format(file).blocks(file, opts) or []) >= (1 if file.format == "megatron" else 2)
    files = assert_same_pack(inputs, tmp_path, cluster, *options)
    manifest = json.loads(files["manifest.json"])
    assert len(manifest["windows"]) >= 12
    assert [len(i.get("notes", [])) for i in manifest["inputs"]] == [0, 1, 2, 0, 0, 0]  # separators alone; a tail
    # Under --on-bad-record skip every file is read once for its lengths; the tasks then start from the
    # checkpoints that pass recorded (streams, Arrow files) or where the .idx says (Megatron).
    skipping = tmp_path / "skip"
    skipping.mkdir()
    assert_same_pack(inputs, skipping, cluster, *options, "--on-bad-record", "skip")


@pytest.mark.slow
def test_shared_corpora_are_byte_identical(cluster: RayCluster, tmp_path: Path, shared_corpora: Path) -> None:
    # Windows that end inside row groups (read for their lengths) and others made of whole row groups (footers);
    # every piece carries its document's id.
    files = assert_same_pack([str(shared_corpora / "nl"), str(shared_corpora / "jsonl" / "code.jsonl")], tmp_path,
                             cluster, "--ctx", "4096", "--window-tokens", "2000000", "--long-docs", "truncate",
                             "--keep", "id")
    manifest = json.loads(files["manifest.json"])
    assert len(manifest["windows"]) >= 5 and manifest["columns"][-1] == "id"
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
    from tests.synthetic import write_megatron

    negative = [list(d) for d in docs]
    negative[450][3] = -7  # a Megatron dataset's window task enters it mid-way, and names the row as a whole read
    bad_megatron = write_megatron(tmp_path / "d", negative)
    return [[str(good), str(with_null)], [str(good), str(bad_json)], [str(good), str(bad_megatron)]]


def test_bad_input_on_a_worker_fails_as_locally(cluster: RayCluster, tmp_path: Path) -> None:
    cases = _bad_inputs(tmp_path)
    options = ["--ctx", "512", "--window-tokens", "20000", "-q"]
    ray_runs = run_in_one_driver(cluster, [["pack", *inputs, str(tmp_path / f"ray{case}"), *options]
                                           for case, inputs in enumerate(cases)])
    for case, (inputs, on_ray) in enumerate(zip(cases, ray_runs, strict=True)):
        local = run("pack", *inputs, str(tmp_path / f"local{case}"), *options)
        out = tmp_path / f"ray{case}"
        assert local.returncode == on_ray.returncode == 1
        message = local.stderr.strip()
        assert len(message.splitlines()) == 1 and "Traceback" not in on_ray.stderr
        assert on_ray.stderr.strip() == message
        assert (":241:" in message) if case == 1 else (" row 450" in message)
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


@pytest.mark.parametrize("given", ["--ray-address", "ray://", "RAY_ADDRESS"])
def test_an_address_nothing_listens_on_fails_at_once(tmp_path: Path, given: str) -> None:
    """A stopped cluster's address, or a wrong port: ray.init would retry it for about 14 minutes (20 tries), so
    the run checks that the address accepts a connection first. No cluster is started for this test."""
    [port] = free_ports(1)
    address = f"ray://127.0.0.1:{port}" if given == "ray://" else f"127.0.0.1:{port}"
    out = tmp_path / "out"
    from_env = given == "RAY_ADDRESS"
    command = [*BESTFIT, "pack", str(SAMPLES), str(out), "--ctx", "64", "--engine", "ray"]
    command += [] if from_env else ["--ray-address", address]
    env = {**os.environ, **CLIENT_ENV, **({"RAY_ADDRESS": address} if from_env else {})}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.strip().splitlines()
    shown = f"RAY_ADDRESS={address}" if from_env else address
    assert line.startswith(f"Error: --engine ray: no Ray cluster at {shown} (connection refused"), line
    assert "start it with `ray start --head`" in line
    assert ("unset RAY_ADDRESS" if from_env else "drop --ray-address") in line
    assert not out.exists()


def test_the_address_ray_connects_to() -> None:
    from bestfit_cli.ray_engine import _connect_target

    assert _connect_target("ray://head.example:10001") == ("head.example", 10001)
    assert _connect_target("head.example:6379") == ("head.example", 6379)
    assert _connect_target("127.0.0.2:6379") == ("127.0.0.2", 6379)  # only 127.0.0.1 and localhost are replaced
    for looked_up in ("auto", "local", "http://head.example:8265", "head.example"):
        assert _connect_target(looked_up) is None


class _FakeRay:
    """What ``RayEngine.pack_windows`` asks of Ray, recorded: which tasks are cancelled, and whether the run's
    stop flag was raised first. ``running``: the window tasks never end on their own."""

    def __init__(self, running: bool) -> None:
        self.running = running
        self.events: list[str] = []
        self.windows: list[str] = []

    def remote(self, **_: Any) -> Any:
        fake = self

        class Remote:
            def __init__(self, fn: Any) -> None:
                self.fn = fn

            def remote(self, *_: Any) -> Any:
                if self.fn.__name__ == "StopFlag":
                    return SimpleNamespace(stop=SimpleNamespace(remote=lambda: fake.events.append("flag")))
                fake.windows.append(f"window {len(fake.windows)}")
                return fake.windows[-1]

        return Remote

    def put(self, value: Any) -> str:
        return "files"

    def get(self, ref: Any, timeout: float | None = None) -> None:
        return None

    def wait(self, refs: list[Any], num_returns: int, timeout: float) -> tuple[list[Any], list[Any]]:
        self.events.append("wait")
        return ([], list(refs)) if self.running else (list(refs), [])

    def cancel(self, ref: Any, force: bool) -> None:
        self.events.append(f"cancel {ref}")

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0}


@pytest.mark.parametrize("running", [False, True])
def test_a_signal_raises_the_stop_flag_before_it_cancels(monkeypatch: pytest.MonkeyPatch, running: bool) -> None:
    """Cancelling a task just as it returns can abort the driver inside Ray ("Tried to complete task that was not
    pending", seen once in test_sigterm_on_the_driver_cancels_the_tasks): after Ctrl-C or SIGTERM the tasks are
    told to stop and given SIGNAL_WAIT_SECONDS to end, and only those still running are cancelled."""
    from bestfit_cli import ray_engine
    from bestfit_cli.fs import resolve_inputs
    from bestfit_cli.pipeline import PackOptions
    from bestfit_cli.read import ReadOptions

    fake = _FakeRay(running)
    monkeypatch.setattr(ray_engine, "_ray", lambda: fake)
    monkeypatch.setattr(ray_engine, "SIGNAL_WAIT_SECONDS", 0.2, raising=False)
    monkeypatch.setattr(ray_engine, "CANCEL_WAIT_SECONDS", 0.2)

    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ray_engine.RayEngine, "_collect", interrupted)
    files = resolve_inputs([str(SAMPLES / "code.parquet")])
    with pytest.raises(KeyboardInterrupt):
        ray_engine.RayEngine().pack_windows(files, ReadOptions(), PackOptions(ctx=256, window_tokens=20_000,
                                                                                 window_documents=1000), None)
    assert len(fake.windows) == 4  # twice the CPUs submitted ahead
    assert fake.events[:2] == ["flag", "wait"]
    cancelled = [e for e in fake.events if e.startswith("cancel")]
    assert cancelled == ([f"cancel {w}" for w in fake.windows] if running else [])


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


# ------------------------------------------------------------------------------------------------ --keep, --keep-token
#
# A window task sees only its own rows, yet must store each --keep column in the type the local engine fixes from
# the first non-null values in input order (and cast to it, or fail as it fails). The inputs below put that first
# value after whole windows of nulls, and cast values of another type in windows that hold none of the first.

KEEP = ["--keep", "id", "--keep", "source", "--keep", "score", "--keep-token", "mask:0"]
CARRIED_JSONL_DOCS = 3000  # about 1.35M tokens: two reader batches, the second holding the first non-null id


def _carried(rng: np.random.Generator, i: int, n: int, id_value: Any, score: Any) -> dict[str, Any]:
    ids = rng.integers(0, 1000, n).tolist()
    return {"input_ids": ids, "id": id_value, "source": [None, "web", "code"][i % 3], "score": score,
            "mask": rng.integers(0, 2, n).tolist()}


def _carried_parquet(tmp_path: Path) -> list[str]:
    """a.parquet: ``id`` all null (Arrow's null type) and ``score`` int32; b.parquet: ``id`` strings, ``score``
    int64 (cast to int32); c.feather: the same as b. Row groups and windows of about 20k tokens."""
    import pyarrow.feather as feather

    rng = np.random.default_rng(21)
    paths = []
    for name, n_docs in (("a.parquet", 300), ("b.parquet", 200), ("c.feather", 150)):
        docs = [_carried(rng, i, int(n), None if name == "a.parquet" else f"{name}-{i}", i)
                for i, n in enumerate(rng.integers(20, 300, n_docs))]
        table = pa.Table.from_pylist(docs)
        if name == "a.parquet":
            table = table.set_column(table.schema.get_field_index("score"), "score",
                                     table.column("score").cast(pa.int32()))
            assert table.schema.field("id").type == pa.null()
        path = tmp_path / name
        if name.endswith(".parquet"):
            pq.write_table(table, path, row_group_size=64)
        else:
            feather.write_feather(table, path, chunksize=40)
        paths.append(str(path))
    return paths


def _carried_jsonl(tmp_path: Path) -> list[str]:
    """long.jsonl: ``id`` null through the first reader batch (1M tokens), integers after; ``score`` integers
    first, integral floats later (cast to int64); a record with a negative id (skipped). p.parquet: a null row
    (skipped), integer ids. short.jsonl: a few records."""
    rng = np.random.default_rng(22)
    lines = []
    for i, n in enumerate(rng.integers(100, 800, CARRIED_JSONL_DOCS)):
        doc = _carried(rng, i, int(n), None if i < 2500 else i, i if i < 2700 else float(i))
        if i == 2800:
            doc["input_ids"][0] = -1
        lines.append(json.dumps(doc))
    long = tmp_path / "long.jsonl"
    long.write_text("\n".join(lines) + "\n")
    docs = [_carried(rng, i, int(n), i, float(i)) for i, n in enumerate(rng.integers(20, 300, 120))]
    table = pa.Table.from_pylist(docs)
    ids = table.column("input_ids").to_pylist()
    ids[30] = None
    table = table.set_column(0, "input_ids", pa.array(ids, pa.list_(pa.int64())))
    parquet = tmp_path / "p.parquet"
    pq.write_table(table, parquet, row_group_size=32)
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps(_carried(rng, i, 50, i, i)) + "\n" for i in range(20)))
    return [str(long), str(parquet), str(short)]


def _shard_types(folder: Path, column: str) -> set[str]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {str(pq.read_schema(folder / s["path"]).field(column).type.value_type) for s in manifest["shards"]}


def test_keep_and_keep_token_are_byte_identical(cluster: RayCluster, tmp_path: Path) -> None:
    options = ["--ctx", "512", "--eos-id", "7", "--rows-per-shard", "16", *KEEP]
    files = assert_same_pack(_carried_parquet(tmp_path), tmp_path / "columnar", cluster, *options,
                             "--window-tokens", "20000")
    assert len(json.loads(files["manifest.json"])["windows"]) >= 6
    # Windows of a.parquet alone store ids of the null type, as the local engine stores them; later ones strings.
    assert _shard_types(tmp_path / "columnar" / "ray", "id") == {"null", "string"}
    assert _shard_types(tmp_path / "columnar" / "ray", "score") == {"int32"}

    files = assert_same_pack(_carried_jsonl(tmp_path), tmp_path / "jsonl", cluster, *options,
                             "--window-tokens", "200000", "--on-bad-record", "skip", "--max-bad-records", "2")
    manifest = json.loads(files["manifest.json"])
    assert len(manifest["windows"]) >= 7 and manifest["skipped_records"]["count"] == 2
    assert manifest["options"]["keep"] == ["id", "source", "score"] and "mask" in manifest["columns"]
    assert _shard_types(tmp_path / "jsonl" / "ray", "id") == {"null", "int64"}
    assert _shard_types(tmp_path / "jsonl" / "ray", "score") == {"int64"}


def _carried_bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    """Inputs whose first error, in input order, is a cast a task alone cannot foresee, or a token column of
    another length; with what the message names."""
    rng = np.random.default_rng(23)
    first = tmp_path / "ints.parquet"
    pq.write_table(pa.Table.from_pylist([_carried(rng, i, 200, i, i) for i in range(200)]), first,
                   row_group_size=50)
    # A later file whose ids are strings that are no integers (its first reader batch), and whose later batch
    # holds a line that is no JSON: the failed cast comes first in input order, although the lengths pass of this
    # file meets the bad line.
    clash = tmp_path / "clash.jsonl"
    lines = [json.dumps(_carried(rng, i, 400, f"doc-{i}", i)) for i in range(2800)]
    lines[2700] = '{"input_ids": [1, 2,'
    clash.write_text("\n".join(lines) + "\n")
    short_mask = tmp_path / "mask.parquet"
    docs = [_carried(rng, i, 100, i, i) for i in range(300)]
    docs[170]["mask"] = docs[170]["mask"][:-1]
    pq.write_table(pa.Table.from_pylist(docs), short_mask, row_group_size=64)
    short_jsonl = tmp_path / "mask.jsonl"
    short_jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return [([str(first), str(clash)], f"{clash}: column 'id' is string here, int64 in {first}"),
            ([str(first), str(short_mask)], f"{short_mask} row 170: 'mask' has 99 values, the token ids 100"),
            ([str(first), str(short_jsonl)], f"{short_jsonl}:171: 'mask' has 99 values, the token ids 100")]


def test_carried_column_errors_fail_as_locally(cluster: RayCluster, tmp_path: Path) -> None:
    cases = _carried_bad_inputs(tmp_path)
    options = ["--ctx", "512", "--window-tokens", "20000", *KEEP, "-q"]
    ray_runs = run_in_one_driver(cluster, [["pack", *inputs, str(tmp_path / f"ray{case}"), *options]
                                           for case, (inputs, _) in enumerate(cases)])
    for case, ((inputs, expected), on_ray) in enumerate(zip(cases, ray_runs, strict=True)):
        local = run("pack", *inputs, str(tmp_path / f"local{case}"), *options)
        out = tmp_path / f"ray{case}"
        assert local.returncode == on_ray.returncode == 1, on_ray.stderr
        message = local.stderr.strip()
        assert message.startswith(f"Error: {expected}"), message
        assert len(message.splitlines()) == 1 and "Traceback" not in on_ray.stderr
        assert on_ray.stderr.strip() == message
        assert not out.exists()


class _FakeLengthsRay:
    """What ``RayEngine.lengths_reader`` asks of Ray: one task per file submitted, and which of them are cancelled."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.cancelled: list[str] = []

    def remote(self, **_: Any) -> Any:
        fake = self

        class Remote:
            def __init__(self, fn: Any) -> None:
                pass

            def remote(self, file: Any, index: int, *_: Any) -> str:
                fake.submitted.append(f"lengths of file {index}")
                return fake.submitted[-1]

        return Remote

    def cancel(self, ref: Any, force: bool) -> None:
        self.cancelled.append(ref)

    def wait(self, refs: list[Any], num_returns: int, timeout: float) -> tuple[list[Any], list[Any]]:
        return list(refs), []


@pytest.mark.parametrize("ending", ["consumer error", "ctrl-c", "all read"])
def test_the_lengths_tasks_not_taken_are_cancelled_however_the_reading_ends(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ending: str) -> None:
    """``stats --engine ray`` submits every file's lengths task at once; when the reading stops early (the
    bad-record limit, a .json refused, Ctrl-C), the tasks not yet taken must not run on in a cluster that a library
    caller stays connected to."""
    from bestfit_cli import ray_engine
    from bestfit_cli.errors import InputError
    from bestfit_cli.fs import resolve_inputs
    from bestfit_cli.read import LengthBatch, ReadOptions

    fake = _FakeLengthsRay()
    monkeypatch.setattr(ray_engine, "_ray", lambda: fake)
    monkeypatch.setattr(ray_engine, "_get", lambda ref: SimpleNamespace(
        batches=[LengthBatch(int(ref.rsplit(" ", 1)[1]), 0, np.array([5, 7]))]))
    (tmp_path / "more.parquet").write_bytes((SAMPLES / "code.parquet").read_bytes())
    files = resolve_inputs([str(SAMPLES / "code.parquet"), str(SAMPLES / "nl.jsonl"), str(tmp_path / "more.parquet")])
    opts = ReadOptions()
    failure = {"consumer error": InputError("x", "too many bad records"), "ctrl-c": KeyboardInterrupt(),
               "all read": None}[ending]

    def consume() -> None:
        with ray_engine.RayEngine().lengths_reader(files, opts) as read:
            taken = [b.lengths.tolist() for b in read(files[0], 0, opts)]
            assert taken == [[5, 7]]
            if failure is not None:
                raise failure
            for index in (1, 2):
                list(read(files[index], index, opts))

    if failure is None:
        consume()
    else:
        with pytest.raises(type(failure)):
            consume()
    assert fake.submitted == ["lengths of file 0", "lengths of file 1", "lengths of file 2"]
    assert fake.cancelled == ([] if failure is None else ["lengths of file 1", "lengths of file 2"])
