"""Every common decoder architecture decodes exactly through the engine (greedy autoregressive and
tree decoding equal HF `generate` token for token), or the engine refuses it at construction,
naming the feature it does not implement. Tiny random models with varied greedy output."""

from __future__ import annotations

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
    out = backbone.model.generate(prompt[None], attention_mask=torch.ones_like(prompt)[None], max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
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
