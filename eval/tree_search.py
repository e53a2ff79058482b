"""`draftheads tree`: calibrate the heads on the base model's own answers (every turn, as a decode makes them), time verification and
drafting on this machine, choose the static tree with the highest expected speedup, save it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from draftheads.decoding.planning.costs import TreeCosts, draft_costs, verify_costs
from draftheads.decoding.planning.search import Candidate, search_static_tree
from draftheads.decoding.planning.stats import rank_stats
from draftheads.eval.calibrate import answer_sequences
from draftheads.eval.prompts import load_prompts
from draftheads.models.draft_model import DraftModel
from draftheads.models.heads_folder import CONFIG_NAME
from draftheads.models.heads.base import TreeChoice
from draftheads.utils.atomic import atomic_write_text
from draftheads.utils.device import resolve_device, resolve_dtype
from draftheads.utils.errors import ConfigError
from draftheads.utils.log import logger


def choose_tree(
    heads: str,
    base: str | None = None,
    prompts: str = "calibration",
    budget: int = 32,
    limit: int = 8,
    max_new_tokens: int = 96,
    device: str = "auto",
    dtype: str = "auto",
    save: bool = True,
    progress: bool = True,
) -> list[Candidate]:
    """Run the search; with `save`, write the best tree into `heads`/config.json. Returns the
    candidates, best first."""
    log = logger(__name__)
    folder = Path(heads)
    if save and not (folder / CONFIG_NAME).is_file():
        raise ConfigError(f"--heads {heads}: the tree is saved into a local heads folder's {CONFIG_NAME}; this is not one")
    if budget < 1:
        raise ConfigError(f"--budget must be at least 1, got {budget}")
    device = resolve_device(device)
    dtype, note = resolve_dtype(dtype, device)
    log.info(f"dtype: {note}")
    draft = DraftModel.from_pretrained(heads, base, device=device, dtype=dtype)
    chosen = load_prompts(prompts, limit)
    stats = rank_stats(draft, answer_sequences(draft.backbone, chosen, max_new_tokens, None, progress))
    sizes = sorted({s for s in (1, 2, 4, 8, 16, 32, 64) if s <= budget} | {budget + 1})
    costs = TreeCosts(verify_costs(draft, sizes), draft_depths=draft_costs(draft))
    candidates = search_static_tree(stats, costs, budget)
    if not candidates:
        raise ConfigError(f"no tree: the heads never ranked the true token in their top 10 on {stats.positions} positions")
    ar_seconds = costs.verify[1]
    log.info(
        f"calibration: {stats.positions} positions; top-1 accuracy by depth: " + ", ".join(f"{row[0]:.3f}" for row in stats.depth_topk)
    )
    log.info("verify ms by nodes: " + ", ".join(f"{k}: {1000 * v:.1f}" for k, v in sorted(costs.verify.items())))
    log.info("draft ms of a chain by depth: " + ", ".join(f"{1000 * v:.1f}" for v in costs.draft_depths))
    log.info(f"{'nodes':>5} {'depth':>5} {'E[tau]':>7} {'step ms':>8} {'E[speedup]':>10}")
    for c in sorted(candidates, key=lambda c: c.budget):
        log.info(
            f"{c.budget:>5} {c.depth:>5} {c.expected_tau:>7.3f} {1000 * c.step_seconds:>8.1f} {c.tokens_per_second * ar_seconds:>10.3f}"
        )
    best = candidates[0]
    speedup = best.tokens_per_second * ar_seconds
    if speedup < 1:
        log.warning(
            f"no tree of up to {budget} nodes is expected to beat autoregressive decoding on this machine "
            f"(best {speedup:.3f}x); the heads' acceptance is too low for the verify cost of extra nodes"
        )
    log.info(f"best: {best.budget} nodes, expected tau {best.expected_tau:.3f}, expected speedup {speedup:.3f}x: {best.paths}")
    if save:
        where = f"{prompts} ({len(chosen)} prompts, {stats.positions} positions), {device}, {dtype}, {torch.get_num_threads()} threads"
        config = dataclasses.replace(
            draft.heads.config,
            tree=TreeChoice(best.paths, round(best.expected_tau, 4), round(speedup, 4), where),
        )
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config.to_json_dict(), indent=2) + "\n")
        log.info(f"saved into {folder / CONFIG_NAME}")
    return candidates
