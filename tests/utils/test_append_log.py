"""Append-only JSON-lines logs: whole records or nothing, one writer at a time."""

from __future__ import annotations

import pytest

from draftheads.utils.append_log import AppendLog, LogBusy, read_records, repair_tail


def test_a_torn_tail_is_never_read_and_is_cut_before_the_next_append(tmp_path):
    path = tmp_path / "log.jsonl"
    with AppendLog(path) as log:
        log.append({"n": 1})
        log.append({"n": 2, "text": "ünïcode\nwith a newline inside"})
    with path.open("ab") as f:
        f.write(b'{"n": 3, "te')  # a kill inside a write
    assert [r["n"] for r in read_records(path)] == [1, 2]
    with AppendLog(path) as log:
        assert log.repaired == len(b'{"n": 3, "te')
        log.append({"n": 4})
    assert [r["n"] for r in read_records(path)] == [1, 2, 4]
    assert repair_tail(path) == 0


def test_a_file_with_no_newline_at_all_is_cut_to_nothing(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"x" * 70000)  # longer than one scan block
    assert repair_tail(path) == 70000 and path.read_bytes() == b""


def test_a_second_writer_is_refused_while_the_first_holds_the_log(tmp_path):
    path = tmp_path / "log.jsonl"
    first = AppendLog(path)
    with pytest.raises(LogBusy, match="another process is writing"):
        AppendLog(path)
    first.close()
    AppendLog(path).close()  # free again once the first writer is gone


def test_a_hand_edited_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"n": 1}\nnot json\n')
    with pytest.raises(ValueError, match="line 2: not a JSON record"):
        list(read_records(path))
