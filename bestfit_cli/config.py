"""Option defaults from ``--config FILE.toml`` and ``BESTFIT_*`` variables, both named after the options' long names.

``--json`` is the key ``json`` (or in a ``[pack]`` table) and the variable ``BESTFIT_PACK_JSON``; ``--eos-id`` is
``eos_id`` or ``eos-id`` and ``BESTFIT_PACK_EOS_ID``. Arguments (IN, OUT) are neither. Keys at the top level are
shared by every command that has the option (presets serve pack and stats); a key in a command's table must be an
option of that command. Flags beat variables, variables beat the file, the file beats the built-in defaults.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .errors import OptionError

ENV_PREFIX = "BESTFIT"


def option_key(param: click.Parameter) -> str | None:
    """The config key of an option: its long name with ``_`` for ``-`` (``--json`` -> ``json``); None for
    arguments and ``--config`` itself."""
    if not isinstance(param, click.Option) or param.name == "config":
        return None
    long_names = [opt for opt in param.opts if opt.startswith("--")]
    return (long_names or param.opts)[0].lstrip("-").replace("-", "_")


def name_env_vars(command: click.Command, command_name: str) -> None:
    """Give every option of ``command`` the variable ``BESTFIT_<COMMAND>_<LONG NAME>`` (``--json`` ->
    ``BESTFIT_PACK_JSON``), rather than click's automatic one, which follows the Python parameter name."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar is None:
            long_name = option_key(param) or param.name or ""
            param.envvar = f"{ENV_PREFIX}_{command_name}_{long_name}".upper().replace("-", "_")
            param.allow_from_autoenv = False


def command_keys(commands: Mapping[str, click.Command]) -> dict[str, dict[str, click.Parameter]]:
    """Config key -> option, for each command that takes ``--config``."""
    keys: dict[str, dict[str, click.Parameter]] = {}
    for name, command in commands.items():
        if any(p.name == "config" for p in command.params):
            keys[name] = {key: p for p in command.params if (key := option_key(p)) is not None}
    return keys


def load_config(path: str, command: str, keys_by_command: Mapping[str, Collection[str]]) -> dict[str, Any]:
    """The values ``command`` takes from the TOML file at ``path``, by config key (``-`` read as ``_``).

    The whole file is checked, whichever command reads it: a key no command knows, or a key in a command's table
    that is not an option of that command, is an OptionError naming the key.
    """
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OptionError(f"config file {path} does not exist", fix="check the --config path") from None
    except IsADirectoryError:
        raise OptionError(f"config file {path} is a folder", fix="give a .toml file to --config") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OptionError(f"config file {path} is not valid TOML ({exc})", fix="fix the file") from None
    except RecursionError:
        raise OptionError(f"config file {path} is not valid TOML (nested too deeply)", fix="fix the file") from None
    every_key = set().union(*keys_by_command.values())
    shared: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for key, value in data.items():
        if key in keys_by_command and isinstance(value, dict):
            table = _check_table(path, key, value, keys_by_command, every_key)
            if key == command:
                own = table
            continue
        name = key.replace("-", "_")
        if name not in every_key:
            raise OptionError(f"config file {path}: unknown key '{key}'",
                              fix=f"known keys: {', '.join(sorted(every_key))}")
        if isinstance(value, dict):
            raise OptionError(f"config file {path}: '{key}' is a table, not a value",
                              fix=f"write {key} = VALUE; tables are only [{'], ['.join(sorted(keys_by_command))}]")
        _refuse_twice(path, shared, name, key)
        shared[name] = value
    wanted = set(keys_by_command.get(command, ()))
    return {**{k: v for k, v in shared.items() if k in wanted}, **own}


def _check_table(path: str, command: str, table: dict[str, Any], keys_by_command: Mapping[str, Collection[str]],
                 every_key: set[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name in keys_by_command[command] and isinstance(value, dict):
            raise OptionError(f"config file {path}: '{command}.{key}' is a table, not a value",
                              fix=f"write {key} = VALUE under [{command}]")
        if name in keys_by_command[command]:
            _refuse_twice(path, values, name, f"{command}.{key}")
            values[name] = value
            continue
        if name not in every_key:
            raise OptionError(f"config file {path}: unknown key '{command}.{key}'",
                              fix=f"keys of [{command}]: {', '.join(sorted(keys_by_command[command]))}")
        owners = sorted(c for c, keys in keys_by_command.items() if name in keys)
        raise OptionError(f"config file {path}: key '{command}.{key}' is not an option of bestfit {command}",
                          fix=f"it belongs to {' and '.join('bestfit ' + c for c in owners)}: move it to "
                              f"{' or '.join(f'[{c}]' for c in owners)}")
    return values


def _refuse_twice(path: str, table: dict[str, Any], name: str, key: str) -> None:
    if name in table:  # `eos_id` and `eos-id` are different TOML keys but one option
        raise OptionError(f"config file {path}: '{key}' sets {name} a second time", fix="keep one of the two keys")


def apply_config(ctx: click.Context, path: str, commands: Mapping[str, click.Command]) -> None:
    """Make the file's values the defaults of the command being run (``ctx.default_map``), type-checked."""
    keys = command_keys(commands)
    own = keys.get(ctx.info_name or "", {})
    values = load_config(path, ctx.info_name or "", {name: set(k) for name, k in keys.items()})
    defaults: dict[str, Any] = {}
    for key, value in values.items():
        param = own[key]
        if param.multiple and not isinstance(value, list):
            value = [value]  # a scalar is one value of a repeatable option (ctx = 2048 for `stats --ctx`)
        try:
            for item in value if param.multiple else [value]:
                _check_toml_type(param, item)
            param.type_cast_value(ctx, value)
        except (click.BadParameter, TypeError, ValueError):
            shown = value[0] if param.multiple and not isinstance(values[key], list) else value
            wanted = "integer" if isinstance(param.type, click.types.IntParamType) else param.type.name
            raise OptionError(f"config file {path}: {key} = {_toml_repr(shown)} is not a valid {wanted}",
                              fix=f"see bestfit {ctx.info_name} --help for {param.opts[-1]}") from None
        defaults[param.name or key] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["bestfit.config"] = path


def _toml_repr(value: Any) -> str:
    """A value as the config file spells it where Python's repr differs (``true``, not ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_repr(v) for v in value) + "]"
    return repr(value)


def _check_toml_type(param: click.Parameter, value: Any) -> None:
    """TOML values have types: an integer option takes an integer (not ``true``, ``4.9`` or ``"8"``, which click
    would turn into 1, 4 and 8), a flag a boolean, a text option a string (a size such as ``memory`` also an
    integer number of bytes). Raises TypeError for any other value."""
    kind = param.type
    if isinstance(kind, click.types.IntParamType):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(kind, click.types.BoolParamType):
        ok = isinstance(value, bool)
    elif isinstance(kind, (click.types.StringParamType, click.Choice, click.Path)):
        ok = isinstance(value, str) or (getattr(param, "metavar", None) == "SIZE" and isinstance(value, int)
                                        and not isinstance(value, bool))
    elif getattr(kind, "accepts_list", False):  # a list option such as pack --columns: a string or a list of them
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    else:
        ok = not isinstance(value, (dict, list))
    if not ok:
        raise TypeError(f"{value!r} is a TOML {type(value).__name__}")


_SOURCE_ORDER = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.DEFAULT_MAP)


def stronger_option(ctx: click.Context, first: str, second: str, fix: str) -> str:
    """Of two options that set the same thing, the one given more directly: a flag over a ``BESTFIT_*`` variable
    over the config file. Both given in the same place is an OptionError."""
    sources = [ctx.get_parameter_source(name) for name in (first, second)]
    ranks = [_SOURCE_ORDER.index(s) if s in _SOURCE_ORDER else len(_SOURCE_ORDER) for s in sources]
    if ranks[0] != ranks[1]:
        return first if ranks[0] < ranks[1] else second
    params = {p.name: p for p in ctx.command.params}
    message = f"give {params[first].opts[-1]} or {params[second].opts[-1]}, not both"
    if sources[0] == ParameterSource.ENVIRONMENT:
        message += f": {params[first].envvar} and {params[second].envvar} are both set"
    elif sources[0] == ParameterSource.DEFAULT_MAP:
        keys = " and ".join(str(option_key(params[name])) for name in (first, second))
        message += f": config file {ctx.meta.get('bestfit.config', '')} sets both {keys}"
    raise OptionError(message, fix=fix)
