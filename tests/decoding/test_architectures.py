"""Every common decoder architecture decodes exactly through the engine (greedy autoregressive and
tree decoding equal HF `generate` token for token), or the engine refuses it at construction,
naming the feature it does not implement. Tiny random models with varied greedy output."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.tree import TreeSpec
from draftheads.models.backbone import Backbone, ModelLocation
from draftheads.models.heads.medusa import MedusaConfig, MedusaHeads
from draftheads.utils.errors import ModelLoadError

SHAPE = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             initializer_range=0.3, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=256, tie_word_embeddings=False)
ARCHITECTURES = {
    # model_type: (extra config, None = supported | the refusal it must give)
    "llama": ({}, None),
    "qwen2": ({}, None),
    "qwen3": ({"head_dim": 16}, None),
    "mistral": ({"sliding_window": None}, None),
    "phi3": ({}, None),
    "gpt_neox": ({"rotary_pct": 1.0}, None),
    "gpt_neox-partial": ({}, None),  # its default: rotary embeddings on a quarter of each head
    "opt": ({"ffn_dim": 128, "word_embed_proj_dim": 64, "enable_bias": True}, None),
    "gemma": ({"head_dim": 16}, None),
    "olmo2": ({}, None),
    "stablelm": ({}, "attention that does not receive the forward's keywords once per layer"),
    "starcoder2": ({"sliding_window": None}, None),
    "granite": ({}, None),
    "cohere": ({}, None),
    "phi": ({}, None),
    "smollm3": ({}, None),
    "mistral-window": ({"sliding_window": 24}, "a sliding attention window of 24 tokens"),
    "gemma2": ({"head_dim": 16}, "attention logit softcapping"),
    "gemma3_text": ({"head_dim": 16, "sliding_window": 24}, "a sliding attention window of 24 tokens"),
}


def tiny(name: str, extra: dict) -> Backbone:
    torch.manual_seed(0)
    config = AutoConfig.for_model(name.split("-")[0], **{**SHAPE, **extra})
    model = AutoModelForCausalLM.from_config(config).eval()  # its default attention (eager where SDPA is unsupported)
    return Backbone(model, None, ModelLocation(name, name, None, "in-process"))


def hf_greedy(backbone: Backbone, prompt: torch.Tensor, n: int) -> list[int]:
    out = backbone.model.generate(
        prompt[None], attention_mask=torch.ones_like(prompt)[None], max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, prompt.numel() :].tolist()


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_each_architecture_decodes_exactly_or_is_refused(name):
    extra, refusal = ARCHITECTURES[name]
    backbone = tiny(name, extra)
    if refusal is not None:
        with pytest.raises(ModelLoadError, match=f"{name.split('-')[0]}: the decoding engine does not implement {refusal}"):
            Engine(backbone)
        return
    torch.manual_seed(1)
    heads = MedusaHeads.build(MedusaConfig(num_heads=3), backbone)
    for parameter in heads.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    config = GenerationConfig(max_new_tokens=40, eos_token_ids=())
    prompt = torch.randint(3, 128, (11,), generator=torch.Generator().manual_seed(2))
    expected = hf_greedy(backbone, prompt, 40)  # before the engine installs its attention
    assert len(set(expected)) > 5, "the tiny model must not repeat one token"
    assert Engine(backbone).generate(prompt, config).tokens == expected
    for tree in (TreeSpec("static", paths=[[0], [1], [0, 0], [0, 0, 0]]), TreeSpec("dynamic", budget=6, width=2)):
        assert Engine(backbone, heads.eval(), tree).generate(prompt, config).tokens == expected
    assert hf_greedy(backbone, prompt, 40) == expected  # HF generate still runs the model's own attention


FAMILIES = {
    # label: (family, options): every family, with the options that add draft attention layers
    "medusa": ("medusa", {}),
    "hydra++": ("hydra", {"prefix_attention": True, "head_layers": 2}),
    "clover": ("clover", {}),
    "eagle3": ("eagle", {"fuse_layers": [0, 1], "training_time_test": True}),
}
FAMILY_REFUSALS = {
    # model_type: the refusal of every family with draft attention layers (Medusa has none)
    "phi": "phi: partial rotary embeddings (partial_rotary_factor 0.5) are not supported by draft layers",
    "gpt_neox-partial": "gpt_neox: partial rotary embeddings (partial_rotary_factor 0.25) are not supported by draft layers",
}
DECODED = [name for name, (_, refusal) in ARCHITECTURES.items() if refusal is None]


@pytest.mark.parametrize("label", list(FAMILIES))
@pytest.mark.parametrize("name", DECODED)
def test_each_head_family_trains_and_drafts_on_each_architecture(name, label):
    from draftheads.models.registry import HEADS

    family, options = FAMILIES[label]
    backbone = tiny(name, ARCHITECTURES[name][0])
    config = HEADS.config_class(family)(num_heads=3, **options)
    if family != "medusa" and name in FAMILY_REFUSALS:
        with pytest.raises(ModelLoadError, match=re.escape(FAMILY_REFUSALS[name])):
            HEADS.get(family).build(config, backbone)
        return
    torch.manual_seed(1)
    heads = HEADS.get(family).build(config, backbone)
    # The base's own greedy continuation of a prompt: what heads learn to draft (self-distillation).
    prompt = torch.randint(3, 128, (11,), generator=torch.Generator().manual_seed(4))
    expected_tokens = hf_greedy(backbone, prompt, 24)
    ids = torch.tensor([prompt.tolist() + expected_tokens])
    with torch.no_grad():
        features = backbone.features(ids, layers=heads.config.feature_layers()).features

    def loss() -> torch.Tensor:
        states = heads(features, ids).states
        return sum(
            torch.nn.functional.cross_entropy(
                heads.project(k, s[:, : -1 - k], backbone.lm_head).flatten(0, 1).float(), ids[:, 1 + k :].flatten()
            )
            for k, s in enumerate(states, start=1)
        )

    # Trains: the loss falls (gradients reach the heads' own parameters).
    optimizer = torch.optim.Adam([p for p in heads.parameters() if p.requires_grad], lr=1e-2)
    first = loss()
    for _ in range(20):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss() < first - 0.5
    heads.eval()
    # Drafts: the incremental drafting path equals the training forward on the same path (positions,
    # rotary frequencies and caches of the draft layers as this base lays them out) ...
    with torch.no_grad():
        trained = heads(features, ids, depths=3).states
        state = heads.begin_draft({k: v[:, :9] for k, v in features.items()}, ids[:, :9])
        for depth in (1, 2, 3):
            drafted = heads.draft_step(state, ids[:, 9 : 9 + depth], backbone.lm_head)
            expected = torch.log_softmax(heads.project(depth, trained[depth - 1][0, 8], backbone.lm_head).float(), -1)
            torch.testing.assert_close(drafted[0], expected, rtol=1e-4, atol=1e-4)
    # ... and tree decoding with the trained heads equals HF generate, with drafts accepted (so the
    # draft layers' caches are rolled forward past accepted paths, not only restarted).
    result = Engine(backbone, heads, TreeSpec("dynamic", budget=6, width=2)).generate(
        prompt, GenerationConfig(max_new_tokens=24, eos_token_ids=())
    )
    assert result.tokens == expected_tokens and sum(result.accepted) >= 4, result.accepted
