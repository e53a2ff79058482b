"""The eval report's types: the methods it compares, and `EvalReport`, what report.json holds.

report.json is `EvalReport.to_json()`; anything that reads one (report.md, the model card's
summary, the bench records) goes through `EvalReport.from_json`, which refuses a file written
with another `SCHEMA_VERSION` instead of misreading fields laid out differently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum

from draftheads.utils.errors import ConfigError

SCHEMA_VERSION = 2
"""report.json's layout. Version 1 (no such field) is the untyped dictionary that also held each
method's tokens/s and the speedups as keys of their own; `EvalReport.from_json` reads one that has
`speed_ratios` and drops those copies."""
V1_COPIES = (
    "tokens_per_s", "baseline_tokens_per_s", "hf_generate_tokens_per_s", "prompt_lookup_tokens_per_s", "speedup", "speedup_vs_hf_generate",
    "speedup_vs_prompt_lookup", "baseline_vs_hf_generate", "speedup_vs_best_baseline"
)
"""Keys of a version-1 report that repeat `methods` and `speed_ratios`."""


class MethodName(StrEnum):
    """The methods an eval times, as report.json names them (a string enum: JSON writes the value)."""

    OURS = "ours"
    """Our tree decoding with the heads (and the lookup branch the tree carries)."""
    AUTOREGRESSIVE = "baseline"
    """Our engine with no tree: one token per step, the same kernels and cache as ours."""
    HF_GENERATE = "hf_generate"
    """Hugging Face `generate` on the same model."""
    HF_PROMPT_LOOKUP = "prompt_lookup"
    """Hugging Face `generate` with prompt lookup, at its swept best setting."""
    LOOKUP = "lookup"
    """Our engine with the lookup branch and no heads, at its swept best setting."""


BASELINES = (MethodName.AUTOREGRESSIVE, MethodName.HF_GENERATE, MethodName.HF_PROMPT_LOOKUP, MethodName.LOOKUP)
"""The methods a speedup is claimed over: the fastest of them is the best baseline."""
SPEED_PAIRS = (
    (MethodName.OURS, MethodName.AUTOREGRESSIVE),
    (MethodName.OURS, MethodName.HF_GENERATE),
    (MethodName.OURS, MethodName.HF_PROMPT_LOOKUP),
    (MethodName.OURS, MethodName.LOOKUP),
    (MethodName.AUTOREGRESSIVE, MethodName.HF_GENERATE),
    (MethodName.LOOKUP, MethodName.HF_PROMPT_LOOKUP),
)
"""The speed ratios every report states; ours over the best baseline is added to them."""


def pair_key(a: str, b: str) -> str:
    """The key of `a`'s speed over `b`'s in `EvalReport.speed_ratios`."""
    return f"{a}/{b}"


@dataclass
class MethodTotals:
    """One method's output and time over every prompt and turn."""

    tokens: int
    """New tokens it emitted (first repeat; every repeat emits the same under greedy decoding)."""
    seconds: float
    """Median over repeats of one repeat's seconds (each repeat answers every prompt once)."""
    seconds_per_repeat: list[float]
    """Each repeat's seconds, in repeat order."""
    tokens_per_s: float | None
    """`tokens / seconds`."""


@dataclass
class SpeedRatio:
    """One method's tokens/s over another's, from interleaved repeats."""

    median: float
    """Median over repeats of the ratio over all prompts."""
    min: float
    """The lowest repeat's ratio."""
    max: float
    """The highest repeat's ratio."""
    per_repeat: list[float]
    """Each repeat's ratio."""
    ci95: list[float]
    """95% bootstrap interval: prompts resampled, one repeat drawn per prompt, both methods' times
    from that repeat. A target counts as met only when `ci95[0]` meets it."""
    repeats: int
    """Repeats the ratio is taken over."""
    prompts: int
    """Prompts the ratio is taken over."""


@dataclass
class VerificationRow:
    """One method's emitted tokens, re-scored teacher-forced by the model in one dtype."""

    tokens_emitted: int
    """Tokens the method emitted."""
    tokens_verified: int
    """Tokens re-scored (must equal `tokens_emitted`)."""
    mismatches: int
    """Tokens whose logit lies more than the near-tie epsilon below their position's best."""
    near_ties: int
    """Tokens that are not the argmax but lie within the epsilon of it."""
    gap_max: float
    """The largest gap below the best logit over every re-scored token."""
    gap_p99: float
    """The 99th percentile of the gap over every re-scored token (0 for argmax tokens)."""
    mismatch_sites: list[dict]
    """Each real mismatch: prompt `id`, `turn`, `position` in the answer, `gap`."""


@dataclass
class TimeBreakdown:
    """Where our decode's time went, summed over every turn."""

    seconds: dict[str, float]
    """Seconds per phase: prefill, draft, verify, accept, other."""
    fraction_of_decode_loop: dict[str, float | None]
    """Each loop phase's share of draft + verify + accept + other."""
    engine_overhead_fraction: float | None
    """(accept + other) over the loop: the engine's own cost."""
    ms_per_step: dict[str, float]
    """Milliseconds per verification step, per loop phase."""


@dataclass
class EvalReport:
    """What `draftheads eval` measured: report.json."""

    base_model: str
    """The base model (Hub id, or the local folder/file it was loaded from)."""
    heads: str
    """The heads folder or Hub id evaluated."""
    head_type: str
    """The heads' family."""
    prompts: str
    """The prompt set."""
    n_prompts: int
    """Prompts answered."""
    n_turns: int
    """Turns answered (a multi-turn prompt counts each)."""
    max_new_tokens: int
    """New tokens per turn at most."""
    new_tokens: int
    """Tokens our decoding emitted."""
    temperature: float
    """0: greedy."""
    top_p: float
    """Nucleus sampling threshold (sampling only)."""
    top_k: int
    """Top-k sampling (sampling only; 0: off)."""
    acceptance: str
    """greedy, or sampling (lossless speculative sampling)."""
    tree: dict
    """The tree our decoding drafted (`TreeSpec.describe`; dynamic trees add `mean_nodes`)."""
    tree_choice: dict
    """How the tree was chosen (`reason`, and the auto tree's candidates and costs)."""
    steps: int
    """Verification steps of our decoding."""
    tau: float | None
    """Acceptance length: tokens emitted per verification step (drafts past an end or the limit not counted)."""
    acceptance_by_depth: list[float]
    """Per depth d: fraction of steps that accepted at least d drafted tokens (their sum + 1 is τ)."""
    tau_by_category: dict[str, float | None]
    """τ per prompt category."""
    tau_predicted: float | None
    """τ predicted before decoding (None: not predicted)."""
    tau_predicted_sd: float | None
    """Bootstrap SD of `tau_predicted` over the calibration's answers (None: not a replay of answers)."""
    tau_predicted_source: str
    """What the prediction rests on."""
    acceptance_by_depth_predicted: list[float] | None
    """The predicted acceptance by depth, when the prediction gives one."""
    depth_topk_accuracy: dict[str, dict[str, float]]
    """Per head depth, top-k accuracy on the autoregressive answers to these prompts."""
    calibration_positions: int
    """Positions those accuracies are measured on."""
    methods: dict[str, MethodTotals]
    """Per method (`MethodName`, or a family's name in a bench): tokens, seconds, tokens/s."""
    speed_ratios: dict[str, SpeedRatio]
    """Per `pair_key(a, b)`: a's tokens/s over b's with its spread (`SPEED_PAIRS` and ours over the best baseline)."""
    best_baseline: str
    """The fastest of `BASELINES`."""
    repeats_differ: list[str]
    """Methods whose later repeats emitted other tokens than the first (greedy: must be empty)."""
    greedy_mismatches: int | None
    """Our emitted tokens that are real mismatches re-scored in the eval dtype (greedy: must be 0; None: sampling)."""
    near_ties: int | None
    """Our emitted tokens that are near ties in the eval dtype."""
    hf_generate_mismatches: int | None
    """HF generate's real mismatches in the eval dtype (the reference's own rounding)."""
    near_tie_epsilon: float
    """The gap below the best logit up to which a token is a near tie, not a real mismatch."""
    verification: dict[str, dict[str, VerificationRow]] | None
    """Per method and re-scoring dtype, every emitted token's verification (None: sampling)."""
    answers: list[dict]
    """Per prompt `id`, per method, per turn: `prompt_ids` and emitted `tokens`, to re-check anywhere."""
    time_breakdown: TimeBreakdown
    """Where our decode's time went."""
    baselines: dict[str, dict]
    """The lookup baselines' settings: chosen (tokens, ngram) and the sweep that chose them."""
    seed: int
    """The sampling seed."""
    config: dict
    """The whole `EvalConfig`."""
    device: str
    """The device the eval decoded on."""
    dtype: str
    """The dtype every method decoded in."""
    dtype_note: str
    """Why that dtype."""
    backbone_mode: str
    """frozen, lora or full: whether the backbone is the original model."""
    backbone_drift: dict | None
    """A trained backbone's agreement and perplexity against the original (None: frozen)."""
    hardware: dict
    """Where it was measured."""
    versions: dict
    """Library versions."""
    date: str
    """When (UTC, ISO 8601)."""
    schema_version: int = field(default=SCHEMA_VERSION)
    """report.json's layout (`SCHEMA_VERSION`)."""

    def ratio(self, a: str, b: str) -> float | None:
        """The median of a's tokens/s over b's (None: not measured)."""
        found = self.speed_ratios.get(pair_key(a, b))
        return found.median if found else None

    def summary(self) -> dict:
        """The numbers a heads folder keeps (eval_report.json: the model card and `push` read it)."""
        keys = (
            "prompts", "n_prompts", "n_turns", "max_new_tokens", "temperature", "dtype", "tree", "tau", "tau_predicted", "tau_predicted_sd",
            "tau_predicted_source", "acceptance_by_depth", "best_baseline", "greedy_mismatches", "near_ties", "hf_generate_mismatches",
            "backbone_drift", "hardware", "date"
        )
        ratios = {
            name: self.ratio(MethodName.OURS, b)
            for name, b in (
                ("speedup", MethodName.AUTOREGRESSIVE),
                ("speedup_vs_hf_generate", MethodName.HF_GENERATE),
                ("speedup_vs_prompt_lookup", MethodName.HF_PROMPT_LOOKUP),
                ("speedup_vs_best_baseline", self.best_baseline),
            )
        }
        return {"schema_version": self.schema_version, **{k: getattr(self, k) for k in keys}, **ratios,
                "speed_ratios": {k: dataclasses.asdict(v) for k, v in self.speed_ratios.items()}, "baselines": self.baselines}

    def to_json(self) -> dict:
        """report.json's content."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict, origin: str = "report") -> "EvalReport":
        """The report `to_json` wrote; one of another schema version is refused, naming `origin`."""
        version = data.get("schema_version", 1)
        if version == 1 and "speed_ratios" in data:
            data = {"tau_predicted_sd": None} | {k: v for k, v in data.items() if k not in V1_COPIES} | {"schema_version": SCHEMA_VERSION}
            version = SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"{origin}: schema_version {version}, this draftheads reads {SCHEMA_VERSION}; rerun `draftheads eval` to write it anew"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{origin}: unknown field {unknown[0]!r} for schema_version {version}")
        kwargs = dict(data)
        kwargs["methods"] = {m: MethodTotals(**v) for m, v in data["methods"].items()}
        kwargs["speed_ratios"] = {k: SpeedRatio(**v) for k, v in data["speed_ratios"].items()}
        if data.get("verification") is not None:
            kwargs["verification"] = {
                m: {d: VerificationRow(**row) for d, row in table.items()} for m, table in data["verification"].items()
            }
        kwargs["time_breakdown"] = TimeBreakdown(**data["time_breakdown"])
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a missing field
            raise ConfigError(f"{origin}: {exc}") from None
