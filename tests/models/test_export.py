"""`draftheads export`: heads leave in the layouts serving engines load and come back through our
importers drafting exactly what they drafted (fp32, every depth); an independent implementation of
the EAGLE-3 draft model (written from its description, in test_import.py) loads the export with
strict key checking and reproduces the drafts; what a layout cannot express is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from draftheads.models.draft_model import DraftModel
from draftheads.models.formats import export_heads
from draftheads.models.heads.eagle import EagleConfig
from draftheads.models.heads.hydra import HydraConfig
from draftheads.models.heads.medusa import MedusaConfig
from draftheads.models.import_eagle import default_fuse_layers
from draftheads.models.backbone import BackboneConfig, load_backbone
from draftheads.scripts.cli import main
from draftheads.utils.errors import ModelLoadError
from helpers import spread_vocabulary, tiny_llama_config
from reference_eagle import Eagle3Reference


def saved_heads(base, config, folder):
    backbone = load_backbone(BackboneConfig(base=str(base)))
    draft = DraftModel.new(backbone, config)
    torch.manual_seed(4)
    with torch.no_grad():
        for name, p in draft.heads.named_parameters():
            p.normal_(std=0.1) if "norm" not in name else p.uniform_(0.5, 1.5)  # gates off 0 and 1: folding is tested
    spread_vocabulary(draft.heads, backbone.lm_head)
    return draft.save_pretrained(folder)


def drafts(draft: DraftModel, ids: torch.Tensor, t: int = 9) -> list[torch.Tensor]:
    """Full-vocabulary log-probabilities of every depth along the true path after position t."""
    heads = draft.heads
    with torch.no_grad():
        features = draft.backbone.features(ids[None], layers=heads.config.feature_layers()).features
        state = heads.begin_draft({k: v[:, : t + 1] for k, v in features.items()}, ids[None, : t + 1])
        out = []
        for depth in range(1, heads.config.num_heads + 1):
            reduced = heads.draft_step(state, ids[None, t + 1 : t + 1 + depth], draft.backbone.lm_head)[0]
            full = torch.full((heads.vocab_size,), float("-inf"))
            out.append(full.index_copy(0, heads.to_tokens(torch.arange(reduced.numel())), reduced))
        return out


def assert_same_drafts(a: DraftModel, b: DraftModel):
    ids = torch.randint(0, 2000, (16,), generator=torch.Generator().manual_seed(1))
    for x, y in zip(drafts(a, ids), drafts(b, ids)):
        assert torch.equal(torch.isfinite(x), torch.isfinite(y))
        torch.testing.assert_close(x[torch.isfinite(x)], y[torch.isfinite(y)], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vocab", [300, 0], ids=["reduced", "full"])
def test_eagle3_exports_reimports_and_a_reference_reproduces_its_first_draft(base8, vocab, tmp_path):
    heads = saved_heads(
        base8,
        EagleConfig(num_heads=3, fuse_layers=default_fuse_layers(8), training_time_test=True, draft_vocab_size=vocab),
        tmp_path / "heads",
    )
    assert main(["export", "eagle", str(heads), "--out", str(tmp_path / "export")]) == 0
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["draft_vocab_size"] == (vocab or 49152)
    assert "sglang.launch_server" in (tmp_path / "export" / "README.md").read_text()
    assert main(["import", "eagle", str(tmp_path / "export"), "--out", str(tmp_path / "back"), "--num-heads", "3"]) == 0
    original, back = DraftModel.from_pretrained(heads), DraftModel.from_pretrained(tmp_path / "back")
    assert_same_drafts(original, back)
    # The reference model loads the export strictly and computes depth 1 as our heads do.
    weights = load_file(str(tmp_path / "export" / "model.safetensors"))
    reference = Eagle3Reference(tiny_llama_config(vocab_size=49152), draft_vocab=vocab or 49152).eval()
    reference.load_state_dict(reference_state(weights), strict=True)
    ids = torch.randint(0, 2000, (12,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = original.backbone.features(ids[None], layers=tuple(default_fuse_layers(8))).features
        fused = reference.fc(torch.cat([features[i][0] for i in default_fuse_layers(8)], -1))
        out = reference.layer(original.backbone.embed_tokens(ids[1:11]), fused[:10])
        theirs = torch.log_softmax(reference.lm_head(reference.norm(out[-1])), -1)
        state = original.heads.begin_draft({k: v[:, :10] for k, v in features.items()}, ids[None, :10])
        ours = original.heads.draft_step(state, ids[None, 10:11], original.backbone.lm_head)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    if vocab:
        d2t = weights["d2t"]
        assert torch.equal(torch.arange(d2t.numel()) + d2t, original.heads.to_tokens(torch.arange(d2t.numel())))
    else:  # the whole vocabulary: vLLM keeps no d2t parameter then and refuses a file that has one
        assert "d2t" not in weights and "t2d" not in weights


def reference_state(weights: dict) -> dict:
    """The export's tensors under the reference module's own names (no key left over or missing)."""
    state = {}
    for name, value in weights.items():
        if name in ("d2t", "t2d"):
            continue
        state[name.replace("midlayer.self_attn.", "").replace("midlayer.", "")] = value
    return state


def test_eagle1_and_medusa_round_trip_and_bf16_exports(tiny_base, tmp_path):
    eagle1 = saved_heads(tiny_base, EagleConfig(num_heads=3), tmp_path / "e1")  # a trained fc bias: vLLM cannot hold it
    assert main(["export", "eagle", str(eagle1), "--out", str(tmp_path / "e1x")]) == 2
    assert main(["export", "eagle", str(eagle1), "--out", str(tmp_path / "e1x"), "--engine", "sglang"]) == 0
    assert main(["import", "eagle", str(tmp_path / "e1x"), "--out", str(tmp_path / "e1b"), "--num-heads", "3"]) == 0
    assert_same_drafts(DraftModel.from_pretrained(eagle1), DraftModel.from_pretrained(tmp_path / "e1b"))
    for shared in (True, False):
        medusa = saved_heads(tiny_base, MedusaConfig(num_heads=3, share_lm_head=shared), tmp_path / f"m{shared}")
        assert main(["export", "medusa", str(medusa), "--out", str(tmp_path / f"mx{shared}")]) == 0
        assert main(["import", "medusa", str(tmp_path / f"mx{shared}"), "--out", str(tmp_path / f"mb{shared}")]) == 0
        assert_same_drafts(DraftModel.from_pretrained(medusa), DraftModel.from_pretrained(tmp_path / f"mb{shared}"))
    assert main(["export", "medusa", str(medusa), "--out", str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    assert {v.dtype for v in torch.load(tmp_path / "bf16" / "medusa_lm_head.pt", weights_only=True).values()} == {torch.bfloat16}


def test_what_a_layout_cannot_express_is_refused(tiny_base, base8, tmp_path, capsys):
    cases = [
        ("medusa", MedusaConfig(num_heads=2, draft_vocab_size=100), tiny_base, "the Medusa layout projects onto the whole vocabulary"),
        ("medusa", MedusaConfig(num_heads=2, head_layers=2), tiny_base, "residual blocks differ"),
        ("medusa", HydraConfig(num_heads=2), tiny_base, "hydra heads condition on the drafted path"),
        ("eagle", HydraConfig(num_heads=2), tiny_base, "these are hydra heads"),
        ("eagle", EagleConfig(num_heads=2, draft_vocab_size=100), tiny_base, "EAGLE-1 heads with a reduced draft vocabulary"),
        (
            "eagle",
            EagleConfig(num_heads=2, fuse_layers=[0, 2, 5]),
            base8,
            r"fuse_layers \[0, 2, 5\]: SGLang and vLLM fuse the outputs of layers \[1, 3, 4\]",
        ),
    ]
    for index, (name, config, base, reason) in enumerate(cases):
        heads = saved_heads(base, config, tmp_path / f"h{index}")
        with pytest.raises(ModelLoadError, match=reason):
            export_heads(heads, name, tmp_path / f"x{index}")
        assert not (tmp_path / f"x{index}").exists()
    assert main(["export", "eagle", str(tmp_path / "h0"), "--out", str(tmp_path / "x")]) == 2
    assert "error: the eagle layout holds EAGLE heads; these are medusa heads" in capsys.readouterr().err


def test_the_export_readme_predicts_each_engines_tau(tiny_base, tmp_path):
    """The README of an export states, per target engine, the τ its own drafting is predicted to
    reach from the heads' calibration: a chain (TensorRT-LLM without saved choices) and medusa-llm's
    cartesian [1, 7, 6] tree, computed by hand from the rank-path counts."""
    from collections import Counter

    from draftheads.decoding.planning.stats import RankStats, calibration_json

    medusa = saved_heads(tiny_base, MedusaConfig(num_heads=3), tmp_path / "m")
    stats = RankStats(10, Counter({(0,): 6, (0, 0): 3, (0, 0, 0): 1, (1,): 2, (1, 5): 1, (7,): 1}), [])
    (medusa / "calibration.json").write_text(calibration_json(stats, "hand-made counts"))
    assert main(["export", "medusa", str(medusa), "--out", str(tmp_path / "x")]) == 0
    readme = (tmp_path / "x" / "README.md").read_text()
    assert "medusa-llm 0.1): τ 2.20 predicted (static tree of 49 drafted nodes)" in readme  # 1 + .6 + .2 + .3 + .1; rank 7 is past top-7
    assert "convert_checkpoint.py: τ 2.00 predicted (static tree of 3 drafted nodes)" in readme  # 1 + .6 + .3 + .1
    assert "--tree trtllm" in readme and "hand-made counts" in readme
    assert main(["export", "medusa", str(medusa), "--out", str(tmp_path / "y"), "--engine", "trtllm"]) == 0
    assert "medusa-llm" not in (tmp_path / "y" / "README.md").read_text().split("## τ predicted")[1]
