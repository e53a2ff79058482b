"""Typed configuration of the data stage."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SourceConfig:
    """One input of conversations or prompts."""

    path: str
    """A file or folder: ShareGPT .json/.jsonl (`conversations` of from/value, or `messages` of
    role/content), MT-bench question.jsonl (`turns`), JSONL with `prompt` (and optional `response`),
    or a `datasets` dataset saved with save_to_disk. Short names: demo:sharegpt, demo:mt-bench."""
    split: str = "train"
    """Split to read when `path` is a saved DatasetDict."""
    limit: int | None = None
    """Keep at most this many valid conversations from this source (in file order)."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")


@dataclass
class DataConfig:
    """Where conversations come from and how they become token sequences."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(path="demo:sharegpt")])
    """Inputs, read in order."""
    max_length: int = 2048
    """Tokens per example; longer conversations are truncated (and counted)."""
    packing: bool = False
    """Concatenate examples into rows of exactly `max_length` tokens; attention stays within each
    example because position ids restart at 0."""
    skip_invalid: bool = False
    """Skip records that cannot be used (bad JSON, unknown role, no assistant turn) and count them,
    instead of stopping at the first with an error."""
    chat_template: str | None = None
    """A Jinja chat template (inline, or a path to a .jinja file) replacing the tokenizer's own."""
    eval_fraction: float = 0.02
    """Share of conversations held out for evaluation (at least one when > 0), chosen by `eval_seed`."""
    eval_seed: int = 0
    """Seed of the held-out selection, independent of the training seed."""

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not self.sources:
            raise ValueError("sources must name at least one input")
