"""Every registered head family through the same checks."""

from __future__ import annotations

import pytest
import torch

from draftheads.models.backbone import Backbone, ModelLocation
from draftheads.models.draft_model import DraftModel, load_head_weights, read_head_config, save_heads
from draftheads.models.registry import HEADS
from helpers import HEAD_VARIANTS, head_cases


@pytest.fixture
def backbone(tiny_llama, demo_tokenizer):
    # The tokenizer only feeds the fingerprint here; the tiny model has its own small vocabulary.
    return Backbone(tiny_llama, demo_tokenizer, ModelLocation("tiny", "tiny", None, "in-process"))


CASES = head_cases()


def family_config(name: str, **overrides):
    return HEADS.config_class(name)(num_heads=3, **overrides)


def run(draft: DraftModel, ids: torch.Tensor):
    with torch.no_grad():
        features = draft.backbone.features(ids, layers=draft.heads.config.feature_layers()).features
        return features, draft.heads(features, ids)


def test_every_variant_names_a_registered_family():
    assert set(HEAD_VARIANTS) <= set(HEADS.names())


@pytest.mark.parametrize("family,options", CASES)
def test_shapes(family, options, backbone):
    draft = DraftModel.new(backbone, family_config(family, **options))
    ids = torch.randint(0, 128, (2, 11))
    _, out = run(draft, ids)
    assert 1 <= draft.heads.config.trained_depths() <= 3
    assert len(out.states) == draft.heads.config.trained_depths() and all(s.shape[:2] == (2, 11) for s in out.states)
    assert draft.heads.project(len(out.states), out.states[-1], backbone.lm_head).shape == (2, 11, 128)
    assert draft.heads.config.base.hidden_size == 64 and draft.heads.config.base.vocab_size == 128


@pytest.mark.parametrize("family,options", CASES)
def test_save_load_round_trip_is_bit_exact(family, options, backbone, tmp_path):
    draft = DraftModel.new(backbone, family_config(family, **options))
    with torch.no_grad():
        for p in draft.heads.parameters():
            p.normal_()  # trained-looking weights, not the zero init
    save_heads(draft.heads, tmp_path / "heads")
    config = read_head_config(tmp_path / "heads")
    assert config == draft.heads.config
    loaded = HEADS.get(family).build(config, backbone)
    load_head_weights(loaded, tmp_path / "heads")
    for (name, a), (_, b) in zip(draft.heads.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    ids = torch.randint(0, 128, (1, 7))
    assert all(torch.equal(x, y) for x, y in zip(run(draft, ids)[1].states, run(DraftModel(backbone, loaded), ids)[1].states))


@pytest.mark.parametrize("family,options", CASES)
def test_heads_never_own_backbone_parameters(family, options, backbone):
    draft = DraftModel.new(backbone, family_config(family, **options))
    backbone_ids = {id(p) for p in backbone.model.parameters()}
    assert not any(id(p) in backbone_ids for p in draft.heads.parameters())
    assert sum(p.numel() for p in draft.heads.parameters() if p.requires_grad) > 0


@pytest.mark.parametrize("family,options", CASES)
def test_drafting_agrees_with_training_on_the_same_path(family, options, backbone):
    draft = DraftModel.new(backbone, family_config(family, **options))
    with torch.no_grad():
        for p in draft.heads.parameters():
            p.normal_(std=0.1)
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        features = draft.backbone.features(ids, layers=draft.heads.config.feature_layers()).features
        out = draft.heads(features, ids, depths=3)  # every drafted depth, trained or not
    t = 5
    prefix_features = {k: v[:, : t + 1] for k, v in features.items()}
    with torch.no_grad():
        state = draft.heads.begin_draft(prefix_features, ids[:, : t + 1])
        for depth in (1, 2, 3):
            paths = ids[:, t + 1 : t + 1 + depth].repeat(4, 1)  # root t+1, then drafted tokens
            drafted = draft.heads.draft_step(state, paths, backbone.lm_head)
            trained = torch.log_softmax(draft.heads.project(depth, out.states[depth - 1][0, t], backbone.lm_head).float(), -1)
            assert drafted.shape == (4, 128)
            torch.testing.assert_close(drafted, trained.expand(4, -1), rtol=1e-5, atol=1e-5)
