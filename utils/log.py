"""Library progress through Python's logging, so a caller can silence, filter or redirect it.

Every module logs under its own name (`logger(__name__)`: `draftheads.eval.runner`, ...). The
`draftheads` logger writes INFO and above to the current standard output, one message per line
(warnings prefixed `warning:`), which is what the commands show; `logging.getLogger("draftheads").setLevel(
logging.WARNING)` quiets it, and a handler of the caller's own replaces it
(`logging.getLogger("draftheads").handlers[:] = [...]`). Messages stop at the `draftheads` logger (they
do not reach the root logger's handlers): a handler goes there. Training prints through `accelerate` instead,
which knows the main process.
"""

from __future__ import annotations

import logging
import sys

LIBRARY = "draftheads"
"""The logger every module's logger descends from."""


class _CurrentStdout(logging.Handler):
    """Writes to `sys.stdout` as it is when a message is logged (a stream captured at set-up would
    miss a later redirection, such as pytest's or `contextlib.redirect_stdout`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                message = f"{record.levelname.lower()}: {message}"
            print(message, file=sys.stdout, flush=True)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def logger(name: str) -> logging.Logger:
    """The logger of module `name`, under the library logger (given its stdout handler and INFO level
    the first time, unless the caller configured it already)."""
    library = logging.getLogger(LIBRARY)
    if not library.handlers:
        library.addHandler(_CurrentStdout())
        library.propagate = False
        if library.level == logging.NOTSET:
            library.setLevel(logging.INFO)
    return logging.getLogger(name if name.startswith(LIBRARY) else f"{LIBRARY}.{name}")
