"""Prompt sets for evaluation: MT-bench question files (multi-turn), ShareGPT files, JSONL with
`prompt`, or `mt-bench` for the packaged demo copy. Only user turns are kept: the model answers
every turn itself, and its own answers feed the next turn."""

from __future__ import annotations

from dataclasses import dataclass

from draftheads.data.config import SourceConfig
from draftheads.data.sources import read_source
from draftheads.utils.errors import DataError

SHORT_NAMES = {"mt-bench": "demo:mt-bench", "sharegpt": "demo:sharegpt", "calibration": "demo:calibration"}


@dataclass
class EvalPrompt:
    """One evaluation conversation: user turns to answer in order."""

    id: str
    category: str
    turns: list[str]
    system: str | None = None

    def messages(self, answers: list[str]) -> list[dict[str, str]]:
        """The conversation up to the next turn to answer: the system prompt, then each user turn
        followed by the model's own answer to it, then the first unanswered user turn."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for turn, answer in zip(self.turns, answers):
            messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": answer}]
        return messages + [{"role": "user", "content": self.turns[len(answers)]}]


def spread_over_categories(prompts: list[EvalPrompt], limit: int | None) -> list[EvalPrompt]:
    """`limit` prompts taken round-robin over the categories in order of first appearance (the
    first of each category, then the second of each, ...), so a short run still covers every
    category; the first `limit` when there is one category. Kept in file order."""
    if limit is None or limit >= len(prompts):
        return prompts
    by_category: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_category.setdefault(prompt.category, []).append(index)
    chosen: list[int] = []
    for rank in range(max(len(v) for v in by_category.values())):
        chosen += [indices[rank] for indices in by_category.values() if rank < len(indices)]
    return [prompts[i] for i in sorted(chosen[:limit])]


def load_prompts(spec: str, limit: int | None = None) -> list[EvalPrompt]:
    """Read `spec` (a file, a datasets folder, `mt-bench` or `sharegpt`) into prompts, `limit` of
    them spread over the categories (`spread_over_categories`)."""
    path = SHORT_NAMES.get(spec, spec)
    # Files without categories are cut while reading (ShareGPT is large); categorised sets are small.
    read_limit = limit if path == SHORT_NAMES["sharegpt"] else None
    conversations, report = read_source(SourceConfig(path=path, limit=read_limit), require_assistant=False, skip_invalid=False)
    prompts = []
    for conv in conversations:
        turns = [m["content"] for m in conv.messages if m["role"] == "user"]
        system = next((m["content"] for m in conv.messages if m["role"] == "system"), None)
        if not turns:
            raise DataError(f"{conv.origin}: no user turn to answer")
        prompts.append(EvalPrompt(conv.id, conv.category or "all", turns, system))
    if not prompts:
        raise DataError(f"{spec}: no prompts ({report.summary()})")
    return spread_over_categories(prompts, limit)
