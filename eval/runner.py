"""`draftheads eval`: our tree decoder against our autoregressive baseline, HF `generate` and HF
prompt-lookup decoding on the same prompts in one run, and the report numbers.

Methods run interleaved prompt by prompt (so drifting machine load hits all of them alike), each
turn after one warm-up of every method. Every method answers multi-turn prompts with its own
previous answers. Finished prompts are appended to `<out>.partial.jsonl`, so an interrupted eval
resumes where it stopped; the file is removed once the report is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from draftheads.data.chat import ChatFormatter
from draftheads.decoding.engine import Engine, GenerationConfig, GenerationResult, TreeSpec
from draftheads.decoding.sampling import SamplingConfig
from draftheads.eval.calibration import rank_stats
from draftheads.eval.drift import report_drift
from draftheads.eval.prompts import EvalPrompt, load_prompts
from draftheads.models.draft_model import DraftModel
from draftheads.utils.atomic import atomic_write_text
from draftheads.utils.device import synchronize
from draftheads.utils.errors import ConfigError

METHODS = ("baseline", "ours", "hf_generate", "prompt_lookup")


@dataclass
class EvalOptions:
    """Everything `draftheads eval` takes."""

    heads: str
    prompts: str = "mt-bench"
    base: str | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    tree: Literal["auto", "static", "dynamic"] = "auto"
    tree_budget: int = 16
    tree_width: int = 8
    limit: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    prompt_lookup_tokens: int = 10
    drift_batches: int | None = 8
    """Held-out batches (of 4 rows) for a jointly trained backbone's drift; None for all."""

    def fingerprint(self) -> str:
        """Hash of the settings that change results (a partial file from other settings is refused)."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def resolve_tree(options: EvalOptions, draft: DraftModel) -> TreeSpec:
    """auto: the static tree saved by `draftheads tree`, else a dynamic tree of the budget;
    static: the saved tree, else a default Medusa-style tree of the budget."""
    saved = draft.heads.config.tree
    if options.tree == "dynamic" or (options.tree == "auto" and saved is None):
        return TreeSpec("dynamic", budget=options.tree_budget, width=min(options.tree_width, options.tree_budget))
    if saved is not None:
        return TreeSpec("static", paths=saved.paths)
    return TreeSpec("static", paths=default_static_paths(draft.heads.config.num_heads, options.tree_budget))


def default_static_paths(depth: int, budget: int) -> list[list[int]]:
    """A budget-sized tree without calibration: ranks ordered by a geometric guess of their
    acceptance (rank r at depth d weighted 0.5^(r+d)), most likely first."""
    scored = []
    frontier = [()]
    while frontier:
        path = frontier.pop()
        for r in range(4):
            child = path + (r,)
            if len(child) <= depth:
                scored.append((sum(c + 1 for c in child), child))
                frontier.append(child)
    scored.sort()
    return [list(p) for _, p in scored[:budget]]


class _Runner:
    def __init__(self, draft: DraftModel, options: EvalOptions, tree: TreeSpec):
        self.draft, self.options = draft, options
        self.backbone = draft.backbone
        self.device = self.backbone.lm_head.weight.device
        self.formatter = ChatFormatter(self.backbone.tokenizer, model_name=self.backbone.location.spec)
        self.baseline = Engine(self.backbone)
        self.ours = Engine(self.backbone, draft.heads, tree)
        self.eos = self.baseline.default_eos()
        self.config = GenerationConfig(
            max_new_tokens=options.max_new_tokens,
            sampling=SamplingConfig(options.temperature, options.top_p, options.top_k),
            eos_token_ids=self.eos,
            seed=options.seed,
        )

    def generate(self, method: str, prompt_ids: list[int], max_new: int, seed: int) -> tuple[list[int], float, GenerationResult | None]:
        config = dataclasses.replace(self.config, max_new_tokens=max_new, seed=seed)
        synchronize(self.device)
        start = time.perf_counter()
        result = None
        if method in ("baseline", "ours"):
            result = (self.baseline if method == "baseline" else self.ours).generate(prompt_ids, config)
            tokens = result.tokens
        else:
            tokens = self._hf(prompt_ids, config, method == "prompt_lookup")
        synchronize(self.device)
        return tokens, time.perf_counter() - start, result

    @torch.inference_mode()
    def _hf(self, prompt_ids: list[int], config: GenerationConfig, lookup: bool) -> list[int]:
        ids = torch.tensor([prompt_ids], device=self.device)
        sampling = config.sampling
        kwargs = dict(
            attention_mask=torch.ones_like(ids),
            max_new_tokens=config.max_new_tokens,
            eos_token_id=list(self.eos),
            pad_token_id=self.eos[0] if self.eos else 0,
            do_sample=not sampling.greedy,
        )
        if not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
            torch.manual_seed(config.seed or 0)
        if lookup:
            kwargs["prompt_lookup_num_tokens"] = self.options.prompt_lookup_tokens
        out = self.backbone.model.generate(ids, **kwargs)
        return out[0, len(prompt_ids) :].tolist()

    def run_prompt(self, prompt: EvalPrompt, index: int) -> dict:
        """All methods on one prompt (all turns); JSON-ready."""
        record = {"id": prompt.id, "category": prompt.category, "methods": {}}
        for method in METHODS:
            answers: list[str] = []
            turns = []
            for turn_index in range(len(prompt.turns)):
                prompt_ids = self.formatter.prompt_ids(prompt.messages(answers), origin=f"prompt {prompt.id}")
                seed = self.options.seed * 1_000_003 + index * 101 + turn_index
                tokens, seconds, result = self.generate(method, prompt_ids, self.options.max_new_tokens, seed)
                entry = {"prompt_ids": prompt_ids, "tokens": tokens, "seconds": seconds}
                if result is not None:
                    entry.update(accepted=result.accepted, tree_sizes=result.tree_sizes, predicted=result.predicted, times=result.times)
                turns.append(entry)
                answers.append(self.backbone.tokenizer.decode(tokens, skip_special_tokens=True))
            record["methods"][method] = turns
        return record

    def warm_up(self, prompt: EvalPrompt) -> None:
        ids = self.formatter.prompt_ids(prompt.messages([]))
        for method in METHODS:
            self.generate(method, ids, min(8, self.options.max_new_tokens), 0)


def run_eval(options: EvalOptions, out: Path, progress: bool = True) -> dict:
    """Run the evaluation and return the report (also resumable through `<out>.partial.jsonl`)."""
    if options.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {options.max_new_tokens}")
    if options.tree_budget < 1:
        raise ConfigError(f"--tree-budget must be at least 1, got {options.tree_budget}")
    if options.drift_batches is not None and options.drift_batches < 1:
        raise ConfigError(f"--drift-batches must be at least 1, got {options.drift_batches}")
    device = options.device if options.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    prompts = load_prompts(options.prompts, options.limit)
    draft = DraftModel.from_pretrained(options.heads, options.base, device=device, dtype=options.dtype)
    tree = resolve_tree(options, draft)
    runner = _Runner(draft, options, tree)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.jsonl")
    records = _read_partial(partial, options)
    done = {r["id"] for r in records}
    todo = [(i, p) for i, p in enumerate(prompts) if p.id not in done]
    if todo:
        runner.warm_up(todo[0][1])
        if not partial.exists():
            partial.write_text(json.dumps({"options": options.fingerprint()}) + "\n")
        for index, prompt in tqdm(todo, desc="eval", unit="prompt", disable=not progress, initial=len(done), total=len(prompts)):
            record = runner.run_prompt(prompt, index)
            with partial.open("a") as handle:  # one line per finished prompt: a kill loses at most one
                handle.write(json.dumps(record) + "\n")
            records.append(record)
    from draftheads.eval.metrics import build_report

    # The heads' ranks on the base model's own answers (the baseline's), for tau_predicted.
    sequences = [
        (turn["prompt_ids"] + turn["tokens"], len(turn["prompt_ids"]))
        for record in records
        for turn in record["methods"]["baseline"]
    ]
    report = build_report(options, draft, tree, records, rank_stats(draft, sequences))
    report["backbone_mode"] = draft.backbone_mode
    report["backbone_drift"] = report_drift(draft, options.drift_batches, device, options.dtype)
    return report


def _read_partial(path: Path, options: EvalOptions) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    header = json.loads(lines[0]) if lines else {}
    if header.get("options") != options.fingerprint():
        raise ConfigError(
            f"{path}: left by an eval with other settings; delete it, or rerun with the same settings to resume"
        )
    records = []
    for line in lines[1:]:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: drop it, that prompt runs again
            kept = [lines[0]] + [json.dumps(r) for r in records]
            atomic_write_text(path, "\n".join(kept) + "\n")
            break
    return records
