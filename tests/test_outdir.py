"""The OUT folder: --overwrite deletes only what a manifest lists, the old output stays valid until the new one is
complete, one run at a time, shard names that sort and that datasets reads, OS litter."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bestfit_cli import OutputError, PackOptions, pack
from bestfit_cli.cli import cli
from bestfit_cli.outdir import LOCK, shard_name
from bestfit_cli.verify import verify

from .synthetic import documents, tree_bytes, write_jsonl, write_parquet

OPTIONS = ["--ctx", "64", "--window-tokens", "2000", "--rows-per-shard", "8", "-q"]


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "in.parquet", documents([30, 70, 5, 64, 200, 12] * 40, seed=4))


@pytest.fixture
def old(source: Path, tmp_path: Path) -> Path:
    """A finished output in OUT, packed from ``source``."""
    out = tmp_path / "out"
    result = invoke("pack", source, out, *OPTIONS)
    assert result.exit_code == 0, result.stderr
    return out


def names(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------ --overwrite


@pytest.mark.parametrize("user_file", ["part-dataset.parquet/year=2024/data.csv", "part-0.parquet",
                                       "part-00002.parquet", "train-00000000-00000000-0000000000000000.parquet",
                                       "notes.txt"])
def test_overwrite_never_touches_files_no_manifest_lists(source: Path, old: Path, user_file: str) -> None:
    """A user's folder named like a shard, a pyarrow dataset's part file, another corpus's shard: refused, kept."""
    path = old / user_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("precious")
    before = tree_bytes(old)
    line = one_line_error(invoke("pack", source, old, *OPTIONS, "--overwrite"),
                          f"OUT holds files bestfit did not write ({user_file.split('/')[0]})")
    assert "--overwrite deletes only what OUT/manifest.json lists" in line
    assert tree_bytes(old) == before


def test_overwrite_of_a_folder_without_a_manifest_is_refused(source: Path, tmp_path: Path) -> None:
    """Another corpus given as OUT by mistake (`pack corpA corpB --overwrite`): its files are not bestfit's."""
    corpus_b = tmp_path / "corpB"
    corpus_b.mkdir()
    write_parquet(corpus_b / "part-00002.parquet", documents([5, 6]))
    before = tree_bytes(corpus_b)
    one_line_error(invoke("pack", source, corpus_b, *OPTIONS, "--overwrite"), "part-00002.parquet")
    assert tree_bytes(corpus_b) == before


def test_a_manifest_that_is_not_bestfits_protects_nothing(source: Path, old: Path) -> None:
    (old / "manifest.json").write_text('{"format": "something else", "shards": []}')
    before = tree_bytes(old)
    one_line_error(invoke("pack", source, old, *OPTIONS, "--overwrite"), "did not write (manifest.json, stats.json")
    assert tree_bytes(old) == before


def test_a_listed_name_that_is_a_folder_is_not_deleted(source: Path, old: Path) -> None:
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["shards"].append({"path": "data", "rows": 1, "bytes": 1, "sha256": "0" * 64})
    (old / "manifest.json").write_text(json.dumps(manifest))
    (old / "data").mkdir()
    (old / "data" / "x.csv").write_text("precious")
    one_line_error(invoke("pack", source, old, *OPTIONS, "--overwrite"), "did not write (data)")
    assert (old / "data" / "x.csv").read_text() == "precious"


def test_overwrite_replaces_exactly_the_old_output(source: Path, old: Path) -> None:
    old_shards = {s["path"] for s in json.loads((old / "manifest.json").read_text())["shards"]}
    result = invoke("pack", source, old, "--ctx", "32", *OPTIONS[2:], "--overwrite")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((old / "manifest.json").read_text())
    new_shards = {s["path"] for s in manifest["shards"]}
    assert manifest["options"]["ctx"] == 32 and not new_shards & old_shards
    assert names(old) == sorted([*new_shards, "manifest.json", "stats.json"])
    assert verify([str(source)], str(old)).ok


@pytest.mark.parametrize("failure", ["column", "bad-record"])
def test_a_failed_overwrite_leaves_the_old_output_as_it_was(source: Path, old: Path, tmp_path: Path,
                                                            failure: str) -> None:
    before = tree_bytes(old)
    if failure == "column":
        result = invoke("pack", source, old, *OPTIONS, "--overwrite", "--column", "input_idz")
    else:
        bad = tmp_path / "z.jsonl"
        bad.write_text('{"input_ids": [1, 2]}\n' * 50 + "not json\n")
        result = invoke("pack", source, bad, old, *OPTIONS, "--overwrite", "--workers", "1")
    assert result.exit_code == 1
    assert tree_bytes(old) == before
    assert names(old) == sorted(before)  # no temporary folder, no lock file left
    assert verify([str(source)], str(old)).ok


# ------------------------------------------------------------------------------------------------ a failed run


def test_a_failed_run_removes_the_folders_it_created(tmp_path: Path) -> None:
    empty = write_jsonl(tmp_path / "empty.jsonl", [[], []])
    out = tmp_path / "a" / "b" / "out"
    one_line_error(invoke("pack", empty, out, *OPTIONS), "no documents with tokens")
    assert names(tmp_path) == ["empty.jsonl"]


def test_a_failed_run_keeps_an_out_it_did_not_create(tmp_path: Path) -> None:
    empty = write_jsonl(tmp_path / "empty.jsonl", [[], []])
    out = tmp_path / "out"
    out.mkdir()
    one_line_error(invoke("pack", empty, out, *OPTIONS), "no documents with tokens")
    assert out.is_dir() and names(out) == []


# ------------------------------------------------------------------------------------------------ the lock


def test_a_second_run_on_a_busy_out_fails_at_once(source: Path, old: Path) -> None:
    fd = os.open(old / LOCK, os.O_RDWR | os.O_CREAT)
    before = tree_bytes(old)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running pack holds it
        for extra in ([], ["--overwrite"]):
            one_line_error(invoke("pack", source, old, *OPTIONS, *extra),
                           "another bestfit run is writing to OUT", "wait for that run to finish")
        assert tree_bytes(old) == before
    finally:
        os.close(fd)
    # A lock file whose holder died (the kernel dropped its lock) holds nothing.
    assert (old / LOCK).exists()
    assert verify([str(source)], str(old)).ok
    assert invoke("pack", source, old, *OPTIONS, "--overwrite").exit_code == 0
    assert not (old / LOCK).exists()


@pytest.mark.parametrize("after", ["open", "flock"])
def test_a_signal_while_taking_the_lock_leaves_no_lock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            after: str) -> None:
    """SIGTERM just after the lock file is opened (or locked), before the run has noted it as its own: the run
    still unwinds with the signal and removes the file, and the OUT it created (found once by the kill suite)."""
    from bestfit_cli import outdir
    from bestfit_cli.cli import Terminated, _terminate
    from bestfit_cli.write import ShardWriter

    out = tmp_path / "out"
    real = {"open": os.open, "flock": fcntl.flock}

    def then_sigterm(*args: Any, **kwargs: Any) -> Any:
        result = real[after](*args, **kwargs)
        if str(args[0]).endswith(LOCK) or after == "flock":
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(outdir.os if after == "open" else fcntl, after, then_sigterm)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        writer = ShardWriter(str(out))
        with pytest.raises(Terminated):
            writer.__enter__()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not out.exists()  # no lock file left, and the OUT this run made is gone with it


@pytest.mark.parametrize("committed", [False, True])
def test_a_signal_while_cleaning_up_still_leaves_no_temporary_folder_or_lock(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            committed: bool) -> None:
    """SIGTERM as the run removes its temporary folder (after a commit, or after a failure): the clean-up ends first,
    then the run unwinds with the signal; raised halfway, it left the folder and the lock (found by the kill
    suite: exit 143 with OUT/.bestfit-tmp-* left)."""
    from bestfit_cli import write
    from bestfit_cli.cli import Terminated, _terminate
    from bestfit_cli.write import ShardWriter

    out = tmp_path / "out"
    real = write.ShardWriter._remove_folder

    def sigterm_then_remove(self: ShardWriter, folder: str, *, quiet: bool = False) -> None:
        if folder == self.tmp:
            os.kill(os.getpid(), signal.SIGTERM)
        real(self, folder, quiet=quiet)

    monkeypatch.setattr(write.ShardWriter, "_remove_folder", sigterm_then_remove)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with pytest.raises(Terminated), ShardWriter(str(out)) as writer:
            writer.write_json("stats.json", {"ok": True})
            if committed:
                writer.commit([], {"format": "bestfit.packed", "shards": []})
            else:
                raise OSError("a failed run")
    finally:
        signal.signal(signal.SIGTERM, previous)
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == (["manifest.json", "stats.json"] if committed else [])  # nothing of the run's own machinery


def test_two_runs_at_once_one_wins_and_the_other_is_refused(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bestfit_cli", "pack", str(source), str(out), *OPTIONS,
               "--window-tokens", "300"]
    env = {**os.environ, "BESTFIT_TEST_STEP_DELAY": "0.05"}  # a slow swap: the second run starts while it runs
    first = subprocess.Popen(command, stderr=subprocess.PIPE, env=env)
    try:
        while not list(out.glob(".bestfit-tmp-*")):
            assert first.poll() is None, first.communicate()
        second = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "another bestfit run is writing to OUT" in second.stderr
        assert first.wait(timeout=60) == 0
    finally:
        first.kill()
    assert verify([str(source)], str(out)).ok


# ------------------------------------------------------------------------------------------------ a failed fsync


@pytest.mark.parametrize("overwrite", [False, True])
def test_eio_syncing_out_after_the_manifest_rename_takes_the_manifest_back(
        source: Path, old: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool) -> None:
    """docs/guarantees.md: a failed run leaves no new manifest; with --overwrite the old output is back."""
    out = old if overwrite else tmp_path / "fresh"
    before = tree_bytes(out) if overwrite else {}
    real_fsync = os.fsync
    failed = []

    def failing_fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        renamed = (out / "manifest.json").exists() and not list(out.glob(".bestfit-tmp-*/manifest.json"))
        if path == str(out) and renamed and not failed:
            failed.append(path)
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OutputError, match=r"writing manifest.json failed \(\[Errno 5\] Input/output error\)"):
        pack([str(source)], str(out), PackOptions(ctx=32, window_tokens=2000, rows_per_shard=8, overwrite=overwrite))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert failed
    if overwrite:
        assert tree_bytes(out) == before and names(out) == sorted(before)
        assert verify([str(source)], str(out)).ok
    else:
        assert not out.exists()


# ------------------------------------------------------------------------------------------------ names


def test_names_sort_in_manifest_order_past_every_former_width() -> None:
    order = [(0, 0), (0, 1001), (0, 9999), (0, 10000), (0, 10_000_000), (1, 0), (99_999, 0), (100_000, 0),
             (99_999_999, 99_999_999)]
    digests = ["f" * 64, "0" * 64, "7" * 64]
    shards = [shard_name(w, p, digests[i % 3], ".parquet") for i, (w, p) in enumerate(order)]
    assert sorted(shards) == shards
    assert shards[3] == "train-00000000-00010000-ffffffffffffffff.parquet"
    with pytest.raises(OutputError, match="more than 99,999,999 windows .raise --window-tokens."):
        shard_name(10**8, 0, digests[0], ".parquet")
    with pytest.raises(OutputError, match="more than 99,999,999 shards in one window .raise --rows-per-shard."):
        shard_name(0, 10**8, digests[0], ".parquet")


def test_many_windows_and_parts_sort_in_manifest_order(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "in.parquet", documents([3] * 1200, seed=1))
    out = tmp_path / "out"
    result = invoke("pack", source, out, "--ctx", "4", "--window-tokens", "3000", "--rows-per-shard", "1", "-q")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    listed = [s["path"] for s in manifest["shards"]]
    assert len(manifest["windows"]) > 1 and len(listed) == 1200
    assert sorted(listed) == listed == sorted(n for n in names(out) if n.endswith(".parquet"))


def test_datasets_reads_out_in_manifest_order(source: Path, old: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    import pyarrow.parquet as pq

    (old / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    loaded = datasets.load_dataset("parquet", data_dir=str(old), cache_dir=str(tmp_path / "cache"))
    manifest = json.loads((old / "manifest.json").read_text())
    expected = [row for s in manifest["shards"] for row in pq.read_table(old / s["path"]).to_pylist()]
    assert list(loaded) == ["train"]
    assert loaded["train"].num_rows == manifest["sequences"] == len(expected)
    assert loaded["train"].to_list() == expected


# ------------------------------------------------------------------------------------------------ OS litter


def test_os_litter_is_ignored_by_verify_and_overwrite(source: Path, old: Path) -> None:
    litter = [".DS_Store", "Thumbs.db", "desktop.ini", "._train-00000000.parquet"]
    for name in litter:
        (old / name).write_bytes(b"litter")
    result = invoke("verify", source, old)
    assert result.exit_code == 0, result.stderr
    result = invoke("pack", source, old, *OPTIONS, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert all((old / name).read_bytes() == b"litter" for name in litter)  # not bestfit's to delete
    # An OUT holding only litter is as good as empty.
    fresh = old.parent / "fresh"
    fresh.mkdir()
    (fresh / ".DS_Store").write_bytes(b"litter")
    assert invoke("pack", source, fresh, *OPTIONS).exit_code == 0


def test_overwrite_swaps_every_file_of_a_many_file_format(source: Path, tmp_path: Path) -> None:
    """Megatron shards are three files each: all are moved in, listed, and the old ones removed."""
    out = tmp_path / "out"
    megatron = ["--format", "megatron", "--eos-id", "7", "--pad-id", "0"]
    assert invoke("pack", source, out, *OPTIONS, *megatron).exit_code == 0
    old = set(names(out))
    result = invoke("pack", source, out, "--ctx", "32", *OPTIONS[2:], *megatron, "--overwrite")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {f["path"] for s in manifest["shards"] for f in [s, *s["files"]]}
    assert {n.rsplit(".", 1)[-1] for n in listed} == {"bin", "idx", "parquet"}
    assert set(names(out)) == listed | {"manifest.json", "stats.json"}
    assert not listed & old
    assert verify([str(source)], str(out)).ok
