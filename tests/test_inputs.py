"""Which files the inputs are (issue 8, issue 13): each file read once however it is reached, never a link loop,
literal paths before globs, one rule for folder scans and globs with what they leave out named, and a histogram -o
that never destroys an input."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bestfit_cli import PackOptions, pack
from bestfit_cli.cli import cli
from bestfit_cli.errors import InputError
from bestfit_cli.fs import scan_inputs
from bestfit_cli.verify import verify

from .synthetic import corpus, documents, write_jsonl, write_parquet

CTX = 64


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def names(args: list[Any]) -> list[str]:
    return [f.name for f in scan_inputs([str(a) for a in args]).files]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return corpus(tmp_path / "corpus", 60, seed=1, max_len=80)


def manifest_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


def pack_cli(tmp_path: Path, *inputs: object, out: str = "out") -> tuple[Result, Path]:
    target = tmp_path / out
    return invoke("pack", *inputs, target, "--ctx", CTX, "-q"), target


# ------------------------------------------------------------------------------------------------ read once


def test_the_same_file_twice_is_read_once(source: Path, tmp_path: Path) -> None:
    once, out_once = pack_cli(tmp_path, source / "a.parquet", out="once")
    twice, out_twice = pack_cli(tmp_path, source / "a.parquet", source / "a.parquet", out="twice")
    assert once.exit_code == twice.exit_code == 0, twice.stderr
    assert manifest_of(out_twice)["documents"] == manifest_of(out_once)["documents"]
    assert twice.stderr.count("\n") == 1 and "note: inputs left out: 1 read already" in twice.stderr
    assert "(given twice)" in twice.stderr
    assert manifest_of(out_twice)["inputs_left_out"] == [
        {"path": str(source / "a.parquet"), "reason": "read already", "same_as": str(source / "a.parquet")}]
    assert verify([str(source / "a.parquet")] * 2, str(out_twice)).ok


def test_a_folder_and_a_file_inside_it(source: Path, tmp_path: Path) -> None:
    result, out = pack_cli(tmp_path, source / "c.jsonl", source)
    assert result.exit_code == 0, result.stderr
    manifest = manifest_of(out)
    # The file keeps its first place in the numbering; the folder contributes only the others.
    assert [i["path"] for i in manifest["inputs"]] == [str(source / n) for n in ("c.jsonl", "a.parquet", "b.parquet")]
    assert manifest["documents"] == 60
    assert f"{source / 'c.jsonl'} (given twice)" in result.stderr


def test_two_links_to_one_folder(source: Path, tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    (links / "one").symlink_to(source)
    (links / "two").symlink_to(source)
    assert names([links]) == [str(links / "one" / n) for n in ("a.parquet", "b.parquet", "c.jsonl")]
    scan = scan_inputs([str(links / "one"), str(links / "two")])
    assert len(scan.files) == 3 and len(scan.left_out) == 3
    result, out = pack_cli(tmp_path, links)
    assert result.exit_code == 0 and manifest_of(out)["documents"] == 60
    assert "read already" in result.stderr


def test_a_link_loop_is_never_followed(source: Path, tmp_path: Path) -> None:
    (source / "sub").mkdir()
    (source / "sub" / "loop").symlink_to("..")
    assert names([source]) == [str(source / n) for n in ("a.parquet", "b.parquet", "c.jsonl")]
    result, out = pack_cli(tmp_path, source)
    assert result.exit_code == 0, result.stderr
    assert manifest_of(out)["documents"] == 60
    assert f"1 link loop ({source / 'sub' / 'loop'}/ = {source})" in result.stderr
    assert {"path": f"{source / 'sub' / 'loop'}/", "reason": "link loop", "same_as": str(source)} in manifest_of(
        out)["inputs_left_out"]
    checked = invoke("verify", source, out)
    assert checked.exit_code == 0 and "note: inputs left out: 1 link loop" in checked.stderr


def test_stats_and_histogram_read_each_file_once(source: Path, tmp_path: Path) -> None:
    (source / "loop").symlink_to(".")
    stats = invoke("stats", source, source / "a.parquet", "--ctx", CTX, "--json", "-q")
    assert stats.exit_code == 0, stats.stderr
    assert json.loads(stats.stdout)["documents"] + json.loads(stats.stdout)["empty_documents"] == 60
    assert "note: inputs left out:" in stats.stderr
    hist = invoke("histogram", source, source / "b.parquet", "-q")
    assert hist.exit_code == 0 and json.loads(hist.stdout)["documents"] == 60
    assert [e["reason"] for e in json.loads(hist.stdout)["inputs_left_out"]] == ["link loop", "read already"]


def test_a_hard_link_is_the_same_file(source: Path) -> None:
    os.link(source / "a.parquet", source / "again.parquet")
    assert names([source]) == [str(source / n) for n in ("a.parquet", "b.parquet", "c.jsonl")]


# ------------------------------------------------------------------------------------------------ literal, globs


@pytest.mark.parametrize("name", ["shard[1].jsonl", "what?.jsonl", "all*.jsonl"])
def test_an_existing_path_with_glob_characters_is_literal(tmp_path: Path, name: str) -> None:
    path = write_jsonl(tmp_path / name, documents([3, 4]))
    write_jsonl(tmp_path / "shard1.jsonl", documents([5]))  # what the glob would have matched instead
    assert names([path]) == [str(path)]
    result, out = pack_cli(tmp_path, path)
    assert result.exit_code == 0, result.stderr
    assert manifest_of(out)["documents"] == 2


def test_a_glob_that_exists_nowhere_still_globs(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "shard1.jsonl", documents([5]))
    assert names([tmp_path / "shard[0-9].jsonl"]) == [str(tmp_path / "shard1.jsonl")]


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A folder with everything a scan meets: data, hidden and _-prefixed entries, unknown suffixes, sub-folders."""
    root = tmp_path / "mixed"
    (root / "sub").mkdir(parents=True)
    (root / "_tmp").mkdir()
    (root / ".cache").mkdir()
    write_parquet(root / "a.parquet", documents([3, 4]))
    write_jsonl(root / "sub" / "b.jsonl", documents([5]))
    write_jsonl(root / "_tmp" / "c.jsonl", documents([6]))
    write_jsonl(root / ".cache" / "d.jsonl", documents([7]))
    write_jsonl(root / "_e.jsonl", documents([8]))
    (root / "f.jsonl.xz").write_bytes(b"\xfd7zXZ")
    (root / "README.md").write_text("data\n")
    return root


def test_folder_scans_and_globs_follow_one_rule(mixed: Path) -> None:
    taken = [str(mixed / "a.parquet"), str(mixed / "sub" / "b.jsonl")]
    assert names([mixed]) == taken
    assert names([f"{mixed}/**/*"]) == taken
    assert names([f"{mixed}/*"]) == taken  # a glob matching a folder takes it as a scan would
    assert names([f"{mixed}/**/*.jsonl"]) == taken[1:]
    scan, glob = scan_inputs([str(mixed)]), scan_inputs([f"{mixed}/**/*"])
    assert scan.left_out == glob.left_out
    assert {(e.path, e.why) for e in scan.left_out} == {
        (f"{mixed}/.cache/", "hidden"), (f"{mixed}/_tmp/", "hidden"), (f"{mixed}/_e.jsonl", "hidden"),
        (f"{mixed}/f.jsonl.xz", "no input format by its name"),
        (f"{mixed}/README.md", "no input format by its name")}


def test_hidden_entries_are_read_when_spelled_out(mixed: Path) -> None:
    assert names([f"{mixed}/_tmp"]) == [str(mixed / "_tmp" / "c.jsonl")]
    assert names([f"{mixed}/_*.jsonl"]) == [str(mixed / "_e.jsonl")]
    assert names([f"{mixed}/.cache/*.jsonl"]) == [str(mixed / ".cache" / "d.jsonl")]
    assert names([f"{mixed}/*/*.jsonl"]) == [str(mixed / "sub" / "b.jsonl")]


def test_what_a_scan_leaves_out_is_one_line(mixed: Path, tmp_path: Path) -> None:
    result, out = pack_cli(tmp_path, mixed)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("\n") == 1
    line = result.stderr.strip()
    assert line.startswith("note: inputs left out: 3 hidden (")
    assert "1 no input format by its name" in line and "f.jsonl.xz" in line
    assert "README.md" not in line  # no input suffix: listed in the manifest only
    assert len(manifest_of(out)["inputs_left_out"]) == 5


def test_an_empty_folder_names_what_it_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "x.jsonl.xz").write_bytes(b"x")
    result, _ = pack_cli(tmp_path, folder)
    assert result.exit_code == 1
    assert "folder holds no input files; inputs left out: 1 no input format by its name" in result.stderr


# ------------------------------------------------------------------------------------------------ histogram -o


def test_histogram_o_never_overwrites_an_input(tmp_path: Path) -> None:
    shards = [write_parquet(tmp_path / f"shard-0{i}.parquet", documents([3, 4], seed=i)) for i in range(3)]
    before = [p.read_bytes() for p in shards]
    # `bestfit histogram -o shard-0*.parquet`: the shell hands shard-00 to -o and the others to IN.
    result = invoke("histogram", "-o", *shards)
    assert result.exit_code == 1 and "exists and is not a bestfit histogram" in result.stderr
    result = invoke("histogram", shards[0], shards[1], "-o", shards[1])
    assert result.exit_code == 1 and "is the input file" in result.stderr
    link = tmp_path / "link.json"
    link.symlink_to(shards[2])
    result = invoke("histogram", shards[2], "-o", link)
    assert result.exit_code == 1 and "is the input file" in result.stderr
    assert [p.read_bytes() for p in shards] == before
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_histogram_o_inside_an_input_folder_or_a_glob(source: Path, tmp_path: Path) -> None:
    result = invoke("histogram", source, "-o", source / "h.json")
    assert result.exit_code == 1 and "lies inside the input folder" in result.stderr
    assert not (source / "h.json").exists()
    result = invoke("histogram", source, "-o", tmp_path / "shard-*.json")
    assert result.exit_code == 1 and "looks like a glob" in result.stderr


def test_histogram_o_replaces_its_own_histogram(source: Path, tmp_path: Path) -> None:
    hist = tmp_path / "h.json"
    assert invoke("histogram", source / "a.parquet", "-o", hist, "-q").exit_code == 0
    assert invoke("histogram", source, "-o", hist, "-q").exit_code == 0
    assert json.loads(hist.read_text())["documents"] == 60


# ------------------------------------------------------------------------------------------------ fingerprints


class _RewriteOnFirstRead:
    """A progress bar whose first update rewrites an input: a file changed while pack reads it."""

    def __init__(self, path: Path, new: bytes) -> None:
        self.path, self.new, self.done = path, new, False

    def __call__(self, _total: int) -> _RewriteOnFirstRead:
        return self

    def update(self, _n: int) -> None:
        if not self.done:
            self.done = True
            self.path.write_bytes(self.new)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("name", ["a.parquet", "c.jsonl"])
def test_an_input_changed_during_the_run_fails_it(source: Path, tmp_path: Path, name: str) -> None:
    changed = source / name
    new = changed.read_bytes()
    new = new + b'{"input_ids": [1, 2, 3]}\n' if name.endswith(".jsonl") else (source / "b.parquet").read_bytes()
    out = tmp_path / "out"
    with pytest.raises(InputError) as caught:
        pack([str(source)], str(out), PackOptions(ctx=CTX), progress_factory=_RewriteOnFirstRead(changed, new))
    message = str(caught.value)
    assert message.startswith(f"{changed}: changed while bestfit read it (")
    assert "no manifest was written" in message and "\n" not in message
    assert not (out / "manifest.json").exists() and not (out / "stats.json").exists()


def test_the_manifest_records_each_inputs_fingerprint(source: Path, tmp_path: Path) -> None:
    gz = tmp_path / "d.jsonl.gz"
    gz.write_bytes(gzip.compress((source / "c.jsonl").read_bytes()))
    out = tmp_path / "out"
    pack([str(source), str(gz)], str(out), PackOptions(ctx=CTX))
    inputs = manifest_of(out)["inputs"]
    for listed in inputs:
        path = Path(listed["path"])
        assert listed["bytes"] == path.stat().st_size and listed["mtime_ns"] == path.stat().st_mtime_ns
    parquet = inputs[0]
    assert len(parquet["footer_sha256"]) == 64 and "content_sha256" not in parquet
    assert inputs[1]["footer_sha256"] != parquet["footer_sha256"]
    # JSONL: the sha256 of the bytes read, after decompression (what `sha256sum` or `zcat | sha256sum` prints).
    plain = hashlib.sha256((source / "c.jsonl").read_bytes()).hexdigest()
    assert inputs[2]["content_sha256"] == inputs[3]["content_sha256"] == plain


def test_verify_names_the_input_that_changed_since_packing(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pack([str(source)], str(out), PackOptions(ctx=CTX))
    text = (source / "c.jsonl").read_text()
    digit = next(ch for ch in text if ch in "123456789")
    (source / "c.jsonl").write_text(text.replace(digit, str(int(digit) % 9 + 1), 1))  # same size, new content
    result = verify([str(source)], str(out))
    assert f"input {source / 'c.jsonl'} changed since packing (the sha256 of its contents differs)" in [
        str(p) for p in result.problems]
    write_parquet(source / "a.parquet", documents([1, 2, 3]))
    first = str(verify([str(source)], str(out)).problems[0])
    assert first.startswith(f"input {source / 'a.parquet'} changed since packing (size ")


def test_a_copy_with_new_times_verifies_with_a_note(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pack([str(source)], str(out), PackOptions(ctx=CTX))
    os.utime(source / "a.parquet", ns=(1, 1))
    result = verify([str(source)], str(out))
    assert result.ok, result.problems
    assert any("modified time differs from packing" in n for n in result.notes)


def test_stdin_has_only_a_content_hash(source: Path, tmp_path: Path) -> None:
    data = (source / "c.jsonl").read_bytes()
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["pack", "-", str(out), "--ctx", str(CTX), "-q"], input=data)
    assert result.exit_code == 0, result.stderr
    listed = manifest_of(out)["inputs"][0]
    assert listed["bytes"] is None and listed["mtime_ns"] is None
    assert listed["content_sha256"] == hashlib.sha256(data).hexdigest()
    assert verify([str(source / "c.jsonl")], str(out)).ok  # a saved copy of what was piped in
