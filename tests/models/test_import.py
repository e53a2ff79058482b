"""Importing FasterDecoding Medusa and SafeAILab EAGLE checkpoints: the test writes checkpoints in
their layouts (state dicts of modules built the way the reference code builds them) and checks that
our imported heads draft exactly what the reference computation gives."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file, save_model
from torch import nn
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from draftheads.models.backbone import LAST
from draftheads.models.draft_model import DraftModel
from draftheads.models.import_eagle import import_eagle
from draftheads.models.import_medusa import import_medusa
from draftheads.scripts.cli import main
from draftheads.utils.errors import ModelLoadError
from helpers import tiny_llama_config
from reference_eagle import Eagle3Reference, rotary


class ReferenceResBlock(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)

    def forward(self, x):
        return x + F.silu(self.linear(x))


def reference_medusa(hidden, vocab, heads, layers):
    torch.manual_seed(0)
    # As the reference builds it: one block object repeated L times per head.
    module = nn.ModuleList(
        nn.Sequential(*([ReferenceResBlock(hidden)] * layers), nn.Linear(hidden, vocab, bias=False)) for _ in range(heads)
    )
    for p in module.parameters():
        nn.init.normal_(p, std=0.05)
    return module


def medusa_checkpoint(folder, base, heads=3, layers=2, saver="pt"):
    folder.mkdir()
    reference = reference_medusa(64, 49152 if base is None else json.loads((base / "config.json").read_text())["vocab_size"], heads, layers)
    (folder / "config.json").write_text(
        json.dumps({"medusa_num_heads": heads, "medusa_num_layers": layers, "base_model_name_or_path": str(base)})
    )
    if saver == "pt":
        torch.save(reference.state_dict(), folder / "medusa_lm_head.pt")
    else:  # safetensors refuses shared tensors; save_model keeps one name of each
        save_model(reference, str(folder / "medusa_lm_head.safetensors"))
    return reference


@pytest.mark.parametrize("saver", ["pt", "safetensors"])
def test_medusa_import_drafts_what_the_reference_heads_compute(saver, tiny_base, tmp_path):
    reference = medusa_checkpoint(tmp_path / "medusa", tiny_base, saver=saver)
    assert main(["import", "medusa", str(tmp_path / "medusa"), "--out", str(tmp_path / "heads")]) == 0
    draft = DraftModel.from_pretrained(tmp_path / "heads")
    assert draft.heads.config.num_heads == 3 and draft.heads.config.head_layers == 2 and not draft.heads.config.share_lm_head
    ids = torch.randint(0, 1000, (1, 9))
    with torch.no_grad():
        hidden = draft.backbone.features(ids).features
        state = draft.heads.begin_draft(hidden, ids)
        for depth in (1, 2, 3):
            ours = draft.heads.draft_step(state, torch.zeros(2, depth, dtype=torch.long), draft.backbone.lm_head)
            theirs = torch.log_softmax(reference[depth - 1](hidden[LAST][0, -1]).float(), -1)
            torch.testing.assert_close(ours, theirs.expand(2, -1), rtol=1e-5, atol=1e-5)
    card = (tmp_path / "heads" / "README.md").read_text()
    assert "## Provenance" in card and "medusa" in card


def test_medusa_import_errors_name_the_file_and_the_field(tiny_base, tmp_path):
    medusa_checkpoint(tmp_path / "m", tiny_base)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["medusa_num_layers"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"m/config.json: required key 'medusa_num_layers' is missing"):
        import_medusa(str(tmp_path / "m"), tmp_path / "out")
    config["medusa_num_layers"] = 2
    config["medusa_num_heads"] = 4  # the weights hold 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"medusa_lm_head.pt: tensor '3.0.linear.weight' is missing \(head 3, block 0\)"):
        import_medusa(str(tmp_path / "m"), tmp_path / "out")
    config["medusa_num_heads"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    state = torch.load(tmp_path / "m" / "medusa_lm_head.pt")
    save_file({k: v[..., :32].clone() for k, v in state.items()}, str(tmp_path / "m" / "medusa_lm_head.safetensors"))
    with pytest.raises(ModelLoadError, match=r"blocks.0.0.linear.weight has shape \(64, 32\), the base model needs \(64, 64\)"):
        import_medusa(str(tmp_path / "m"), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_eagle_only_import_options_are_refused_for_medusa(tiny_base, tmp_path, capsys):
    medusa_checkpoint(tmp_path / "m", tiny_base)
    assert main(["import", "medusa", str(tmp_path / "m"), "--out", str(tmp_path / "out"), "--fuse-layers", "0", "1", "2"]) == 2
    assert "--num-heads and --fuse-layers apply to eagle checkpoints" in capsys.readouterr().err
    assert main(["import", "eagle", str(tmp_path / "m"), "--out", str(tmp_path / "out"), "--base", str(tiny_base), "--num-heads", "0"]) == 2
    assert "the draft depth (--num-heads) must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def eagle1_reference(backbone_config):
    torch.manual_seed(1)
    config = tiny_llama_config(vocab_size=backbone_config.vocab_size)
    config._attn_implementation = "eager"
    layer = LlamaDecoderLayer(config, layer_idx=0)
    layer.input_layernorm = nn.Identity()  # EAGLE-1's only layer has no input norm
    fc = nn.Linear(2 * config.hidden_size, config.hidden_size)
    for p in list(layer.parameters()) + list(fc.parameters()):
        nn.init.normal_(p, std=0.1)
    return config, layer.eval(), fc


def eagle1_draft(config, layer, fc, embed, features, tokens):
    """The reference draft: run the layer over all pairs (feature_i, token_{i+1}) from scratch."""
    x = fc(torch.cat([embed(tokens)[None], features[None]], dim=-1))
    length = x.shape[1]
    mask = torch.full((length, length), float("-inf")).triu(1)[None, None]
    positions = torch.arange(length)
    out = layer(x, attention_mask=mask, position_ids=positions[None], position_embeddings=rotary(config, positions))
    return out[0] if isinstance(out, tuple) else out


def test_eagle1_import_drafts_what_the_reference_layer_computes(tiny_base, tmp_path):
    backbone_model = LlamaForCausalLM.from_pretrained(tiny_base)
    config, layer, fc = eagle1_reference(backbone_model.config)
    source = tmp_path / "eagle1"
    source.mkdir()
    state = {f"layers.0.{k}": v for k, v in layer.state_dict().items()} | {"fc.weight": fc.weight, "fc.bias": fc.bias}
    state["embed_tokens.weight"] = backbone_model.model.embed_tokens.weight
    torch.save({k: v.detach().clone() for k, v in state.items()}, source / "pytorch_model.bin")
    (source / "config.json").write_text(
        json.dumps(
            {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "num_hidden_layers": 1}
        )
    )
    draft = import_eagle(str(source), tmp_path / "heads", base=str(tiny_base), num_heads=3)
    draft = DraftModel.from_pretrained(tmp_path / "heads")
    assert draft.heads.config.fuse_layers == [] and draft.heads.config.fc_bias
    ids = torch.randint(0, 1000, (12,))
    t = 7
    embed = draft.backbone.embed_tokens
    with torch.no_grad():
        features = draft.backbone.features(ids[None]).features[LAST][0]
        state = draft.heads.begin_draft({LAST: features[None, : t + 1]}, ids[None, : t + 1])
        # depth 1: pairs (f_0, x_1) .. (f_t, x_{t+1}); depth 2 feeds the predicted feature with x_{t+2}
        out = eagle1_draft(config, layer, fc, embed, features[: t + 1], ids[1 : t + 2])
        theirs1 = torch.log_softmax(draft.backbone.lm_head(out[0, -1]), -1)
        torch.testing.assert_close(
            draft.heads.draft_step(state, ids[None, t + 1 : t + 2], draft.backbone.lm_head)[0], theirs1, rtol=1e-4, atol=1e-4
        )
        out2 = eagle1_draft(config, layer, fc, embed, torch.cat([features[: t + 1], out[0, -1:]]), ids[1 : t + 3])
        theirs2 = torch.log_softmax(draft.backbone.lm_head(out2[0, -1]), -1)
        torch.testing.assert_close(
            draft.heads.draft_step(state, ids[None, t + 1 : t + 3], draft.backbone.lm_head)[0], theirs2, rtol=1e-4, atol=1e-4
        )


def test_eagle3_import_drafts_what_the_reference_computes_over_its_reduced_vocabulary(demo_tokenizer, tmp_path):
    base = tmp_path / "base4"
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(vocab_size=len(demo_tokenizer), layers=4, init_std=0.3)).save_pretrained(base)
    demo_tokenizer.save_pretrained(base)
    config = tiny_llama_config(vocab_size=len(demo_tokenizer))
    torch.manual_seed(2)
    reference = Eagle3Reference(config, draft_vocab=300).eval()
    for p in reference.parameters():
        nn.init.normal_(p, std=0.1)
    draft_ids = torch.randperm(1000)[:300].sort().values
    d2t = draft_ids - torch.arange(300)
    source = tmp_path / "eagle3"
    source.mkdir()
    save_file({k: v.contiguous() for k, v in reference.checkpoint(d2t).items()}, str(source / "model.safetensors"))
    (source / "config.json").write_text(
        json.dumps({"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "draft_vocab_size": 300})
    )
    assert (
        main(
            [
                "import", "eagle", str(source), "--out", str(tmp_path / "heads"), "--base", str(base), "--num-heads", "4", "--fuse-layers",
                "0", "1", "2"
            ]
        )
        == 0
    )
    draft = DraftModel.from_pretrained(tmp_path / "heads")
    assert draft.heads.config.fuse_layers == [0, 1, 2] and draft.heads.config.draft_vocab_size == 300
    ids = torch.randint(0, 1000, (12,))
    t = 6
    with torch.no_grad():
        features = draft.backbone.features(ids[None], layers=(0, 1, 2)).features
        fused = reference.fc(torch.cat([features[i][0] for i in (0, 1, 2)], dim=-1))
        state = draft.heads.begin_draft({i: features[i][:, : t + 1] for i in (0, 1, 2)}, ids[None, : t + 1])
        embed = draft.backbone.embed_tokens
        hidden, tokens = fused[: t + 1], ids[1 : t + 2]
        for depth in (1, 2, 3):
            out = reference.layer(embed(tokens), hidden)
            theirs = torch.full((len(demo_tokenizer),), float("-inf"))
            theirs[draft_ids] = torch.log_softmax(reference.lm_head(reference.norm(out[-1])), -1)
            reduced = draft.heads.draft_step(state, ids[None, t + 1 : t + 1 + depth], draft.backbone.lm_head)[0]
            assert reduced.shape == (len(draft_ids),)  # drafting never touches the full vocabulary
            ours = torch.full_like(theirs, float("-inf")).index_copy(0, draft.heads.draft_to_token, reduced)
            assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
            torch.testing.assert_close(ours[draft_ids], theirs[draft_ids], rtol=1e-4, atol=1e-4)
            hidden, tokens = torch.cat([hidden, out[-1:]]), ids[1 : t + 2 + depth]


def test_eagle_import_refuses_a_layer_shaped_unlike_the_base(tiny_base, tmp_path):
    source = tmp_path / "e"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 8}))
    with pytest.raises(ModelLoadError, match=r"e/config.json: num_attention_heads is 8 but the base model has 4"):
        import_eagle(str(source), tmp_path / "out", base=str(tiny_base))
    (source / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(ModelLoadError, match=r"e: no weights file"):
        import_eagle(str(source), tmp_path / "out", base=str(tiny_base))
    torch.save({"layers.0.self_attn.q_proj.weight": torch.zeros(64, 64)}, source / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"pytorch_model.bin: tensor 'fc.weight' is missing: not an EAGLE draft model"):
        import_eagle(str(source), tmp_path / "out", base=str(tiny_base))
    assert not (tmp_path / "out").exists()
