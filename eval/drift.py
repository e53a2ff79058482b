"""How far a jointly trained backbone moved from the original: greedy agreement and perplexity.

Both are measured on held-out training rows at the positions the backbone's own next-token loss
covers (assistant tokens): agreement is the fraction of those positions where the trained
backbone's argmax equals the original's; perplexity is exp of the mean cross-entropy of the data's
tokens under each model.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from draftheads.models.backbone import LAST, Backbone
from draftheads.train.losses import depth_targets


@torch.no_grad()
def drift_counts(
    trained_hidden: torch.Tensor,
    original_hidden: torch.Tensor,
    batch: dict,
    trained_head: nn.Module,
    original_head: nn.Module,
    chunk_size: int = 2048,
) -> torch.Tensor:
    """[positions, argmax agreements, summed NLL original, summed NLL trained] for one batch (float64)."""
    targets = depth_targets(batch, 0)
    counts = torch.zeros(4, dtype=torch.float64)
    for start in range(0, len(targets), chunk_size):
        rows = targets.rows[start : start + chunk_size]
        cols = targets.positions[start : start + chunk_size]
        tokens = targets.tokens[start : start + chunk_size]
        trained = trained_head(trained_hidden[rows, cols]).float()
        original = original_head(original_hidden[rows, cols]).float()
        counts[0] += tokens.numel()
        counts[1] += (trained.argmax(-1) == original.argmax(-1)).sum().item()
        counts[2] += F.cross_entropy(original, tokens, reduction="sum").item()
        counts[3] += F.cross_entropy(trained, tokens, reduction="sum").item()
    return counts


def drift_summary(counts: torch.Tensor) -> dict:
    """Agreement rate and both perplexities from summed `drift_counts`."""
    positions = max(float(counts[0]), 1.0)
    return {
        "positions": int(counts[0]),
        "agreement": float(counts[1]) / positions,
        "perplexity_original": math.exp(float(counts[2]) / positions),
        "perplexity_trained": math.exp(float(counts[3]) / positions),
    }


def backbone_drift(original: Backbone, trained: Backbone, batches, max_batches: int | None = None) -> dict:
    """Drift of `trained` from `original` over collated batches (two separate models)."""
    counts = torch.zeros(4, dtype=torch.float64)
    device = trained.lm_head.weight.device
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            args = (batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids"))
            new = trained.features(*args).features[LAST]
            old = original.features(*args).features[LAST]
            counts += drift_counts(new, old, batch, trained.lm_head, original.lm_head)
    return drift_summary(counts)


def report_drift(draft, max_batches: int | None, device, dtype: str) -> dict | None:
    """Drift of a jointly trained backbone from its original, for the eval report: measured on the
    held-out rows of the recipe saved with the heads; None for a frozen backbone; {"error": why}
    when it cannot be measured (the report then says so instead of leaving it out)."""
    from draftheads.models.backbone import BackboneConfig, load_backbone
    from draftheads.utils.errors import DraftheadsError

    if draft.backbone_mode == "frozen":
        return None
    recipe_path = (draft.folder or Path(".")) / "recipe.yaml"
    if not recipe_path.is_file():
        return {"error": f"{recipe_path}: missing, so the held-out data of training cannot be rebuilt"}
    try:
        batches = held_out_batches(recipe_path, draft.backbone.tokenizer)
        base = draft.heads.config.base
        original = load_backbone(BackboneConfig(base=base.model, revision=base.revision, dtype=dtype), device)
    except DraftheadsError as exc:
        return {"error": f"cannot measure the backbone's drift: {exc}"}
    return backbone_drift(original, draft.backbone, batches, max_batches)


def held_out_batches(recipe_path: Path, tokenizer, batch_size: int = 4):
    """The held-out rows of the training recipe saved with the heads, as collated batches."""
    from draftheads.data.collate import Collator
    from draftheads.data.dataset import build_datasets
    from draftheads.train.config import load_recipe

    recipe = load_recipe(recipe_path)
    _, held, _, _ = build_datasets(recipe.data, tokenizer, recipe.model.base, False)
    collate = Collator(pad_token_id=tokenizer.pad_token_id or 0)
    return torch.utils.data.DataLoader(held, batch_size=batch_size, collate_fn=collate)
