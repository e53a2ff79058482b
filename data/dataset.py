"""Conversations -> tokenised training rows (assistant-only masks, truncation, optional packing).

One dataset and one collator serve every head family: a row holds token ids, the loss mask and,
when packed, position ids that restart at 0 for each document (the backbone keeps documents apart
from those, and losses use them to stop targets from crossing into the next document).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from draftheads.data.chat import ChatFormatter
from draftheads.data.config import DataConfig
from draftheads.data.sources import Conversation, SourceReport, dropped_by_source, read_sources
from draftheads.utils.errors import DataError

TOKENISING = "while tokenising"
"""The pseudo-source under which `DataStats.dropped` counts conversations skipped after reading."""


@dataclass
class Row:
    """One training row."""

    input_ids: list[int]
    loss_mask: list[int]
    position_ids: list[int] | None = None
    """Set on packed rows only: restarts at 0 where each document begins."""


@dataclass
class DataStats:
    """What building the dataset did, for `data inspect` and training logs."""

    sources: list[SourceReport] = field(default_factory=list)
    conversations: int = 0
    tokens: int = 0
    assistant_tokens: int = 0
    truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)
    rows: int = 0
    held_out: int = 0
    """Conversations held out for evaluation."""
    packed_slots: int | None = None
    """With packing: token slots in all rows (rows x max_length), to report how full rows are."""

    def dropped(self) -> dict[str, dict[str, int]]:
        """{source: {reason: records}} of every record left out, "tokenising" last (see `dropped_note`)."""
        dropped = dropped_by_source(self.sources)
        if self.skipped:
            dropped[TOKENISING] = dict(self.skipped)
        return dropped

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        out = [report.summary() for report in self.sources]
        for reason, count in self.skipped.items():
            out.append(f"skipped while tokenising: {count} ({reason})")
        if not self.lengths:
            return out + ["no usable conversations"]
        share = self.assistant_tokens / max(self.tokens, 1)
        q = _percentiles(self.lengths)
        out += [
            f"conversations: {self.conversations}",
            f"tokens: {self.tokens} ({self.assistant_tokens} trained on, {share:.1%})",
            f"length: mean {statistics.fmean(self.lengths):.0f}, p50 {q[50]}, p90 {q[90]}, p99 {q[99]}, max {max(self.lengths)}",
            f"truncated to max_length: {self.truncated}",
        ]
        if self.held_out:
            out.append(f"held out for evaluation: {self.held_out} conversations")
        if self.packed_slots:
            out.append(f"packed rows: {self.rows} ({self.tokens / self.packed_slots:.1%} of token slots used)")
        else:
            out.append(f"rows: {self.rows} (one conversation each)")
        return out


def _percentiles(values: list[int]) -> dict[int, int]:
    ordered = sorted(values)
    return {p: ordered[min(len(ordered) - 1, (len(ordered) * p) // 100)] for p in (50, 90, 99)}


def tokenize_conversations(
    conversations: list[Conversation], formatter: ChatFormatter, max_length: int, skip_invalid: bool, stats: DataStats,
    progress: bool = True
) -> list[Row]:
    """Tokenise and mask each conversation; count what is truncated or skipped into `stats`."""
    rows = []
    for conv in tqdm(conversations, desc="tokenising", unit="conv", disable=not progress, mininterval=1.0):
        try:
            chat = formatter.tokenize_with_mask(conv.messages, max_length=max_length, origin=conv.origin)
        except DataError:
            if not skip_invalid:
                raise
            stats.skipped["chat template cannot render"] = stats.skipped.get("chat template cannot render", 0) + 1
            continue
        if not any(chat.loss_mask):
            # Every assistant token lies past max_length: nothing to learn from this one.
            reason = "no assistant token within max_length"
            stats.skipped[reason] = stats.skipped.get(reason, 0) + 1
            continue
        stats.conversations += 1
        stats.tokens += len(chat.input_ids)
        stats.assistant_tokens += sum(chat.loss_mask)
        stats.truncated += chat.truncated
        stats.lengths.append(len(chat.input_ids))
        rows.append(Row(chat.input_ids, chat.loss_mask))
    return rows


def pack_rows(rows: list[Row], block: int) -> list[Row]:
    """Concatenate rows in order into rows of `block` tokens; documents are never split.

    A document that does not fit in the current row starts the next one, so each document keeps
    its beginning (and its context). Rows are already at most `block` long (truncation).
    """
    packed: list[Row] = []
    ids: list[int] = []
    mask: list[int] = []
    pos: list[int] = []
    for row in rows:
        if ids and len(ids) + len(row.input_ids) > block:
            packed.append(Row(ids, mask, pos))
            ids, mask, pos = [], [], []
        ids += row.input_ids
        mask += row.loss_mask
        pos += list(range(len(row.input_ids)))
    if ids:
        packed.append(Row(ids, mask, pos))
    return packed


class ChatDataset(torch.utils.data.Dataset):
    """Tokenised rows, indexable for a DataLoader."""

    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Row:
        return self.rows[index]

    def token_rows(self):
        """(input_ids, loss_mask) of every row, for one pass over the tokens."""
        return ((row.input_ids, row.loss_mask) for row in self.rows)


def split_held_out(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Hold out `fraction` of the conversations (at least one if fraction > 0), keeping file order."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    count = max(1, round(len(rows) * fraction))
    picked = set(torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:count].tolist())
    train = [r for i, r in enumerate(rows) if i not in picked]
    held = [r for i, r in enumerate(rows) if i in picked]
    return train, held


def build_datasets(
    cfg: DataConfig, tokenizer, model_name: str = "the tokenizer", progress: bool = True
) -> tuple[ChatDataset, ChatDataset, DataStats, ChatFormatter]:
    """Training and held-out datasets: split by conversation before packing, so no conversation is in both."""
    formatter = ChatFormatter(tokenizer, cfg.chat_template, model_name)
    conversations, reports = read_sources(cfg.sources, require_assistant=True, skip_invalid=cfg.skip_invalid)
    stats = DataStats(sources=reports)
    if not conversations:
        raise DataError("no usable conversations in: " + ", ".join(s.path for s in cfg.sources))
    rows = tokenize_conversations(conversations, formatter, cfg.max_length, cfg.skip_invalid, stats, progress)
    train, held = split_held_out(rows, cfg.eval_fraction, cfg.eval_seed)
    stats.held_out = len(held)
    if cfg.packing:
        train, held = pack_rows(train, cfg.max_length), pack_rows(held, cfg.max_length)
        stats.packed_slots = (len(train) + len(held)) * cfg.max_length
    stats.rows = len(train) + len(held)
    return ChatDataset(train), ChatDataset(held), stats, formatter

