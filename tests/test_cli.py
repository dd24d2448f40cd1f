"""The ``bestfit`` command line: exit codes, one-line messages, --json, configs and BESTFIT_* variables."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from bestfit_cli.cli import cli

from .conftest import EOS, ROOT, SAMPLES

CONFIGS = ROOT / "configs"


def invoke(*args: object, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def assert_clean_failure(result: Result, exit_code: int, *fragments: str) -> None:
    """Failed with ``exit_code``, one short message naming each fragment, no traceback, nothing on stdout."""
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    message = result.stderr.strip()
    for fragment in fragments:
        assert fragment in message, message


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def write_parquet(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    ids = pa.array([[1, 2, 3], [4, 5], [6, 7, 8, 9]], type=pa.list_(pa.int32()))
    return write_parquet(tmp_path / "toy.parquet", pa.table({"id": ["a", "b", "c"], "input_ids": ids}))


def packed_options(out: Path) -> dict[str, object]:
    options: dict[str, object] = json.loads((out / "manifest.json").read_text())["options"]
    return options


# ------------------------------------------------------------------------------------------------ success


def test_pack_succeeds_with_exit_0(toy: Path, tmp_path: Path) -> None:
    result = invoke("pack", toy, tmp_path / "out", "--ctx", 4)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # without --json, stdout carries nothing
    assert "wrote" in result.stderr
    assert (tmp_path / "out" / "manifest.json").exists()


def test_json_prints_one_document_on_stdout(toy: Path, tmp_path: Path) -> None:
    result = invoke("pack", toy, tmp_path / "out", "--ctx", 4, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # fails if anything else shares stdout
    assert report["schema_version"].startswith("bestfit.stats/")
    assert report["documents"] == 3 and report["tokens"] == 9
    assert report["sequences"] == 3  # 4 | 3 | 2 tokens: best fit needs ceil(9 / 4) = 3


def test_quiet_prints_nothing(toy: Path, tmp_path: Path) -> None:
    result = invoke("pack", toy, tmp_path / "out", "--ctx", 4, "--quiet")
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""


# ------------------------------------------------------------------------------------------------ bad input: exit 1


def test_missing_column_lists_existing_columns(toy: Path, tmp_path: Path) -> None:
    result = invoke("pack", toy, tmp_path / "out", "--ctx", 4, "--column", "tokens")
    assert_clean_failure(result, 1, "toy.parquet", "'tokens'", "id, input_ids", "--column")
    assert_nothing_written(tmp_path / "out")


def test_non_list_column(toy: Path, tmp_path: Path) -> None:
    result = invoke("pack", toy, tmp_path / "out", "--ctx", 4, "--column", "id")
    assert_clean_failure(result, 1, "toy.parquet", "'id'", "not a list of integer token ids")
    assert_nothing_written(tmp_path / "out")


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"input_ids": [1, 2]}\n{"input_ids": [3, 4]\n{"input_ids": [5]}\n')
    result = invoke("pack", source, tmp_path / "out", "--ctx", 4)
    assert_clean_failure(result, 1, "bad.jsonl:2", "not valid JSON")
    assert_nothing_written(tmp_path / "out")


def test_jsonl_missing_field_lists_fields(tmp_path: Path) -> None:
    source = tmp_path / "docs.jsonl"
    source.write_text('{"input_ids": [1, 2]}\n{"id": "x", "tokens": [3]}\n')
    result = invoke("pack", source, tmp_path / "out", "--ctx", 4)
    assert_clean_failure(result, 1, "docs.jsonl:2", "'input_ids'", "id, tokens")


def test_negative_id_in_parquet_names_the_row(tmp_path: Path) -> None:
    ids = pa.array([[1, 2], [3, -5, 4]], type=pa.list_(pa.int64()))
    source = write_parquet(tmp_path / "neg.parquet", pa.table({"input_ids": ids}))
    result = invoke("pack", source, tmp_path / "out", "--ctx", 4)
    assert_clean_failure(result, 1, "neg.parquet row 1", "negative token id -5")
    assert_nothing_written(tmp_path / "out")


def test_negative_id_in_jsonl_names_the_line(tmp_path: Path) -> None:
    source = tmp_path / "neg.jsonl"
    source.write_text('{"input_ids": [1]}\n\n{"input_ids": [2, -1]}\n')
    result = invoke("pack", source, tmp_path / "out", "--ctx", 4)
    assert_clean_failure(result, 1, "neg.jsonl:3", "negative token id -1")


def test_non_integer_ids_in_jsonl(tmp_path: Path) -> None:
    source = tmp_path / "float.jsonl"
    source.write_text('{"input_ids": [1, 2.5]}\n')
    result = invoke("pack", source, tmp_path / "out", "--ctx", 4)
    assert_clean_failure(result, 1, "float.jsonl:1", "not only integer token ids")


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_jsonl_input(tmp_path: Path, content: str) -> None:
    source = tmp_path / "empty.jsonl"
    source.write_text(content)
    result = invoke("pack", source, tmp_path / "out", "--ctx", 4)
    assert_clean_failure(result, 1, "empty.jsonl")
    assert "empty" in result.stderr or "no documents" in result.stderr
    assert_nothing_written(tmp_path / "out")


def test_parquet_without_rows(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "none.parquet",
                           pa.table({"input_ids": pa.array([], type=pa.list_(pa.int32()))}))
    result = invoke("pack", source, tmp_path / "out", "--ctx", 4)
    assert_clean_failure(result, 1, "none.parquet", "no documents")
    assert_nothing_written(tmp_path / "out")


def test_missing_input(tmp_path: Path) -> None:
    result = invoke("pack", tmp_path / "nope.parquet", tmp_path / "out", "--ctx", 4)
    assert_clean_failure(result, 1, "nope.parquet", "does not exist")


def test_non_empty_out_needs_overwrite(toy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = invoke("pack", toy, out, "--ctx", 4)
    assert_clean_failure(result, 1, "not empty", "--overwrite")
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    # --overwrite replaces an earlier output, but never deletes files bestfit did not write.
    result = invoke("pack", toy, out, "--ctx", 4, "--overwrite")
    assert_clean_failure(result, 1, "OUT holds files bestfit did not write (keep.txt)", "move those files away")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "keep.txt").unlink()
    assert invoke("pack", toy, out, "--ctx", 4).exit_code == 0
    first = sorted(p.name for p in out.iterdir())
    result = invoke("pack", toy, out, "--ctx", 2, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert json.loads((out / "manifest.json").read_text())["options"]["ctx"] == 2
    assert "manifest.json" in first and "stats.json" in first


def test_empty_out_and_stdin_twice_are_refused(toy: Path, tmp_path: Path) -> None:
    assert_clean_failure(invoke("pack", toy, "", "--ctx", 4, "--overwrite"), 1, "OUT is an empty string")
    twice = CliRunner().invoke(cli, ["pack", "-", "-", str(tmp_path / "out"), "--ctx", "4"], input="{}\n")
    assert_clean_failure(twice, 2, "- (stdin) is given more than once")


def test_dangling_link_in_an_input_folder_is_an_error(toy: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.parquet").write_bytes(toy.read_bytes())
    (folder / "b.parquet").symlink_to(tmp_path / "gone.parquet")
    assert_clean_failure(invoke("pack", folder, tmp_path / "out", "--ctx", 4), 1, "b.parquet", "broken link")


# ------------------------------------------------------------------------------------------------ usage: exit 2


@pytest.mark.parametrize("ctx", ["0", "-3"])
def test_ctx_below_one(toy: Path, tmp_path: Path, ctx: str) -> None:
    result = invoke("pack", toy, tmp_path / "out", "--ctx", ctx)
    assert_clean_failure(result, 2, "--ctx")
    assert_nothing_written(tmp_path / "out")


def test_ctx_is_required(toy: Path, tmp_path: Path) -> None:
    result = invoke("pack", toy, tmp_path / "out")
    assert_clean_failure(result, 2, "--ctx")


def test_bad_choice_is_a_usage_error(toy: Path, tmp_path: Path) -> None:
    result = invoke("pack", toy, tmp_path / "out", "--ctx", 4, "--long-docs", "squash")
    assert_clean_failure(result, 2, "--long-docs")


def test_negative_eos_id_is_a_usage_error(toy: Path, tmp_path: Path) -> None:
    result = invoke("pack", toy, tmp_path / "out", "--ctx", 4, "--eos-id", -1)
    assert_clean_failure(result, 2, "--eos-id")


# ------------------------------------------------------------------------------------------------ configs and env


@pytest.mark.parametrize(("preset", "ctx", "rows"), [("cl100k-2k.toml", 2048, 8192), ("cl100k-8k.toml", 8192, 2048)])
def test_config_presets_load(tmp_path: Path, preset: str, ctx: int, rows: int) -> None:
    result = invoke("pack", SAMPLES / "nl.jsonl", tmp_path / "out", "--config", CONFIGS / preset, "--quiet")
    assert result.exit_code == 0, result.stderr
    options = packed_options(tmp_path / "out")
    assert (options["ctx"], options["eos_id"], options["pad_id"]) == (ctx, EOS, EOS)
    assert (options["rows_per_shard"], options["long_docs"], options["dtype"]) == (rows, "split", "int32")


def test_flags_override_config(tmp_path: Path) -> None:
    result = invoke("pack", SAMPLES / "nl.jsonl", tmp_path / "out", "--config", CONFIGS / "cl100k-2k.toml",
                    "--ctx", 1024, "--long-docs", "drop", "--quiet")
    assert result.exit_code == 0, result.stderr
    options = packed_options(tmp_path / "out")
    assert (options["ctx"], options["long_docs"], options["eos_id"]) == (1024, "drop", EOS)


def test_command_table_in_config(toy: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('ctx = 16\n[pack]\nctx = 4\nseed = 3\n')
    result = invoke("pack", toy, tmp_path / "out", "--config", config, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert (packed_options(tmp_path / "out")["ctx"], packed_options(tmp_path / "out")["seed"]) == (4, 3)


def test_config_errors_are_usage_errors(toy: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("ctx = 4\ncontext_length = 9\n")
    assert_clean_failure(invoke("pack", toy, tmp_path / "out", "--config", config), 2, "context_length")
    config.write_text("ctx = [\n")
    assert_clean_failure(invoke("pack", toy, tmp_path / "out", "--config", config), 2, "not valid TOML")
    assert_clean_failure(invoke("pack", toy, tmp_path / "out", "--config", tmp_path / "missing.toml"), 2,
                         "missing.toml")


def test_env_vars_sit_between_flags_and_config(toy: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("ctx = 16\nseed = 5\n")
    env = {"BESTFIT_PACK_CTX": "4", "BESTFIT_PACK_EOS_ID": "77"}
    result = invoke("pack", toy, tmp_path / "a", "--config", config, "--quiet", env=env)
    assert result.exit_code == 0, result.stderr
    options = packed_options(tmp_path / "a")
    assert (options["ctx"], options["eos_id"], options["seed"]) == (4, 77, 5)  # env beats config
    result = invoke("pack", toy, tmp_path / "b", "--config", config, "--ctx", 8, "--quiet", env=env)
    assert result.exit_code == 0, result.stderr
    assert packed_options(tmp_path / "b")["ctx"] == 8  # a flag beats env


def test_env_var_alone_supplies_ctx(toy: Path, tmp_path: Path) -> None:
    result = invoke("pack", toy, tmp_path / "out", "--quiet", env={"BESTFIT_PACK_CTX": "6"})
    assert result.exit_code == 0, result.stderr
    assert packed_options(tmp_path / "out")["ctx"] == 6


# ------------------------------------------------------------------------------------------------ the real process


def run_module(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bestfit_cli", *args], input=stdin, capture_output=True, env=env,
                          timeout=120, check=False)


def test_python_m_help() -> None:
    result = run_module("--help")
    assert result.returncode == 0
    assert b"Usage: bestfit" in result.stdout and b"pack" in result.stdout


def test_process_exit_codes_and_one_line_messages(tmp_path: Path) -> None:
    """The console entry point (not CliRunner): 1 for bad input, 2 for misuse, one line on stderr."""
    bad = run_module("pack", "-", str(tmp_path / "out"), "--ctx", "4", stdin=b'{"input_ids": [1]}\nnot json\n')
    assert bad.returncode == 1
    assert bad.stderr.decode().strip().splitlines() == [bad.stderr.decode().strip()]
    assert "-:2" in bad.stderr.decode() and b"Traceback" not in bad.stderr
    misuse = run_module("pack", "-", str(tmp_path / "out"), "--ctx", "0", stdin=b'{"input_ids": [1]}\n')
    assert misuse.returncode == 2 and b"--ctx" in misuse.stderr and b"Traceback" not in misuse.stderr

def test_the_cli_reads_parquet_without_importing_pandas_and_a_library_caller_keeps_it(tmp_path: Path) -> None:
    """pyarrow.dataset imports pandas (0.6 s of CPU, a tenth of a `stats` run): bestfit's own process hides it
    while importing pyarrow.dataset; a library caller's process keeps pandas usable by pyarrow."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([[1, 2, 3], [4, 5]], type=pa.list_(pa.int32()))}), source)
    cli_run = (f"import sys\nfrom bestfit_cli.cli import main\nsys.argv = ['bestfit', 'stats', {str(source)!r}, "
               "'--ctx', '4', '--json']\ntry:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code\n"
               "import pyarrow.dataset\nprint('pandas' in sys.modules, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", cli_run], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False"
    library = (f"import sys\nfrom bestfit_cli.stats import StatsOptions, run_stats\nrun_stats([{str(source)!r}], "
               "StatsOptions(ctx=(4,)))\nimport pyarrow as pa\nprint(pa.table({'a': [1]}).to_pandas().shape)\n")
    done = subprocess.run([sys.executable, "-c", library], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 1)"


def _mimalloc_delay(stderr: str) -> int:
    """The purge delay mimalloc printed at start (``MIMALLOC_VERBOSE``): ``purge_delay`` in mimalloc 2.1 and newer
    (pyarrow 21 and newer), ``decommit_delay`` in mimalloc 2.0 (pyarrow 15-20)."""
    found = re.findall(r"option '(?:purge|decommit)_delay': (-?\d+)", stderr)
    assert len(found) == 1, stderr[-2000:]
    return int(found[0])


@pytest.mark.skipif(pa.default_memory_pool().backend_name != "mimalloc", reason="pyarrow allocates with mimalloc here")
def test_the_command_starts_pyarrows_allocator_with_its_options() -> None:
    """``bestfit`` and ``python -m bestfit_cli`` set mimalloc's purge delay before pyarrow loads (entry.py); a value
    the user set wins. mimalloc prints its options at start when ``MIMALLOC_VERBOSE`` is set. pyarrow 22 and newer
    keep 1 s by default, so the entry point is also run with another value of its own, which only an option set
    before pyarrow loads can show."""
    from bestfit_cli.entry import ALLOCATOR_OPTIONS

    script = Path(sys.executable).with_name("bestfit")
    commands = [[sys.executable, "-m", "bestfit_cli"], *([[str(script)]] if script.exists() else [])]
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_OPTIONS} | {"MIMALLOC_VERBOSE": "1"}
    for command in commands:
        done = subprocess.run([*command, "--version"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert _mimalloc_delay(done.stderr) == int(ALLOCATOR_OPTIONS["MIMALLOC_PURGE_DELAY"]) == 1000
        done = subprocess.run([*command, "--version"], env=env | {"MIMALLOC_PURGE_DELAY": "25",
                                                                   "MIMALLOC_DECOMMIT_DELAY": "25"},
                              capture_output=True, text=True, timeout=60)
        assert _mimalloc_delay(done.stderr) == 25
    own_value = ("import sys, bestfit_cli.entry as entry\n"
                 "entry.ALLOCATOR_OPTIONS.update(MIMALLOC_PURGE_DELAY='777', MIMALLOC_DECOMMIT_DELAY='777')\n"
                 "sys.argv = ['bestfit', '--version']\nentry.main()\n")
    done = subprocess.run([sys.executable, "-c", own_value], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert _mimalloc_delay(done.stderr) == 777
