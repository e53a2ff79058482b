"""Every emitted token checked against the model: teacher-forced re-scoring.

After decoding, a method's whole answer goes through the base model once more, teacher-forced (the
prompt and every emitted token in one forward, plain attention, no cache of the engine's), and at
each emitted position the gap `max logit - logit of the emitted token` is read. Greedy decoding is
exact when every gap is 0. In reduced precision (bf16, fp16) one-at-a-time, tree and teacher-forced
forwards run different kernels and round differently, so where the model's best tokens lie within
a few units in the last place either one is its greedy choice: a gap up to `epsilon` is such a near
tie, a gap above it is a real mismatch. Unlike comparing with another decoding up to where the two
part, this checks every token, however the method got there.

Two re-scorings are made. In the dtype the eval decodes in: the model as it is served, and the one
whose greedy choice lossless decoding must reproduce (0 real mismatches). And in fp32 on the same
weights (an upcast copy), whose arithmetic the decode's rounding cannot share: where bf16 arithmetic
itself moves a logit past its rival, every method, our autoregressive decoding and HF `generate`
included, emits a token the fp32 twin would not, so the fp32 counts are read against the
autoregressive methods' (near 0 on a trained model; a model with very sharp logits can disagree
often). Both use the decode dtype's
epsilon, since the decode's rounding is what a near tie absorbs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from draftheads.models.backbone import LAST, Backbone

NEAR_TIE_EPSILON = {torch.float32: 1e-3, torch.bfloat16: 0.5, torch.float16: 0.05}
"""Default near-tie thresholds (logit units) by decode dtype: a few units in the last place of a typical
top logit (bf16 keeps 8 significant bits, fp16 11, fp32 24, whose kernels still differ slightly)."""


def near_tie_epsilon(dtype: torch.dtype) -> float:
    """The default threshold for a decode in `dtype`."""
    return NEAR_TIE_EPSILON.get(dtype, NEAR_TIE_EPSILON[torch.float32])


def dtype_name(backbone: Backbone) -> str:
    """`bfloat16`, `float32`, ...: the dtype the backbone computes its logits in."""
    return str(backbone.lm_head.weight.dtype).removeprefix("torch.")


def fp32_twin(backbone: Backbone) -> Backbone:
    """The same weights upcast to fp32, with plain SDPA attention (`backbone` itself if already fp32)."""
    if backbone.lm_head.weight.dtype == torch.float32:
        return backbone
    model = copy.deepcopy(backbone.model).float().eval()
    model.set_attn_implementation("sdpa")
    return Backbone(model, backbone.tokenizer, backbone.location)


@torch.inference_mode()
def token_gaps(backbone: Backbone, prompt_ids: list[int], tokens: list[int]) -> list[float]:
    """For each emitted token, how far its logit lies below the best one at its position (0: the
    model's argmax), from one teacher-forced forward of the prompt and the tokens."""
    if not tokens:
        return []
    device = backbone.lm_head.weight.device
    ids = torch.tensor([prompt_ids + tokens[:-1]], device=device)
    hidden = backbone.features(ids).features[LAST][0, len(prompt_ids) - 1 :]
    logits = backbone.logits(hidden).float()
    chosen = logits.gather(-1, torch.tensor(tokens, device=device)[:, None])[:, 0]
    return (logits.max(-1).values - chosen).clamp_(min=0).tolist()


@dataclass
class TokenCheck:
    """One method's emitted tokens, re-scored in one dtype."""

    tokens: int
    """Emitted tokens re-scored (every one the method emitted)."""
    gaps: list[tuple[int, int, float]]
    """(turn, position, gap) of every token that is not the re-scored argmax (gap > 0)."""

    def mismatches(self, epsilon: float) -> int:
        """Tokens more than `epsilon` below their position's best logit: the model would not emit them."""
        return sum(gap > epsilon for _, _, gap in self.gaps)

    def near_ties(self, epsilon: float) -> int:
        """Tokens other than the re-scored argmax, within `epsilon` of it."""
        return sum(0 < gap <= epsilon for _, _, gap in self.gaps)

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "gaps": [list(g) for g in self.gaps]}

    @classmethod
    def from_json(cls, data: dict) -> "TokenCheck":
        return cls(int(data["tokens"]), [(int(t), int(p), float(g)) for t, p, g in data["gaps"]])


def check_turns(backbone: Backbone, turns: list[tuple[list[int], list[int]]]) -> TokenCheck:
    """Re-score every (prompt ids, emitted tokens) turn of one method's answer."""
    gaps = []
    for turn, (prompt_ids, tokens) in enumerate(turns):
        gaps += [(turn, position, gap) for position, gap in enumerate(token_gaps(backbone, prompt_ids, tokens)) if gap > 0]
    return TokenCheck(sum(len(tokens) for _, tokens in turns), gaps)
