"""bf16 end to end: every family builds, drafts and decodes in the backbone's dtype, and every token
our tree decoding emits is the model's greedy choice when re-scored teacher-forced, near ties apart;
the re-scoring sees a real mismatch wherever it lies, and a plausible engine bug shows as one.

The tiny model's final norm is scaled up 8x so its logits are as sharp as a real model's: 6% of its
greedy positions have a top-2 gap within bf16's near-tie epsilon (0.5), where the unscaled model had
39%, so a wrong token is a real mismatch, not a near tie, almost everywhere."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from draftheads.decoding.engine import Engine, GenerationConfig
from draftheads.decoding.tree import TreeSpec
from draftheads.decoding.verify import check_turns, fp32_twin, near_tie_epsilon, token_gaps
from draftheads.models.backbone import Backbone, ModelLocation
from draftheads.models.registry import HEADS
from draftheads.utils import device as device_module
from draftheads.utils.device import resolve_dtype
from draftheads.utils.errors import ConfigError
from helpers import head_cases, spread_vocabulary, tiny_llama_config

EPSILON = near_tie_epsilon(torch.bfloat16)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(init_std=0.3)).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    return Backbone(model.to(torch.bfloat16), None, ModelLocation("tiny", "tiny", None, "in-process"))


def random_heads(backbone, family: str, options: dict):
    torch.manual_seed(1)
    heads = HEADS.get(family).build(HEADS.config_class(family)(num_heads=3, **options), backbone)
    assert {p.dtype for p in heads.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter.normal_(std=0.2)
    return spread_vocabulary(heads, backbone.lm_head).eval()


def prompt_of(seed: int, length: int = 9) -> list[int]:
    return torch.randint(0, 128, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


TREES = (TreeSpec("dynamic", budget=6, width=2), TreeSpec("static", paths=[[0], [1], [0, 0]]))


@pytest.mark.parametrize("family,options", head_cases())
def test_every_family_decodes_only_the_models_greedy_tokens_in_bf16(backbone, family, options):
    heads = random_heads(backbone, family, options)
    config = GenerationConfig(max_new_tokens=24, eos_token_ids=())
    prompt = prompt_of(3)
    for tree in TREES:
        result = Engine(backbone, heads, tree).generate(prompt, config)
        assert len(result.tokens) == 24 and all(size > 0 for size in result.tree_sizes)
        check = check_turns(backbone, [(prompt, result.tokens)])  # every emitted token
        assert check.tokens == 24 and check.mismatches(EPSILON) == 0, (tree.kind, check.gaps)


def test_the_fp32_twin_computes_the_same_weights_in_fp32(backbone):
    twin = fp32_twin(backbone)
    assert {p.dtype for p in twin.model.parameters()} == {torch.float32} and twin.model.config._attn_implementation == "sdpa"
    assert torch.equal(twin.lm_head.weight, backbone.lm_head.weight.float()) and fp32_twin(twin) is twin
    prompt = prompt_of(6)
    tokens = Engine(backbone).generate(prompt, GenerationConfig(max_new_tokens=8, eos_token_ids=())).tokens
    with torch.no_grad():
        logits = twin.model(torch.tensor([prompt + tokens[:-1]])).logits[0, len(prompt) - 1 :]
    best = logits.max(-1).values
    expected = (best - logits.gather(-1, torch.tensor(tokens)[:, None])[:, 0]).tolist()
    assert token_gaps(twin, prompt, tokens) == pytest.approx(expected, abs=1e-5)


def test_every_token_is_checked_past_a_near_tie(backbone):
    prompt = prompt_of(4)
    reference = Engine(backbone).generate(prompt, GenerationConfig(max_new_tokens=16, eos_token_ids=())).tokens
    assert token_gaps(backbone, prompt, reference) == [0.0] * 16
    # Position 3 takes the second-best token (a near tie for an epsilon as large as its gap), the
    # model's greedy continuation follows it, and the last token is wrong: a first-divergence check
    # stops at position 3; the re-scoring finds both.
    with torch.no_grad():
        top = backbone.model(torch.tensor([prompt + reference[:3]])).logits[0, -1].float().topk(2)
    second, gap = int(top.indices[1]), float(top.values[0] - top.values[1])
    tokens = reference[:3] + [second]
    tokens += Engine(backbone).generate(prompt + tokens, GenerationConfig(max_new_tokens=12, eos_token_ids=())).tokens
    with torch.no_grad():
        worst = int(backbone.model(torch.tensor([prompt + tokens[:15]])).logits[0, -1].argmin())
    wrong = tokens[:15] + [worst]
    check = check_turns(backbone, [(prompt, wrong)])
    assert [(t, p) for t, p, _ in check.gaps] == [(0, 3), (0, 15)]
    near = check.gaps[0][2]
    assert near == pytest.approx(gap, abs=0.5)  # another forward's bf16 rounding: a unit in the last place of a logit near 60
    assert check.near_ties(near) == 1 and check.mismatches(near) == 1
    # turns are re-scored each from its own prompt
    two = check_turns(backbone, [(prompt, reference), (prompt + reference, wrong)])
    assert [(t, p) for t, p, _ in two.gaps][-1] == (1, 15) and two.tokens == 32 and two.mismatches(near) >= 1


@pytest.mark.parametrize("family", ["medusa", "eagle"])
def test_a_position_bug_in_the_tree_forward_shows_as_real_mismatches(backbone, monkeypatch, family):
    """The power of the check: verification with position ids one too far (a plausible RoPE bug)
    emits tokens the model would not, and the re-scoring counts them as real mismatches."""
    heads = random_heads(backbone, family, {})
    prompt, config = prompt_of(3), GenerationConfig(max_new_tokens=24, eos_token_ids=())
    right = Engine(backbone, heads, TREES[0]).generate(prompt, config)
    real_forward = Engine._forward

    def shifted(self, tokens, depth, mask, logits):
        return real_forward(self, tokens, depth + (mask is not None), mask, logits)

    monkeypatch.setattr(Engine, "_forward", shifted)
    wrong = Engine(backbone, heads, TREES[0]).generate(prompt, config)
    assert check_turns(backbone, [(prompt, right.tokens)]).mismatches(EPSILON) == 0
    assert check_turns(backbone, [(prompt, wrong.tokens)]).mismatches(EPSILON) >= 3


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
