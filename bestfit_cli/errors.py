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


class VerifyError(BestfitError):
    """Packed output does not match its inputs or manifest."""
