"""`--tree auto`: the dynamic tree (budget, width) with the highest expected tokens per second on
this machine, in this dtype, for these heads.

Expected τ of a (budget, width) tree comes from calibrated joint rank-path statistics
(`RankStats`: how often depths 1..d of the heads ranked the true tokens r1..rd): the `budget` most
probable rank paths with at most `width` per depth, the tree a dynamic drafter approximates when
its draft probabilities rank paths as calibration does. Its cost is measured here at start-up:
one verification forward of budget + 1 nodes after a cached prefix, plus drafting that tree with
the real drafter. Plain autoregressive decoding (one node, no drafting) is a candidate too, so
heads that cannot pay for their tree on this machine are not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from draftheads.decoding.calibration import RankStats, median_seconds, verify_costs
from draftheads.decoding.drafting import DynamicDrafter
from draftheads.decoding.sampling import SamplingConfig
from draftheads.decoding.tree import TreeSpec
from draftheads.models.draft_model import DraftModel

BUDGETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
WIDTHS = (1, 2, 3, 4, 6, 8)


@dataclass
class TreeCosts:
    """Seconds measured on this machine: verification by node count (root included), drafting by
    (budget, width)."""

    verify: dict[int, float]
    draft: dict[tuple[int, int], float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """JSON-ready, in milliseconds."""
        return {
            "verify_ms_by_nodes": {str(k): round(1000 * v, 3) for k, v in sorted(self.verify.items())},
            "draft_ms_by_budget_width": {f"{b}x{w}": round(1000 * v, 3) for (b, w), v in sorted(self.draft.items())},
        }


@dataclass
class Candidate:
    """One (budget, width) with its expected τ and step time; budget 0 is autoregressive decoding."""

    budget: int
    width: int
    expected_tau: float
    step_seconds: float

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

    @property
    def expected_speedup(self) -> float:
        """Expected tokens/s over autoregressive decoding's."""
        return self.chosen.tokens_per_second / self.autoregressive.tokens_per_second

    def lines(self) -> list[str]:
        """What was chosen and why, for the user."""
        c, ar = self.chosen, self.autoregressive
        what = "autoregressive decoding (no tree is expected to pay)" if c.budget == 0 else f"dynamic tree, budget {c.budget}, width {c.width}"
        verify = ", ".join(f"{k}: {1000 * v:.1f}" for k, v in sorted(self.costs.verify.items()))
        return [
            f"tree auto: {what}: expected τ {c.expected_tau:.3f}, {1000 * c.step_seconds:.1f} ms per step, "
            f"expected {self.expected_speedup:.2f}x autoregressive ({1000 * ar.step_seconds:.1f} ms per token)",
            f"tree auto: verify ms by nodes {verify}; acceptance from {self.calibration}",
        ]

    def to_json(self) -> dict:
        """JSON-ready, for reports."""
        return {
            "budget": self.chosen.budget,
            "width": self.chosen.width,
            "expected_tau": self.chosen.expected_tau,
            "expected_speedup": self.expected_speedup,
            "calibration": self.calibration,
            "costs": self.costs.to_json(),
            "candidates": [{"budget": c.budget, "width": c.width, "expected_tau": round(c.expected_tau, 4), "step_ms": round(1000 * c.step_seconds, 3)} for c in self.candidates],
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


def measure_costs(draft: DraftModel, budgets=BUDGETS, widths=WIDTHS, prefix_length: int = 256) -> TreeCosts:
    """Verification and drafting costs of every candidate on this machine (a few seconds)."""
    costs = TreeCosts(verify_costs(draft, sorted({1} | {b + 1 for b in budgets}), prefix_length, repeats=5))
    for budget in budgets:
        for width in widths:
            if width <= budget:
                costs.draft[(budget, width)] = draft_seconds(draft, budget, width)
    return costs


def choose_auto_tree(stats: RankStats, costs: TreeCosts, calibration: str) -> AutoTree:
    """The candidate with the highest expected tokens per second (autoregressive included)."""
    ar = Candidate(0, 0, 1.0, costs.verify[1])
    candidates = [ar] + [
        Candidate(budget, width, expected_tau(stats, budget, width), costs.verify[budget + 1] + seconds)
        for (budget, width), seconds in sorted(costs.draft.items())
    ]
    best = max(candidates, key=lambda c: c.tokens_per_second)
    spec = TreeSpec("none") if best.budget == 0 else TreeSpec("dynamic", budget=best.budget, width=best.width)
    return AutoTree(spec, best, ar, candidates, costs, calibration)
