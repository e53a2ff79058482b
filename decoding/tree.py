"""Draft trees in 1-D form: `parents[i]` (root = -1) and `depth[i]`; everything else is derived.

Node 0 is the root: the base model's own next token (t+1). A node at depth d holds a candidate
for token t+1+d. Nodes are stored parents-first (breadth-first), so one pass in index order can
compute anything that flows from root to leaves. The attention mask of verification (each node
sees the cached prefix and its own ancestors) and the position ids (prefix length + depth) are
derived here; kernels take the 1-D arrays themselves and never a dense mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from draftheads.models.engines import ENGINES

LOOKUP_NGRAM = 2
"""The longest context suffix a lookup branch matches unless told otherwise (HF prompt lookup's
default `max_matching_ngram_size`)."""


@dataclass(frozen=True)
class Tree:
    """A draft tree: parents[i] < i for every non-root node."""

    parents: torch.Tensor
    """[T] long; parents[0] == -1."""
    depth: torch.Tensor
    """[T] long; depth[0] == 0, depth[i] == depth[parents[i]] + 1."""
    rank: torch.Tensor
    """[T] long; which candidate of its depth's draft distribution the node takes (0 = the most
    likely), as in Medusa's static "choices"; 0 for the root."""

    def __post_init__(self) -> None:
        parents = self.parents.tolist()
        if not parents or parents[0] != -1 or any(not 0 <= p < i for i, p in enumerate(parents) if i):
            raise ValueError(f"not a parents-first tree: {parents}")

    @property
    def size(self) -> int:
        """Number of nodes, root included."""
        return self.parents.numel()

    @classmethod
    def from_paths(cls, paths: list[tuple[int, ...]] | list[list[int]]) -> "Tree":
        """A static tree from Medusa-style choices: each path lists candidate ranks per depth,
        e.g. (0,), (1,), (0, 0) is the root, its two best depth-1 candidates, and the best depth-2
        candidate after the first. Missing prefixes are added; duplicates are merged."""
        prefixes = {()}
        for path in paths:
            path = tuple(int(r) for r in path)
            if any(r < 0 for r in path):
                raise ValueError(f"negative rank in path {path}")
            prefixes.update(path[:n] for n in range(1, len(path) + 1))
        ordered = sorted(prefixes, key=lambda p: (len(p), p))
        index = {p: i for i, p in enumerate(ordered)}
        parents = [index[p[:-1]] if p else -1 for p in ordered]
        return cls(
            parents=torch.tensor(parents, dtype=torch.long),
            depth=torch.tensor([len(p) for p in ordered], dtype=torch.long),
            rank=torch.tensor([p[-1] if p else 0 for p in ordered], dtype=torch.long),
        )

    @classmethod
    def chain(cls, length: int) -> "Tree":
        """A single path of `length` drafted tokens after the root (length 0: the empty tree of
        plain autoregressive decoding)."""
        return cls.from_paths([(0,) * length] if length else [])

    def ancestor_mask(self) -> torch.Tensor:
        """[T, T] bool: mask[i, j] is True when node j is node i or one of its ancestors."""
        mask = torch.eye(self.size, dtype=torch.bool)
        for i, parent in enumerate(self.parents.tolist()):
            if parent >= 0:
                mask[i] |= mask[parent]  # parents-first order: the parent's row is complete
        return mask

    def position_ids(self, prefix_length: int) -> torch.Tensor:
        """[T] positions of the nodes after a prefix of `prefix_length` tokens."""
        return self.depth + prefix_length

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root to `node`, inclusive."""
        path = []
        while node >= 0:
            path.append(node)
            node = int(self.parents[node])
        return path[::-1]


DRAFTED = ("none", "static", "dynamic", "eagle2")
"""The tree kinds the engine drafts; the others name a choice `draftheads eval` resolves into one
of these (`eval/runner.py` `resolve_tree`)."""


@dataclass
class TreeSpec:
    """Which draft tree is verified each step: the engine's tree, and the eval config's `tree:`
    section, where `auto` (for the kind or the lookup) and an engine's name are choices that
    `draftheads eval` resolves before the engine sees them."""

    kind: Literal["none", "static", "dynamic", "eagle2", "auto", "sglang", "vllm", "reference", "trtllm"] = "none"
    """none: autoregressive (root only); static: `paths` (in an eval config without paths: the tree
    saved by `draftheads tree`, else a default one of `budget` nodes); dynamic: grown by joint draft
    probability under `budget` and `width`; eagle2: EAGLE-2's reranked tree (`width` nodes expanded
    by `width` children for `depth` depths, the best `budget` kept; greedy only). Resolved by
    `draftheads eval`: auto, the tree with the highest expected tokens/s from costs measured at
    start-up and the heads' calibration, among dynamic trees of every budget and width and the
    saved static tree (each with and without a lookup branch); an engine's name (sglang, vllm,
    reference, trtllm), the tree it drafts with the export README's serving command
    (`models/engines.py`)."""
    paths: list[list[int]] | None = None
    """Static tree as Medusa-style rank paths, e.g. [[0], [1], [0, 0]]."""
    budget: int = 16
    """Dynamic and EAGLE-2 trees, and default static trees: most drafted nodes per step (root excluded)."""
    width: int = 8
    """Dynamic trees: most nodes added per depth; EAGLE-2 trees: nodes expanded per depth, and
    children per expanded node (SafeAILab's top_k, SGLang's --speculative-eagle-topk)."""
    depth: int = 0
    """Dynamic and EAGLE-2 trees: most depths drafted; 0: the heads' `num_heads`. Heads that draft by repeating
    one module over its own outputs (EAGLE) go deeper than they were trained, as EAGLE-2 drafts;
    heads with one head per depth refuse more."""
    lookup: int | Literal["auto"] = 0
    """Also verify up to this many tokens copied from the context after the latest earlier
    occurrence of its last n-gram, as one more path under the root (decoding/lookup.py); 0: off.
    Greedy or typical acceptance only (not lossless sampling). With kind none this is prompt-lookup
    decoding on the engine. auto: chosen with the auto tree (none or one of several lengths, by
    expected tokens/s) when the heads' calibration kept its answers, else off; a number with the
    auto tree sizes the tree for that branch."""
    lookup_ngram: int = LOOKUP_NGRAM
    """The longest context suffix the lookup matches (shorter ones down to 1 are tried when it has
    no earlier occurrence; HF prompt lookup's max_matching_ngram_size)."""

    def __post_init__(self) -> None:
        if self.budget < 1 or self.width < 1 or self.depth < 0:
            raise ValueError(
                "tree budget and width must be at least 1 and depth at least 0 (0: the heads' own), "
                f"got {self.budget}, {self.width} and {self.depth}"
            )
        if (self.lookup != "auto" and self.lookup < 0) or self.lookup_ngram < 1:
            raise ValueError(
                f"tree lookup must be at least 0 (or auto) and lookup_ngram at least 1, got {self.lookup} and {self.lookup_ngram}"
            )

    @property
    def resolved(self) -> bool:
        """Whether the engine can draft this tree as it is (no choice left to `draftheads eval`)."""
        return self.kind in DRAFTED and self.lookup != "auto"

    def describe(self) -> dict:
        """JSON-ready description for reports (of a resolved spec: what was drafted)."""
        if not self.resolved:
            raise ValueError(f"tree kind {self.kind} with lookup {self.lookup} is not resolved yet: nothing was drafted to describe")
        if self.kind == "static":
            shape = {"kind": "static", "budget": Tree.from_paths(self.paths or []).size - 1, "paths": self.paths}
        elif self.kind in ("dynamic", "eagle2"):
            shape = {"kind": self.kind, "budget": self.budget, "width": self.width} | ({"depth": self.depth} if self.depth else {})
        else:
            shape = {"kind": "none", "budget": 0}
        return {**shape, "lookup": self.lookup, "lookup_ngram": self.lookup_ngram} if self.lookup else shape

    @classmethod
    def from_description(cls, tree: dict) -> "TreeSpec":
        """The spec `describe` wrote."""
        grown = tree["kind"] in ("dynamic", "eagle2")  # the other kinds describe their size, not a budget
        return cls(
            tree["kind"],
            paths=tree.get("paths"),
            budget=tree["budget"] if grown else 16,
            width=tree.get("width", 8),
            depth=tree.get("depth", 0),
            lookup=tree.get("lookup", 0),
            lookup_ngram=tree.get("lookup_ngram", LOOKUP_NGRAM),
        )


def default_static_paths(depth: int, budget: int) -> list[list[int]]:
    """A budget-sized static tree without calibration: ranks ordered by a geometric guess of their
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


def engine_tree(engine: str, layout: str, num_heads: int, saved_paths: list[list[int]] | None = None) -> TreeSpec:
    """The tree `engine` (`models/engines.py`) drafts heads exported in `layout` with, as the export
    README's serving command sets it up; `saved_paths`: the heads' saved static tree, if any. The
    layouts are named after the head family they hold (eagle, medusa)."""
    serving = [name for name, r in ENGINES.items() if layout in r.drafting]
    if not serving:
        raise ValueError(f"tree.kind {engine}: no engine serves {layout} heads (engines load the eagle and medusa layouts only)")
    rules = ENGINES.get(engine)
    if rules is None or layout not in rules.drafting:
        raise ValueError(f"tree.kind {engine}: {layout} heads are served (as the {layout} layout) by {', '.join(serving)}")
    plan = rules.drafting[layout]
    steps = plan.steps or num_heads
    if plan.tree == "eagle2":
        return TreeSpec("eagle2", budget=plan.draft_tokens - 1, width=plan.topk, depth=steps)
    if plan.tree == "cartesian":
        first = [[a] for a in range(plan.topk)]
        return TreeSpec("static", paths=first + ([[a, b] for a in range(plan.topk) for b in range(plan.topk2)] if num_heads > 1 else []))
    chain = [[0] * d for d in range(1, steps + 1)]  # vLLM's, and a Medusa export without saved choices
    return TreeSpec("static", paths=chain if plan.tree == "chain" else saved_paths or chain)
