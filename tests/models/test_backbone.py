from __future__ import annotations

import pytest
import torch

from draftheads.models.backbone import LAST, Backbone, BackboneConfig, ModelLocation, load_backbone, resolve_location, tokenizer_fingerprint
from draftheads.utils.errors import ConfigError, ModelLoadError


def tiny_backbone(model) -> Backbone:
    return Backbone(model, tokenizer=None, location=ModelLocation("tiny", "tiny", None, "in-process"))


def test_features_match_the_models_own_hidden_states(tiny_llama):
    backbone = tiny_backbone(tiny_llama)
    ids = torch.randint(0, 128, (2, 9))
    reference = tiny_llama(ids, output_hidden_states=True)
    hooks_before = [len(layer._forward_hooks) for layer in backbone.layers]  # transformers may keep its own
    out = backbone.features(ids, layers=(0, LAST), logits=True)
    assert set(out.features) == {0, LAST}  # only what was asked for
    torch.testing.assert_close(out.features[0], reference.hidden_states[1], rtol=0, atol=0)
    torch.testing.assert_close(out.features[LAST], reference.hidden_states[-1], rtol=0, atol=0)
    torch.testing.assert_close(out.logits, reference.logits, rtol=0, atol=0)
    assert [len(layer._forward_hooks) for layer in backbone.layers] == hooks_before  # ours live for one call


def test_hooks_are_removed_when_the_forward_fails(tiny_llama):
    backbone = tiny_backbone(tiny_llama)
    hooks_before = [len(layer._forward_hooks) for layer in backbone.layers]
    with pytest.raises(IndexError):
        backbone.features(torch.tensor([[500]]), layers=(1,))  # token id beyond the vocabulary
    assert [len(layer._forward_hooks) for layer in backbone.layers] == hooks_before


def test_shared_parts_and_sizes(tiny_llama):
    backbone = tiny_backbone(tiny_llama)
    assert (backbone.hidden_size, backbone.vocab_size, backbone.num_layers) == (64, 128, 2)
    assert backbone.lm_head.weight is backbone.embed_tokens.weight  # tied in this config
    assert backbone.final_norm is tiny_llama.model.norm


def test_out_of_range_layer_is_a_clear_error(tiny_llama):
    with pytest.raises(ConfigError, match="feature layer 2 is out of range: tiny has 2 layers"):
        tiny_backbone(tiny_llama).features(torch.tensor([[1, 2]]), layers=(2,))


def test_load_from_local_folder(tiny_llama, demo_tokenizer, tmp_path):
    tiny_llama.save_pretrained(tmp_path)
    demo_tokenizer.save_pretrained(tmp_path)
    backbone = load_backbone(BackboneConfig(base=str(tmp_path), dtype="bfloat16"))
    assert backbone.model.dtype == torch.bfloat16 and not backbone.model.training
    assert tokenizer_fingerprint(backbone.tokenizer) == tokenizer_fingerprint(demo_tokenizer)


def test_fingerprint_changes_with_the_chat_template(demo_tokenizer):
    import copy

    other = copy.deepcopy(demo_tokenizer)
    other.chat_template = "{{ messages[0]['content'] }}"
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(demo_tokenizer)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("demo:gpt-5", "unknown demo model 'demo:gpt-5'; known: demo:smollm2-135m"),
        ("./nowhere/model.gguf", "no such GGUF file"),
        ("./nowhere", "not a model folder, a .gguf file, a demo name or a Hub id"),
    ],
)
def test_bad_model_specs(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve_location(spec)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        resolve_location(str(tmp_path))


def test_hub_ids_pass_through_with_revision():
    location = resolve_location("org/model", revision="abc123")
    assert (location.path, location.revision, location.origin, location.hub_id) == ("org/model", "abc123", "org/model@abc123", "org/model")
    assert resolve_location("demo:smollm2-135m").hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_demo_model_is_converted_once_into_a_plain_folder():
    import json
    from pathlib import Path

    folder = Path(resolve_location("demo:smollm2-135m").path)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["hidden_size"] == 576
    assert (folder / "model.safetensors").is_file() and (folder / "draftheads_source.json").is_file()
    assert resolve_location("demo:smollm2-135m").path == str(folder)  # cached: same folder, no new conversion
