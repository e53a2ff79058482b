"""Append-only JSON-lines files that survive `kill -9`: whole lines or nothing.

Each record is written with one `write` of the complete line (with its newline) to a file opened
with O_APPEND, so a killed process leaves at most one torn last line: bytes after the last
newline. Opening the log cuts that tail off before anything is appended, so the next record never
glues onto a fragment, and readers never see a torn record.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Iterator

from draftheads.utils.jsonl import json_error, read_lines


class LogBusy(RuntimeError):
    """Another process has the log open for appending."""


def repair_tail(path: Path) -> int:
    """Cut everything after the last newline of `path` (a line torn by a kill); return bytes cut."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as f:
        # Scan back from the end in blocks for the last newline.
        end = size
        block = 1 << 16
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            at = chunk.rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep


def read_records(path: Path) -> Iterator[dict]:
    """The complete records of a log (a torn last line, if any, is not yielded)."""
    if not path.exists():
        return
    # A torn tail is skipped here and repaired on the next open for appending.
    for number, line in read_lines(path, whole_only=True):
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {number}: not a JSON record ({json_error(exc)}); the file was edited by hand?") from None


class AppendLog:
    """A JSON-lines file opened for appending whole records (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, fsync_every: int = 1):
        """Open `path` for appending, after cutting a torn last line. Raises `LogBusy` when another
        process holds the log open (two writers would duplicate records)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel if we die
        except BlockingIOError:
            os.close(self._fd)
            raise LogBusy(f"{self.path}: another process is writing this file") from None
        self.repaired = repair_tail(self.path)
        self._fsync_every = fsync_every
        self._unsynced = 0

    def append(self, record: dict) -> None:
        """Write one record as one line, in a single write call."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        written = 0
        while written < len(data):  # a regular file takes it in one go; loop only for safety
            written += os.write(self._fd, data[written:])
        self._unsynced += 1
        if self._unsynced >= self._fsync_every:
            os.fsync(self._fd)
            self._unsynced = 0

    def close(self) -> None:
        """Flush to disk and close."""
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "AppendLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
