"""User-facing errors. The CLI prints these as one line (no traceback) and exits non-zero."""


class SsmrecError(Exception):
    """Base class for errors caused by user input (data, config, paths, models)."""

    exit_code = 2


class DataError(SsmrecError):
    """A data file is missing, unreadable or violates the schema.

    The message always names the file, and where it applies the column and the first bad row.
    """

    def __init__(self, file, message, column=None, row=None):
        self.file, self.column, self.row = str(file), column, row
        where = self.file
        if column is not None:
            where += f": column '{column}'"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"{where}: {message}")


class ConfigError(SsmrecError):
    """A configuration file or --set override is invalid (unknown key, wrong type, bad value)."""
