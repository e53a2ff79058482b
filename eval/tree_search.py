"""`draftheads tree`: calibrate the heads on the base model's own answers, time verification and
drafting on this machine, choose the static tree with the highest expected speedup, save it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from draftheads.data.chat import ChatFormatter
from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.calibration import TreeCandidate, draft_costs, rank_stats, search_static_tree, verify_costs
from draftheads.eval.prompts import load_prompts
from draftheads.models.draft_model import CONFIG_NAME, DraftModel
from draftheads.models.heads.base import TreeChoice
from draftheads.utils.atomic import atomic_write_text
from draftheads.utils.device import resolve_device, resolve_dtype
from draftheads.utils.errors import ConfigError


def choose_tree(
    heads: str,
    base: str | None = None,
    prompts: str = "mt-bench",
    budget: int = 32,
    limit: int = 8,
    max_new_tokens: int = 96,
    device: str = "auto",
    dtype: str = "auto",
    save: bool = True,
    progress: bool = True,
) -> list[TreeCandidate]:
    """Run the search; with `save`, write the best tree into `heads`/config.json. Returns the
    candidates, best first."""
    folder = Path(heads)
    if save and not (folder / CONFIG_NAME).is_file():
        raise ConfigError(f"--heads {heads}: the tree is saved into a local heads folder's {CONFIG_NAME}; this is not one")
    if budget < 1:
        raise ConfigError(f"--budget must be at least 1, got {budget}")
    device = resolve_device(device)
    dtype, note = resolve_dtype(dtype, device)
    print(f"dtype: {note}")
    draft = DraftModel.from_pretrained(heads, base, device=device, dtype=dtype)
    formatter = ChatFormatter(draft.backbone.tokenizer, model_name=draft.backbone.location.spec)
    engine = Engine(draft.backbone)
    sequences = []
    for prompt in tqdm(load_prompts(prompts, limit), desc="calibration answers", disable=not progress):
        ids = formatter.prompt_ids(prompt.messages([]), origin=f"prompt {prompt.id}")
        tokens = engine.generate(ids, GenerationConfig(max_new_tokens=max_new_tokens)).tokens
        sequences.append((ids + tokens, len(ids), 0))
    stats = rank_stats(draft, sequences)
    sizes = sorted({s for s in (1, 2, 4, 8, 16, 32, 64) if s <= budget} | {budget + 1})
    verify = verify_costs(draft, sizes)
    drafting = draft_costs(draft)
    candidates = search_static_tree(stats, verify, drafting, budget)
    if not candidates:
        raise ConfigError(f"no tree: the heads never ranked the true token in their top 10 on {stats.positions} positions")
    print(f"calibration: {stats.positions} positions; top-1 accuracy by depth: " + ", ".join(f"{row[0]:.3f}" for row in stats.depth_topk))
    print("verify ms by nodes: " + ", ".join(f"{k}: {1000 * v:.1f}" for k, v in sorted(verify.items())))
    print("draft ms by depth: " + ", ".join(f"{1000 * v:.1f}" for v in drafting))
    print(f"{'nodes':>5} {'depth':>5} {'E[tau]':>7} {'step ms':>8} {'E[speedup]':>10}")
    for c in sorted(candidates, key=lambda c: c.nodes):
        print(f"{c.nodes:>5} {c.depth:>5} {c.expected_tau:>7.3f} {1000 * c.step_seconds:>8.1f} {c.expected_speedup:>10.3f}")
    best = candidates[0]
    if best.expected_speedup < 1:
        print(
            f"warning: no tree of up to {budget} nodes is expected to beat autoregressive decoding on this machine "
            f"(best {best.expected_speedup:.3f}x); the heads' acceptance is too low for the verify cost of extra nodes"
        )
    print(f"best: {best.nodes} nodes, expected tau {best.expected_tau:.3f}, expected speedup {best.expected_speedup:.3f}x: {best.paths}")
    if save:
        where = f"{prompts} ({len(sequences)} prompts, {stats.positions} positions), {device}, {dtype}, {torch.get_num_threads()} threads"
        config = dataclasses.replace(
            draft.heads.config,
            tree=TreeChoice(best.paths, round(best.expected_tau, 4), round(best.expected_speedup, 4), where),
        )
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config.to_json_dict(), indent=2) + "\n")
        print(f"saved into {folder / CONFIG_NAME}")
    return candidates
