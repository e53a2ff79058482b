"""A prompt-lookup branch grafted onto the drafted tree (Saxena's prompt lookup decoding, as one
more path of the tree rather than a separate decoder).

When the text just committed ends with an n-gram that occurred earlier in the context (the prompt
or the answer so far), the tokens that followed that occurrence are a cheap, often long guess of
what comes next: answers quote the question, second turns rewrite the first answer, code repeats
names. Heads on a small model rarely draft deep, so a long copied run is the only way a step
accepts many tokens. The copied tokens enter the tree as one path under the root,
following nodes the heads already drafted while the tokens agree, so one verification forward
checks both and greedy acceptance keeps the longest correct path from either.

Greedy (and typical) acceptance only: the copied tokens have no draft distribution, so lossless
speculative sampling could not stay exact with them in the tree. `draftheads eval` offers it for
greedy decoding.
"""

from __future__ import annotations

import torch

from draftheads.decoding.drafting import Draft
from draftheads.decoding.tree import Tree


def lookup_continuation(context: list[int], tokens: int, max_ngram: int) -> list[int]:
    """Up to `tokens` tokens that followed the latest earlier occurrence of the context's last n
    tokens, for the longest n from `max_ngram` down to 1 that has one; [] when none does."""
    for n in range(min(max_ngram, len(context) - 1), 0, -1):
        suffix = context[-n:]
        first = suffix[0]
        # latest first: recent text (the answer so far, the last turn) predicts best
        for start in range(len(context) - n - 1, -1, -1):
            if context[start] == first and context[start : start + n] == suffix:
                return context[start + n : start + n + tokens]
    return []


def graft(draft: Draft, chain: list[int]) -> Draft:
    """`draft` with `chain` (candidates for the tokens after the root) as a path under the root:
    it follows drafted nodes while their tokens equal the chain's, then adds the rest as new nodes
    after the drafted ones (parents stay before children, as `Tree` requires)."""
    if not chain:
        return draft
    parents, depth, rank = draft.tree.parents.tolist(), draft.tree.depth.tolist(), draft.tree.rank.tolist()
    tokens = draft.tokens.tolist()
    child_of = {(p, t): i for i, (p, t) in enumerate(zip(parents, tokens)) if p >= 0}
    siblings = [0] * len(tokens)
    for p in parents[1:]:
        siblings[p] += 1
    node = 0
    for token in chain:
        nxt = child_of.get((node, token))
        if nxt is None:
            nxt = len(tokens)
            tokens.append(token)
            parents.append(node)
            depth.append(depth[node] + 1)
            rank.append(siblings[node])  # after the drafted siblings: a rank no head drafted
            siblings[node] += 1
            siblings.append(0)
        node = nxt
    added = len(tokens) - draft.tree.size
    scores = None
    if draft.scores is not None:  # copied nodes carry no draft probability
        scores = torch.cat([draft.scores, draft.scores.new_full((added,), float("-inf"))])
    tree = Tree(torch.tensor(parents), torch.tensor(depth), torch.tensor(rank))
    return Draft(tree, torch.tensor(tokens, dtype=draft.tokens.dtype), draft.draft_logprobs, scores)
