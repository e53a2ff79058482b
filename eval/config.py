"""The typed configuration of `draftheads eval`, loaded like recipes: from a YAML file and/or
flags and `key=value` overrides, every field documented, unknown keys refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

from draftheads.decoding.sampling import SamplingConfig
from draftheads.decoding.tree import TreeSpec


@dataclass
class BaselineSettings:
    """The prompt-lookup baselines every speedup is also measured against, each at its best setting:
    HF `generate` with prompt lookup, and our engine's lookup alone (the heads' increment over
    copying). A setting left null is tuned: the fastest of a sweep on `tune_prompts`."""

    prompt_lookup_tokens: int | None = None
    """HF prompt lookup: tokens it copies per step (`prompt_lookup_num_tokens`); null: tuned."""
    prompt_lookup_ngram: int | None = None
    """HF prompt lookup: longest n-gram it matches (`max_matching_ngram_size`); null: tuned."""
    lookup_tokens: int | None = None
    """Our lookup alone: most tokens copied per step; null: tuned."""
    lookup_ngram: int | None = None
    """Our lookup alone: longest context suffix it matches; null: tuned."""
    tune_prompts: str = "sharegpt"
    """Prompts the sweep runs on (first turns), like the served ones and never the eval's own."""
    tune_limit: int = 4
    """How many of them."""

    def __post_init__(self) -> None:
        values = (self.prompt_lookup_tokens, self.prompt_lookup_ngram, self.lookup_tokens, self.lookup_ngram)
        if any(v is not None and v < 1 for v in values) or self.tune_limit < 1:
            raise ValueError(f"lookup tokens, n-grams and tune_limit must be at least 1, got {values} and {self.tune_limit}")

    def tuned(self) -> bool:
        """Whether any setting is left to the sweep."""
        return None in (self.prompt_lookup_tokens, self.prompt_lookup_ngram, self.lookup_tokens, self.lookup_ngram)


@dataclass
class EvalConfig:
    """Everything `draftheads eval` takes."""

    heads: str
    """Heads folder or Hub id."""
    prompts: str = "mt-bench"
    """MT-bench question.jsonl, ShareGPT file, JSONL with 'prompt', or mt-bench (packaged copy)."""
    base: str | None = None
    """Base model; default: the one the heads were trained on."""
    limit: int | None = None
    """Prompts to run; on categorised prompt sets (MT-bench) they are spread over the categories
    (the first question of each category in order of first appearance, then the second, ...)."""
    max_new_tokens: int = 128
    """New tokens per turn."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:1, ..."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and compute dtype of every method; auto: bf16 on GPUs and on CPUs with native bf16
    dot products, fp16 on GPUs without bf16, fp32 elsewhere."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Greedy or sampled decoding."""
    tree: TreeSpec = field(default_factory=lambda: TreeSpec("auto", lookup="auto"))
    """The draft tree (`decoding/tree.py` `TreeSpec`): by default the auto tree with its lookup branch chosen too."""
    baselines: BaselineSettings = field(default_factory=BaselineSettings)
    """The prompt-lookup baselines (HF's and our lookup alone), at their best settings."""
    repeats: int = 3
    """Times every method answers every prompt, interleaved (the method order rotates each time):
    each speed ratio is reported as the median of the repeats with a 95% bootstrap interval over
    prompts and repeats; tokens are verified on the first (every repeat must emit the same)."""
    drift_batches: int | None = 8
    """Held-out batches (of 4 rows) for a jointly trained backbone's drift; null for all."""
    near_tie_epsilon: float | None = None
    """Greedy: an emitted token whose re-scored logit lies below its position's best by at most this
    is a near tie, by more a real mismatch; null: by the decode dtype (fp32 1e-3, bf16 0.5, fp16 0.05)."""
    verify_fp32: bool = True
    """Greedy: re-score every emitted token in fp32 too (an upcast copy of the weights), beside the
    decode dtype; false saves the copy's memory on large models."""
    write_summary: bool = True
    """Write the report's summary into a local heads folder as eval_report.json (the model card and
    `draftheads push` show it)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        if self.baselines.tuned() and self.baselines.tune_prompts == self.prompts:
            raise ValueError(f"baselines.tune_prompts: the eval's own prompts ({self.prompts}); tune the baselines on others")
        if self.drift_batches is not None and self.drift_batches < 1:
            raise ValueError(f"drift_batches must be at least 1, got {self.drift_batches}")
        if self.tree.lookup not in (0, "auto") and self.sampling.temperature > 0:
            raise ValueError(
                "tree.lookup needs greedy decoding (sampling.temperature 0): "
                "copied tokens have no draft distribution, so speculative sampling could not stay exact"
            )

    def fingerprint(self) -> str:
        """Hash of the settings that change results (a partial file from other settings is refused)."""
        data = dataclasses.asdict(self)
        data.pop("write_summary")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
