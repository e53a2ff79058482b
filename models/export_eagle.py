"""Export EAGLE heads to the SafeAILab layout SGLang and vLLM load (the inverse of import_eagle).

- EAGLE-3 (`fuse_layers`): `fc.weight` (the fusion), `midlayer.*` (the decoder layer with
  `input_layernorm` on the embedding half and `hidden_norm` on the feature half), `norm.weight`,
  `lm_head.weight` over the draft vocabulary and `d2t` (token id = draft id + d2t[draft id]) with
  `t2d` (which tokens are drafted); config `architectures: ["LlamaForCausalLMEagle3"]`,
  `draft_vocab_size`. Serving engines read the inputs of decoder layers 2, N//2 and N-3: heads that
  fuse other layers cannot be served there and are refused.
- EAGLE-1: `fc.weight|bias` and `layers.0.*` (no input norm), projected by the base lm_head.

Our residual gates fold into the weights they scale (o_proj and down_proj), which the reference
layer has ungated; a full-vocabulary EAGLE-3 head gets the base lm_head materialised and d2t of
zeros. Reduced-vocabulary EAGLE-1 heads have no place in that layout and are refused.
"""

from __future__ import annotations

import torch

from draftheads.models.draft_model import DraftModel
from draftheads.models.heads.layers import LLAMA_LAYER_NAMES, Shape
from draftheads.models.import_eagle import default_fuse_layers
from draftheads.utils.errors import ModelLoadError


def _layer_tensors(heads, prefix: str) -> dict[str, torch.Tensor]:
    """The decoder layer's weights under the reference names, gates folded in."""
    layer = heads.layer
    out = {}
    for mine, theirs in LLAMA_LAYER_NAMES.items():
        weight = getattr(layer, mine).weight.detach()
        if mine == "o":
            weight = weight * layer.attn_gate.detach()
        elif mine == "down_proj":
            weight = weight * layer.mlp_gate.detach()
        out[f"{prefix}{theirs}.weight"] = weight
    return out


def _config(draft: DraftModel, extra: dict) -> dict:
    shape, base = Shape.of(draft.backbone), draft.heads.config.base
    backbone_config = draft.backbone.config
    return {
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "rms_norm_eps": shape.eps,
        "rope_theta": shape.rope_theta,
        "max_position_embeddings": getattr(backbone_config, "max_position_embeddings", 2048),
        "vocab_size": draft.backbone.vocab_size,
        "tie_word_embeddings": False,
        "base_model_name_or_path": base.hub_id or base.model,
        **extra,
    }


def export_eagle(draft: DraftModel) -> tuple[dict, dict[str, torch.Tensor], str, dict]:
    """(config.json, tensors of model.safetensors, weights file name, fields of the serving
    commands) of the SafeAILab layout."""
    heads = draft.heads
    config = heads.config
    if config.head_type != "eagle":
        raise ModelLoadError(f"the eagle layout holds EAGLE heads; these are {config.head_type} heads (export them as medusa, or keep the draftheads layout)")
    rope = getattr(draft.backbone.config, "rope_scaling", None) or {}
    if rope and rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ModelLoadError(f"the base model uses {rope.get('rope_type', rope.get('type'))} RoPE scaling, which our draft layer does not apply: an export would not draft as these heads do")
    if not config.fused:
        if config.draft_vocab_size:
            raise ModelLoadError("EAGLE-1 heads with a reduced draft vocabulary: the EAGLE-1 layout projects with the base lm_head over the whole vocabulary, so they cannot be exported exactly")
        tensors = _layer_tensors(heads, "layers.0.") | {"fc.weight": heads.layer.fc.weight.detach()}
        if heads.layer.fc.bias is not None:
            tensors["fc.bias"] = heads.layer.fc.bias.detach()
        # SafeAILab's EAGLE-1 checkpoints carry the base model's embedding; engines may read it from there
        tensors["embed_tokens.weight"] = draft.backbone.embed_tokens.weight.detach()
        serving = {"algorithm": "EAGLE", "method": "eagle"}
        return _config(draft, {"architectures": ["LlamaForCausalLM"], "bias": heads.layer.fc.bias is not None}), tensors, "model.safetensors", serving
    expected = default_fuse_layers(draft.backbone.num_layers)
    if list(config.fuse_layers) != expected:
        raise ModelLoadError(
            f"fuse_layers {list(config.fuse_layers)}: SGLang and vLLM fuse the outputs of layers {expected} of a "
            f"{draft.backbone.num_layers}-layer base (the inputs of layers 2, N//2 and N-3); these heads read others"
        )
    vocab = heads.vocab_size
    if heads.lm_head is not None:
        projection, tokens = heads.lm_head.weight.detach(), heads.draft_to_token
    else:  # a full draft vocabulary: the base lm_head, every token its own draft id
        projection, tokens = draft.backbone.lm_head.weight.detach(), torch.arange(vocab)
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[tokens.cpu()] = True
    tensors = _layer_tensors(heads, "midlayer.") | {
        "fc.weight": heads.fuse.weight.detach(),
        "midlayer.input_layernorm.weight": heads.layer.embed_norm.weight.detach(),
        "midlayer.hidden_norm.weight": heads.layer.feature_norm.weight.detach(),
        "norm.weight": heads.norm.weight.detach(),
        "lm_head.weight": projection,
        "d2t": (tokens.cpu() - torch.arange(tokens.numel())).long(),
        "t2d": t2d,
    }
    serving = {"algorithm": "EAGLE3", "method": "eagle3"}
    return _config(draft, {"architectures": ["LlamaForCausalLMEagle3"], "draft_vocab_size": tokens.numel()}), tensors, "model.safetensors", serving
