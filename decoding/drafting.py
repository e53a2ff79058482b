"""Drafting a token tree with the heads: static shapes (Medusa-style choices), dynamic trees grown
by joint draft probability under a node budget (Clover style), and EAGLE-2's reranked trees (the
tree SafeAILab's EAGLE-2/3 and SGLang draft).

Both query the heads depth by depth, batched over every node of the previous depth that gets
children (`DraftHeads.draft_step`), so parallel and sequential families draft the same way. Heads
may draft over a reduced vocabulary: ranks and draws are taken there and mapped to token ids
(`DraftHeads.to_tokens`); the full vocabulary is touched only to hand sampled acceptance the
distribution a node's children were drawn from.

Greedy drafting takes each node's children as the top-ranked tokens. Sampled drafting (for
lossless speculative sampling) draws them without replacement from the heads' filtered
distribution (Gumbel-top-k) and keeps that distribution for acceptance. In both, how many
children a node gets is fixed before they are drawn (by the static shape, or by the ranked draft
probabilities in the dynamic case), which is what keeps tree speculative sampling exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from draftheads.decoding.sampling import SamplingConfig, gumbel_top_k
from draftheads.decoding.tree import Tree
from draftheads.models.heads.base import DraftHeads


@dataclass
class Draft:
    """A drafted tree: shape, node tokens, and the distributions the children were drawn from."""

    tree: Tree
    tokens: torch.Tensor
    """[T] long; tokens[0] is the root (the base model's own next token)."""
    draft_logprobs: dict[int, torch.Tensor] = field(default_factory=dict)
    """node -> [V] filtered draft log-probabilities its children were drawn from (sampling only)."""
    scores: torch.Tensor | None = None
    """[T] joint draft log-probability of each node's path (root 0)."""


def full_vocabulary(heads: DraftHeads, logprobs: torch.Tensor) -> torch.Tensor:
    """[V] log-probabilities over the whole vocabulary from draft-vocabulary ones (-inf elsewhere:
    tokens outside the draft vocabulary are never drawn)."""
    if heads.draft_to_token is None:
        return logprobs
    full = logprobs.new_full((heads.vocab_size,), float("-inf"))
    return full.index_copy(0, heads.draft_to_token.to(logprobs.device), logprobs)


@dataclass
class _Level:
    """Precomputed indexing of one depth of a static tree."""

    parents: list[int]
    """Nodes of the previous depth that have children (rows of the draft_step batch)."""
    children: torch.Tensor
    """Child nodes of this depth."""
    rows: torch.Tensor
    """For each child, its parent's row in `parents`."""
    ranks: torch.Tensor
    """For each child, its rank (greedy: which top-k candidate it takes)."""
    order: torch.Tensor
    """For each child, its position among its siblings (sampled: which draw it takes)."""
    counts: list[int]
    """Children per parent row."""


class StaticDrafter:
    """Fills a fixed tree shape with drafted tokens."""

    def __init__(self, template: Tree, max_depth: int):
        if int(template.depth.max()) > max_depth:
            raise ValueError(f"the tree is {int(template.depth.max())} deep but the heads draft only {max_depth} tokens")
        self.template = template
        parents = template.parents.tolist()
        depth = template.depth.tolist()
        rank = template.rank.tolist()
        self.levels: list[_Level] = []
        for d in range(1, max(depth) + 1):
            children = [i for i in range(template.size) if depth[i] == d]
            level_parents = sorted({parents[c] for c in children})
            row_of = {p: r for r, p in enumerate(level_parents)}
            seen: dict[int, int] = {}
            order = []
            for c in children:  # children are stored by rank within a parent (from_paths sorts them)
                order.append(seen.get(parents[c], 0))
                seen[parents[c]] = order[-1] + 1
            self.levels.append(
                _Level(
                    parents=level_parents, children=torch.tensor(children), rows=torch.tensor([row_of[parents[c]] for c in children]),
                    ranks=torch.tensor([rank[c] for c in children]), order=torch.tensor(order), counts=[seen[p] for p in level_parents]
                )
            )
        self.max_rank = int(template.rank.max()) + 1
        self.paths = [template.path_to(i) for i in range(template.size)]
        self.max_nodes = template.size
        """Most nodes (root included) a step verifies."""

    def draft(
        self,
        heads: DraftHeads,
        state: Any,
        root: int,
        lm_head: nn.Module,
        sampling: SamplingConfig,
        generator: torch.Generator | None,
        sample_children: bool,
    ) -> Draft:
        """Tokens for every node of the template after root token `root`."""
        tokens = torch.empty(self.template.size, dtype=torch.long)
        tokens[0] = root
        draft_logprobs: dict[int, torch.Tensor] = {}
        for level in self.levels:
            paths = tokens[torch.tensor([self.paths[p] for p in level.parents])]
            logprobs = heads.draft_step(state, paths, lm_head)
            if not sample_children:
                top = torch.topk(logprobs, min(self.max_rank, logprobs.shape[-1]), dim=-1).indices
                tokens[level.children] = heads.to_tokens(top[level.rows, level.ranks]).to(tokens.device)
                continue
            filtered = sampling.logprobs(logprobs)
            support = int(torch.isfinite(filtered).sum(-1).min())
            draws = gumbel_top_k(filtered, min(max(level.counts), support), generator)
            if int(level.order.max()) >= draws.shape[1]:
                raise ValueError(
                    f"a node has {max(level.counts)} children but top-k/top-p leave only {support} tokens to draw"
                )
            tokens[level.children] = heads.to_tokens(draws[level.rows, level.order]).to(tokens.device)
            for row, parent in enumerate(level.parents):
                draft_logprobs[parent] = full_vocabulary(heads, filtered[row])
        return Draft(self.template, tokens, draft_logprobs)


class _GrownDrafter:
    """A tree grown each step from the heads' draft probabilities: at most `budget` drafted nodes,
    `width` per depth or expansion, `max_depth` depths."""

    label = "grown"
    """How errors name the tree."""

    def __init__(self, budget: int, width: int, max_depth: int):
        if budget < 1 or width < 1:
            raise ValueError(f"{self.label} tree budget and width must be at least 1, got {budget} and {width}")
        self.budget, self.width, self.max_depth = budget, width, max_depth
        self.max_nodes = budget + 1
        """Most nodes (root included) a step verifies."""


class DynamicDrafter(_GrownDrafter):
    """Grows a tree level by level: each depth adds the `width` child slots with the highest joint
    draft probability (parent path probability times the slot's ranked draft probability), until
    `budget` drafted nodes or the heads' depth is reached."""

    label = "dynamic"

    def draft(
        self,
        heads: DraftHeads,
        state: Any,
        root: int,
        lm_head: nn.Module,
        sampling: SamplingConfig,
        generator: torch.Generator | None,
        sample_children: bool,
    ) -> Draft:
        """A tree of at most `budget` drafted nodes after root token `root`."""
        tokens, parents, depth, rank, scores = [root], [-1], [0], [0], [0.0]
        paths = {0: [root]}
        frontier = [0]
        draft_logprobs: dict[int, torch.Tensor] = {}
        for d in range(1, self.max_depth + 1):
            room = min(self.width, self.budget + 1 - len(tokens))
            if room <= 0 or not frontier:
                break
            logprobs = heads.draft_step(state, torch.tensor([paths[n] for n in frontier]), lm_head)
            if sample_children:
                logprobs = sampling.logprobs(logprobs)
            k = min(room, logprobs.shape[-1])
            top = torch.topk(logprobs, k, dim=-1)
            # Slots (row, r) ranked by joint probability; allocation reads only ranked draft
            # probabilities, never which tokens a draw produced.
            slot_scores = torch.tensor([scores[n] for n in frontier]).unsqueeze(1) + top.values.float().cpu()
            flat = torch.topk(slot_scores.flatten(), k).indices
            keep = flat[torch.isfinite(slot_scores.flatten()[flat])]
            counts = torch.bincount(keep // k, minlength=len(frontier)).tolist()
            picks = gumbel_top_k(logprobs, max(counts), generator) if sample_children else top.indices
            rows = [row for row, n in enumerate(counts) for _ in range(n)]
            ranks = [r for n in counts for r in range(n)]
            row_index = torch.tensor(rows, device=picks.device)
            chosen = picks[row_index, torch.tensor(ranks, device=picks.device)]
            # one transfer of the children's tokens and draft log-probabilities (not one per child)
            chosen_l = heads.to_tokens(chosen).tolist()
            chosen_logprobs = logprobs[row_index, chosen].tolist()
            new_frontier = []
            for row, r, token, logprob in zip(rows, ranks, chosen_l, chosen_logprobs):
                node = frontier[row]
                child = len(tokens)
                tokens.append(token)
                parents.append(node)
                depth.append(d)
                rank.append(r)
                scores.append(scores[node] + logprob)
                paths[child] = paths[node] + [token]
                new_frontier.append(child)
            if sample_children:
                for row, node in enumerate(frontier):
                    if counts[row]:
                        draft_logprobs[node] = full_vocabulary(heads, logprobs[row])
            frontier = new_frontier
        tree = Tree(torch.tensor(parents), torch.tensor(depth), torch.tensor(rank))
        return Draft(tree, torch.tensor(tokens), draft_logprobs, torch.tensor(scores))


class RerankedDrafter(_GrownDrafter):
    """EAGLE-2's tree, as SafeAILab's `topK_genrate` and SGLang draft it: every depth expands the
    `width` candidates of the previous depth with the highest joint draft probability, each by its
    `width` top tokens; after `max_depth` depths the `budget` candidates with the highest joint draft
    probability over all depths are verified. Greedy only: which children a node keeps depends on
    what was drafted below them, which would bias speculative sampling's acceptance."""

    label = "EAGLE-2"

    def draft(
        self,
        heads: DraftHeads,
        state: Any,
        root: int,
        lm_head: nn.Module,
        sampling: SamplingConfig,
        generator: torch.Generator | None,
        sample_children: bool,
    ) -> Draft:
        """The `budget` best of the candidates drafted under root token `root`."""
        if sample_children:
            raise ValueError(
                "EAGLE-2 trees keep a node's children by what was drafted below them, which speculative sampling cannot verify exactly: "
                "decode greedily or use a dynamic tree"
            )
        tokens, parents, depth, rank, scores = [root], [-1], [0], [0], [0.0]
        paths = {0: [root]}
        frontier = [0]
        for d in range(1, self.max_depth + 1):
            logprobs = heads.draft_step(state, torch.tensor([paths[n] for n in frontier]), lm_head)
            top = torch.topk(logprobs, min(self.width, logprobs.shape[-1]), dim=-1)
            # clamped at 0 so that no child outscores its parent: the kept set stays a tree
            joint = torch.tensor([scores[n] for n in frontier]).unsqueeze(1) + top.values.float().cpu().clamp(max=0)
            first, k = len(tokens), top.indices.shape[1]
            for row, token_row in enumerate(heads.to_tokens(top.indices).tolist()):
                tokens += token_row
                parents += [frontier[row]] * k
                depth += [d] * k
                rank += range(k)
                scores += joint[row].tolist()
            frontier = [first + int(i) for i in torch.topk(joint.flatten(), min(self.width, joint.numel())).indices]
            for node in frontier:
                paths[node] = paths[parents[node]] + [tokens[node]]
        # ties keep the earlier candidate, so a parent always comes before its equally scored child
        kept = sorted(sorted(range(1, len(tokens)), key=lambda i: (-scores[i], i))[: self.budget])
        index = {old: new for new, old in enumerate([0, *kept])}
        keep = [0, *kept]
        tree = Tree(
            torch.tensor([index.get(parents[i], -1) for i in keep]),
            torch.tensor([depth[i] for i in keep]),
            torch.tensor([rank[i] for i in keep]),
        )
        return Draft(tree, torch.tensor([tokens[i] for i in keep]), {}, torch.tensor([scores[i] for i in keep]))
