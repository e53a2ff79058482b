"""Acceptance rules: which drafted tree path the base model keeps, and the bonus token after it.

Every rule takes the tree, the node tokens and what the single verification forward computed
after each node, and returns the accepted node indices (root first, a root-to-node path) and the
bonus token. `greedy` reproduces greedy decoding exactly; `sampling` reproduces sampling from the
base model exactly (lossless); `typical` (Medusa's typical acceptance) trades exactness for
longer accepted paths and is not lossless.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from draftheads.decoding.sampling import sample
from draftheads.decoding.tree import Tree


@dataclass
class Accepted:
    """Outcome of one verification step."""

    nodes: list[int]
    """Accepted tree nodes, root first; len(nodes) - 1 drafted tokens were accepted."""
    bonus: int
    """The base model's own token after the last accepted node (the next step's root)."""


def accept_greedy(tree: Tree, tokens: torch.Tensor, target: torch.Tensor) -> Accepted:
    """Greedy verification: the longest root path whose every token equals the base model's argmax.

    `target[i]` is the base model's argmax after node i. A node is accepted when its parent is and
    its token is what the base model predicts after the parent, so the committed tokens are
    exactly those greedy autoregressive decoding produces.
    """
    target_l = target.tolist()
    parents = tree.parents.tolist()
    passes = [token == target_l[max(parent, 0)] for token, parent in zip(tokens.tolist(), parents)]
    best = _deepest_accepted(tree, passes)
    return Accepted(tree.path_to(best), target_l[best])


def _deepest_accepted(tree: Tree, passes: list[bool]) -> int:
    """The deepest node whose every ancestor (and itself) passes, the first one on ties; the root
    always counts as accepted."""
    parents = tree.parents.tolist()
    depth = tree.depth.tolist()
    accepted = [True] + [False] * (tree.size - 1)
    best = 0
    for i in range(1, tree.size):
        if accepted[parents[i]] and passes[i]:
            accepted[i] = True
            if depth[i] > depth[best]:
                best = i
    return best


def accept_typical(
    tree: Tree,
    tokens: torch.Tensor,
    target_logprobs: torch.Tensor,
    epsilon: float,
    delta: float,
    generator: torch.Generator | None,
) -> Accepted:
    """Medusa's typical acceptance: a node is kept when its parent is and the base model gives its
    token probability above min(epsilon, delta * exp(-entropy)) after the parent; the deepest kept
    node wins (the first one on ties) and the bonus token is sampled after it.

    `target_logprobs` [T, V] are the base model's log-probabilities after each node with the
    sampling temperature/top-k/top-p already applied.
    """
    probs = target_logprobs.exp()
    entropy = -(probs * target_logprobs.nan_to_num(neginf=0.0)).sum(-1)
    threshold = torch.clamp(delta * torch.exp(-entropy), max=epsilon)
    parent_index = tree.parents.clamp(min=0).to(probs.device)
    passes = (probs[parent_index, tokens.to(probs.device)] > threshold[parent_index]).tolist()
    best = _deepest_accepted(tree, passes)
    return Accepted(tree.path_to(best), sample(target_logprobs[best], generator))


def accept_sampling(
    tree: Tree,
    tokens: torch.Tensor,
    target_logprobs: torch.Tensor,
    draft_logprobs: dict[int, torch.Tensor],
    generator: torch.Generator | None,
) -> Accepted:
    """Lossless speculative sampling on a tree (recursive rejection over siblings).

    The children of node u, in index order, must have been drawn without replacement from the
    draft distribution `draft_logprobs[u]` [V] (Gumbel-top-k does exactly that), with their number
    fixed before they were drawn. Starting at the root with the target p = base distribution after
    u: child x is accepted with probability min(1, p(x) / q(x)); on rejection p becomes the
    residual normalise(max(p - q, 0)) and x is removed from q (q renormalised), and the next
    sibling is tried. When every child is rejected, the bonus token is drawn from the residual p.
    The committed tokens are then distributed exactly as sampling from the base model.
    """
    children: dict[int, list[int]] = {}
    for node, parent in enumerate(tree.parents.tolist()):
        if parent >= 0:
            children.setdefault(parent, []).append(node)
    tokens_l = tokens.tolist()
    node, path = 0, [0]
    while True:
        # float64: residuals subtract nearly equal probabilities
        p = target_logprobs[node].double().exp()
        kids = children.get(node, [])
        q = draft_logprobs[node].double().exp() if kids else None
        chosen = None
        for child in kids:
            x = tokens_l[child]
            if q[x] <= 0:
                raise ValueError(f"node {child}: token {x} has zero draft probability; it cannot have been drawn")
            ratio = float(p[x] / q[x])
            if ratio >= 1 or float(torch.rand((), generator=generator, dtype=torch.float64, device=p.device)) < ratio:
                chosen = child
                break
            p = torch.clamp(p - q, min=0)
            p = p / p.sum()
            q = q.clone()
            q[x] = 0
            total = q.sum()
            if total <= 0:
                break  # q is exhausted: no further sibling can have been drawn
            q = q / total
        if chosen is None:
            return Accepted(path, int(torch.multinomial(p, 1, generator=generator)))
        node = chosen
        path.append(node)
