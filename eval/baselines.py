"""The prompt-lookup baselines at their best: HF prompt lookup and our engine's lookup alone, each
with the setting that is fastest on prompts like the served ones (never the eval's own), chosen by
a sweep measured at start-up on this machine.

Prompt lookup's speed depends on its setting and on the text (how much an answer repeats its
context), so a speedup over it means little at someone else's setting; and the heads' own share
of a tree with a lookup branch is their speedup over the lookup alone."""

from __future__ import annotations

import dataclasses

from draftheads.data.chat import ChatFormatter
from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.tree import TreeSpec
from draftheads.eval.config import EvalConfig
from draftheads.eval.metrics import tokens_per_s
from draftheads.eval.prompts import EvalPrompt, load_prompts
from draftheads.eval.schema import MethodName
from draftheads.eval.runner import Method, Runner, engine_method, hf_method
from draftheads.models.backbone import Backbone
from draftheads.utils.log import logger

HF_GRID = tuple((tokens, ngram) for tokens in (5, 10, 20) for ngram in (1, 2, 3))
"""(prompt_lookup_num_tokens, max_matching_ngram_size) swept for HF prompt lookup (HF's default: 10, 2)."""
OUR_GRID = tuple((tokens, ngram) for tokens in (4, 8, 16) for ngram in (1, 2, 3))
"""(lookup tokens, n-gram) swept for our lookup alone."""


def lookup_methods(backbone: Backbone, eos: tuple[int, ...], settings: dict[str, dict]) -> list[Method]:
    """The lookup baselines at `settings` ({name: {"tokens", "ngram"}}, as `tune_baselines` gives)."""
    methods = []
    if MethodName.HF_PROMPT_LOOKUP in settings:
        hf = settings[MethodName.HF_PROMPT_LOOKUP]
        methods.append(hf_method(MethodName.HF_PROMPT_LOOKUP, backbone, eos, hf["tokens"], hf["ngram"]))
    if MethodName.LOOKUP in settings:
        ours = settings[MethodName.LOOKUP]
        methods.append(
            engine_method(MethodName.LOOKUP, Engine(backbone, tree=TreeSpec("none", lookup=ours["tokens"], lookup_ngram=ours["ngram"])))
        )
    return methods


def tune_baselines(config: EvalConfig, backbone: Backbone, eos: tuple[int, ...], progress: bool = True) -> dict[str, dict]:
    """Each lookup baseline's setting: as configured, or the fastest of its sweep on the tuning
    prompts' first turns (one interleaved run of every candidate). Our lookup alone is greedy only
    (copied tokens have no draft distribution to sample against)."""
    b = config.baselines
    greedy = config.sampling.temperature == 0
    candidates = {MethodName.HF_PROMPT_LOOKUP: _grid(HF_GRID, b.prompt_lookup_tokens, b.prompt_lookup_ngram)}
    if greedy:
        candidates[MethodName.LOOKUP] = _grid(OUR_GRID, b.lookup_tokens, b.lookup_ngram)
    if all(len(grid) == 1 for grid in candidates.values()):
        return {name: {"tokens": grid[0][0], "ngram": grid[0][1], "chosen": "as configured"} for name, grid in candidates.items()}
    prompts = [EvalPrompt(p.id, p.category, p.turns[:1], p.system) for p in load_prompts(b.tune_prompts, b.tune_limit)]
    methods = [
        dataclasses.replace(method, name=f"{name}:{t}:{n}")
        for name, grid in candidates.items()
        for t, n in grid
        for method in lookup_methods(backbone, eos, {name: {"tokens": t, "ngram": n}})
    ]
    runner = Runner(
        methods,
        ChatFormatter(backbone.tokenizer, model_name=backbone.location.spec),
        GenerationConfig(max_new_tokens=config.max_new_tokens, eos_token_ids=eos),
        0.0,
    )
    runner.warm_up(prompts[0])
    records = []
    for index, prompt in enumerate(prompts):
        records.append(runner.run_prompt(prompt, index, 0))
        if progress:
            logger(__name__).info(f"baselines: tuned on {index + 1}/{len(prompts)} prompts of {b.tune_prompts}")
    speeds = {m.name: tokens_per_s(records, m.name) for m in methods}
    chosen = {}
    for name, grid in candidates.items():
        sweep = [{"tokens": t, "ngram": n, "tokens_per_s": speeds[f"{name}:{t}:{n}"]} for t, n in grid]
        best = max(sweep, key=lambda row: row["tokens_per_s"])
        chosen[name] = {
            "tokens": best["tokens"],
            "ngram": best["ngram"],
            "chosen": f"fastest of {len(sweep)} on {len(prompts)} prompts of {b.tune_prompts}",
            "sweep": sweep,
        }
    return chosen


def _grid(grid: tuple[tuple[int, int], ...], tokens: int | None, ngram: int | None) -> list[tuple[int, int]]:
    """The sweep's candidates with the configured values held fixed."""
    if tokens is not None and ngram is not None:
        return [(tokens, ngram)]
    return sorted({(tokens or t, ngram or n) for t, n in grid})
