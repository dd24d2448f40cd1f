"""Object storage for real: every command against ``s3://`` on a moto server on loopback (tests/s3_server.py).

The commands run as subprocesses, as a user runs them, so the exit code is the process's own: a crash at
interpreter exit (``terminate called without an active exception``, 134) shows here, where CliRunner would not.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from .conftest import EOS, SAMPLES, record_decode_threads
from .s3_server import S3Server
from .synthetic import tree_bytes, write_parquet

PACK = ("--seed", "7", "--quiet")  # and --ctx


def bestfit(server: S3Server, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bestfit_cli", *args], capture_output=True, text=True,
                          env=server.env(**env), timeout=300)


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """A command that must succeed: exit 0 exactly (not 134 from an abort at exit), nothing aborted on stderr."""
    assert done.returncode == 0, done.stderr
    assert "terminate called" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    return done


def one_line_failure(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def fetch(server: S3Server, uri: str, local: Path) -> dict[str, bytes]:
    server.download(uri, local)
    return tree_bytes(local)


@pytest.fixture
def s3_samples(s3: S3Server) -> str:
    uri = f"s3://{s3.bucket}/in"
    s3.upload(SAMPLES, uri)
    return uri


# ------------------------------------------------------------------------------------------------ same bytes


def test_pack_to_s3_writes_the_bytes_of_a_local_pack(s3: S3Server, tmp_path: Path) -> None:
    ok(bestfit(s3, "pack", str(SAMPLES), str(tmp_path / "local"), *PACK, "--ctx", "2048"))
    remote = f"s3://{s3.bucket}/out"
    ok(bestfit(s3, "pack", str(SAMPLES), remote, *PACK, "--ctx", "2048"))
    assert fetch(s3, remote, tmp_path / "fetched") == tree_bytes(tmp_path / "local")
    assert s3.keys(remote) == sorted(tree_bytes(tmp_path / "local"))  # no temporary folder or marker left


def test_pack_from_s3_to_s3_verifies_and_has_the_shards_of_a_local_pack(s3: S3Server, s3_samples: str,
                                                                      tmp_path: Path) -> None:
    ok(bestfit(s3, "pack", str(SAMPLES), str(tmp_path / "local"), *PACK, "--ctx", "2048", "--workers", "2"))
    remote = f"s3://{s3.bucket}/out"
    ok(bestfit(s3, "pack", s3_samples, remote, *PACK, "--ctx", "2048", "--workers", "2"))
    local, fetched = tree_bytes(tmp_path / "local"), fetch(s3, remote, tmp_path / "fetched")
    shards = sorted(name for name in local if name.startswith("train-"))
    assert shards and [fetched.get(name) for name in shards] == [local[name] for name in shards]
    assert json.loads(fetched["manifest.json"])["shards"] == json.loads(local["manifest.json"])["shards"]
    done = ok(bestfit(s3, "verify", s3_samples, remote, "--json"))
    assert json.loads(done.stdout)["ok"] is True


def test_an_s3_input_is_decoded_on_pyarrows_threads(s3: S3Server, s3_samples: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A file on an object store keeps pyarrow's threads, which read ahead of the decoding; the same files on the
    local disk are decoded on the thread that reads them (``formats.parquet.pack_decode_threads``)."""
    from bestfit_cli import PackOptions, pack

    seen = record_decode_threads(monkeypatch)
    opts = PackOptions(ctx=512, eos_id=EOS, workers=2)
    pack([s3_samples], str(tmp_path / "from-s3"), opts)
    assert seen and set(seen) == {True}
    seen.clear()
    pack([str(SAMPLES)], str(tmp_path / "local"), opts)
    assert seen and set(seen) == {False}


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
    done = bestfit(s3, "pack", str(source), str(local), *PACK, "--ctx", "2048")
    assert done.returncode == 0, done.stderr
    s3.upload(source, f"s3://{s3.bucket}/ds")
    fetched = tmp_path / "fetched"
    done = bestfit(s3, "pack", f"s3://{s3.bucket}/ds", str(fetched), *PACK, "--ctx", "2048")
    assert done.returncode == 0, done.stderr
    shards = {name: data for name, data in tree_bytes(local).items() if name.startswith("train-")}
    assert shards and {name: tree_bytes(fetched)[name] for name in shards} == shards
    manifest = json.loads((fetched / "manifest.json").read_text())
    assert [i["path"].rsplit("/", 1)[-1] for i in manifest["inputs"]] == [f["filename"] for f in state["_data_files"]]
    assert [e["reason"] for e in manifest["inputs_left_out"]] == ["in a dataset folder, not one of its data files"]


def test_stats_and_histogram_read_s3_as_they_read_a_local_folder(s3: S3Server, s3_samples: str,
                                                                  tmp_path: Path) -> None:
    local_dir = str(SAMPLES)
    local = ok(bestfit(s3, "stats", local_dir, "--ctx", "2048", "--json")).stdout
    remote = ok(bestfit(s3, "stats", s3_samples, "--ctx", "2048", "--json")).stdout
    def report(text: str) -> dict[str, object]:
        return {k: v for k, v in json.loads(text).items() if k != "wall_seconds"}

    assert report(remote.replace(s3_samples, local_dir)) == report(local)
    ok(bestfit(s3, "histogram", local_dir, "-o", str(tmp_path / "h.json")))
    ok(bestfit(s3, "histogram", s3_samples, "-o", f"s3://{s3.bucket}/h.json"))
    remote_hist = s3.read(f"s3://{s3.bucket}/h.json").decode().replace(s3_samples, local_dir)
    assert json.loads(remote_hist) == json.loads((tmp_path / "h.json").read_text())
    # stats reads a histogram back from the store as from a local file
    from_s3 = ok(bestfit(s3, "stats", f"s3://{s3.bucket}/h.json", "--ctx", "2048", "--json")).stdout
    from_local = ok(bestfit(s3, "stats", str(tmp_path / "h.json"), "--ctx", "2048", "--json")).stdout
    assert report(from_s3.replace(f"s3://{s3.bucket}/h.json", str(tmp_path / "h.json"))) == report(from_local)


def test_a_shard_larger_than_one_upload_part(s3: S3Server, tmp_path: Path) -> None:
    """About 16 MB of incompressible ids in one shard: more than one part of pyarrow's multipart upload."""
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 2**31 - 1, size=4096).tolist() for _ in range(1000)]
    src = tmp_path / "in"
    src.mkdir()
    write_parquet(src / "big.parquet", docs)
    ok(bestfit(s3, "pack", str(src), str(tmp_path / "local"), "--ctx", "4096", "--quiet"))
    remote = f"s3://{s3.bucket}/big"
    ok(bestfit(s3, "pack", str(src), remote, "--ctx", "4096", "--quiet"))
    local = tree_bytes(tmp_path / "local")
    (shard,) = [name for name in local if name.startswith("train-")]
    assert len(local[shard]) > 12 * 2**20
    parts = set(re.findall(rf"PUT /{s3.bucket}/big/{shard}\?partNumber=(\d+)", s3.log.read_text()))
    assert len(parts) >= 2, parts  # uploaded in several parts, and put together whole
    assert fetch(s3, remote, tmp_path / "fetched") == local
    ok(bestfit(s3, "verify", str(src), remote))


# ------------------------------------------------------------------------------------------------ training reader


def test_the_training_reader_reads_an_s3_output_as_it_reads_a_local_one(s3: S3Server, tmp_path: Path) -> None:
    from bestfit_cli.loader import PackedDataset, PackedLoader

    ok(bestfit(s3, "pack", str(SAMPLES), str(tmp_path / "local"), *PACK, "--ctx", "2048", "--window-tokens", "400000"))
    remote = f"s3://{s3.bucket}/out"
    ok(bestfit(s3, "pack", str(SAMPLES), remote, *PACK, "--ctx", "2048", "--window-tokens", "400000"))

    def batches(out: str) -> list[dict[str, np.ndarray]]:
        return list(PackedDataset(out, batch_size=16, seed=5))

    local, from_s3 = batches(str(tmp_path / "local")), batches(remote)
    assert len(from_s3) == len(local) > 10
    for a, b in zip(local, from_s3, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    pytest.importorskip("torch")
    loader = PackedLoader(PackedDataset(remote, batch_size=16, seed=5), num_workers=2)
    first = next(iter(loader))
    assert np.array_equal(first["input_ids"].numpy(), local[0]["input_ids"])


def test_the_training_reader_refuses_an_s3_prefix_without_a_manifest(s3: S3Server) -> None:
    from bestfit_cli.errors import InputError
    from bestfit_cli.loader import PackedDataset

    with pytest.raises(InputError, match="no manifest.json"):
        PackedDataset(f"s3://{s3.bucket}/nothing-here", batch_size=4)


# ------------------------------------------------------------------------------------------------ exit codes


def test_every_command_exits_0_on_s3(s3: S3Server, s3_samples: str, tmp_path: Path) -> None:
    out = f"s3://{s3.bucket}/out"
    ok(bestfit(s3, "pack", s3_samples, out, *PACK, "--ctx", "2048", "--verify"))
    ok(bestfit(s3, "pack", s3_samples, out, *PACK, "--overwrite", "--ctx", "1024"))
    ok(bestfit(s3, "verify", s3_samples, out))
    ok(bestfit(s3, "stats", s3_samples, "--ctx", "2048"))
    ok(bestfit(s3, "histogram", s3_samples, "-o", f"s3://{s3.bucket}/h.json"))
    ok(bestfit(s3, "stats", f"s3://{s3.bucket}/h.json", "--ctx", "2048"))
    script = ("from bestfit_cli.loader import PackedDataset\n"
              f"ds = PackedDataset({out!r}, batch_size=8, seed=1)\n"  # kept alive until interpreter exit
              "it = iter(ds); next(it)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=s3.env(), timeout=120)
    ok(done)


# ------------------------------------------------------------------------------------------------ storage errors


def test_a_missing_bucket_is_one_line(s3: S3Server) -> None:
    one_line_failure(bestfit(s3, "pack", "s3://no-such-bucket-x/in", f"s3://{s3.bucket}/o", *PACK, "--ctx", "2048"),
                     "s3://no-such-bucket-x/in", "does not exist", "create the bucket")
    one_line_failure(bestfit(s3, "pack", str(SAMPLES), "s3://no-such-bucket-x/out", *PACK, "--ctx", "2048"),
                     "s3://no-such-bucket-x/out", "does not exist", "never creates one")
    one_line_failure(bestfit(s3, "verify", str(SAMPLES), "s3://no-such-bucket-x/out"),
                     "s3://no-such-bucket-x/out", "does not exist")


def test_an_unreachable_endpoint_is_one_line(s3: S3Server) -> None:
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens there
    for args in (("verify", str(SAMPLES), f"s3://{s3.bucket}/o"), ("pack", str(SAMPLES), f"s3://{s3.bucket}/o", *PACK,
                                                                  "--ctx", "2048")):
        one_line_failure(bestfit(s3, *args, AWS_ENDPOINT_URL=dead), "cannot reach the object store at " + dead,
                         "AWS_ENDPOINT_URL")


def test_no_credentials_is_one_line_naming_the_variables(s3: S3Server) -> None:
    remote = f"s3://{s3.bucket}/out"
    ok(bestfit(s3, "pack", str(SAMPLES), remote, *PACK, "--ctx", "2048"))
    done = bestfit(s3, "verify", str(SAMPLES), remote, AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None)
    one_line_failure(done, "access denied, and no AWS credentials were found", "AWS_ACCESS_KEY_ID")


@pytest.fixture(scope="module")
def s3_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, dict[str, tuple[str, str]]]]:
    """A second server that checks signatures and IAM policies: a user allowed one bucket, one allowed nothing."""
    import boto3

    with S3Server.start(tmp_path_factory.mktemp("s3-auth")) as server:
        session = dict(endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id="x",
                       aws_secret_access_key="x")
        iam = boto3.client("iam", **session)
        keys = {}
        for user in ("reader", "nobody"):
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        iam.put_user_policy(UserName="reader", PolicyName="one-bucket", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",
                                                     "Resource": ["arn:aws:s3:::open", "arn:aws:s3:::open/*"]}]}))
        server.filesystem().create_dir("open")
        server.filesystem().create_dir("closed")
        server.upload(SAMPLES, "s3://open/in")
        server.upload(SAMPLES, "s3://closed/in")
        server.require_auth()
        yield server, keys


def test_access_denied_and_rejected_keys_are_one_line(s3_with_auth: tuple[S3Server, dict[str, tuple[str, str]]]
                                                      ) -> None:
    server, keys = s3_with_auth
    reader = dict(AWS_ACCESS_KEY_ID=keys["reader"][0], AWS_SECRET_ACCESS_KEY=keys["reader"][1])
    ok(bestfit(server, "stats", "s3://open/in", "--ctx", "2048", **reader))  # the policy is what decides
    one_line_failure(bestfit(server, "stats", "s3://closed/in", "--ctx", "2048", **reader),
                     "s3://closed/in", "access denied for these AWS credentials", "s3:GetObject")
    one_line_failure(bestfit(server, "pack", "s3://open/in", "s3://closed/out", *PACK, "--ctx", "2048", **reader),
                     "s3://closed/out", "access denied")
    nobody = dict(AWS_ACCESS_KEY_ID=keys["nobody"][0], AWS_SECRET_ACCESS_KEY=keys["nobody"][1])
    one_line_failure(bestfit(server, "stats", "s3://open/in", "--ctx", "2048", **nobody), "access denied")
    unknown = dict(AWS_ACCESS_KEY_ID="AKIAUNKNOWN000000", AWS_SECRET_ACCESS_KEY="wrong")
    one_line_failure(bestfit(server, "stats", "s3://open/in", "--ctx", "2048", **unknown),
                     "access denied for these AWS credentials", "AWS_ACCESS_KEY_ID")


def test_the_endpoint_may_come_from_the_aws_config_file(s3: S3Server, tmp_path: Path) -> None:
    """pyarrow reads AWS_ENDPOINT_URL but not a profile's endpoint_url; bestfit passes that one on."""
    config = tmp_path / "aws-config"
    config.write_text(f"[profile store]\nregion = us-east-1\nendpoint_url = {s3.endpoint}\n")
    remote = f"s3://{s3.bucket}/out"
    ok(bestfit(s3, "pack", str(SAMPLES), remote, *PACK, "--ctx", "2048", AWS_ENDPOINT_URL=None,
               AWS_CONFIG_FILE=str(config), AWS_PROFILE="store"))
    assert "manifest.json" in s3.keys(remote)


# ------------------------------------------------------------------------------------------------ no rename


def _previous_output(s3: S3Server, tmp_path: Path) -> tuple[str, dict[str, bytes]]:
    remote = f"s3://{s3.bucket}/out"
    ok(bestfit(s3, "pack", str(SAMPLES), remote, *PACK, "--ctx", "2048"))
    return remote, fetch(s3, remote, tmp_path / "before")


@pytest.mark.parametrize("point", ["store-shard", "swap-manifest"])
def test_an_interrupted_s3_pack_leaves_the_old_output_valid(s3: S3Server, tmp_path: Path, point: str) -> None:
    remote, before = _previous_output(s3, tmp_path)
    killed = bestfit(s3, "pack", str(SAMPLES), remote, *PACK, "--ctx", "1024", "--overwrite",
                     BESTFIT_TEST_KILL_AT=point)
    assert killed.returncode == -9
    after = fetch(s3, remote, tmp_path / "after")
    assert after["manifest.json"] == before["manifest.json"]  # the commit never happened
    assert all(after[name] == data for name, data in before.items())
    ok(bestfit(s3, "verify", str(SAMPLES), remote))
    # The dead run's marker still looks fresh: OUT is refused as busy, with the way out in the message ...
    one_line_failure(bestfit(s3, "pack", str(SAMPLES), remote, *PACK, "--ctx", "1024", "--overwrite"),
                     "another bestfit run is writing to OUT", "taken over")
    # ... and once it is stale, the next run takes it over and removes what the dead run left.
    ok(bestfit(s3, "pack", str(SAMPLES), remote, *PACK, "--ctx", "1024", "--overwrite", BESTFIT_S3_LOCK_STALE="0"))
    ok(bestfit(s3, "pack", str(SAMPLES), str(tmp_path / "fresh"), *PACK, "--ctx", "1024"))
    assert fetch(s3, remote, tmp_path / "final") == tree_bytes(tmp_path / "fresh")


def test_a_first_s3_pack_interrupted_leaves_no_manifest(s3: S3Server) -> None:
    remote = f"s3://{s3.bucket}/out"
    killed = bestfit(s3, "pack", str(SAMPLES), remote, *PACK, "--ctx", "2048", BESTFIT_TEST_KILL_AT="swap-manifest")
    assert killed.returncode == -9
    keys = s3.keys(remote)
    assert any(k.startswith("train-") for k in keys) and "manifest.json" not in keys
    one_line_failure(bestfit(s3, "verify", str(SAMPLES), remote), "no manifest.json", "incomplete")


def test_overwrite_on_s3_keeps_shared_shards_and_removes_only_the_old_ones(s3: S3Server, tmp_path: Path) -> None:
    remote, before = _previous_output(s3, tmp_path)
    ok(bestfit(s3, "pack", str(SAMPLES), remote, *PACK, "--ctx", "1024", "--overwrite"))
    ok(bestfit(s3, "pack", str(SAMPLES), str(tmp_path / "fresh"), *PACK, "--ctx", "1024"))
    assert fetch(s3, remote, tmp_path / "after") == tree_bytes(tmp_path / "fresh")
    # Packing the same again finds every shard already there with the same bytes: none is put again.
    log_before = len(s3.log.read_text().splitlines())
    ok(bestfit(s3, "pack", str(SAMPLES), remote, *PACK, "--ctx", "1024", "--overwrite"))
    new_requests = s3.log.read_text().splitlines()[log_before:]
    assert not [r for r in new_requests if re.search(r'"(PUT|POST) /[^ ]*/out/train-', r)]
    assert fetch(s3, remote, tmp_path / "again") == tree_bytes(tmp_path / "fresh")


def test_a_busy_s3_out_is_refused_and_a_run_that_lost_it_does_not_commit(s3: S3Server, tmp_path: Path) -> None:
    remote, before = _previous_output(s3, tmp_path)
    fs = s3.filesystem()
    marker = f"{s3.bucket}/out/.bestfit-lock"
    with fs.open_output_stream(marker) as stream:
        stream.write(json.dumps({"run": "elsewhere:1:abc", "refreshed": time.time()}).encode())
    one_line_failure(bestfit(s3, "pack", str(SAMPLES), remote, *PACK, "--ctx", "2048", "--overwrite"),
                     "another bestfit run", "elsewhere:1:abc")
    fs.delete_file(marker)
    # A run that pauses just before its commit while another run takes OUT over stops without committing.
    run = subprocess.Popen([sys.executable, "-m", "bestfit_cli", "pack", str(SAMPLES), remote, *PACK, "--ctx", "1024",
                            "--overwrite"], env=s3.env(BESTFIT_TEST_STEP_DELAY="6"), stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 60
    while not [k for k in s3.keys(remote) if k.startswith(".bestfit-tmp-") and k.endswith("next.json")]:
        assert time.monotonic() < deadline and run.poll() is None, "the run never reached its commit"
        time.sleep(0.2)
    with fs.open_output_stream(marker) as stream:
        stream.write(json.dumps({"run": "elsewhere:2:def", "refreshed": time.time()}).encode())
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1 and "did not commit" in stderr, stderr
    assert fetch(s3, remote, tmp_path / "after")["manifest.json"] == before["manifest.json"]


def test_the_fixture_gives_each_test_its_own_bucket(s3: S3Server) -> None:
    assert s3.keys(f"s3://{s3.bucket}") == []
    fs, path = pafs.FileSystem.from_uri(f"s3://{s3.bucket}")  # found through the variables the fixture set
    assert fs.get_file_info(path).type == pafs.FileType.Directory
