"""The recipes in docs/training.md run as written: each section's `bestfit pack` commands, then its Python blocks.

A section is everything under one `## ` heading. Its ```bash blocks' `bestfit pack` lines run first, in a fresh
folder where `samples/` is the shipped sample; then its ```python blocks run in order, in one namespace, in that
folder. A recipe that no longer runs fails here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT
from .training_proof import run_pack

DOC = ROOT / "docs" / "training.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def sections() -> dict[str, tuple[list[str], list[str]]]:
    """Each `## ` section's `bestfit pack` command lines and Python blocks."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    for part in re.split(r"^## ", DOC.read_text(), flags=re.MULTILINE)[1:]:
        title = part.splitlines()[0].strip()
        commands: list[str] = []
        blocks: list[str] = []
        for language, body in FENCE.findall(part):
            if language == "bash":
                commands += [line.split("#")[0].strip() for line in body.splitlines()
                             if line.startswith("bestfit pack ")]
            elif language == "python":
                blocks.append(body)
        if blocks:
            found[title] = (commands, blocks)
    return found


RECIPES = sections()
# What each recipe must have done, beyond running without an error.
OUTCOMES = {
    "Hugging Face `Trainer`": lambda ns: ns["trainer"].state.global_step == ns["args"].max_steps,
    "A plain PyTorch loop with a varlen attention kernel": lambda ns: len(ns["losses"]) == 3,
    "Megatron": lambda ns: len(ns["train"]) == ns["manifest"]["sequences"] and len(ns["sample"]["tokens"]) == 512,
    "TRL padding-free": lambda ns: ns["trainer"].state.global_step == ns["trainer"].args.max_steps,
}


def test_the_page_has_recipes() -> None:
    assert set(OUTCOMES) <= set(RECIPES)


def run_section(title: str, folder: Path) -> dict[str, Any]:
    """Run a section's pack commands and then its Python blocks in ``folder``; return the blocks' namespace."""
    commands, blocks = RECIPES[title]
    for command in commands:
        run_pack(command, folder)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for block in blocks:
            exec(compile(block, f"{DOC.name}: {title}", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace


@pytest.mark.parametrize("title", sorted(RECIPES))
def test_recipe_runs(title: str, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the training stack is not installed (pip install -e '.[train]')")
    namespace = run_section(title, tmp_path)
    if title in OUTCOMES:
        assert OUTCOMES[title](namespace)
