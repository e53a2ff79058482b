"""Speculative sampling on trees is lossless: chi-square tests of committed-token frequencies
against the exact autoregressive distribution (fixed seeds, so the tests are deterministic)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from draftheads.decoding.acceptance import accept_sampling
from draftheads.decoding.engine import Engine, GenerationConfig, TreeSpec
from draftheads.decoding.sampling import SamplingConfig, gumbel_top_k
from draftheads.decoding.tree import Tree
from draftheads.models.backbone import Backbone, ModelLocation
from draftheads.models.heads.medusa import MedusaConfig, MedusaHeads
from helpers import chi_square_p_value, tiny_llama_config
from oracle_heads import NoisyOracleHeads
from sampling_mutations import MUTATIONS, mutated


def toy_decode(p0, p1, q0, q1, generator, wrong_draft_probs=False):
    """Two committed tokens from a toy model: p0 after the prompt, p1[x] after token x. The draft
    proposes 3 root children from q0 and 2 children under the first one from q1[x]."""
    tree = Tree.from_paths([(0,), (1,), (2,), (0, 0), (0, 1)])
    log_q0 = q0.log()
    first = gumbel_top_k(log_q0[None], 3, generator)[0]
    second = gumbel_top_k(q1[first[0]].log()[None], 2, generator)[0]
    tokens = torch.cat([torch.tensor([0]), first, second])  # the root token plays no part here
    target = torch.stack([p0.log(), p1[first[0]].log(), p1[first[1]].log(), p1[first[2]].log(), p0.log(), p0.log()])
    drafts = {0: log_q0, 1: q1[first[0]].log()}
    if wrong_draft_probs:  # acceptance told other probabilities than the children were drawn from
        drafts = {0: torch.full_like(log_q0, -torch.log(torch.tensor(6.0))), 1: torch.full_like(log_q0, -torch.log(torch.tensor(6.0)))}
    result = accept_sampling(tree, tokens, target, drafts, generator)
    committed = [int(tokens[n]) for n in result.nodes[1:]] + [result.bonus]
    if len(committed) == 1:  # only the bonus: the next token comes from the base model itself
        committed.append(int(torch.multinomial(p1[committed[0]], 1, generator=generator)))
    return committed[:2]


@pytest.mark.parametrize("wrong", [False, True], ids=["real-draft-probs", "wrong-draft-probs"])
def test_tree_rejection_sampling_matches_the_target_joint(wrong):
    vocab = 6
    generator = torch.Generator().manual_seed(0)
    p0 = torch.softmax(torch.randn(vocab, generator=generator) * 1.5, 0)
    p1 = torch.softmax(torch.randn(vocab, vocab, generator=generator) * 1.5, 1)
    q0 = torch.softmax(torch.randn(vocab, generator=generator) * 1.5, 0)
    q1 = torch.softmax(torch.randn(vocab, vocab, generator=generator) * 1.5, 1)
    counts = torch.zeros(vocab, vocab)
    for _ in range(6000):
        a, b = toy_decode(p0, p1, q0, q1, generator, wrong)
        counts[a, b] += 1
    p_value = chi_square_p_value(counts, p0[:, None] * p1)
    if wrong:
        assert p_value < 1e-6  # the test has the power to see a biased sampler
    else:
        assert p_value > 1e-3


@pytest.fixture(scope="module")
def small_vocab_model():
    torch.manual_seed(3)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=8, init_std=0.3)).eval()
    backbone = Backbone(model, None, ModelLocation("tiny", "tiny", None, "in-process"))
    torch.manual_seed(4)
    heads = MedusaHeads.build(MedusaConfig(num_heads=2), backbone)
    for parameter in heads.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    return backbone, heads.eval()


@pytest.mark.parametrize(
    ("tree", "sampling"),
    [
        (TreeSpec("static", paths=[[0], [1], [2], [0, 0], [0, 1], [1, 0]]), SamplingConfig(temperature=1.0)),
        (TreeSpec("dynamic", budget=6, width=3), SamplingConfig(temperature=0.8, top_k=5, top_p=0.95)),
    ],
    ids=["static-T1", "dynamic-T0.8-topk-topp"],
)
def test_engine_sampling_matches_autoregressive_distribution(small_vocab_model, tree, sampling):
    backbone, heads = small_vocab_model
    prompt = torch.tensor([1, 5, 2, 7, 3])
    model = backbone.model
    with torch.no_grad():
        first = sampling.logprobs(model(prompt[None]).logits[0, -1]).exp()
        following = torch.stack(
            [sampling.logprobs(model(torch.cat([prompt, torch.tensor([x])])[None]).logits[0, -1]).exp() for x in range(8)]
        )
    exact = first[:, None] * following
    engine = Engine(backbone, heads, tree)
    counts = torch.zeros(8, 8)
    accepted = 0
    for seed in range(1500):
        result = engine.generate(prompt, GenerationConfig(max_new_tokens=3, sampling=sampling, eos_token_ids=(), seed=seed))
        counts[result.tokens[0], result.tokens[1]] += 1
        accepted += sum(result.accepted)
    assert accepted > 300  # drafts were accepted often enough for rejections and residuals to matter
    assert chi_square_p_value(counts, exact) > 1e-3


def test_typical_acceptance_thresholds():
    """A node passes when the base gives its token more than min(epsilon, delta * exp(-entropy))."""
    from draftheads.decoding.acceptance import accept_typical

    tree = Tree.from_paths([(0,), (1,), (0, 0)])  # root, two children, one grandchild under node 1
    peaked = torch.log(torch.tensor([0.90, 0.05, 0.03, 0.02]))
    flat = torch.log(torch.tensor([0.30, 0.26, 0.24, 0.20]))
    target = torch.stack([peaked, flat, flat, flat])
    generator = torch.Generator().manual_seed(0)
    # after the root: threshold min(0.09, 0.3 * e^-H = 0.196) = 0.09; token 1 (0.05) fails, token 0 passes
    result = accept_typical(tree, torch.tensor([3, 1, 0, 2]), target, epsilon=0.09, delta=0.3, generator=generator)
    assert result.nodes == [0, 2]
    # after a flat node the threshold is 0.3 * e^-H = 0.075: token 3 (0.20) passes, the deeper path wins
    result = accept_typical(tree, torch.tensor([3, 0, 1, 3]), target, epsilon=0.09, delta=0.3, generator=generator)
    assert result.nodes == [0, 1, 3]


@pytest.mark.parametrize("mutated", [False, True], ids=["engine", "thresholds-ignored"])
def test_typical_acceptance_on_a_real_decode_obeys_its_threshold_at_every_depth(small_vocab_model, monkeypatch, mutated):
    """Every drafted token the engine commits under typical acceptance had, after its prefix, base
    probability above min(epsilon, delta * exp(-entropy)): recomputed here by one teacher-forced
    forward over the decoded text. With the thresholds ignored (every node passes) the check fails."""
    from draftheads.decoding import acceptance

    if mutated:
        monkeypatch.setattr(
            acceptance, "_deepest_accepted", lambda tree, passes, real=acceptance._deepest_accepted: real(tree, [True] * len(passes))
        )
    backbone, heads = small_vocab_model
    sampling, epsilon, delta = SamplingConfig(temperature=0.7), 0.3, 0.6
    engine = Engine(backbone, heads, TreeSpec("dynamic", budget=6, width=3))
    prompt = torch.tensor([1, 5, 2, 7, 3])
    checked, deepest, violations = 0, 0, []
    for seed in range(6):
        config = GenerationConfig(
            max_new_tokens=40, sampling=sampling, acceptance="typical", typical_epsilon=epsilon, typical_delta=delta, eos_token_ids=(),
            seed=seed
        )
        result = engine.generate(prompt, config)
        with torch.no_grad():
            logits = backbone.model(torch.cat([prompt, torch.tensor(result.tokens)])[None]).logits[0]
        target = sampling.logprobs(logits)  # row i: the distribution after position i
        position = len(prompt) + 1  # tokens[0] is the prefill's own sample
        deepest = max(deepest, *result.accepted)
        for accepted in result.accepted:
            for offset in range(accepted):  # the drafted tokens this step committed (the bonus is sampled)
                row = target[position + offset - 1]
                probs = row.exp()
                entropy = -(probs * row.nan_to_num(neginf=0.0)).sum()
                threshold = min(epsilon, delta * float(torch.exp(-entropy)))
                checked += 1
                if float(probs[result.tokens[position + offset - len(prompt)]]) <= threshold - 1e-5:
                    violations.append((seed, position + offset))
            position += accepted + 1
    assert checked > 20 and deepest >= 2  # drafts were committed, at several depths
    assert bool(violations) == mutated, violations


@pytest.fixture(scope="module")
def eight_token_model():
    """An 8-token model with varied next-token distributions."""
    torch.manual_seed(7)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=8, init_std=0.3)).eval()
    return Backbone(model, None, ModelLocation("tiny", "tiny", None, "in-process"))


def exact_joint_after_the_first(model, prompt: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """P(x1, x2, x3) [8, 8, 8] of the 2nd-4th sampled tokens, the first one summed out: one forward
    over all 512 continuations x0 x1 x2 of the prompt."""
    grid = torch.cartesian_prod(*[torch.arange(8)] * 3)  # [512, 3]: x0, x1, x2
    with torch.no_grad():
        first = sampling.logprobs(model(prompt[None]).logits[0, -1]).exp()
        logits = model(torch.cat([prompt.expand(len(grid), -1), grid], dim=1)).logits[:, -3:]
    later = sampling.logprobs(logits).exp()  # [512, 3, 8]: after x0, after x1, after x2
    joint = torch.zeros(8, 8, 8, dtype=torch.float64)
    for row, (x0, x1, x2) in enumerate(grid.tolist()):
        if x1 == 0 and x2 == 0:  # one row per x0 gives p(x1 | x0)
            p1 = later[row, 0]
        joint[x1, x2] += (first[x0] * p1[x1] * later[row, 1, x2] * later[row, 2]).double()
    return joint


ENGINE_JOINT_CASES = {
    # name: (tree, sampling, drafts' noise and sharpness: NoisyOracleHeads near, not equal to, the
    # model's own distributions, so that drafts below the root are both accepted and rejected often)
    "static-3deep-T1": (
        TreeSpec("static", paths=[[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0]]),
        SamplingConfig(temperature=1.0),
        1.5,
        1.0,
    ),
    "dynamic-T0.7-topk5-topp0.9": (TreeSpec("dynamic", budget=8, width=3), SamplingConfig(temperature=0.7, top_k=5, top_p=0.9), 1.5, 1.0),
    # Three siblings below an accepted depth-1 node, drafted from a peaked q (3x the logits) that
    # is often wrong: the first sibling is rejected often and holds most of q's mass, so how q and
    # the residual are updated below the root decides what is committed next.
    "static-siblings-sharp-T1": (
        TreeSpec("static", paths=[[0], [1], [0, 0], [0, 1], [0, 2], [1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]),
        SamplingConfig(temperature=1.0),
        1.0,
        3.0,
    ),
}


@pytest.mark.slow  # 2,000 engine decodes per case (these and the mutation tests: about 2.5 minutes on 2 cores); CI runs -m slow too
@pytest.mark.parametrize("case", list(ENGINE_JOINT_CASES))
def test_engine_joint_of_three_tokens_after_the_first_is_the_targets(eight_token_model, case):
    """The 2nd-4th tokens come from drafted nodes at depths 1-3, rejections and residual bonuses over
    one or more engine steps; their joint must be the model's own (chi-square over 512 cells)."""
    tree, sampling, noise, sharpness = ENGINE_JOINT_CASES[case]
    heads = NoisyOracleHeads(eight_token_model, num_heads=3, noise=noise, sharpness=sharpness)
    p_value, accepted_deep = engine_joint_p_value(eight_token_model, heads, tree, sampling, samples=2000)
    assert accepted_deep > 400, accepted_deep  # drafts below the root were accepted often enough to matter
    assert p_value > 1e-3, p_value


def engine_joint_p_value(backbone, heads, tree, sampling, samples: int) -> tuple[float, int]:
    prompt = torch.tensor([1, 5, 2, 7, 3])
    exact = exact_joint_after_the_first(backbone.model, prompt, sampling)
    engine = Engine(backbone, heads, tree)
    counts, accepted_deep = torch.zeros(8, 8, 8), 0
    for seed in range(samples):
        result = engine.generate(prompt, GenerationConfig(max_new_tokens=4, sampling=sampling, eos_token_ids=(), seed=seed))
        counts[tuple(result.tokens[1:4])] += 1
        accepted_deep += sum(a >= 2 for a in result.accepted)
    return chi_square_p_value(counts, exact), accepted_deep


@pytest.mark.slow
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_the_engine_joint_test_sees_each_listed_mutation(eight_token_model, monkeypatch, mutation):
    """Power at the engine level, on the sibling case: each plausible bug of tree speculative
    sampling either moves the joint of the committed tokens (measured at 1,000 decodes: p < 1e-10
    for the first three) or trips the acceptance code's own check (children drawn with replacement
    put a token twice under one node; the second has no draft probability left once the first is
    rejected). The unmutated code passes the same test above at 2,000 decodes."""
    from draftheads.decoding import drafting
    from draftheads.decoding import engine as engine_module

    module, old, new = MUTATIONS[mutation]
    # where the engine looks each mutated function up
    user, name = (drafting, "gumbel_top_k") if mutation == "children drawn with replacement" else (engine_module, "accept_sampling")
    monkeypatch.setattr(user, name, mutated(module, old, new, name))
    tree, sampling, noise, sharpness = ENGINE_JOINT_CASES["static-siblings-sharp-T1"]
    heads = NoisyOracleHeads(eight_token_model, num_heads=3, noise=noise, sharpness=sharpness)
    if mutation == "children drawn with replacement":
        with pytest.raises(ValueError, match="zero draft probability; it cannot have been drawn"):
            engine_joint_p_value(eight_token_model, heads, tree, sampling, samples=1000)
        return
    p_value, _ = engine_joint_p_value(eight_token_model, heads, tree, sampling, samples=1000)
    assert p_value < 1e-6, p_value
