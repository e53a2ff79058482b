from __future__ import annotations

import json

import pytest

from helpers import AWKWARD_TEXT, write_awkward_jsonl, write_jsonl
from draftheads.data.config import SourceConfig
from draftheads.data.sources import dropped_by_source, dropped_note, read_source
from draftheads.utils.errors import DataError

SHAREGPT = {"id": "a1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}


def read(path, require_assistant=True, skip_invalid=False, **kw):
    return read_source(SourceConfig(path=str(path), **kw), require_assistant=require_assistant, skip_invalid=skip_invalid)


def test_sharegpt_jsonl_and_json_array(tmp_path):
    expected = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    convs, _ = read(write_jsonl(tmp_path / "a.jsonl", [SHAREGPT]))
    assert convs[0].messages == expected and convs[0].id == "a1"
    (tmp_path / "a.json").write_text(json.dumps([SHAREGPT, SHAREGPT], indent=2))
    convs, report = read(tmp_path / "a.json")
    assert [c.messages for c in convs] == [expected, expected] and report.kept == 2


def test_messages_format_with_system_and_content_parts(tmp_path):
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Two "}, {"type": "text", "text": "parts"}]},
            {"role": "assistant", "content": "Ok."},
        ]
    }
    convs, _ = read(write_jsonl(tmp_path / "m.jsonl", [record]))
    assert convs[0].messages[1] == {"role": "user", "content": "Two parts"}
    assert convs[0].id == "m.jsonl:1"


def test_mt_bench_turns_are_user_prompts(tmp_path):
    path = write_jsonl(tmp_path / "question.jsonl", [{"question_id": 81, "category": "writing", "turns": ["Write.", "Rewrite."]}])
    convs, _ = read(path, require_assistant=False)
    assert convs[0].id == "81"
    assert convs[0].messages == [{"role": "user", "content": "Write."}, {"role": "user", "content": "Rewrite."}]


def test_prompt_jsonl_with_optional_response(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q?", "response": "A.", "system": "S"}, {"prompt": "Only?"}])
    convs, _ = read(path, require_assistant=False)
    assert convs[0].messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "A."},
    ]
    assert convs[1].messages == [{"role": "user", "content": "Only?"}]


def test_saved_datasets_dataset_and_split(tmp_path):
    import datasets

    rows = {"conversations": [SHAREGPT["conversations"]] * 3, "id": ["x", "y", "z"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    convs, _ = read(tmp_path / "ds")
    assert [c.id for c in convs] == ["x", "y", "z"]
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "dd"))
    assert len(read(tmp_path / "dd", split="test")[0]) == 3
    with pytest.raises(DataError, match="no split 'train'; splits: test"):
        read(tmp_path / "dd")


def test_leading_assistant_turns_are_trimmed_and_counted(tmp_path):
    record = {"conversations": [{"from": "gpt", "value": "orphan"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    convs, report = read(write_jsonl(tmp_path / "t.jsonl", [record]))
    assert [m["content"] for m in convs[0].messages] == ["Q", "A"]
    assert report.leading_assistant_trimmed == 1


def test_limit_stops_reading(tmp_path):
    convs, report = read(write_jsonl(tmp_path / "l.jsonl", [SHAREGPT] * 5), limit=2)
    assert len(convs) == 2 and report.records == 2 and report.stopped_at_limit


# --- bad input: each names file, record and field; skip_invalid counts instead ---------------------


@pytest.mark.parametrize(
    "record, message",
    [
        ('{"conversations": [', "line 2: malformed JSON"),
        ({"conversations": [{"from": "human", "value": "Hi"}]}, "line 2: conversation has no assistant turn"),
        ({"conversations": [{"from": "narrator", "value": "x"}]}, "line 2: field 'conversations[0].from': unknown role 'narrator'"),
        ({"messages": [{"role": "user", "content": 5}]}, "line 2: field 'messages[0].content': expected a string, got int"),
        ({"text": "no conversation"}, "line 2: no conversation found: expected 'conversations', 'messages', 'turns' or 'prompt'"),
        ([1, 2], "line 2: expected a JSON object, got list"),
    ],
)
def test_bad_records_raise_with_file_line_and_field(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [SHAREGPT, record, SHAREGPT])
    with pytest.raises(DataError) as err:
        read(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)
    convs, report = read(path, skip_invalid=True)
    assert len(convs) == 2 and report.records == 3 and sum(report.dropped.values()) == 1


def test_skipped_records_are_counted_by_reason(tmp_path):
    bad_role = {"conversations": [{"from": "narrator", "value": "x"}]}
    other_role = {"conversations": [{"from": "robot", "value": "x"}]}
    path = write_jsonl(tmp_path / "r.jsonl", [bad_role, other_role, "{", SHAREGPT])
    _, report = read(path, skip_invalid=True)
    assert report.dropped == {"unknown role …": 2, "malformed JSON": 1}
    assert "4 records read, 1 kept, 3 dropped (2 unknown role …, 1 malformed JSON)" in report.summary()


def test_records_holding_unicode_line_separators_are_read_whole(tmp_path):
    # The repro: U+2028 is legal raw in a JSON string, and splitlines() broke records on it.
    records = [{"id": f"u{i}", "conversations": [{"from": "human", "value": f"one\u2028two {i}"},
                                                 {"from": "gpt", "value": f"para\u2029graph {i}"}]} for i in range(2)]
    path = tmp_path / "u2028.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    convs, report = read(path, skip_invalid=True)
    assert report.records == report.kept == 2 and not report.dropped
    assert [c.messages[0]["content"] for c in convs] == ["one\u2028two 0", "one\u2028two 1"]


def test_every_awkward_character_crlf_and_a_last_line_without_newline_read_whole(tmp_path):
    records = [{"id": f"r{i}\u2028", "conversations": [{"from": "human", "value": AWKWARD_TEXT + str(i)},
                                                       {"from": "gpt", "value": str(i) + AWKWARD_TEXT}]} for i in range(3)]
    convs, report = read(write_awkward_jsonl(tmp_path / "a.jsonl", records))
    assert report.records == report.kept == 3
    assert [c.id for c in convs] == ["r0\u2028", "r1\u2028", "r2\u2028"]
    assert [[m["content"] for m in c.messages] for c in convs] == [[AWKWARD_TEXT + str(i), str(i) + AWKWARD_TEXT] for i in range(3)]
    assert convs[2].origin.endswith(": line 3")


def test_malformed_json_names_the_files_own_line_and_says_where_once(tmp_path):
    good = json.dumps({**SHAREGPT, "note": "x\u2028y\u2029z\x85"}, ensure_ascii=False)
    (tmp_path / "m.jsonl").write_text(f'{good}\n{good}\n{{"id": "cut", "conversations": "oops}}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read(tmp_path / "m.jsonl")
    assert str(err.value) == f"{tmp_path / 'm.jsonl'}: line 3: malformed JSON (Unterminated string starting at column 32)"


def test_the_dropped_note_names_each_source_and_reason(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [SHAREGPT, "{", "{", {"conversations": [{"from": "robot", "value": "x"}]}])
    b = write_jsonl(tmp_path / "b.jsonl", [SHAREGPT])
    reports = [read(a, skip_invalid=True)[1], read(b, skip_invalid=True)[1]]
    assert dropped_by_source(reports) == {str(a): {"malformed JSON": 2, "unknown role …": 1}}
    assert dropped_note(dropped_by_source(reports)) == (
        f"3 records dropped ({a}: 2 malformed JSON, 1 unknown role …); skip_invalid: false stops at the first invalid one"
    )
    assert dropped_note(dropped_by_source(reports[1:])) is None


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match="e.jsonl: file is empty"):
        read(tmp_path / "e.jsonl")
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(DataError, match="the JSON array holds no records"):
        read(tmp_path / "e.json")
    with pytest.raises(DataError, match="no such file or folder"):
        read(tmp_path / "missing.jsonl")


def test_json_array_truncated_mid_record_keeps_complete_records(tmp_path):
    text = json.dumps([SHAREGPT] * 3, indent=1)
    (tmp_path / "cut.json").write_text(text[: text.rindex('"Hello!"') + 4])
    convs, report = read(tmp_path / "cut.json")
    assert len(convs) == 2
    assert report.dropped == {"record truncated at end of file": 1} and report.records == 3


def test_json_array_malformed_record_in_the_middle(tmp_path):
    good = json.dumps(SHAREGPT)
    (tmp_path / "mid.json").write_text(f'[{good}, {{"id": "b", "conversations": [}}, {good}]')
    with pytest.raises(DataError, match=r"mid.json: record 2: malformed JSON"):
        read(tmp_path / "mid.json")
    convs, report = read(tmp_path / "mid.json", skip_invalid=True)
    assert len(convs) == 2 and report.dropped == {"malformed JSON": 1}


def test_demo_sharegpt_keeps_every_complete_conversation():
    convs, report = read("demo:sharegpt", require_assistant=False)
    assert report.kept == 17671 == len(convs)
    assert report.dropped == {"record truncated at end of file": 1}
    # 143 have no assistant turn at all; 136 more have only assistant turns before the first prompt.
    _, report = read("demo:sharegpt", skip_invalid=True)
    assert report.kept == 17671 - 279 and report.leading_assistant_trimmed == 6358
    assert report.dropped == {"conversation has no assistant turn to train on": 279, "record truncated at end of file": 1}


def test_demo_mt_bench_has_80_two_turn_questions():
    convs, _ = read("demo:mt-bench", require_assistant=False)
    assert len(convs) == 80 and all(len(c.messages) == 2 for c in convs)
