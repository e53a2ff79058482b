"""EAGLE heads: identity at initialisation, the training-time-test attention pattern (causal over
the sequence, then each earlier depth of the same position; documents apart), EAGLE-1's single
trained step with feature noise, and an incremental drafting state."""

from __future__ import annotations

import pytest
import torch

from draftheads.models.backbone import LAST
from draftheads.models.heads.eagle import EagleConfig, EagleHeads
from helpers import trained_looking


EAGLE3 = {"fuse_layers": [0, 1], "training_time_test": True}


def features_of(backbone, heads, ids, position_ids=None):
    with torch.no_grad():
        return backbone.features(ids, position_ids=position_ids, layers=heads.config.feature_layers()).features


def test_untrained_eagle1_repeats_the_base_models_next_token_at_every_depth(backbone):
    heads = EagleHeads.build(EagleConfig(num_heads=3), backbone).eval()
    ids = torch.randint(0, 128, (1, 9))
    features = features_of(backbone, heads, ids)
    with torch.no_grad():
        state = heads.begin_draft(features, ids)
        expected = torch.log_softmax(backbone.lm_head(features[LAST][0, -1]), -1)
        for depth in (1, 2, 3):
            torch.testing.assert_close(heads.draft_step(state, torch.randint(0, 128, (2, depth)), backbone.lm_head), expected.expand(2, -1))


def test_eagle1_trains_one_step_regresses_features_and_adds_noise_only_in_training(backbone):
    heads = EagleHeads.build(EagleConfig(num_heads=3, feature_noise=0.1), backbone)
    ids = torch.randint(0, 128, (2, 9))
    features = features_of(backbone, heads, ids)
    heads.train()
    first, second = heads(features, ids), heads(features, ids)
    assert len(first.states) == 1 and first.predicted_features is not None
    assert not torch.equal(first.states[0], second.states[0])  # noisy input features
    heads.eval()
    assert torch.equal(heads(features, ids).states[0], heads(features, ids).states[0])
    # untrained and noiseless: the predicted feature of t+1 is the backbone's feature at t
    torch.testing.assert_close(heads(features, ids).predicted_features[0], features[LAST])
    fused = EagleHeads.build(EagleConfig(num_heads=3, **EAGLE3), backbone)
    assert fused(features_of(backbone, fused, ids), ids).predicted_features is None  # another space: nothing to regress onto


def test_training_time_test_attends_causally_and_keeps_documents_apart(backbone):
    heads = trained_looking(EagleHeads.build(EagleConfig(num_heads=3, **EAGLE3), backbone))
    ids = torch.randint(0, 128, (1, 12))
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])  # two packed documents
    features = features_of(backbone, heads, ids, positions)
    with torch.no_grad():
        before = heads(features, ids, positions).states
        t = 7
        later = ids.clone()
        later[0, t + 4 :] = (later[0, t + 4 :] + 1) % 128  # tokens after t+3: no depth at t reads them
        moved = {k: v.clone() for k, v in features.items()}
        for v in moved.values():
            v[0, t + 1 :] += 1.0  # features after t
            v[0, :5] -= 1.0  # the other document
        earlier_doc = later.clone()
        earlier_doc[0, :5] = (earlier_doc[0, :5] + 3) % 128
        after = heads(moved, earlier_doc, positions).states
        for depth in (1, 2, 3):
            torch.testing.assert_close(after[depth - 1][0, t], before[depth - 1][0, t])
        changed = ids.clone()
        changed[0, t + 2] = (changed[0, t + 2] + 1) % 128  # the path's token at depth 1: read from depth 2 on
        after = heads(features, changed, positions).states
        assert torch.equal(after[0][0, t], before[0][0, t]) and not torch.equal(after[1][0, t], before[1][0, t])


@pytest.mark.parametrize("options", [{}, EAGLE3], ids=["eagle1", "eagle3"])
def test_drafting_state_built_step_by_step_equals_one_built_at_once(backbone, options):
    heads = trained_looking(EagleHeads.build(EagleConfig(num_heads=3, **options), backbone))
    ids = torch.randint(0, 128, (1, 10))
    features = features_of(backbone, heads, ids)
    with torch.no_grad():
        whole = heads.begin_draft(features, ids)
        state = None
        for start, end in ((0, 1), (1, 4), (4, 7), (7, 10)):  # a one-token prompt, then accepted runs
            state = heads.begin_draft({k: v[:, start:end] for k, v in features.items()}, ids[:, start:end], state)
        assert state.length == whole.length == 9
        paths = torch.randint(0, 128, (3, 1))
        for depth in (1, 2, 3):
            torch.testing.assert_close(heads.draft_step(state, paths, backbone.lm_head), heads.draft_step(whole, paths, backbone.lm_head))
            paths = torch.cat([paths, torch.randint(0, 128, (3, 1))], dim=1)


def test_bad_eagle_settings_are_refused(backbone):
    with pytest.raises(ValueError, match="fuse_layers holds decoder layer indices"):
        EagleConfig(fuse_layers=[0, -1])
    with pytest.raises(ValueError, match="fuse_layers must be distinct"):
        EagleConfig(fuse_layers=[1, 1])
    with pytest.raises(ValueError, match=r"fuse_layers: layer 5 is out of range \(2 decoder layers: 0..1\)"):
        EagleHeads.build(EagleConfig(fuse_layers=[0, 5]), backbone)
    assert not EagleConfig(draft_vocab_size=10).training_problems()  # a reduced vocabulary trains


def test_eval_statistics_cover_every_drafted_depth_of_eagle1(backbone):
    from draftheads.decoding.planning.stats import rank_stats
    from draftheads.models.draft_model import DraftModel

    heads = trained_looking(EagleHeads.build(EagleConfig(num_heads=3), backbone))
    assert heads.config.trained_depths() == 1
    stats = rank_stats(DraftModel(backbone, heads), [(torch.randint(0, 128, (20,)).tolist(), 5, 0)])
    assert len(stats.depth_topk) == 3 and stats.positions > 0
