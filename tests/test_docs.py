"""The docs stay in step with the code: the CLI reference is generated, the guides name every option and field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bestfit_cli import PackOptions, pack
from bestfit_cli.cli import cli

from . import gen_cli_docs
from .conftest import ROOT

DOCS = ROOT / "docs"


def test_cli_reference_is_up_to_date() -> None:
    expected = gen_cli_docs.generate()
    actual = (DOCS / "cli.md").read_text(encoding="utf-8") if (DOCS / "cli.md").exists() else ""
    assert actual == expected, "docs/cli.md is out of date: run `make docs` and commit docs/cli.md"


@pytest.mark.parametrize("path", gen_cli_docs.command_paths(cli), ids=" ".join)
def test_every_command_is_documented(path: tuple[str, ...]) -> None:
    ctx = click.Context(cli, info_name="bestfit")
    command = cli.get_command(ctx, path[0])
    assert command is not None
    assert (command.help or "").strip(), f"bestfit {' '.join(path)} has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"bestfit {' '.join(path)} {param.opts[0]} has no help text"
    assert f"## bestfit {' '.join(path)}\n" in (DOCS / "cli.md").read_text(encoding="utf-8")


def test_usage_guide_names_every_pack_option() -> None:
    guide = (DOCS / "usage.md").read_text(encoding="utf-8")
    pack_command = cli.commands["pack"]
    missing = [opt for p in pack_command.params if isinstance(p, click.Option) and not p.hidden
               for opt in p.opts[:1] if opt.startswith("--") and opt not in ("--help",) and f"`{opt}" not in guide]
    assert not missing, f"docs/usage.md does not mention {missing}"


def _documented_fields(text: str, heading: str) -> set[str]:
    """Field names in the first column of the tables under ``heading`` (up to the next heading of that level)."""
    level = heading.split(" ")[0]
    section = text.split(heading, 1)[1]
    section = re.split(rf"\n{level} ", section, maxsplit=1)[0]
    return set(re.findall(r"^\| `([a-z_.0-9\[\]]+)`", section, flags=re.M))


def _flatten(data: dict[str, object], prefix: str = "") -> set[str]:
    """Dotted names of every field, with ``[]`` for the items of a list of objects: ``shards[].sha256``."""
    keys = set()
    for key, value in data.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    keys.update(_flatten(item, f"{prefix}{key}[]."))
    return keys


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    source = folder / "in.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([[1, 2, 3], [4] * 9, []], type=pa.list_(pa.int32()))}), source)
    pack([str(source)], str(folder / "out"), PackOptions(ctx=4, eos_id=9))
    return folder / "out"


def test_format_doc_describes_every_stats_field(packed: Path) -> None:
    stats = json.loads((packed / "stats.json").read_text())
    documented = _documented_fields((DOCS / "format.md").read_text(encoding="utf-8"), "## stats.json")
    missing = sorted(_flatten(stats) - documented)
    assert not missing, f"docs/format.md does not describe stats.json fields {missing}"


def test_format_doc_describes_every_manifest_field(packed: Path) -> None:
    manifest = json.loads((packed / "manifest.json").read_text())
    documented = _documented_fields((DOCS / "format.md").read_text(encoding="utf-8"), "## manifest.json")
    keys = _flatten(manifest)
    missing = sorted(keys - documented)
    assert not missing, f"docs/format.md does not describe manifest.json fields {missing}"


def test_rebuild_example_in_format_doc_works(packed: Path) -> None:
    """The Python example in docs/format.md rebuilds the documents of a real output."""
    text = (DOCS / "format.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    [example] = [b for b in blocks if "def rebuild_documents" in b]
    namespace: dict[str, Any] = {}
    exec(compile(example, "docs/format.md", "exec"), namespace)
    documents = namespace["rebuild_documents"](str(packed))
    assert sorted(documents) == [0, 1]  # document 2 is empty
    assert documents[0].tolist() == [1, 2, 3, 9]
    assert documents[1].tolist() == [4] * 9 + [9]  # 10 tokens with EOS: split at ctx 4 into 4 + 4 + 2
