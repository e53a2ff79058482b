"""Hydra heads: identity at initialisation, each head conditioned on exactly the path before it,
and an incremental drafting state for the prefix-attention layer (Hydra++)."""

from __future__ import annotations

import pytest
import torch

from draftheads.models.backbone import LAST
from draftheads.models.heads.hydra import HydraConfig, HydraHeads
from helpers import trained_looking


@pytest.mark.parametrize("prefix_attention", [False, True])
def test_untrained_heads_repeat_the_base_models_next_token_at_every_depth(backbone, prefix_attention):
    heads = HydraHeads.build(HydraConfig(num_heads=3, prefix_attention=prefix_attention), backbone)
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        features = backbone.features(ids).features
        out = heads(features, ids)
    for depth in (1, 2, 3):
        torch.testing.assert_close(heads.project(depth, out.states[depth - 1], backbone.lm_head), backbone.lm_head(features[LAST]))


def test_head_k_reads_the_tokens_t_plus_1_to_t_plus_k_and_no_later_ones(backbone):
    heads = trained_looking(HydraHeads.build(HydraConfig(num_heads=3), backbone))
    ids = torch.randint(0, 128, (1, 10))
    t = 4
    with torch.no_grad():
        features = backbone.features(ids).features
        before = heads(features, ids).states
        for changed in (1, 2, 3):  # token t+changed is the path's token at depth changed-1
            other = ids.clone()
            other[0, t + changed] = (other[0, t + changed] + 1) % 128
            after = heads(features, other).states
            for depth in (1, 2, 3):
                same = torch.equal(before[depth - 1][0, t], after[depth - 1][0, t])
                assert same == (changed > depth), (changed, depth)


def test_prefix_attention_drafting_state_built_step_by_step_equals_one_built_at_once(backbone):
    heads = trained_looking(HydraHeads.build(HydraConfig(num_heads=3, prefix_attention=True), backbone))
    ids = torch.randint(0, 128, (1, 10))
    with torch.no_grad():
        features = backbone.features(ids).features[LAST]
        whole = heads.begin_draft({LAST: features}, ids)
        state = None
        for start, end in ((0, 4), (4, 7), (7, 8), (8, 10)):
            state = heads.begin_draft({LAST: features[:, start:end]}, ids[:, start:end], state)
        paths = torch.randint(0, 128, (3, 2))
        torch.testing.assert_close(heads.draft_step(state, paths, backbone.lm_head), heads.draft_step(whole, paths, backbone.lm_head))
        assert state.length == 10
