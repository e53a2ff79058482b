"""Typed configuration of the data stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from draftheads.decoding.sampling import SamplingConfig


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
class FeatureCacheConfig:
    """A hidden-state cache (`draftheads cache-features`): the frozen backbone runs once over the
    dataset, and training reads the features from disk instead of running it every epoch."""

    path: str | None = None
    """Folder of the cache; null = run the backbone online. Training refuses a cache made with a
    different base model, tokenizer, data settings or feature layers."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Storage dtype of the features (bfloat16 halves the disk of float32 at ~3 significant digits)."""
    teacher_topk: int = 0
    """Also store the backbone's top-k next-token log-probabilities at every position, so soft labels
    need no vocabulary projection of the teacher (0 = none: soft labels project the cached final
    hidden state through the lm_head, exactly as online)."""
    rows_per_shard: int = 256
    """Rows per safetensors shard (a shard is the unit of resumption)."""

    def __post_init__(self) -> None:
        if self.teacher_topk < 0:
            raise ValueError(f"teacher_topk must be at least 0, got {self.teacher_topk}")
        if self.rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be at least 1, got {self.rows_per_shard}")


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
    feature_cache: FeatureCacheConfig = field(default_factory=FeatureCacheConfig)
    """Precomputed backbone features (frozen-backbone training only)."""

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not self.sources:
            raise ValueError("sources must name at least one input")


@dataclass
class OpenAIBackendConfig:
    """An OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, llama.cpp, `transformers serve`)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Server root up to and including `/v1`; requests go to `{base_url}/chat/completions`."""
    model: str | None = None
    """Model name the server knows; null = `model.base`."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (sent as a Bearer token when set; never logged)."""
    concurrency: int = 8
    """Requests in flight at once."""
    timeout: float = 600.0
    """Seconds before one request is abandoned (and retried)."""
    max_retries: int = 5
    """Retries of a request after a timeout, a dropped connection, HTTP 408/409/429 or 5xx."""
    backoff: float = 1.0
    """First retry waits this many seconds; each later one twice as long (capped at 60 s)."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, got {self.max_retries}")


@dataclass
class DistillConfig:
    """Self-distillation: the base model answers the prompts of `sources` itself (`draftheads gen-data`)."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(path="demo:sharegpt")])
    """Prompts: every user turn is answered by the base model, with its own earlier answers (not the
    original ones) in the context. Original assistant turns are dropped."""
    output_dir: str = "outputs/distill"
    """Folder for `data.jsonl` (ShareGPT-style, what training recipes read), `metadata.json`, and the
    per-process `shards/` that make the run resumable."""
    backend: Literal["hf", "openai"] = "hf"
    """hf: batched generation with the transformers model in this process (or each accelerate
    process); openai: requests to an OpenAI-compatible server."""
    max_new_tokens: int = 512
    """Most tokens per answer."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How answers are picked: `temperature` 0 greedy, > 0 sampled (each record's seed derived from
    `seed` and the record's id, so an answer never depends on its batch-mates); `top_k` on the hf
    backend only."""
    max_prompt_tokens: int | None = None
    """Skip (and count) a turn whose prompt is longer; null = the model's context minus one token.
    Answers are also capped to what still fits in the context."""
    batch_size: int = 32
    """hf: prompts decoded together (bucketed by length, left-padded; finished rows leave the batch)."""
    max_batch_tokens: int | None = 8192
    """hf: most padded prompt tokens per generate call; long prompts get smaller batches (null = no cap)."""
    chunk_size: int = 128
    """Consecutive inputs answered together (turn by turn, each round the next turn of every open
    one). Chunks are fixed by input order, so batches, and with them the answers, are the same in
    every run; a kill redoes at most one chunk per process."""
    skip_invalid: bool = True
    """Skip (and count) records that cannot be read, instead of stopping at the first."""
    max_minutes: float | None = None
    """Time budget of one run: after this many minutes no new conversation is begun, the ones in
    flight are finished, and `data.jsonl` holds every input answered so far (by this run or earlier
    ones, in input order); a later run continues with the rest. None: answer every input."""
    export_dataset: bool = False
    """Also save the merged output as a `datasets` dataset in `output_dir/dataset`."""
    openai: OpenAIBackendConfig = field(default_factory=OpenAIBackendConfig)
    """Settings of the `openai` backend."""

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be at least 1, got {self.max_batch_tokens}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be at least 1, got {self.max_prompt_tokens}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive (or null: no budget), got {self.max_minutes}")
        if not self.sources:
            raise ValueError("sources must name at least one input")
