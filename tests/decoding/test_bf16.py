"""bf16 end to end: every family builds, drafts and decodes in the backbone's dtype, and our tree
decoding equals our own bf16 autoregressive decoding except at near ties, which are told apart."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from draftheads.decoding.divergence import first_divergence, near_tie_epsilon
from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.tree import TreeSpec
from draftheads.models.backbone import Backbone, ModelLocation
from draftheads.models.registry import HEADS
from draftheads.utils import device as device_module
from draftheads.utils.device import resolve_dtype
from draftheads.utils.errors import ConfigError
from helpers import head_cases, spread_vocabulary, tiny_llama_config


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(init_std=0.3)).eval().to(torch.bfloat16)
    return Backbone(model, None, ModelLocation("tiny", "tiny", None, "in-process"))


@pytest.mark.parametrize("family,options", head_cases())
def test_every_family_drafts_and_decodes_in_bf16(backbone, family, options):
    torch.manual_seed(1)
    heads = HEADS.get(family).build(HEADS.config_class(family)(num_heads=3, **options), backbone)
    assert {p.dtype for p in heads.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter.normal_(std=0.2)
    spread_vocabulary(heads, backbone.lm_head).eval()
    config = GenerationConfig(max_new_tokens=24, eos_token_ids=())
    prompt = torch.randint(0, 128, (9,), generator=torch.Generator().manual_seed(3))
    reference = Engine(backbone).generate(prompt, config).tokens
    for tree in (TreeSpec("dynamic", budget=6, width=2), TreeSpec("static", paths=[[0], [1], [0, 0]])):
        result = Engine(backbone, heads, tree).generate(prompt, config)
        found = first_divergence(backbone, prompt.tolist(), reference, result.tokens, near_tie_epsilon(torch.bfloat16))
        assert found is None or found.near_tie, found  # a real mismatch would be a decoding bug
        assert len(result.tokens) == 24 and all(size > 0 for size in result.tree_sizes)


def test_divergence_names_the_position_and_the_reference_gap(backbone):
    prompt = torch.randint(0, 128, (7,), generator=torch.Generator().manual_seed(4)).tolist()
    reference = Engine(backbone).generate(prompt, GenerationConfig(max_new_tokens=8, eos_token_ids=())).tokens
    assert first_divergence(backbone, prompt, reference, list(reference), 0.5) is None
    other = reference[:5] + [(reference[5] + 1) % 128] + reference[6:]
    found = first_divergence(backbone, prompt, reference, other, 0.0)
    logits = backbone.model(torch.tensor([prompt + reference[:5]])).logits[0, -1].float()
    top = logits.topk(2).values
    assert found.position == 5 and found.gap == pytest.approx(float(top[0] - top[1])) and not found.near_tie
    assert first_divergence(backbone, prompt, reference, other, found.gap).near_tie


def test_the_dtype_default_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", cpu)[0] == "bfloat16"
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", cpu)[0] == "float32"
    name, note = resolve_dtype("bfloat16", cpu)
    assert name == "bfloat16" and note.startswith("warning: this CPU has no native bf16")
    with pytest.raises(ConfigError, match="float16 on a CPU"):
        resolve_dtype("float16", cpu)
