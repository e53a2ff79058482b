"""How far a jointly trained backbone moved from the original: greedy agreement and perplexity.

Both are measured on held-out training rows at the positions the backbone's own next-token loss
covers (assistant tokens): agreement is the fraction of those positions where the trained
backbone's argmax equals the original's; perplexity is exp of the mean cross-entropy of the data's
tokens under each model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from draftheads.models.backbone import LAST, Backbone
from draftheads.train.drift import drift_counts, drift_summary
from draftheads.models.heads_folder import RECIPE_NAME


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
    recipe_path = (draft.folder or Path(".")) / RECIPE_NAME
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
