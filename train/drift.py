"""How far a jointly trained backbone moved from the original, counted on a batch: greedy agreement
and the perplexity of both models at the positions the backbone's own next-token loss covers
(assistant tokens). Training evaluations and `draftheads eval` (eval/drift.py) both use it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from draftheads.train.losses import depth_targets


@torch.no_grad()
def drift_counts(
    trained_hidden: torch.Tensor, original_hidden: torch.Tensor, batch: dict, trained_head: nn.Module, original_head: nn.Module,
    chunk_size: int = 2048
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
