"""`--tree auto`: the dynamic tree (budget, width), and for greedy decoding the lookup branch's
length, with the highest expected tokens per second on this machine, in this dtype, for these heads.

Expected τ of a (budget, width) tree comes from calibrated joint rank-path statistics
(`RankStats`: how often depths 1..d of the heads ranked the true tokens r1..rd): the `budget` most
probable rank paths with at most `width` per depth, the tree a dynamic drafter approximates when
its draft probabilities rank paths as calibration does. Its cost is measured here at start-up:
one verification forward of budget + 1 nodes after a cached prefix, plus drafting that tree with
the real drafter. Plain autoregressive decoding (one node, no drafting) is a candidate too, so
heads that cannot pay for their tree on this machine are not used.

When the calibration kept its answers (`draftheads calibrate`), each candidate is replayed on them
step by step instead (`decoding/walks.py`): τ then counts clustered acceptance and the lookup
branch, and the verification cost is that of each step's tree with the tokens the branch proposed
there, so a branch is chosen only where its copies pay for the nodes they add.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

import torch

from draftheads.decoding.calibration import RankStats, median_seconds, verify_costs
from draftheads.decoding.drafting import Draft, DynamicDrafter
from draftheads.decoding.lookup import graft, lookup_continuation
from draftheads.decoding.sampling import SamplingConfig
from draftheads.decoding.tree import Tree, TreeSpec
from draftheads.models.draft_model import DraftModel

BUDGETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
WIDTHS = (1, 2, 3, 4, 6, 8)
LOOKUPS = (4, 8, 12, 16)
"""Lookup-branch lengths weighed for greedy decoding (besides none)."""


@dataclass
class TreeCosts:
    """Seconds measured on this machine: verification by node count (root included), drafting by
    (budget, width)."""

    verify: dict[int, float]
    draft: dict[tuple[int, int], float] = field(default_factory=dict)
    lookup: dict[int, float] = field(default_factory=dict)
    """Finding a lookup branch of that many tokens in a long context and grafting it, by length."""

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

    def to_json(self) -> dict:
        """JSON-ready, in milliseconds."""
        return {
            "verify_ms_by_nodes": {str(k): round(1000 * v, 3) for k, v in sorted(self.verify.items())},
            "draft_ms_by_budget_width": {f"{b}x{w}": round(1000 * v, 3) for (b, w), v in sorted(self.draft.items())},
            "lookup_ms_by_tokens": {str(k): round(1000 * v, 3) for k, v in sorted(self.lookup.items())},
        }


@dataclass
class Candidate:
    """One (budget, width) with its expected τ and step time; budget 0 drafts nothing (autoregressive
    decoding, or the lookup branch alone)."""

    budget: int
    width: int
    expected_tau: float
    step_seconds: float
    lookup: int = 0
    """Tokens of the lookup branch (0: none)."""

    @property
    def tokens_per_second(self) -> float:
        """Expected committed tokens per second."""
        return self.expected_tau / self.step_seconds


@dataclass
class AutoTree:
    """What `choose_auto_tree` picked, and the evidence."""

    spec: TreeSpec
    chosen: Candidate
    autoregressive: Candidate
    candidates: list[Candidate]
    costs: TreeCosts
    calibration: str
    """Where the acceptance statistics came from."""
    unweighed: str | None = None
    """Why lookup branches that were asked to be weighed were not (None: they were, or none was)."""

    @property
    def expected_speedup(self) -> float:
        """Expected tokens/s over autoregressive decoding's."""
        return self.chosen.tokens_per_second / self.autoregressive.tokens_per_second

    def lines(self) -> list[str]:
        """What was chosen and why, for the user."""
        c, ar = self.chosen, self.autoregressive
        what = "autoregressive decoding (no tree is expected to pay)" if c.budget == 0 and not c.lookup else f"dynamic tree, budget {c.budget}, width {c.width}"
        if c.lookup:
            what = f"the {c.lookup}-token lookup branch" + ("" if c.budget == 0 else f" on a {what}")
        verify = ", ".join(f"{k}: {1000 * v:.1f}" for k, v in sorted(self.costs.verify.items()))
        return [
            f"tree auto: {what}: expected τ {c.expected_tau:.3f}, {1000 * c.step_seconds:.1f} ms per step, "
            f"expected {self.expected_speedup:.2f}x autoregressive ({1000 * ar.step_seconds:.1f} ms per token)",
            f"tree auto: verify ms by nodes {verify}; acceptance from {self.calibration}",
        ] + ([f"tree auto: no lookup branch weighed: {self.unweighed}"] if self.unweighed else [])

    def to_json(self) -> dict:
        """JSON-ready, for reports."""
        return {
            "budget": self.chosen.budget,
            "width": self.chosen.width,
            "lookup": self.chosen.lookup,
            "expected_tau": self.chosen.expected_tau,
            "expected_speedup": self.expected_speedup,
            "calibration": self.calibration,
            "costs": self.costs.to_json(),
            "candidates": [
                {"budget": c.budget, "width": c.width, "lookup": c.lookup, "expected_tau": round(c.expected_tau, 4), "step_ms": round(1000 * c.step_seconds, 3)}
                for c in self.candidates
            ],
        }


def expected_tau(stats: RankStats, budget: int, width: int) -> float:
    """1 + the probability mass of the `budget` best rank paths with at most `width` per depth."""
    return 1 + sum(stats.probability(tuple(p)) for p in stats.best_paths(budget, width))


@torch.inference_mode()
def draft_seconds(draft: DraftModel, budget: int, width: int, repeats: int = 3) -> float:
    """Median seconds the dynamic drafter takes for one tree of (budget, width), after a
    `begin_draft` on a few accepted tokens (as each engine step does)."""
    backbone, heads = draft.backbone, draft.heads
    device = backbone.lm_head.weight.device
    ids = torch.randint(0, backbone.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0)).to(device)
    features = backbone.features(ids, layers=heads.config.feature_layers()).features
    state = heads.begin_draft({k: v[:, :-3] for k, v in features.items()}, ids[:, :-3])
    drafter = DynamicDrafter(budget, width, heads.config.num_heads)

    def step() -> None:
        again = heads.begin_draft({k: v[:, -3:] for k, v in features.items()}, ids[:, -3:], state)
        drafter.draft(heads, again, int(ids[0, -1]), backbone.lm_head, SamplingConfig(), None, False)

    return median_seconds(step, device, repeats)


def lookup_seconds(tokens: int, ngram: int, context_length: int, repeats: int = 5) -> float:
    """Median seconds to look up a branch of `tokens` tokens in a context of `context_length` and
    graft it under a root: the worst case, a context whose only match is its first n-gram, so the
    scan runs through all of it."""
    context = list(range(1, context_length)) + [1]  # the last token's one earlier occurrence is the first
    root = Draft(Tree(torch.tensor([-1]), torch.tensor([0]), torch.tensor([0])), torch.tensor([context[-1]]))

    def step() -> None:
        graft(root, lookup_continuation(context, tokens, ngram)).tree.ancestor_mask()

    return median_seconds(step, torch.device("cpu"), repeats)


def measure_costs(draft: DraftModel, budgets=BUDGETS, widths=WIDTHS, prefix_length: int = 256, lookups: tuple[int, ...] = (), ngram: int = 2) -> TreeCosts:
    """Verification and drafting costs of every candidate on this machine (a few seconds); with
    `lookups`, verification up to the largest tree plus the longest branch and the branches' own
    cost in a context of `prefix_length` tokens."""
    sizes = {1} | {b + 1 for b in budgets}
    if lookups:  # a step verifies the tree and the branch's new nodes: interpolated between these
        sizes |= {max(budgets) + 1 + max(lookups) // 2, max(budgets) + 1 + max(lookups)}
    costs = TreeCosts(verify_costs(draft, sorted(sizes), prefix_length, repeats=5))
    for budget in budgets:
        for width in widths:
            if width <= budget:
                costs.draft[(budget, width)] = draft_seconds(draft, budget, width)
    costs.lookup = {tokens: lookup_seconds(tokens, ngram, prefix_length) for tokens in lookups}
    return costs


def choose_auto_tree(stats: RankStats, costs: TreeCosts, calibration: str, shape: tuple[int, int] | None = None, lookups: tuple[int, ...] = (0,), ngram: int = 2) -> AutoTree:
    """The candidate with the highest expected tokens per second (autoregressive included), over
    the drafted trees of `costs` with each lookup-branch length of `lookups` (0: none). With `shape`
    (turns, new tokens per turn) and a calibration that kept its answers, candidates are replayed on
    them; branches are weighed only where the walks recorded what the lookup proposes (with `ngram`)
    and the costs hold them, else the trees are chosen without a branch."""
    if shape is None or not stats.replayed([], *shape):
        shape = None  # nothing to replay: position frequencies, no branch
    unweighed = _why_no_branches(stats, costs, shape, lookups, ngram)
    if unweighed:
        lookups = (0,)
    ar = Candidate(0, 0, 1.0, costs.verify[1])
    candidates = [ar]
    for budget, width in [(0, 0), *sorted(costs.draft)]:
        for lookup in lookups:
            if budget or lookup:
                candidates.append(_candidate(stats, costs, budget, width, lookup, shape, ngram))
    best = max(candidates, key=lambda c: c.tokens_per_second)
    spec = TreeSpec("dynamic", budget=best.budget, width=best.width) if best.budget else TreeSpec("none")
    spec = dataclasses.replace(spec, lookup=best.lookup, lookup_ngram=ngram)
    return AutoTree(spec, best, ar, candidates, costs, calibration, unweighed)


def _why_no_branches(stats: RankStats, costs: TreeCosts, shape, lookups: tuple[int, ...], ngram: int) -> str | None:
    """Why the branches of `lookups` cannot be weighed (None: they can, or none was asked for)."""
    if not any(lookups):
        return None
    if shape is None:
        return "the calibration kept no answers to replay the decode on (`draftheads calibrate` writes one that does)"
    if not stats.costs_branches():
        return "the calibration's answers do not record what the lookup proposes (rerun `draftheads calibrate`)"
    if stats.lookup_ngram != ngram:
        return f"the calibration counted copies of n-gram {stats.lookup_ngram}, not {ngram}"
    missing = [t for t in lookups if t and t not in costs.lookup]
    return f"no measured cost for branches of {missing} tokens" if missing else None


def _candidate(stats: RankStats, costs: TreeCosts, budget: int, width: int, lookup: int, shape: tuple[int, int] | None, ngram: int) -> Candidate:
    """Expected τ and step time of one (budget, width, lookup): replayed on the calibration's
    answers for a decode of `shape`, else from position frequencies (no branch)."""
    drafting = costs.draft.get((budget, width), 0.0) + costs.lookup.get(lookup, 0.0)
    if shape is None:
        return Candidate(budget, width, expected_tau(stats, budget, width), costs.verify[budget + 1] + drafting)
    steps = stats.replay_steps(stats.best_paths(budget, width) if budget else [], *shape, lookup, ngram)
    # a few distinct branch sizes over thousands of steps: each size's cost is interpolated once
    verify = sum(n * costs.verify_seconds(budget + 1 + copied) for copied, n in Counter(steps.copied).items()) / len(steps.copied)
    return Candidate(budget, width, 1 + sum(steps.accepted) / len(steps.accepted), verify + drafting, lookup)
