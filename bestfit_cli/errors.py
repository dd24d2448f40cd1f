"""Typed errors of the library. The CLI translates them once, at its boundary, into one-line messages."""

from __future__ import annotations


class BestfitError(Exception):
    """Base of every error bestfit raises on purpose. ``str()`` is a complete one-line message."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message} ({self.fix})" if self.fix else self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled with every attribute, so the error a Ray task raised is the same error on the driver (the default
        # would call __init__ again with the finished message as its only argument).
        return _restore, (type(self), dict(self.__dict__))


def _restore(cls: type[BestfitError], state: dict[str, object]) -> BestfitError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, str(error))
    return error


class InputError(BestfitError):
    """Bad or unreadable input data: names the file and, when known, the row or line."""

    def __init__(self, path: str, message: str, *, row: int | None = None, line: int | None = None,
                 fix: str | None = None) -> None:
        self.path = path
        self.row = row
        self.line = line
        self.reason = message
        where = path
        if line is not None:
            where += f":{line}"
        elif row is not None:
            where += f" row {row}"
        self.where = where
        super().__init__(f"{where}: {message}", fix=fix)


class OptionError(BestfitError):
    """Options that cannot work together or are out of range (raised by the library, not click)."""

    exit_code = 2


class OutputError(BestfitError):
    """The output location cannot be used or written."""


class StorageError(BestfitError):
    """An object store refused a request or could not be reached: names the path and what to set or fix."""


class VerifyError(BestfitError):
    """Packed output does not match its inputs or manifest."""


def check_field_types(options: object) -> None:
    """Refuse option values of the wrong type in a dataclass of options, as the CLI's parser would.

    The library is called from Python too: ``ctx=16.5``, ``eos_id=True`` or ``seed="1"`` must be the same one-line
    usage error as on the command line, not a numpy error later or a silently rounded value. Handles ``int``,
    ``bool``, ``str``, ``Literal[...]``, ``X | None`` and ``tuple[str, ...]`` fields; others are left to ``validate``.
    """
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):  # type: ignore[arg-type]
        value = getattr(options, f.name)
        wanted = hints.get(f.name)
        args = typing.get_args(wanted)
        flag = "--" + f.name.replace("_", "-")
        if typing.get_origin(wanted) in (typing.Union, types.UnionType) and type(None) in args:
            if value is None:
                continue
            rest = [a for a in args if a is not type(None)]
            wanted = rest[0] if len(rest) == 1 else None
        if typing.get_origin(wanted) is tuple:  # a repeatable option: each value as one of that type
            if not isinstance(value, tuple):
                raise OptionError(f"{flag} {value!r} is not a tuple", fix=f"give {flag} a tuple of values")
            for item in value:
                _check_one(flag, item, typing.get_args(wanted)[0])
        else:
            _check_one(flag, value, wanted)


def _check_one(flag: str, value: object, wanted: object) -> None:
    import typing

    if wanted is int and type(value) is not int:  # bool is an int subclass: refused too
        raise OptionError(f"{flag} {value!r} is not an integer", fix=f"give {flag} a whole number")
    if wanted is bool and type(value) is not bool:
        raise OptionError(f"{flag} {value!r} is not true or false", fix=f"give {flag} True or False")
    if (wanted is str or typing.get_origin(wanted) is typing.Literal) and not isinstance(value, str):
        raise OptionError(f"{flag} {value!r} is not a string", fix=f"give {flag} a name such as the CLI takes")
