"""Config files and BESTFIT_* variables: named after the long options, one-line errors, and which source wins."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from bestfit_cli.cli import cli

from .conftest import SAMPLES

SOURCE = SAMPLES / "nl.jsonl"


def invoke(*args: object, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def one_line_usage_error(result: Result, *fragments: str) -> str:
    """Exit 2, nothing on stdout, a single ``Error: ...`` line on stderr naming every fragment, no traceback."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def window_tokens(out: Path) -> int:
    return int(json.loads((out / "manifest.json").read_text())["options"]["window_tokens"])


def strategies_run(result: Result) -> list[str]:
    assert result.exit_code == 0, result.stderr
    return [r["strategy"] for r in json.loads(result.stdout)["results"]]


# ------------------------------------------------------------------------------------------------ names


def test_every_option_reads_the_variable_of_its_long_name() -> None:
    ctx = click.Context(cli, info_name="bestfit")
    for name in cli.list_commands(ctx):
        for param in cli.commands[name].params:
            if isinstance(param, click.Option):
                long_name = next(o for o in param.opts if o.startswith("--"))[2:]
                assert param.envvar == f"BESTFIT_{name}_{long_name}".upper().replace("-", "_"), param.opts


def test_env_vars_follow_option_names(tmp_path: Path) -> None:
    result = invoke("pack", SOURCE, tmp_path / "a", "--ctx", 64, "-q", env={"BESTFIT_PACK_JSON": "1"})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["schema_version"] == "bestfit.stats/1"
    # The Python parameter name is not a variable any more.
    result = invoke("pack", SOURCE, tmp_path / "b", "--ctx", 64, "-q", env={"BESTFIT_PACK_AS_JSON": "1"})
    assert result.exit_code == 0 and result.stdout == "", result.stdout[:200]
    stats = ("stats", SOURCE, "--ctx", 64, "--json", "-q")
    assert strategies_run(invoke(*stats, env={"BESTFIT_STATS_STRATEGY": "ffd nextfit"})) == ["ffd", "nextfit"]
    assert len(strategies_run(invoke(*stats, env={"BESTFIT_STATS_STRATEGIES": "ffd"}))) == 5


def test_config_keys_follow_option_names(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'ctx = 64\njson = true\nstrategy = "ffd"\nlong-docs = "drop"\n')
    result = invoke("stats", SOURCE, "--config", config, "-q")
    assert strategies_run(result) == ["ffd"]
    assert json.loads(result.stdout)["options"]["long_docs"] == "drop"


@pytest.mark.parametrize("key", ["as_json", "strategies", "inputs", "out"])
def test_parameter_and_argument_names_are_unknown_keys(tmp_path: Path, key: str) -> None:
    config = write_config(tmp_path, f"{key} = true\n")
    message = one_line_usage_error(invoke("pack", SOURCE, tmp_path / "out", "--ctx", 64, "--config", config),
                                   f"config file {config}: unknown key '{key}' (known keys: ")
    known = message.split("known keys: ")[1].rstrip(")").split(", ")
    assert {"json", "strategy", "eos_id"} <= set(known)
    assert not {"as_json", "strategies", "inputs", "out", "config"} & set(known)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("text", "fragment"), [
    ("bogus = 1\n", "unknown key 'bogus'"),
    ("eos_id = 1\neos-id = 2\n", "'eos-id' sets eos_id a second time"),
    ("ctx = 'big'\n", "ctx = 'big' is not a valid integer"),
    ("json = 'loud'\n", "json = 'loud' is not a valid boolean"),
    ("ctx = [\n", "is not valid TOML"),
])
def test_config_errors_are_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    config = write_config(tmp_path, text)
    one_line_usage_error(invoke("pack", SOURCE, tmp_path / "out", "--ctx", 64, "--config", config),
                         f"config file {config}", fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("text", "command", "owner"), [
    ('[pack]\nstrategy = ["ffd"]\n', "pack", "stats"),
    ("[stats]\nseed = 3\n", "stats", "pack"),
    ('[histogram]\nlong-docs = "drop"\n', "histogram", "stats"),
])
def test_a_key_in_another_commands_table_is_an_error(tmp_path: Path, text: str, command: str, owner: str) -> None:
    config = write_config(tmp_path, "ctx = 64\n" + text)
    key = text.split("\n")[1].split(" ")[0]
    # Whichever command runs, the file is checked as a whole.
    for args in (("pack", SOURCE, tmp_path / "out"), ("stats", SOURCE)):
        one_line_usage_error(invoke(*args, "--config", config),
                             f"key '{command}.{key}' is not an option of bestfit {command}", f"bestfit {owner}")


def test_top_level_keys_of_other_commands_are_shared(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'ctx = 64\nseed = 3\nstrategy = ["ffd"]\nlong_docs = "drop"\n')
    assert strategies_run(invoke("stats", SOURCE, "--config", config, "--json", "-q")) == ["ffd"]
    result = invoke("pack", SOURCE, tmp_path / "out", "--config", config, "-q")
    assert result.exit_code == 0, result.stderr
    result = invoke("histogram", SOURCE, "--config", config)
    assert result.exit_code == 0, result.stderr


# -------------------------------------------------------------------------------------- --memory and --window-tokens


def test_a_flag_overrides_memory_or_window_tokens_from_config_or_env(tmp_path: Path) -> None:
    pack = ("pack", SOURCE)
    result = invoke(*pack, tmp_path / "memory", "--ctx", 64, "--memory", "2GB", "-q")
    assert result.exit_code == 0, result.stderr
    by_memory = window_tokens(tmp_path / "memory")
    assert by_memory != 100
    memory_config = write_config(tmp_path, 'memory = "2GB"\n')
    result = invoke(*pack, tmp_path / "a", "--ctx", 64, "--config", memory_config, "--window-tokens", 100, "-q")
    assert result.exit_code == 0, result.stderr
    assert window_tokens(tmp_path / "a") == 100
    result = invoke(*pack, tmp_path / "b", "--ctx", 64, "--window-tokens", 100, "-q",
                    env={"BESTFIT_PACK_MEMORY": "2GB"})
    assert result.exit_code == 0, result.stderr
    assert window_tokens(tmp_path / "b") == 100
    window_config = write_config(tmp_path, "window_tokens = 100\n")
    result = invoke(*pack, tmp_path / "c", "--ctx", 64, "--config", window_config, "--memory", "2GB", "-q")
    assert result.exit_code == 0, result.stderr
    assert window_tokens(tmp_path / "c") == by_memory
    # A variable beats the config file.
    result = invoke(*pack, tmp_path / "d", "--ctx", 64, "--config", window_config, "-q",
                    env={"BESTFIT_PACK_MEMORY": "2GB"})
    assert result.exit_code == 0, result.stderr
    assert window_tokens(tmp_path / "d") == by_memory


def test_memory_and_window_tokens_from_one_source_is_an_error(tmp_path: Path) -> None:
    pack = ("pack", SOURCE, tmp_path / "out", "--ctx", 64)
    config = write_config(tmp_path, 'memory = "2GB"\nwindow-tokens = 100\n')
    one_line_usage_error(invoke(*pack, "--config", config), "give --memory or --window-tokens, not both",
                         f"config file {config} sets both memory and window_tokens")
    one_line_usage_error(invoke(*pack, env={"BESTFIT_PACK_MEMORY": "2GB", "BESTFIT_PACK_WINDOW_TOKENS": "100"}),
                         "BESTFIT_PACK_MEMORY and BESTFIT_PACK_WINDOW_TOKENS are both set")
    one_line_usage_error(invoke(*pack, "--memory", "2GB", "--window-tokens", 100),
                         "give --memory or --window-tokens, not both")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ histogram


def test_histogram_has_no_long_docs(tmp_path: Path) -> None:
    result = invoke("histogram", SOURCE, "--long-docs", "drop")
    assert result.exit_code == 2 and "--long-docs" in result.stderr
    assert "long_docs" not in {p.name for p in cli.commands["histogram"].params}
    # The policy is chosen when stats reads the histogram.
    hist = tmp_path / "h.json"
    assert invoke("histogram", SOURCE, "-o", hist, "-q").exit_code == 0
    split = json.loads(invoke("stats", hist, "--ctx", 64, "--strategy", "ffd", "--json", "-q").stdout)
    drop = json.loads(invoke("stats", hist, "--ctx", 64, "--strategy", "ffd", "--long-docs", "drop", "--json",
                             "-q").stdout)
    assert (split["options"]["long_docs"], drop["options"]["long_docs"]) == ("split", "drop")
    assert drop["results"][0]["dropped_documents"] > 0 == split["results"][0]["dropped_documents"]
