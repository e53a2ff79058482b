"""Import FasterDecoding Medusa-1 heads (the reference implementation's checkpoints on the Hub).

Their layout: `config.json` with `medusa_num_heads`, `medusa_num_layers` and
`base_model_name_or_path`; weights in `medusa_lm_head.safetensors` or `medusa_lm_head.pt`, the
state dict of a ModuleList whose head i is `Sequential(ResBlock x L, Linear(hidden, vocab))`:
`{i}.{j}.linear.weight|bias` for the blocks and `{i}.{L}.weight` for the head's own projection.
The reference builds the blocks as `[ResBlock(h)] * L`, one block object repeated, so all L blocks
of a head hold the same weights; a saver that drops repeated tensors keeps only block 0, which is
then used for every block. Our Medusa heads have a block per layer and unshared projections
(`share_lm_head: false`), so the imported heads compute exactly what the reference's do.
"""

from __future__ import annotations

from pathlib import Path

import torch

from draftheads.models.backbone import Backbone, BackboneConfig, load_backbone
from draftheads.models.draft_model import DraftModel
from draftheads.models.heads.medusa import MedusaConfig
from draftheads.models.import_common import config_value, read_source_config, read_source_weights, source_folder, write_imported
from draftheads.utils.errors import ModelLoadError

WEIGHT_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt", "medusa_lm_head.bin")


def medusa_state(source: dict[str, torch.Tensor], heads: int, layers: int, where: Path) -> dict[str, torch.Tensor]:
    """Our MedusaHeads state dict (unshared projections) from the reference's medusa_head state dict."""
    state = {}
    for i in range(heads):
        for j in range(layers):
            for part in ("weight", "bias"):
                # The repeated block under any of its names, when a saver kept only one of them.
                names = [f"{i}.{j}.linear.{part}"] + [f"{i}.{other}.linear.{part}" for other in range(layers)]
                found = next((n for n in names if n in source), None)
                if found is None:
                    raise ModelLoadError(f"{where}: tensor '{names[0]}' is missing (head {i}, block {j})")
                state[f"blocks.{i}.{j}.linear.{part}"] = source[found]
        projection = f"{i}.{layers}.weight"
        if projection not in source:
            raise ModelLoadError(f"{where}: tensor '{projection}' (head {i}'s vocabulary projection) is missing")
        state[f"projections.{i}.weight"] = source[projection]
    expected = {f"{i}.{j}.linear.{p}" for i in range(heads) for j in range(layers) for p in ("weight", "bias")}
    expected |= {f"{i}.{layers}.weight" for i in range(heads)}
    unexpected = sorted(set(source) - expected)
    if unexpected:
        raise ModelLoadError(
            f"{where}: tensors {unexpected[:6]} do not belong to {heads} Medusa heads of {layers} block(s) (config.json says so)"
        )
    return state


def import_medusa(
    spec: str, out: str | Path, base: str | None = None, backbone: Backbone | None = None, num_heads: int | None = None,
    fuse_layers: list[int] | None = None,
) -> DraftModel:
    """Convert the FasterDecoding Medusa checkpoint `spec` (folder or Hub id) into a heads folder at
    `out` for `base` (default: the checkpoint's `base_model_name_or_path`). `num_heads` and
    `fuse_layers` are refused: the checkpoint says how many heads it has, and they read no layers."""
    if num_heads is not None or fuse_layers:
        raise ModelLoadError("--num-heads and --fuse-layers apply to eagle checkpoints; a Medusa checkpoint has its own heads")
    folder = source_folder(spec)
    config = read_source_config(folder)
    config_path = folder / "config.json"
    heads = config_value(config, "medusa_num_heads", config_path)
    layers = config_value(config, "medusa_num_layers", config_path)
    if heads < 1 or layers < 0:
        raise ModelLoadError(
            f"{config_path}: medusa_num_heads must be at least 1 and medusa_num_layers at least 0, got {heads} and {layers}"
        )
    if backbone is None:
        base = base or config.get("base_model_name_or_path")
        if not base:
            raise ModelLoadError(f"{config_path}: no 'base_model_name_or_path'; pass the base model (--base)")
        backbone = load_backbone(BackboneConfig(base=base))
    weights, weights_path = read_source_weights(folder, WEIGHT_FILES)
    state = medusa_state(weights, heads, layers, weights_path)
    ours = MedusaConfig(num_heads=heads, head_layers=layers, share_lm_head=False)
    return write_imported(backbone, ours, state, out, {"format": "medusa", "source": str(spec), "weights": weights_path.name})
