"""Every registered head family through the same checks."""

from __future__ import annotations

import pytest
import torch

from draftheads.models.backbone import Backbone, ModelLocation
from draftheads.models.draft_model import DraftModel, load_head_weights, read_head_config, save_heads
from draftheads.models.registry import HEADS
from helpers import HEAD_VARIANTS, head_cases, spread_vocabulary


@pytest.fixture
def backbone(tiny_llama, demo_tokenizer):
    # The tokenizer only feeds the fingerprint here; the tiny model has its own small vocabulary.
    return Backbone(tiny_llama, demo_tokenizer, ModelLocation("tiny", "tiny", None, "in-process"))


CASES = head_cases()


def family_config(name: str, **overrides):
    return HEADS.config_class(name)(num_heads=3, **overrides)


def new_draft(backbone, family: str, **options) -> DraftModel:
    draft = DraftModel.new(backbone, family_config(family, **options))
    spread_vocabulary(draft.heads, backbone.lm_head)
    return draft


def run(draft: DraftModel, ids: torch.Tensor):
    with torch.no_grad():
        features = draft.backbone.features(ids, layers=draft.heads.config.feature_layers()).features
        return features, draft.heads(features, ids)


def test_every_variant_names_a_registered_family():
    assert set(HEAD_VARIANTS) <= set(HEADS.names())


@pytest.mark.parametrize("family,options", CASES)
def test_shapes(family, options, backbone):
    draft = new_draft(backbone, family, **options)
    ids = torch.randint(0, 128, (2, 11))
    _, out = run(draft, ids)
    assert 1 <= draft.heads.config.trained_depths() <= 3
    assert len(out.states) == draft.heads.config.trained_depths() and all(s.shape[:2] == (2, 11) for s in out.states)
    assert draft.heads.project(len(out.states), out.states[-1], backbone.lm_head).shape == (2, 11, draft.heads.draft_vocab)
    assert draft.heads.config.base.hidden_size == 64 and draft.heads.config.base.vocab_size == 128


@pytest.mark.parametrize("family,options", CASES)
def test_save_load_round_trip_is_bit_exact(family, options, backbone, tmp_path):
    draft = new_draft(backbone, family, **options)
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
    draft = new_draft(backbone, family, **options)
    backbone_ids = {id(p) for p in backbone.model.parameters()}
    assert not any(id(p) in backbone_ids for p in draft.heads.parameters())
    assert sum(p.numel() for p in draft.heads.parameters() if p.requires_grad) > 0


@pytest.mark.parametrize("family,options", CASES)
def test_drafting_agrees_with_training_on_the_same_path(family, options, backbone):
    draft = new_draft(backbone, family, **options)
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
            assert drafted.shape == (4, draft.heads.draft_vocab)
            torch.testing.assert_close(drafted, trained.expand(4, -1), rtol=1e-5, atol=1e-5)


REDUCED = [case for case in CASES if case.values[1].get("draft_vocab_size")]


@pytest.mark.parametrize("family,options", REDUCED)
def test_a_reduced_vocabulary_projects_onto_the_full_projections_rows_of_its_tokens(family, options, backbone):
    full_options = {k: v for k, v in options.items() if k != "draft_vocab_size"}
    torch.manual_seed(0)
    full = DraftModel.new(backbone, family_config(family, **full_options))
    torch.manual_seed(0)
    reduced = new_draft(backbone, family, **options)  # untrained: own projections start as the lm_head's rows
    tokens = reduced.heads.draft_to_token
    assert tokens.numel() == 40 and not torch.equal(tokens, torch.arange(40))
    ids = torch.randint(0, 128, (1, 9))
    features, out_full = run(full, ids)
    _, out_reduced = run(reduced, ids)
    for depth, (a, b) in enumerate(zip(out_full.states, out_reduced.states), start=1):
        expected = full.heads.project(depth, a, backbone.lm_head)[..., tokens]
        torch.testing.assert_close(reduced.heads.project(depth, b, backbone.lm_head), expected)
    inside = reduced.heads.token_index(tokens)
    assert torch.equal(inside, torch.arange(40)) and torch.equal(reduced.heads.to_tokens(inside), tokens)
    outside = torch.tensor([t for t in range(128) if t not in set(tokens.tolist())][:5])
    assert torch.equal(reduced.heads.token_index(outside), torch.full((5,), -100))


def test_draft_vocabularies_that_do_not_fit_are_refused(backbone, tmp_path):
    import pytest as _pytest

    from draftheads.utils.errors import ModelLoadError

    with _pytest.raises(ValueError, match=r"draft_vocab_size 200 exceeds the base vocabulary \(128\)"):
        DraftModel.new(backbone, family_config("medusa", draft_vocab_size=200))
    draft = new_draft(backbone, "hydra", draft_vocab_size=40)
    with _pytest.raises(ValueError, match="distinct ids below 128"):
        draft.heads.use_draft_vocab(torch.full((40,), 3), backbone.lm_head)
    save_heads(draft.heads, tmp_path / "heads")
    state = dict(draft.heads.state_dict())
    state["draft_to_token"] = state["draft_to_token"] + 200  # a map made for a larger vocabulary
    save_heads(draft.heads, tmp_path / "big", state=state)
    loaded = HEADS.get("hydra").build(read_head_config(tmp_path / "big"), backbone)
    with _pytest.raises(
        ModelLoadError, match=r"model.safetensors: the draft vocabulary map holds token id \d+, but the base vocabulary has 128 tokens"
    ):
        load_head_weights(loaded, tmp_path / "big")
    config = read_head_config(tmp_path / "heads")
    smaller = HEADS.get("hydra").build(type(config)(**{**config.__dict__, "draft_vocab_size": 30}), backbone)
    with _pytest.raises(ModelLoadError, match=r"draft_to_token \(40,\) \(file\) vs \(30,\) \(config\)"):
        load_head_weights(smaller, tmp_path / "heads")


@pytest.mark.parametrize("family,options", CASES)
def test_no_parameter_is_0_dim_and_scalars_in_files_still_load(family, options, backbone, tmp_path):
    """DeepSpeed ZeRO-3 cannot partition a 0-dim parameter; files holding one-element tensors as
    0-dim scalars (the layer gates, as earlier versions saved them) load into their parameters."""
    from safetensors.torch import load_file, save_file

    draft = new_draft(backbone, family, **options)
    assert all(p.dim() >= 1 for p in draft.heads.parameters())
    with torch.no_grad():
        for p in draft.heads.parameters():
            p.normal_()
    folder = save_heads(draft.heads, tmp_path / "heads")
    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v.reshape(()) if v.numel() == 1 else v for k, v in weights.items()}, str(folder / "model.safetensors"))
    loaded = HEADS.get(family).build(read_head_config(folder), backbone)
    load_head_weights(loaded, folder)
    assert all(torch.equal(a, b) for a, b in zip(draft.heads.state_dict().values(), loaded.state_dict().values()))


def test_a_truncated_weights_file_is_one_clear_error(backbone, tmp_path, capsys):

    draft = new_draft(backbone, "medusa")
    folder = save_heads(draft.heads, tmp_path / "heads")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    loaded = HEADS.get("medusa").build(read_head_config(folder), backbone)
    from draftheads.utils.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"model.safetensors: not a readable safetensors file \(truncated or corrupt\?\)"):
        load_head_weights(loaded, folder)


def test_a_config_from_a_newer_version_names_its_unknown_key(backbone, tmp_path):
    import json

    from draftheads.utils.errors import ModelLoadError

    folder = save_heads(new_draft(backbone, "eagle").heads, tmp_path / "heads")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "draft_attention_sinks": 4}))
    with pytest.raises(ModelLoadError, match=r"heads/config.json.draft_attention_sinks: unknown key; known keys here: .*fuse_layers"):
        read_head_config(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_heads": "three"}))
    with pytest.raises(ModelLoadError, match=r"heads/config.json.num_heads"):
        read_head_config(folder)
