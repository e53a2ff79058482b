"""The one JSON-lines splitter: records end at "\n" only, line numbers are the file's."""

from __future__ import annotations

import json

import pytest

from draftheads.utils.errors import DataError
from draftheads.utils.jsonl import json_error, read_lines, split_lines
from helpers import AWKWARD_TEXT, LINE_BREAKS, write_awkward_jsonl

RECORDS = [{"text": AWKWARD_TEXT, "n": i} for i in range(3)]


def test_awkward_records_come_back_whole_with_the_files_line_numbers(tmp_path):
    path = write_awkward_jsonl(tmp_path / "a.jsonl", RECORDS)
    raw = path.read_bytes().decode()
    assert "\u2028" in raw and "\x85" in raw and not raw.endswith("\n")  # the test file is as awkward as meant
    assert len(raw.splitlines()) > len(RECORDS)  # ...and splitlines() would cut its records
    for lines in (list(split_lines(raw)), list(read_lines(path))):
        assert [n for n, _ in lines] == [1, 2, 3]
        assert [json.loads(line) for _, line in lines] == RECORDS


def test_blank_lines_are_skipped_but_counted_and_only_json_whitespace_is_blank(tmp_path):
    text = '{"a": 1}\n\n  \t\r\n{"a": 2}\n\u2028\n'
    assert list(split_lines(text)) == [(1, '{"a": 1}'), (4, '{"a": 2}'), (5, "\u2028")]
    (tmp_path / "b.jsonl").write_text(text, encoding="utf-8")
    assert list(read_lines(tmp_path / "b.jsonl")) == list(split_lines(text))


def test_whole_only_stops_before_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\r\n{"a": 2}\n{"a": 3')
    assert list(read_lines(path)) == [(1, '{"a": 1}'), (2, '{"a": 2}'), (3, '{"a": 3')]
    assert list(read_lines(path, whole_only=True)) == [(1, '{"a": 1}'), (2, '{"a": 2}')]


def test_bytes_that_are_not_utf8_are_named_by_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl: line 2: not UTF-8 text \(byte 11 of the line\)"):
        list(read_lines(path))


@pytest.mark.parametrize("bad, message", [
    ('{"a": "cut', "Unterminated string starting at column 7"),
    ('{"a": }', "Expecting value at column 7"),
    ('{"a": 1} x', "Extra data at column 10"),
])
def test_decoder_messages_say_where_once(bad, message):
    with pytest.raises(json.JSONDecodeError) as err:
        json.loads(bad)
    assert json_error(err.value) == message
    assert json_error(err.value, with_line=True) == message.replace("column", "line 1 column")


def test_every_line_break_json_writes_raw_is_kept_inside_its_record():
    line = json.dumps({"t": LINE_BREAKS}, ensure_ascii=False)
    assert list(split_lines(line + "\n")) == [(1, line)]
