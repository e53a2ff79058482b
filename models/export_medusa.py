"""Export Medusa heads to the FasterDecoding layout (the inverse of import_medusa), which Medusa's
own inference code and TensorRT-LLM's Medusa conversion read: `config.json` with
`medusa_num_heads`, `medusa_num_layers` and `base_model_name_or_path`, and
`medusa_lm_head.pt` (a torch state dict: FasterDecoding's loader reads that file only, TensorRT-LLM's
conversion reads it first) holding head i as `{i}.{j}.linear.weight|bias` (blocks) and
`{i}.{L}.weight` (its vocabulary projection; a shared lm_head is materialised per head).

The reference repeats ONE block object L times per head, so heads whose blocks differ (L > 1,
trained separately) cannot be written exactly and are refused, as are reduced draft vocabularies
(the layout projects onto the whole vocabulary) and families other than Medusa.
"""

from __future__ import annotations

import json

import torch

from draftheads.models.draft_model import DraftModel
from draftheads.models.engines import EngineRules
from draftheads.utils.errors import ModelLoadError

WEIGHTS = "medusa_lm_head.pt"


def export_medusa(draft: DraftModel, engines: list[EngineRules]) -> tuple[dict, dict[str, torch.Tensor], str, dict]:
    """(config.json, tensors, weights file name, fields of the serving commands) of the
    FasterDecoding layout (the engines that load it agree on it)."""
    heads = draft.heads
    config = heads.config
    if config.head_type != "medusa":
        raise ModelLoadError(
            f"the medusa layout holds Medusa heads; {config.head_type} heads condition on the drafted path, which it cannot express"
        )
    if config.draft_vocab_size:
        raise ModelLoadError(
            f"a reduced draft vocabulary ({config.draft_vocab_size} tokens): the Medusa layout projects onto the whole vocabulary, "
            "so these heads cannot be exported exactly; train with heads.draft_vocab_size=0 to export them"
        )
    layers = config.head_layers
    tensors = {}
    for i, blocks in enumerate(heads.blocks):
        for j in range(layers):
            for part in ("weight", "bias"):
                value = getattr(blocks[j].linear, part).detach()
                first = getattr(blocks[0].linear, part).detach()
                if not torch.equal(value, first):
                    raise ModelLoadError(f"head {i}: its {layers} residual blocks differ, and the Medusa layout repeats one block per head")
                tensors[f"{i}.{j}.linear.{part}"] = value.clone()
        projection = heads.projections[i].weight if heads.projections is not None else draft.backbone.lm_head.weight
        tensors[f"{i}.{layers}.weight"] = projection.detach().clone()
    base = config.base
    out = {
        "medusa_num_heads": config.num_heads,
        "medusa_num_layers": layers,
        "base_model_name_or_path": base.hub_id or base.model,
        "hidden_size": draft.backbone.hidden_size,
        "vocab_size": draft.backbone.vocab_size,
    }
    tree = config.tree.paths if config.tree is not None else [[0] * depth for depth in range(1, config.num_heads + 1)]
    return out, tensors, WEIGHTS, {"layers": layers, "choices": json.dumps(tree, separators=(", ", ": "))}
