"""Test-only draft heads that know the base model's greedy continuation.

Trained heads cannot be made right on demand, but acceptance edges (accept all, accept a prefix,
accept nothing, EOS or max_new_tokens inside an accepted path) need drafts that are right to an
exact depth. These heads run the real backbone on the committed context plus the path and draft
its argmax up to `correct_depth`, and a wrong token below it.
"""

from __future__ import annotations

import torch

from draftheads.models.backbone import Backbone
from draftheads.models.heads.base import DraftHeads, HeadConfig


class OracleHeads(DraftHeads):
    """Drafts the base model's greedy tokens for depths <= correct_depth, wrong ones deeper."""

    def __init__(self, backbone: Backbone, num_heads: int, correct_depth: int):
        super().__init__(HeadConfig(num_heads=num_heads), backbone.vocab_size)
        self.backbone = backbone
        self.correct_depth = correct_depth
        self.context: list[int] = []

    def begin_draft(self, features, input_ids, previous=None):
        self.context.extend(input_ids[0].tolist())
        return None

    def draft_step(self, state, paths, lm_head):
        depth = paths.shape[1]
        vocab = self.backbone.vocab_size
        rows = []
        for path in paths.tolist():
            ids = torch.tensor([self.context + path])
            best = int(self.backbone.model(ids, use_cache=False).logits[0, -1].argmax())
            token = best if depth <= self.correct_depth else (best + 1) % vocab
            rows.append(torch.nn.functional.one_hot(torch.tensor(token), vocab).float() * 10)
        return torch.log_softmax(torch.stack(rows), dim=-1)


class NoisyOracleHeads(OracleHeads):
    """Drafts the base model's own next-token logits after each path, plus a fixed perturbation of
    each prefix (a function of the prefix only, so the draft is a proper distribution q != p):
    drafts are accepted deep often enough, and rejected often enough, for distribution tests to see
    mistakes below the root."""

    def __init__(self, backbone: Backbone, num_heads: int, noise: float = 1.5, sharpness: float = 1.0):
        super().__init__(backbone, num_heads, correct_depth=num_heads)
        self.noise, self.sharpness = noise, sharpness

    def begin_draft(self, features, input_ids, previous=None):
        if previous is None:  # a new generation: forget the last one's context
            self.context = []
        self.context.extend(input_ids[0].tolist())
        return True

    def draft_step(self, state, paths, lm_head):
        rows = []
        for path in paths.tolist():
            ids = self.context + path
            logits = self.backbone.model(torch.tensor([ids]), use_cache=False).logits[0, -1].float()
            generator = torch.Generator().manual_seed(hash(tuple(ids)) % (1 << 31))
            rows.append(self.sharpness * (logits + self.noise * torch.randn(logits.shape, generator=generator)))
        return torch.stack(rows)


class ScriptedHeads(OracleHeads):
    """Drafts from known continuations: after a context that follows one of `references` (prompt +
    the reference decoder's answer), depths up to this step's entry of `depths` draft the
    reference's next tokens and deeper ones a wrong token. No forward pass: cheap on a real
    135M model. Steps cycle through `depths`, so full, partial and empty acceptances all occur,
    and an EOS or a stop string inside an accepted path too."""

    def __init__(self, backbone: Backbone, num_heads: int, depths: tuple[int, ...] = (4, 0, 2, 1, 3)):
        super().__init__(backbone, num_heads, correct_depth=num_heads)
        self.references: list[list[int]] = []
        self.depths, self.steps = depths, 0

    def begin_draft(self, features, input_ids, previous=None):
        if previous is None:
            self.context = []
        self.context.extend(input_ids[0].tolist())
        self.steps += 1
        return True

    def draft_step(self, state, paths, lm_head):
        depth = paths.shape[1]
        vocab = self.backbone.vocab_size
        rows = []
        for path in paths.tolist():
            ids = self.context + path
            follows = [r for r in self.references if len(r) > len(ids) and r[: len(ids)] == ids]
            right = follows[0][len(ids)] if follows else 0
            token = right if depth <= self.depths[self.steps % len(self.depths)] else (right + 1) % vocab
            rows.append(torch.nn.functional.one_hot(torch.tensor(token), vocab).float() * 10)
        return torch.log_softmax(torch.stack(rows), dim=-1)
