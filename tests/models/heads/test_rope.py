"""Draft layers rotate positions exactly as their base does, RoPE scaling included, or the base is
refused naming the reason."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from draftheads.models.backbone import Backbone, ModelLocation
from draftheads.models.heads.layers import Shape, rope
from draftheads.utils.errors import ModelLoadError

SCALINGS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
}


def backbone_with(rope_parameters: dict, **extra) -> Backbone:
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, rope_parameters=rope_parameters, **extra)
    return Backbone(LlamaForCausalLM(config).eval(), None, ModelLocation("tiny", "tiny", None, "in-process"))


@pytest.mark.parametrize("kind", list(SCALINGS))
def test_draft_layer_rope_equals_the_bases_own(kind):
    backbone = backbone_with(SCALINGS[kind])
    shape = Shape.of(backbone)
    positions = torch.tensor([[0, 1, 7, 63, 64, 200, 511]])
    q = torch.randn(1, 4, positions.shape[1], 16, generator=torch.Generator().manual_seed(0))
    cos, sin = backbone.model.model.rotary_emb(q, positions)
    expected, _ = apply_rotary_pos_emb(q, q, cos, sin)
    torch.testing.assert_close(rope(q, positions, shape), expected, rtol=1e-5, atol=1e-5)
    if kind != "default":  # the scaling changed something: the plain-theta rotation would be wrong
        default = backbone_with({"rope_type": "default", "rope_theta": SCALINGS[kind]["rope_theta"]})
        plain = Shape(**{**shape.__dict__, "inv_freq": Shape.of(default).inv_freq, "rope_scale": 1.0})
        assert (rope(q, positions, plain) - expected).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("rope_parameters", "extra", "message"),
    [
        ({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}, {}, "llama: RoPE type 'dynamic'"),
        ({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}, {}, "partial rotary embeddings"),
    ],
    ids=["dynamic-ntk", "partial-rotary"],
)
def test_a_rope_the_draft_layers_cannot_reproduce_is_refused_by_name(rope_parameters, extra, message):
    with pytest.raises(ModelLoadError, match=message):
        Shape.of(backbone_with(rope_parameters, **extra))
