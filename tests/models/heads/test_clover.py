"""Clover heads: identity at initialisation, incremental drafting state, packed documents kept apart."""

from __future__ import annotations

import pytest
import torch

from draftheads.models.backbone import LAST
from draftheads.models.heads.clover import CloverConfig, CloverHeads
from helpers import trained_looking


def hidden(backbone, ids, position_ids=None):
    with torch.no_grad():
        return backbone.features(ids, position_ids=position_ids).features


def test_untrained_heads_repeat_the_base_models_next_token_at_every_depth(backbone):
    heads = CloverHeads.build(CloverConfig(num_heads=3), backbone)
    ids = torch.randint(0, 128, (2, 9))
    features = hidden(backbone, ids)
    with torch.no_grad():
        out = heads(features, ids)
    base = backbone.lm_head(features[LAST])
    for depth in (1, 2, 3):
        torch.testing.assert_close(heads.project(depth, out.states[depth - 1], backbone.lm_head), base)


def test_the_augmenting_block_starts_from_the_backbones_last_layer(backbone):
    heads = CloverHeads.build(CloverConfig(num_heads=2), backbone)
    last = dict(backbone.layers[-1].named_parameters())
    assert torch.equal(heads.block.q.weight, last["self_attn.q_proj.weight"])
    assert torch.equal(heads.block.down_proj.weight, last["mlp.down_proj.weight"])
    assert heads.block.attn_gate.item() == 0 and heads.block.mlp_gate.item() == 0
    fresh = CloverHeads.build(CloverConfig(num_heads=2, init_from_last_layer=False), backbone)
    assert not torch.equal(fresh.block.q.weight, last["self_attn.q_proj.weight"])
    assert CloverHeads.build(CloverConfig(num_heads=2, augmenting_block=False), backbone).block is None


@pytest.mark.parametrize("augmenting_block", [True, False])
def test_drafting_state_built_step_by_step_equals_one_built_at_once(backbone, augmenting_block):
    heads = trained_looking(CloverHeads.build(CloverConfig(num_heads=3, augmenting_block=augmenting_block), backbone))
    ids = torch.randint(0, 128, (1, 12))
    features = hidden(backbone, ids)
    with torch.no_grad():
        whole = heads.begin_draft({LAST: features[LAST][:, :9]}, ids[:, :9])
        state = None
        for start, end in ((0, 4), (4, 7), (7, 8), (8, 9)):  # prompt, then accepted runs of 3, 1, 1
            state = heads.begin_draft({LAST: features[LAST][:, start:end]}, ids[:, start:end], state)
        assert state.length == whole.length == 9
        torch.testing.assert_close(state.anchor, whole.anchor, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(state.keys, whole.keys, rtol=1e-5, atol=1e-5)
        out = heads(features, ids)
        paths = ids[:, 9:12]  # root t+1 = token 9, then tokens 10, 11
        for depth in (1, 2, 3):
            drafted = heads.draft_step(state, paths[:, :depth], backbone.lm_head)
            trained = torch.log_softmax(heads.project(depth, out.states[depth - 1][:, 8], backbone.lm_head).float(), -1)
            torch.testing.assert_close(drafted, trained, rtol=1e-4, atol=1e-4)


def test_packed_documents_do_not_see_each_other(backbone):
    heads = trained_looking(CloverHeads.build(CloverConfig(num_heads=2), backbone))
    first, second = torch.randint(0, 128, (1, 5)), torch.randint(0, 128, (1, 7))
    packed = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]
    with torch.no_grad():
        together = heads(hidden(backbone, packed, positions), packed, positions)
        alone = heads(hidden(backbone, second), second)
    # The second document's states at depth 1 (its last position reads a token past the row: skip it).
    torch.testing.assert_close(together.states[0][:, 5:-1], alone.states[0][:, :-1], rtol=1e-4, atol=1e-4)
    assert len(together.predicted_features) == 2
