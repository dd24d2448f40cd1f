"""Config files: ``--config FILE.toml`` supplies option defaults; flags and ``BESTFIT_*`` variables override them.

Keys are option names with ``_`` or ``-`` (``eos_id`` or ``eos-id``), at the top level for every command, or in a
table named after a command (``[pack]``, ``[stats]``) for that command only.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import OptionError


def load_config(path: str, command: str, known_keys: Iterable[str], command_names: Iterable[str]) -> dict[str, Any]:
    """Option defaults for ``command`` from a TOML file; unknown keys are an error naming the key."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OptionError(f"config file {path} does not exist", fix="check the --config path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OptionError(f"config file {path} is not valid TOML ({exc})", fix="fix the file") from None
    known = set(known_keys)
    commands = set(command_names)
    values: dict[str, Any] = {}
    section: dict[str, Any] = {}
    for key, value in data.items():
        if key in commands and isinstance(value, dict):
            if key == command:
                section = value
            _check_keys(path, value, known, prefix=f"{key}.")
            continue
        values[key.replace("-", "_")] = value
    _check_keys(path, data, known, skip=commands)
    values.update({k.replace("-", "_"): v for k, v in section.items()})
    return values


def _check_keys(path: str, table: dict[str, Any], known: set[str], prefix: str = "",
                skip: set[str] | None = None) -> None:
    for key in table:
        if skip and key in skip and isinstance(table[key], dict):
            continue
        if key.replace("-", "_") not in known:
            raise OptionError(f"config file {path}: unknown key '{prefix}{key}'",
                              fix=f"known keys: {', '.join(sorted(known))}")
