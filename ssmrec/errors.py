"""User-facing errors and the one-line formatter. The CLI prints these as one line (no traceback)
and exits non-zero."""

from __future__ import annotations


def one_line(text: object, limit: int = 240) -> str:
    """Collapse any message (an exception, a multi-line tool output) to one line of at most ``limit``
    characters. The one helper every error path uses."""
    if isinstance(text, BaseException):
        msg = str(text).strip()
        text = f"{type(text).__name__}: {msg}" if msg else type(text).__name__
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


class SsmrecError(Exception):
    """Base class for errors caused by user input (data, config, paths, models)."""

    exit_code = 2


class DataError(SsmrecError):
    """A data file is missing, unreadable or violates the schema.

    The message always names the file, and where it applies the column and the first bad row.
    """

    def __init__(self, file, message, column=None, row=None):
        self.file, self.column, self.row, self.message = str(file), column, row, message
        where = self.file
        if column is not None:
            where += f": column '{column}'"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"{where}: {message}")


class ConfigError(SsmrecError):
    """A configuration file or --set override is invalid (unknown key, wrong type, bad value)."""


class OutputError(SsmrecError):
    """An output location cannot be written (unwritable, below a regular file, a directory where a
    file is expected, disk full) or belongs to another run."""


class TrainingDiverged(SsmrecError):
    """The training loss became NaN/inf; the run stops and keeps its last good checkpoint."""

    exit_code = 3
