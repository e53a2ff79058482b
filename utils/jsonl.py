"""JSON lines, read the way they are written: one record per "\\n", nothing else ends a record.

`json.dumps` escapes "\\n", "\\r" and the other ASCII controls inside strings, but writes U+2028,
U+2029, U+0085 and every other non-ASCII character raw when `ensure_ascii=False` (gen-data does).
`str.splitlines()` breaks lines on those too (and on \\x0b, \\x0c, \\x1c-\\x1e), cutting a record in
two. So every JSON-lines reader splits here: on "\\n" only, a "\\r" before it dropped (files edited
on Windows), a last line without a newline kept, and line numbers counted as an editor counts them.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

from draftheads.utils.errors import DataError

# Only JSON's own whitespace makes a line blank: a line holding just U+2028 is not a record, and
# reporting it as malformed beats skipping it unseen.
_BLANK = " \t\r"


def split_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for each non-blank line of JSON-lines `text`, numbered from 1."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip(_BLANK):
            yield number, line.removesuffix("\r")


def read_lines(path: str | os.PathLike, *, whole_only: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, line) for each non-blank line of the JSON-lines file `path`, streamed.

    `whole_only`: stop before a last line that lacks its newline. Append-only logs use it, where
    such a line is the torn tail of a killed writer; files written in one go keep their last line.
    """
    with open(path, "rb") as handle:  # binary: iterating splits on b"\n" only
        for number, raw in enumerate(handle, start=1):
            if whole_only and not raw.endswith(b"\n"):
                return
            line = raw.removesuffix(b"\n").removesuffix(b"\r")
            if line.strip(_BLANK.encode()):
                yield number, _decode(line, path, number)


def _decode(line: bytes, path: str | os.PathLike, number: int) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: line {number}: not UTF-8 text (byte {exc.start + 1} of the line)") from None


def json_error(exc: json.JSONDecodeError, *, with_line: bool = False) -> str:
    """The decoder's complaint and where, said once.

    Some of its messages end in "at" ("Unterminated string starting at") because `str(exc)` appends
    the position; appending " at column N" to `exc.msg` would read "at at".
    `with_line`: also name the line (text of many lines, where `exc.lineno` is the file's line).
    """
    where = f"line {exc.lineno} column {exc.colno}" if with_line else f"column {exc.colno}"
    return f"{exc.msg.removesuffix(' at')} at {where}"
