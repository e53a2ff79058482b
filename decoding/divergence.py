"""Where two greedy decodings of the same model part, and whether that is a near tie.

In reduced precision (bf16, fp16) verifying K tokens in one forward and decoding them one by one run
different kernels, so their logits differ in the last bits. Where the model's two best tokens are
that close, either argmax is the model's greedy choice, and a tree decoder may follow the other
one. Such a divergence is told apart from a real mismatch by the reference model's own top-2 logit
gap at the first differing position: at or below `epsilon` it is a near tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from draftheads.models.backbone import Backbone

NEAR_TIE_EPSILON = {torch.float32: 1e-3, torch.bfloat16: 0.5, torch.float16: 0.05}
"""Default near-tie thresholds (logit units) by dtype: a few units in the last place of a top logit
of about 16-32 (bf16 keeps 8 significant bits: 0.125 apart there; fp16 11 bits; fp32 24 bits,
whose kernels still differ by about 1e-5 relative)."""


@dataclass
class Divergence:
    """The first position where a decoding differs from the reference."""

    position: int
    """Index into the generated tokens."""
    gap: float
    """Top-2 logit gap of the reference model after the common prefix."""
    near_tie: bool
    """gap <= epsilon: a near-tie flip, not a real mismatch."""

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {"position": self.position, "gap": self.gap, "near_tie": self.near_tie}


def near_tie_epsilon(dtype: torch.dtype) -> float:
    """The default threshold for `dtype`."""
    return NEAR_TIE_EPSILON.get(dtype, NEAR_TIE_EPSILON[torch.float32])


@torch.inference_mode()
def first_divergence(
    backbone: Backbone, prompt_ids: list[int], reference: list[int], other: list[int], epsilon: float
) -> Divergence | None:
    """None when `other` equals `reference` (or is a prefix of it, or it of `other`: a stop that
    came at a different step is not a divergence in the tokens); else where they part and the
    reference model's top-2 logit gap there."""
    position = next((i for i, (a, b) in enumerate(zip(reference, other)) if a != b), None)
    if position is None:
        return None
    device = backbone.lm_head.weight.device
    ids = torch.tensor([prompt_ids + reference[:position]], device=device)
    logits = backbone.features(ids, logits=True).logits[0, -1].float()
    top = logits.topk(2).values
    gap = float(top[0] - top[1])
    return Divergence(position, gap, gap <= epsilon)
