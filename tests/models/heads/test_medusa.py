from __future__ import annotations

import pytest
import torch

from draftheads.models.backbone import Backbone, ModelLocation
from draftheads.models.heads.medusa import MedusaConfig, MedusaHeads


def backbone_of(model):
    return Backbone(model, None, ModelLocation("tiny", "tiny", None, "in-process"))


def test_every_block_has_its_own_weights(tiny_llama):
    heads = MedusaHeads.build(MedusaConfig(num_heads=2, head_layers=3), backbone_of(tiny_llama))
    blocks = [block for head in heads.blocks for block in head]
    assert len({id(b) for b in blocks}) == 6 and len({b.linear.weight.data_ptr() for b in blocks}) == 6
    with torch.no_grad():
        blocks[0].linear.weight.fill_(1.0)
    assert all(b.linear.weight.abs().sum() == 0 for b in blocks[1:])  # `[block] * L` would fail here


def test_trainable_parameter_count(tiny_llama):
    hidden, vocab = 64, 128
    shared = MedusaHeads.build(MedusaConfig(num_heads=4, head_layers=2, share_lm_head=True), backbone_of(tiny_llama))
    own = MedusaHeads.build(MedusaConfig(num_heads=4, head_layers=2, share_lm_head=False), backbone_of(tiny_llama))
    blocks = 4 * 2 * (hidden * hidden + hidden)
    assert sum(p.numel() for p in shared.parameters()) == blocks
    assert sum(p.numel() for p in own.parameters()) == blocks + 4 * hidden * vocab


def test_untrained_heads_copy_the_base_next_token_guess(tiny_llama):
    backbone = backbone_of(tiny_llama)
    for share in (True, False):
        heads = MedusaHeads.build(MedusaConfig(num_heads=3, share_lm_head=share), backbone)
        ids = torch.randint(0, 128, (1, 9))
        with torch.no_grad():
            out = backbone.features(ids, logits=True)
            states = heads(out.features, ids).states
            for depth in (1, 2, 3):
                torch.testing.assert_close(heads.project(depth, states[depth - 1], backbone.lm_head), out.logits)


def test_configs_that_say_num_layers_still_load_with_a_deprecation_note():
    from draftheads.models.heads.base import HeadConfig
    from draftheads.utils.errors import ConfigError

    with pytest.warns(FutureWarning, match=r"heads.num_layers is deprecated: it is now heads.head_layers"):
        config = HeadConfig.__from_config__({"head_type": "medusa", "num_layers": 2}, "heads")
    assert config.head_layers == 2 and "num_layers" not in config.to_json_dict()
    with pytest.raises(ConfigError, match="heads.num_layers: the old name of heads.head_layers"):
        HeadConfig.__from_config__({"head_type": "medusa", "num_layers": 2, "head_layers": 2}, "heads")
