"""Choosing the tree: every candidate (a dynamic tree of (budget, width), a static tree of rank
paths, or no drafted tree; each with a lookup branch of some length or none) is one `Candidate`,
weighed by expected tokens per second: expected τ from the calibration over its step time from
`TreeCosts`. `--tree auto` takes the best of all of them (a static tree saved by `draftheads tree`
among them); `draftheads tree` takes the best static tree of each size.

Expected τ of a tree comes from calibrated joint rank-path statistics (`RankStats`: how often
depths 1..d of the heads ranked the true tokens r1..rd): a static tree's own paths, or for a dynamic
tree the `budget` most probable rank paths with at most `width` per depth, the tree a dynamic drafter
approximates when its draft probabilities rank paths as calibration does. Plain autoregressive
decoding (one node, no drafting) is a candidate too, so heads that cannot pay for their tree on this
machine are not used.

When the calibration kept its answers (training's and `draftheads calibrate`'s do), each candidate is replayed on them
step by step instead (`planning/walks.py`): τ then counts clustered acceptance and the lookup
branch, and the verification cost is that of each step's tree with the tokens the branch proposed
there, so a branch is chosen only where its copies pay for the nodes they add.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

from draftheads.decoding.planning.costs import TreeCosts
from draftheads.decoding.planning.stats import RankStats
from draftheads.decoding.planning.walks import LOOKUP_CAP
from draftheads.decoding.tree import LOOKUP_NGRAM, Tree, TreeSpec


@dataclass
class Candidate:
    """One tree planning can choose, with its expected τ and step time."""

    budget: int
    """Drafted nodes: a dynamic tree's budget, a static tree's node count; 0 drafts nothing
    (autoregressive decoding, or the lookup branch alone)."""
    width: int
    """A dynamic tree's most nodes per depth (0 for a static tree or none)."""
    expected_tau: float
    """Expected tokens committed per step."""
    step_seconds: float
    """Expected seconds per step: drafting, the lookup, one verification."""
    lookup: int = 0
    """Tokens of the lookup branch (0: none)."""
    paths: list[list[int]] | None = None
    """A static tree's rank paths (None: a dynamic tree, or no drafted tree)."""

    @property
    def tokens_per_second(self) -> float:
        """Expected committed tokens per second."""
        return self.expected_tau / self.step_seconds

    @property
    def depth(self) -> int:
        """Deepest drafted node of a static tree (0 otherwise)."""
        return max((len(p) for p in self.paths), default=0) if self.paths else 0

    def spec(self, ngram: int) -> TreeSpec:
        """The tree the engine drafts for this candidate."""
        if self.paths:
            spec = TreeSpec("static", paths=self.paths)
        else:
            spec = TreeSpec("dynamic", budget=self.budget, width=self.width) if self.budget else TreeSpec("none")
        return dataclasses.replace(spec, lookup=self.lookup, lookup_ngram=ngram)

    def describe(self) -> str:
        """The candidate in words."""
        if self.paths:
            what = f"static tree of {self.budget} nodes ({self.depth} deep)"
        elif self.budget:
            what = f"dynamic tree, budget {self.budget}, width {self.width}"
        else:
            what = "" if self.lookup else "autoregressive decoding (no tree is expected to pay)"
        if not self.lookup:
            return what
        return f"the {self.lookup}-token lookup branch" + (f" on a {what}" if what else "")

    def to_json(self) -> dict:
        """JSON-ready, for reports."""
        out = {"budget": self.budget, "width": self.width, "lookup": self.lookup, "expected_tau": round(self.expected_tau, 4),
               "step_ms": round(1000 * self.step_seconds, 3)}
        return out | ({"paths": self.paths} if self.paths else {})


@dataclass
class AutoTree:
    """What `choose_auto_tree` picked, and the evidence."""

    spec: TreeSpec
    """The tree chosen, with its lookup branch."""
    chosen: Candidate
    """Its candidate."""
    autoregressive: Candidate
    """Plain autoregressive decoding, the candidate every other is compared with."""
    candidates: list[Candidate]
    """Every candidate weighed."""
    costs: TreeCosts
    """The costs measured on this machine."""
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
        verify = ", ".join(f"{k}: {1000 * v:.1f}" for k, v in sorted(self.costs.verify.items()))
        return [
            f"tree auto: {c.describe()}: expected τ {c.expected_tau:.3f}, {1000 * c.step_seconds:.1f} ms per step, "
            f"expected {self.expected_speedup:.2f}x autoregressive ({1000 * ar.step_seconds:.1f} ms per token)",
            f"tree auto: verify ms by nodes {verify}; acceptance from {self.calibration}",
        ] + ([f"tree auto: no lookup branch weighed: {self.unweighed}"] if self.unweighed else [])

    def to_json(self) -> dict:
        """JSON-ready, for reports."""
        chosen = self.chosen.to_json()
        return {
            **{k: chosen[k] for k in ("budget", "width", "lookup") + (("paths",) if "paths" in chosen else ())},
            "expected_tau": self.chosen.expected_tau,
            "expected_speedup": self.expected_speedup,
            "calibration": self.calibration,
            "costs": self.costs.to_json(),
            "candidates": [c.to_json() for c in self.candidates],
        }


def expected_tau(stats: RankStats, budget: int, width: int) -> float:
    """1 + the probability mass of the `budget` best rank paths with at most `width` per depth."""
    return 1 + sum(stats.probability(tuple(p)) for p in stats.best_paths(budget, width))


def choose_auto_tree(
    stats: RankStats,
    costs: TreeCosts,
    calibration: str,
    shape: tuple[int, int] | None = None,
    lookups: tuple[int, ...] = (0,),
    ngram: int = LOOKUP_NGRAM,
    static: list[list[int]] | None = None,
) -> AutoTree:
    """The candidate with the highest expected tokens per second (autoregressive included), over
    the dynamic trees of `costs` and the `static` tree (a saved one; its costs must hold its size
    and drafting by depth), each with each lookup-branch length of `lookups` (0: none). With `shape`
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
    trees = [(0, 0, None), *((b, w, None) for b, w in sorted(costs.draft)), *([(len(static), 0, static)] if static else [])]
    for budget, width, paths in trees:
        for lookup in lookups:
            if budget or lookup:
                candidates.append(_candidate(stats, costs, Candidate(budget, width, 0.0, 0.0, lookup, paths), shape, ngram))
    best = max(candidates, key=lambda c: c.tokens_per_second)
    return AutoTree(best.spec(ngram), best, ar, candidates, costs, calibration, unweighed)


def _why_no_branches(stats: RankStats, costs: TreeCosts, shape, lookups: tuple[int, ...], ngram: int) -> str | None:
    """Why the branches of `lookups` cannot be weighed (None: they can, or none was asked for)."""
    if not any(lookups):
        return None
    if shape is None:
        return "the calibration kept no answers to replay the decode on (`draftheads calibrate`, or training anew, writes one that does)"
    if not stats.costs_branches():
        return "the calibration's answers do not record what the lookup proposes (rerun `draftheads calibrate`, or train anew)"
    if stats.lookup_ngram != ngram:
        return f"the calibration counted copies of n-gram {stats.lookup_ngram}, not {ngram}"
    if max(lookups) > LOOKUP_CAP:
        return f"the calibration counts copies of at most {LOOKUP_CAP} tokens, not {max(lookups)}"
    missing = [t for t in lookups if t and t not in costs.lookup]
    return f"no measured cost for branches of {missing} tokens" if missing else None


def _candidate(stats: RankStats, costs: TreeCosts, tree: Candidate, shape: tuple[int, int] | None, ngram: int) -> Candidate:
    """`tree` with its expected τ and step time: replayed on the calibration's answers for a decode
    of `shape`, else from position frequencies (no branch)."""
    if tree.paths:
        paths, drafting = tree.paths, costs.static_draft_seconds(tree.depth)
    else:
        paths, drafting = (
            (stats.best_paths(tree.budget, tree.width) if tree.budget else []),
            costs.draft.get((tree.budget, tree.width), 0.0),
        )
    drafting += costs.lookup.get(tree.lookup, 0.0)
    if shape is None:
        tau = stats.expected_tau(Tree.from_paths(paths)) if tree.paths else expected_tau(stats, tree.budget, tree.width)
        return dataclasses.replace(tree, expected_tau=tau, step_seconds=costs.verify_seconds(tree.budget + 1) + drafting)
    steps = stats.replay_steps(paths, *shape, tree.lookup, ngram)
    # a few distinct branch sizes over thousands of steps: each size's cost is interpolated once
    verify = sum(n * costs.verify_seconds(tree.budget + 1 + copied) for copied, n in Counter(steps.copied).items()) / len(steps.copied)
    return dataclasses.replace(tree, expected_tau=1 + sum(steps.accepted) / len(steps.accepted), step_seconds=verify + drafting)


def search_static_tree(stats: RankStats, costs: TreeCosts, budget: int) -> list[Candidate]:
    """For every size up to `budget`, the most probable prefix-closed static tree, with its expected
    τ and step time (verifying size + 1 nodes plus drafting its depths). Best first."""
    candidates = []
    for count in range(1, budget + 1):
        paths = stats.best_paths(count)
        if len(paths) < count:
            break
        candidates.append(_candidate(stats, costs, Candidate(count, 0, 0.0, 0.0, paths=paths), None, 2))
    return sorted(candidates, key=lambda c: -c.tokens_per_second)
