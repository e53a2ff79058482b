"""Import SafeAILab EAGLE-1 and EAGLE-3 draft models (the reference implementation's checkpoints).

Both ship a `config.json` in the Llama config's terms (hidden_size, num_attention_heads,
num_key_value_heads, intermediate_size, ...) and weights in `pytorch_model.bin` or
`model.safetensors`:
- EAGLE-1: `fc.weight|bias` (2H -> H over [embedding; feature]) and one decoder layer
  `layers.0.*` without an input norm, projected by the base lm_head.
- EAGLE-3: `fc.weight` (3H -> H, the fusion of three backbone layers), `midlayer.*` (a decoder
  layer whose attention reads [input_layernorm(embedding); hidden_norm(feature)]), `norm.weight`,
  `lm_head.weight` over a reduced draft vocabulary, and `d2t` (token id = draft id + d2t[draft id]).
  The reference reads the inputs of decoder layers 2, N//2 and N-3, which are the outputs of layers
  1, N//2-1 and N-4: our `fuse_layers` default.
The layer's shape must be the base model's (our heads take their layout from the backbone); the
token embedding saved with EAGLE-1 checkpoints is the base model's own and is not imported.
"""

from __future__ import annotations

from pathlib import Path

import torch

from draftheads.models.backbone import Backbone, BackboneConfig, load_backbone
from draftheads.models.draft_model import DraftModel
from draftheads.models.heads.eagle import EagleConfig
from draftheads.models.heads.layers import LLAMA_LAYER_NAMES, Shape
from draftheads.models.import_common import read_source_config, read_source_weights, source_folder, write_imported
from draftheads.utils.errors import ModelLoadError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pt")
LAYER_NAMES = {f"{theirs}.weight": f"{mine}.weight" for mine, theirs in LLAMA_LAYER_NAMES.items()}
"""The reference layer's weight names -> our EagleLayer's."""
IGNORED = ("embed_tokens.weight", "t2d")
"""The base model's embedding (EAGLE-1 saves a copy) and EAGLE-3's token->draft mask (d2t's inverse)."""


def default_fuse_layers(num_layers: int) -> list[int]:
    """Outputs of layers 1, N//2-1 and N-4: the inputs of layers 2, N//2 and N-3 the reference reads."""
    return [1, num_layers // 2 - 1, num_layers - 4]


def _check_shape(config: dict, backbone: Backbone, path: Path) -> None:
    """Refuse a draft layer whose attention/MLP layout differs from the base model's."""
    shape = Shape.of(backbone)
    ours = {
        "hidden_size": shape.hidden,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "intermediate_size": shape.intermediate,
    }
    for key, value in ours.items():
        if key in config and config[key] != value:
            raise ModelLoadError(f"{path}: {key} is {config[key]} but the base model has {value}; the draft layer must share its layout")
    if config.get("num_hidden_layers", 1) != 1:
        raise ModelLoadError(f"{path}: num_hidden_layers is {config['num_hidden_layers']}; only one-layer EAGLE draft models are supported")
    if config.get("norm_before_residual"):
        raise ModelLoadError(f"{path}: norm_before_residual is set; this variant of the EAGLE-3 layer is not supported")


def _layer(weights: dict[str, torch.Tensor], prefix: str, where: Path) -> dict[str, torch.Tensor]:
    state = {}
    for theirs, mine in LAYER_NAMES.items():
        name = prefix + theirs
        if name not in weights:
            raise ModelLoadError(f"{where}: tensor '{name}' is missing")
        state[f"layer.{mine}"] = weights[name]
    return state


def eagle_state(weights: dict[str, torch.Tensor], where: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Our EagleHeads state dict and the config fields it implies, from a SafeAILab state dict."""
    if "fc.weight" not in weights:
        raise ModelLoadError(f"{where}: tensor 'fc.weight' is missing: not an EAGLE draft model")
    one = torch.ones(1)
    state = {"layer.attn_gate": one, "layer.mlp_gate": one}  # the reference's residual branches are ungated
    if any(name.startswith("midlayer.") for name in weights):
        state |= _layer(weights, "midlayer.", where)
        names = (
            ("midlayer.input_layernorm.weight", "layer.embed_norm.weight"), ("midlayer.hidden_norm.weight", "layer.feature_norm.weight"),
            ("norm.weight", "norm.weight"), ("lm_head.weight", "lm_head.weight"),
        )
        for theirs, mine in names:
            if theirs not in weights:
                raise ModelLoadError(f"{where}: tensor '{theirs}' is missing from this EAGLE-3 checkpoint")
            if mine:
                state[mine] = weights[theirs]
        state["fuse.weight"] = weights["fc.weight"]
        draft = weights["lm_head.weight"].shape[0]
        d2t = weights.get("d2t", torch.zeros(draft, dtype=torch.long))  # none: the whole vocabulary, in token order
        if d2t.shape != (draft,):
            raise ModelLoadError(f"{where}: d2t has shape {tuple(d2t.shape)}, expected ({draft},) to match lm_head")
        state["draft_to_token"] = torch.arange(draft) + d2t.long()
        fields = {"draft_vocab_size": draft, "fc_bias": False}
        known = {f"midlayer.{k}" for k in LAYER_NAMES} | {
            "midlayer.input_layernorm.weight",
            "midlayer.hidden_norm.weight",
            "norm.weight",
            "lm_head.weight",
            "d2t",
            "fc.weight",
        }
    else:
        state |= _layer(weights, "layers.0.", where)
        state["layer.fc.weight"] = weights["fc.weight"]
        if "fc.bias" in weights:
            state["layer.fc.bias"] = weights["fc.bias"]
        fields = {"fc_bias": "fc.bias" in weights}
        known = {f"layers.0.{k}" for k in LAYER_NAMES} | {"fc.weight", "fc.bias"}
    unexpected = sorted(set(weights) - known - set(IGNORED))
    if unexpected:
        raise ModelLoadError(f"{where}: tensors {unexpected[:6]} have no place in a one-layer EAGLE draft model")
    return state, fields


def import_eagle(
    spec: str, out: str | Path, base: str | None = None, num_heads: int = 5, fuse_layers: list[int] | None = None,
    backbone: Backbone | None = None,
) -> DraftModel:
    """Convert the SafeAILab EAGLE checkpoint `spec` (folder or Hub id) into a heads folder at `out`
    for `base`, drafting `num_heads` tokens deep (EAGLE-3: fusing `fuse_layers`, default as the reference)."""
    if num_heads < 1:
        raise ModelLoadError(f"{spec}: the draft depth (--num-heads) must be at least 1, got {num_heads}")
    folder = source_folder(spec)
    config = read_source_config(folder)
    config_path = folder / "config.json"
    if backbone is None:
        base = base or config.get("base_model_name_or_path")
        if not base:
            raise ModelLoadError(f"{config_path}: the checkpoint does not name its base model; pass it (--base)")
        backbone = load_backbone(BackboneConfig(base=base))
    _check_shape(config, backbone, config_path)
    weights, weights_path = read_source_weights(folder, WEIGHT_FILES)
    state, fields = eagle_state(weights, weights_path)
    if "draft_vocab_size" in fields and "d2t" not in weights and fields["draft_vocab_size"] != backbone.vocab_size:
        raise ModelLoadError(
            f"{weights_path}: an lm_head of {fields['draft_vocab_size']} rows and no d2t: a reduced draft vocabulary needs its d2t"
        )
    if "draft_vocab_size" in fields:
        fields["fuse_layers"] = fuse_layers or default_fuse_layers(backbone.num_layers)
        fields["training_time_test"] = True
    elif fuse_layers:
        raise ModelLoadError(f"{weights_path}: an EAGLE-1 checkpoint reads the final hidden state; fuse_layers applies to EAGLE-3 only")
    try:
        ours = EagleConfig(num_heads=num_heads, init_from_last_layer=False, **fields)
        for layer in ours.fuse_layers:
            if not 0 <= layer < backbone.num_layers:
                raise ValueError(f"fuse layer {layer} is out of range (the base model has {backbone.num_layers} layers)")
    except ValueError as exc:
        raise ModelLoadError(f"{spec}: {exc} (choose --num-heads / --fuse-layers)") from None
    return write_imported(backbone, ours, state, out, {"format": "eagle", "source": str(spec), "weights": weights_path.name})
