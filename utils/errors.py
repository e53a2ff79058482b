"""User-facing errors.

Anything a user can cause by a bad file, record, flag or recipe raises a subclass of
`DraftheadsError` with a message that names the file, record and field. The CLI prints that message
without a traceback; any other exception is a bug in draftheads and keeps its traceback.
"""

from __future__ import annotations


class DraftheadsError(Exception):
    """Base of every error caused by user input (files, recipes, flags, models)."""


class ConfigError(DraftheadsError):
    """A recipe or override is malformed: unknown key, wrong type, missing value."""


class DataError(DraftheadsError):
    """A data file or record cannot be used: bad JSON, unknown role, no assistant turn, ..."""


class ModelLoadError(DraftheadsError):
    """A base model or tokenizer cannot be found, loaded or used."""


def record_error(source: str, record: str, field: str | None, problem: str) -> DataError:
    """Build a `DataError` whose message reads ``FILE: line N: field 'F': problem``.

    `record` says where in the file, as users count (1-based): "line 7", "record 12", "row 3".
    """
    where = f"{source}: {record}"
    if field:
        where += f": field '{field}'"
    error = DataError(f"{where}: {problem}")
    error.problem = problem  # what went wrong, without where: skipped records are counted by it
    return error


class HubError(DraftheadsError):
    """The Hugging Face Hub refused or could not be reached (messages never include the token)."""
