"""What a candidate tree costs on this machine, in this dtype, for these heads: one verification
forward by node count after a cached prefix, drafting a dynamic tree by (budget, width) with the
real drafter, drafting a static tree depth by depth, and looking up and grafting a lookup branch.
`TreeCosts` holds them all; planning weighs every candidate with it (`planning/search.py`)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from draftheads.decoding.drafting import Draft
from draftheads.decoding.engine import Engine
from draftheads.decoding.lookup import graft, lookup_continuation
from draftheads.decoding.sampling import SamplingConfig
from draftheads.decoding.tree import LOOKUP_NGRAM, Tree, TreeSpec
from draftheads.models.draft_model import DraftModel
from draftheads.utils.device import synchronize


def median_seconds(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls after one warm-up call."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


@torch.inference_mode()
def verify_costs(draft: DraftModel, sizes: list[int], prefix_length: int = 256, repeats: int = 5) -> dict[int, float]:
    """Median seconds of one verification forward of K nodes (with logits) after a cached prefix
    of `prefix_length` tokens, for each K in `sizes`, on this machine, through the engine."""
    backbone = draft.backbone
    engine = Engine(backbone)
    generator = torch.Generator().manual_seed(0)
    engine.prefill(torch.randint(0, backbone.vocab_size, (prefix_length,), generator=generator), max(sizes))
    calls = {}
    for size in sizes:
        tree = Tree.chain(size - 1)
        tokens, mask = torch.randint(0, backbone.vocab_size, (size,), generator=generator), tree.ancestor_mask()

        def verify(tokens=tokens, depth=tree.depth, mask=mask) -> None:
            engine.verify(tokens, depth, mask)
            engine.commit([])  # nothing is kept: every repeat verifies after the same prefix

        calls[size] = verify
    # Sizes interleaved round by round (after one warm-up round): a load that comes and goes on a
    # shared machine then hits every size alike instead of skewing the curve.
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for round_ in range(repeats + 1):
        for size in sizes:
            start = time.perf_counter()
            calls[size]()
            synchronize(engine.device)
            if round_:
                times[size].append(time.perf_counter() - start)
    return {size: statistics.median(values) for size, values in times.items()}


def draft_costs(draft: DraftModel, repeats: int = 5) -> list[float]:
    """Median seconds the engine's static drafter takes for a chain 1, 2, ... num_heads deep."""
    chains = (TreeSpec("static", paths=[[0] * d for d in range(1, depth + 1)]) for depth in range(1, draft.heads.config.num_heads + 1))
    return [drafting_seconds(draft, chain, repeats) for chain in chains]


@torch.inference_mode()
def drafting_seconds(draft: DraftModel, tree: TreeSpec, repeats: int) -> float:
    """Median seconds the engine's drafter takes for one `tree`, after a `begin_draft` on a few
    accepted tokens (as each engine step does)."""
    heads = draft.heads
    engine = Engine(draft.backbone, heads, tree)
    ids = torch.randint(0, draft.backbone.vocab_size, (16,), generator=torch.Generator().manual_seed(0))
    features = engine.prefill(ids, 0).features
    state = heads.begin_draft({k: v[:, :-3] for k, v in features.items()}, ids[None, :-3].to(engine.device))

    def step() -> None:
        again = heads.begin_draft({k: v[:, -3:] for k, v in features.items()}, ids[None, -3:].to(engine.device), state)
        engine.draft(again, int(ids[-1]), SamplingConfig())

    return median_seconds(step, engine.device, repeats)


BUDGETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
"""Drafted nodes of the dynamic trees weighed."""
WIDTHS = (1, 2, 3, 4, 6, 8)
"""Most nodes per depth of the dynamic trees weighed."""
LOOKUPS = (4, 8, 12, 16)
"""Lookup-branch lengths weighed for greedy decoding (besides none)."""


@dataclass
class TreeCosts:
    """Seconds measured on this machine, the one cost model of every candidate tree."""

    verify: dict[int, float]
    """One verification forward by node count (root included)."""
    draft: dict[tuple[int, int], float] = field(default_factory=dict)
    """Drafting a dynamic tree, by (budget, width)."""
    lookup: dict[int, float] = field(default_factory=dict)
    """Finding a lookup branch of that many tokens in a long context and grafting it, by length."""
    draft_depths: list[float] = field(default_factory=list)
    """Drafting a static tree d deep, at index d - 1 (measured on a chain)."""

    def verify_seconds(self, nodes: int) -> float:
        """Verification of `nodes` nodes: measured, or interpolated linearly between the nearest
        measured sizes (extrapolated from the last two past the largest)."""
        if nodes in self.verify:
            return self.verify[nodes]
        sizes = sorted(self.verify)
        above = next((s for s in sizes if s > nodes), None)
        low, high = (sizes[-2], sizes[-1]) if above is None else (max(s for s in sizes if s < nodes), above)
        slope = (self.verify[high] - self.verify[low]) / (high - low)
        return self.verify[low] + slope * (nodes - low)

    def static_draft_seconds(self, depth: int) -> float:
        """Drafting a static tree `depth` deep."""
        return self.draft_depths[depth - 1] if depth else 0.0

    def to_json(self) -> dict:
        """JSON-ready, in milliseconds."""
        out = {
            "verify_ms_by_nodes": {str(k): round(1000 * v, 3) for k, v in sorted(self.verify.items())},
            "draft_ms_by_budget_width": {f"{b}x{w}": round(1000 * v, 3) for (b, w), v in sorted(self.draft.items())},
            "lookup_ms_by_tokens": {str(k): round(1000 * v, 3) for k, v in sorted(self.lookup.items())},
        }
        return out | ({"draft_ms_by_static_depth": [round(1000 * v, 3) for v in self.draft_depths]} if self.draft_depths else {})


def draft_seconds(draft: DraftModel, budget: int, width: int, repeats: int = 3) -> float:
    """Median seconds the engine's dynamic drafter takes for one tree of (budget, width)."""
    return drafting_seconds(draft, TreeSpec("dynamic", budget=budget, width=width), repeats)


def lookup_seconds(tokens: int, ngram: int, context_length: int, repeats: int = 5) -> float:
    """Median seconds to look up a branch of `tokens` tokens in a context of `context_length` and
    graft it under a root: the worst case, a context whose only match is its first n-gram, so the
    scan runs through all of it."""
    context = list(range(1, context_length)) + [1]  # the last token's one earlier occurrence is the first
    root = Draft(Tree(torch.tensor([-1]), torch.tensor([0]), torch.tensor([0])), torch.tensor([context[-1]]))

    def step() -> None:
        graft(root, lookup_continuation(context, tokens, ngram)).tree.ancestor_mask()

    return median_seconds(step, torch.device("cpu"), repeats)


def measure_costs(
    draft: DraftModel,
    budgets=BUDGETS,
    widths=WIDTHS,
    prefix_length: int = 256,
    lookups: tuple[int, ...] = (),
    ngram: int = LOOKUP_NGRAM,
    static_nodes: int = 0,
) -> TreeCosts:
    """Verification and drafting costs of every candidate on this machine; with
    `lookups`, verification up to the largest tree plus the longest branch and the branches' own
    cost in a context of `prefix_length` tokens; with `static_nodes`, a static tree of that many
    drafted nodes too (verification and drafting by depth)."""
    sizes = {1} | {b + 1 for b in budgets} | ({static_nodes + 1} if static_nodes else set())
    if lookups:  # a step verifies the tree and the branch's new nodes: interpolated between these
        largest = max(max(budgets), static_nodes) + 1
        sizes |= {largest + max(lookups) // 2, largest + max(lookups)}
    costs = TreeCosts(verify_costs(draft, sorted(sizes), prefix_length, repeats=5))
    for budget in budgets:
        for width in widths:
            if width <= budget:
                costs.draft[(budget, width)] = draft_seconds(draft, budget, width)
    costs.lookup = {tokens: lookup_seconds(tokens, ngram, prefix_length) for tokens in lookups}
    costs.draft_depths = draft_costs(draft) if static_nodes else []
    return costs
