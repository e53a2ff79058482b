"""Tree speculative sampling reproduces the target's joint distribution over several steps and
depths, and this test has the power to see the plausible bugs: each mutation below, applied to the
real source of `accept_sampling` / `gumbel_top_k`, makes it fail.

A toy Markov target p(x | previous token) and a different draft q(x | previous token) over 5 tokens;
a static tree 3 deep with 2-3 children per node, children drawn without replacement from q after
their parent's token; steps repeat until 3 tokens follow a fixed first token. The empirical joint
of those 3 tokens (125 cells) is compared with the exact p(x1|r) p(x2|x1) p(x3|x2) by chi-square.
"""

from __future__ import annotations


import pytest
import torch

from draftheads.decoding import acceptance, sampling
from draftheads.decoding.tree import Tree
from helpers import chi_square_p_value
from sampling_mutations import MUTATIONS, mutated

VOCAB, SAMPLES, ROOT = 5, 12000, 0
TREE = Tree.from_paths([(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 1, 0)])
def tables(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(VOCAB, VOCAB, generator=generator) * 1.2, 1).double()
    q = torch.softmax(torch.randn(VOCAB, VOCAB, generator=generator) * 1.2, 1).double()
    return p, q


def three_tokens(p, q, accept, draw, generator) -> list[int]:
    """Speculative steps from ROOT until 3 tokens are committed after it."""
    parents, children = TREE.parents.tolist(), {}
    for node, parent in enumerate(parents):
        if parent >= 0:
            children.setdefault(parent, []).append(node)
    emitted, last = [], ROOT
    while len(emitted) < 3:
        tokens = [last] + [0] * (TREE.size - 1)
        drafts = {}
        for node in range(TREE.size):  # parents-first: a node's token is known before its children are drawn
            kids = children.get(node, [])
            if kids:
                drafts[node] = q[tokens[node]].log()
                for kid, token in zip(kids, draw(drafts[node][None].float(), len(kids), generator)[0].tolist()):
                    tokens[kid] = token
        target = torch.stack([p[t].log() for t in tokens])
        result = accept(TREE, torch.tensor(tokens), target, drafts, generator)
        emitted += [tokens[n] for n in result.nodes[1:]] + [result.bonus]
        last = emitted[-1]
    return emitted[:3]


def p_value(accept, draw, seed: int = 1) -> float:
    p, q = tables()
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros(VOCAB, VOCAB, VOCAB)
    for _ in range(SAMPLES):
        a, b, c = three_tokens(p, q, accept, draw, generator)
        counts[a, b, c] += 1
    exact = p[ROOT][:, None, None] * p[:, :, None] * p[None, :, :]
    return chi_square_p_value(counts, exact)


def test_the_joint_of_three_tokens_over_several_steps_is_the_targets():
    assert p_value(acceptance.accept_sampling, sampling.gumbel_top_k) > 1e-3


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_each_plausible_bug_is_detected(mutation):
    module, old, new = MUTATIONS[mutation]
    accept, draw = acceptance.accept_sampling, sampling.gumbel_top_k
    if module is acceptance:
        accept = mutated(acceptance, old, new, "accept_sampling")
    else:
        draw = mutated(sampling, old, new, "gumbel_top_k")
    try:
        found = p_value(accept, draw)
    except (ValueError, RuntimeError) as exc:  # the bug breaks an invariant the sampler checks: caught too
        found = 0.0
        print(f"{mutation}: the sampler raised {exc!r}")
    assert found < 1e-4, mutation
