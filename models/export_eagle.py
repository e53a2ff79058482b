"""Export EAGLE heads to the SafeAILab layout SGLang and vLLM load (the inverse of import_eagle).

- EAGLE-3 (`fuse_layers`): `fc.weight` (the fusion), `midlayer.*` (the decoder layer with
  `input_layernorm` on the embedding half and `hidden_norm` on the feature half), `norm.weight`,
  `lm_head.weight` over the draft vocabulary and, for a reduced one, `d2t` (token id = draft id +
  d2t[draft id]) with `t2d` (which tokens are drafted); config `architectures:
  ["LlamaForCausalLMEagle3"]`, `draft_vocab_size`. With the whole vocabulary there is no d2t: vLLM
  keeps no such parameter then and refuses a checkpoint that has one. Serving engines read the
  inputs of decoder layers 2, N//2 and N-3: heads that fuse other layers are refused.
- EAGLE-1: `fc.weight|bias` and `layers.0.*` (no input norm), projected by the base lm_head. The
  engines disagree about it (`models/engines.py`): the `architectures` list names each target's
  class, no config `bias` key is written (vLLM and SGLang read it as attention biases the layout
  does not hold), `fc.bias` is always written (SGLang's fc always has one; zeros when the heads have
  none), and a non-zero fc bias is refused for vLLM, whose fc has none and drops it silently.

Our residual gates fold into the weights they scale (o_proj and down_proj), which the reference
layer has ungated; a full-vocabulary EAGLE-3 head gets the base lm_head materialised.
Reduced-vocabulary EAGLE-1 heads have no place in that layout and are refused.
"""

from __future__ import annotations

import torch

from draftheads.models.draft_model import DraftModel
from draftheads.models.engines import EngineRules, eagle1_architectures
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


def export_eagle(draft: DraftModel, engines: list[EngineRules]) -> tuple[dict, dict[str, torch.Tensor], str, dict]:
    """(config.json, tensors of model.safetensors, weights file name, fields of the serving
    commands) of the SafeAILab layout, loadable by every engine of `engines`."""
    heads = draft.heads
    config = heads.config
    if config.head_type != "eagle":
        raise ModelLoadError(
            f"the eagle layout holds EAGLE heads; these are {config.head_type} heads (export them as medusa, or keep the draftheads layout)"
        )
    rope = getattr(draft.backbone.config, "rope_scaling", None) or {}
    if rope and rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ModelLoadError(
            f"the base model uses {rope.get('rope_type', rope.get('type'))} RoPE scaling, which our draft layer does not apply: "
            "an export would not draft as these heads do"
        )
    if not config.fused:
        return _eagle1(draft, engines)
    expected = default_fuse_layers(draft.backbone.num_layers)
    if list(config.fuse_layers) != expected:
        raise ModelLoadError(
            f"fuse_layers {list(config.fuse_layers)}: SGLang and vLLM fuse the outputs of layers {expected} of a "
            f"{draft.backbone.num_layers}-layer base (the inputs of layers 2, N//2 and N-3); these heads read others"
        )
    tensors = _layer_tensors(heads, "midlayer.") | {
        "fc.weight": heads.fuse.weight.detach(),
        "midlayer.input_layernorm.weight": heads.layer.embed_norm.weight.detach(),
        "midlayer.hidden_norm.weight": heads.layer.feature_norm.weight.detach(),
        "norm.weight": heads.norm.weight.detach(),
    }
    vocab = heads.vocab_size
    if heads.lm_head is not None and heads.lm_head.weight.shape[0] < vocab:
        tokens = heads.draft_to_token.cpu()
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[tokens] = True
        tensors |= {"lm_head.weight": heads.lm_head.weight.detach(), "d2t": (tokens - torch.arange(tokens.numel())).long(), "t2d": t2d}
    else:  # the whole vocabulary: no d2t (vLLM refuses one there), so its rows must be in token order
        if heads.lm_head is not None and not torch.equal(heads.draft_to_token.cpu(), torch.arange(vocab)):
            raise ModelLoadError(
                "a full-vocabulary draft head whose rows are not in token order: the layout would need a d2t, which vLLM refuses there"
            )
        tensors["lm_head.weight"] = (heads.lm_head if heads.lm_head is not None else draft.backbone.lm_head).weight.detach()
    serving = {"algorithm": "EAGLE3", "method": "eagle3"}
    extra = {"architectures": ["LlamaForCausalLMEagle3"], "draft_vocab_size": tensors["lm_head.weight"].shape[0]}
    return _config(draft, extra), tensors, "model.safetensors", serving


def _eagle1(draft: DraftModel, engines: list[EngineRules]) -> tuple[dict, dict[str, torch.Tensor], str, dict]:
    heads = draft.heads
    if heads.config.draft_vocab_size:
        raise ModelLoadError(
            "EAGLE-1 heads with a reduced draft vocabulary: the EAGLE-1 layout projects with the base lm_head over the whole vocabulary, "
            "so they cannot be exported exactly"
        )
    fc = heads.layer.fc
    bias = fc.bias.detach() if fc.bias is not None else torch.zeros(fc.weight.shape[0])
    dropping = [r.version for r in engines if r.eagle1_fc_bias == "none"]
    if dropping and bool(bias.any()):
        raise ModelLoadError(
            f"{', '.join(dropping)}: its EAGLE-1 fc has no bias and drops an fc.bias silently, and these heads' fc bias is not zero "
            f"(max |b| {bias.abs().max().item():.3g}): "
            "export for another engine (--engine sglang or reference), or train with heads.fc_bias=false"
        )
    tensors = _layer_tensors(heads, "layers.0.") | {"fc.weight": fc.weight.detach(), "fc.bias": bias}
    # SafeAILab's EAGLE-1 checkpoints carry the base model's embedding; engines may read it from there
    tensors["embed_tokens.weight"] = draft.backbone.embed_tokens.weight.detach()
    serving = {"algorithm": "EAGLE", "method": "eagle"}
    return _config(draft, {"architectures": eagle1_architectures(engines)}), tensors, "model.safetensors", serving
