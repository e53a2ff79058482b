"""The engine's greedy decoding is token-for-token greedy autoregressive decoding, at every
acceptance edge, for static and dynamic trees, with real (random) heads of every family and oracle heads."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from draftheads.decoding.engine import Engine, GenerationConfig, TreeSpec
from draftheads.models.backbone import Backbone, ModelLocation
from draftheads.models.registry import HEADS
from helpers import head_cases, spread_vocabulary, tiny_llama_config
from oracle_heads import OracleHeads

STATIC = TreeSpec("static", paths=[[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]])
DYNAMIC = TreeSpec("dynamic", budget=12, width=3)  # reaches depth 4


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(init_std=0.3)).eval()
    return Backbone(model, None, ModelLocation("tiny", "tiny", None, "in-process"))


def random_heads(backbone, family: str, **options):
    torch.manual_seed(1)
    heads = HEADS.get(family).build(HEADS.config_class(family)(num_heads=4, **options), backbone)
    for parameter in heads.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    return spread_vocabulary(heads, backbone.lm_head).eval()


@pytest.fixture(scope="module")
def medusa(backbone):
    return random_heads(backbone, "medusa")


def hf_greedy(backbone, prompt, n):
    # an explicit mask: otherwise generate masks prompt tokens that equal pad_token_id
    out = backbone.model.generate(
        prompt[None], attention_mask=torch.ones_like(prompt)[None], max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    return out[0, prompt.numel() :].tolist()


def prompts(count=4):
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(0, 128, (int(n),), generator=generator) for n in torch.randint(3, 30, (count,), generator=generator)]


def test_autoregressive_engine_equals_hf_generate(backbone):
    config = GenerationConfig(max_new_tokens=40, eos_token_ids=())
    engine = Engine(backbone)
    for prompt in prompts():
        result = engine.generate(prompt, config)
        assert result.tokens == hf_greedy(backbone, prompt, 40)
        assert result.tau == 1.0 and result.steps == 39 and result.finish_reason == "length"


@pytest.mark.parametrize("tree", [STATIC, DYNAMIC], ids=["static", "dynamic"])
@pytest.mark.parametrize("family,options", head_cases())
def test_tree_decoding_with_random_heads_of_every_family_is_greedy_decoding(backbone, family, options, tree):
    config = GenerationConfig(max_new_tokens=48, eos_token_ids=())
    engine = Engine(backbone, random_heads(backbone, family, **options), tree)
    for prompt in prompts():
        result = engine.generate(prompt, config)
        assert result.tokens == hf_greedy(backbone, prompt, 48)
        # random heads: acceptances vary; every step verified a nonempty tree
        assert all(size > 0 for size in result.tree_sizes)
        assert sum(result.accepted) + result.steps + 1 >= 48


def test_eagle_drafts_deeper_than_it_was_trained_and_stays_greedy(backbone, medusa):
    """EAGLE repeats its draft layer over its own output, so a tree may be deeper than num_heads
    (EAGLE-2 drafts 5-6 deep from one-step heads); heads with one head per depth refuse it."""
    eagle = random_heads(backbone, "eagle")  # num_heads 4
    config = GenerationConfig(max_new_tokens=40, eos_token_ids=())
    for tree in (TreeSpec("dynamic", budget=14, width=2, depth=7), TreeSpec("static", paths=[[0] * d for d in range(1, 7)])):
        engine = Engine(backbone, eagle, tree)
        for prompt in prompts(2):
            result = engine.generate(prompt, config)
            assert result.tokens == hf_greedy(backbone, prompt, 40)
            assert max(result.tree_sizes) > 4 + 1 and sum(result.accepted) + result.steps + 1 == 40
    with pytest.raises(ValueError, match="a tree 7 deep: medusa heads draft one head per depth, 4 deep"):
        Engine(backbone, medusa, TreeSpec("dynamic", budget=14, width=2, depth=7))


@pytest.mark.parametrize("correct_depth", [0, 2, 4], ids=["accept-none", "accept-partial", "accept-all"])
@pytest.mark.parametrize("tree", [STATIC, DYNAMIC], ids=["static", "dynamic"])
def test_acceptance_edges_with_oracle_heads(backbone, correct_depth, tree):
    prompt = prompts(1)[0]
    heads = OracleHeads(backbone, num_heads=4, correct_depth=correct_depth)
    result = Engine(backbone, heads, tree).generate(prompt, GenerationConfig(max_new_tokens=31, eos_token_ids=()))
    assert result.tokens == hf_greedy(backbone, prompt, 31)
    # every full step accepts exactly as deep as the drafts are right
    assert set(result.accepted[:-1]) == {correct_depth}


def test_eos_inside_an_accepted_path(backbone):
    prompt = prompts(1)[0]
    reference = hf_greedy(backbone, prompt, 30)
    eos = reference[6]  # the 7th token; stop at its first occurrence
    stop = reference.index(eos) + 1
    heads = OracleHeads(backbone, num_heads=4, correct_depth=4)
    result = Engine(backbone, heads, STATIC).generate(prompt, GenerationConfig(max_new_tokens=30, eos_token_ids=(eos,)))
    assert result.tokens == reference[:stop]
    assert result.finish_reason == "eos"
    # the EOS came from inside an accepted path, not as a bonus token: steps emit 4 drafts and a bonus
    # each, the last one only the drafts up to the EOS (τ counts emitted tokens)
    assert stop % 5 != 1 and result.accepted[:-1] == [4] * (len(result.accepted) - 1)
    assert result.accepted[-1] == (stop - 1) % 5 - 1 and 1 + sum(result.accepted) + result.steps == len(result.tokens)


def test_max_new_tokens_inside_an_accepted_path(backbone):
    prompt = prompts(1)[0]
    heads = OracleHeads(backbone, num_heads=4, correct_depth=4)
    for limit in (1, 2, 4, 7, 8):
        result = Engine(backbone, heads, STATIC).generate(prompt, GenerationConfig(max_new_tokens=limit, eos_token_ids=()))
        assert result.tokens == hf_greedy(backbone, prompt, limit)
        assert result.finish_reason == "length"
        assert 1 + sum(result.accepted) + result.steps == limit  # no accepted draft past the limit counts
        heads.context.clear()


def test_stop_strings_end_where_the_string_completes(tiny_base, demo_tokenizer):
    from draftheads.models.backbone import BackboneConfig, load_backbone

    backbone = load_backbone(BackboneConfig(base=str(tiny_base)), "cpu")
    prompt = torch.tensor(demo_tokenizer("The quick brown fox")["input_ids"])
    engine = Engine(backbone)
    reference = engine.generate(prompt, GenerationConfig(max_new_tokens=24, eos_token_ids=())).tokens
    text = demo_tokenizer.decode(reference)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), text
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=24, eos_token_ids=(), stop_strings=(stop,)))
    assert result.finish_reason == "stop_string"
    assert result.tokens == reference[: len(result.tokens)]
    assert stop in demo_tokenizer.decode(result.tokens)
    assert stop not in demo_tokenizer.decode(result.tokens[:-1])


def test_kv_cache_matches_a_full_recompute_after_compaction(backbone, medusa):
    """After tree steps with rejections, the cached keys equal those of one plain forward over
    the committed sequence (compaction put the accepted nodes exactly in place)."""
    prompt = prompts(1)[0]
    engine = Engine(backbone, medusa, STATIC)
    result = engine.generate(prompt, GenerationConfig(max_new_tokens=20, eos_token_ids=()))
    assert any(a < 4 for a in result.accepted)
    # the last step may commit past max_new_tokens; what it committed is the greedy sequence
    extra = engine.cache.length - prompt.numel()
    assert len(result.tokens) - 1 <= extra <= len(result.tokens) + 3
    continuation = hf_greedy(backbone, prompt, extra)
    assert continuation[: len(result.tokens)] == result.tokens[:extra]
    committed = torch.cat([prompt, torch.tensor(continuation)])
    reference = backbone.model(committed[None], use_cache=True)
    cache = getattr(reference, "cache", None) or reference.past_key_values  # transformers >= 5.24 says `cache`
    for layer in range(backbone.num_layers):
        keys = cache.layers[layer].keys
        torch.testing.assert_close(engine.cache.layer(layer)[0][:, :, : committed.numel()], keys, rtol=1e-5, atol=1e-5)


def test_bad_requests_are_refused(backbone, medusa):
    with pytest.raises(ValueError, match="needs draft heads"):
        Engine(backbone, None, STATIC)
    with pytest.raises(ValueError, match="a tree 4 deep: medusa heads draft one head per depth, 2 deep"):
        Engine(backbone, HEADS.get("medusa").build(HEADS.config_class("medusa")(num_heads=2), backbone), STATIC)
    engine = Engine(backbone, medusa, STATIC)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([], GenerationConfig())
    with pytest.raises(ValueError, match="needs temperature > 0"):
        engine.generate([1, 2], GenerationConfig(acceptance="sampling"))


def test_triton_kernels_give_the_same_greedy_output(backbone, medusa):
    """Tree attention and compaction through the Triton kernels (interpreted on CPU)."""
    pytest.importorskip("triton")
    config = GenerationConfig(max_new_tokens=24, eos_token_ids=())
    prompt = prompts(1)[0]
    reference = Engine(backbone, medusa, STATIC, kernels="reference").generate(prompt, config)
    interpreted = Engine(backbone, medusa, STATIC, kernels="triton").generate(prompt, config)
    assert any(a < 4 for a in reference.accepted)  # rejections happened, so compaction moved rows
    assert interpreted.tokens == reference.tokens == hf_greedy(backbone, prompt, 24)


def safeailab_eagle2(step, total_tokens: int, depth: int, top_k: int) -> set[tuple[int, ...]]:
    """SafeAILab's `topK_genrate` (EAGLE/eagle/model/cnets.py, cb7e084) rewritten over `step(paths)
    -> [rows, V] log-probabilities`: its flat candidate list, parent arithmetic and final top-k, kept
    as the original computes them; returns the drafted token paths."""
    first = step([[]])[0]
    top = torch.topk(first, top_k)
    scores, tokens, parents = [top.values], [top.indices], [torch.zeros(1, dtype=torch.long)]
    frontier, frontier_paths = top.values, [[t] for t in top.indices.tolist()]
    chosen = torch.arange(top_k)
    for i in range(depth - 1):
        bias = 1 + top_k ** 2 * max(0, i - 1) + (top_k if i > 0 else 0)
        parents.append(chosen + bias)
        top = torch.topk(step(frontier_paths), top_k, dim=-1)
        cu = top.values + frontier[:, None]
        best = torch.topk(cu.view(-1), top_k)
        chosen, frontier = best.indices, best.values
        frontier_paths = [frontier_paths[int(c) // top_k] + [int(top.indices.view(-1)[c])] for c in chosen]
        scores.append(cu.view(-1))
        tokens.append(top.indices.view(-1))
    scores, tokens = torch.cat(scores), torch.cat(tokens)
    kept = torch.sort(torch.topk(scores, total_tokens).indices).values
    parent_of = torch.cat(parents)[kept // top_k]  # 0: the root; else 1 + the parent's flat index
    index = {int(k): n for n, k in enumerate(kept)}
    paths = []
    for n, k in enumerate(kept.tolist()):
        parent = int(parent_of[n]) - 1
        paths.append((paths[index[parent]] if parent >= 0 else ()) + (int(tokens[k]),))
    return set(paths)


def test_eagle2_tree_is_safeailabs(backbone):
    """The EAGLE-2 drafter keeps the same tree as SafeAILab's own algorithm, on real (random) EAGLE
    heads, as deep as asked beyond num_heads."""
    from draftheads.decoding.sampling import SamplingConfig

    eagle = random_heads(backbone, "eagle")  # num_heads 4
    for prompt in prompts(3):
        engine = Engine(backbone, eagle, TreeSpec("eagle2", budget=20, width=3, depth=6))
        engine.cache.reset(prompt.numel() + 8)
        out = engine._forward(prompt, torch.arange(prompt.numel()), None, logits=False)
        state = eagle.begin_draft(out.features, prompt[None])
        root = 5
        draft = engine.drafter.draft(eagle, state, root, backbone.lm_head, SamplingConfig(), None, False)
        ours = {tuple(draft.tokens[i].item() for i in draft.tree.path_to(n)[1:]) for n in range(1, draft.tree.size)}

        def step(paths):
            return eagle.draft_step(state, torch.tensor([[root, *p] for p in paths]), backbone.lm_head)

        assert ours == safeailab_eagle2(step, 20, 6, 3)
        assert draft.tree.size == 21 and int(draft.tree.depth.max()) > 4


def test_eagle2_decodes_greedily_and_refuses_sampling(backbone):
    eagle = random_heads(backbone, "eagle")
    engine = Engine(backbone, eagle, TreeSpec("eagle2", budget=12, width=3, depth=6))
    for prompt in prompts(2):
        assert engine.generate(prompt, GenerationConfig(max_new_tokens=40, eos_token_ids=())).tokens == hf_greedy(backbone, prompt, 40)
    from draftheads.decoding.sampling import SamplingConfig

    with pytest.raises(ValueError, match="speculative sampling cannot verify exactly"):
        engine.generate(prompts(1)[0], GenerationConfig(max_new_tokens=8, eos_token_ids=(), sampling=SamplingConfig(temperature=0.7)))
