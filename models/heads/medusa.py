"""Medusa heads (Cai et al., 2024): K parallel heads on the last hidden state.

Head k is L residual blocks x + SiLU(W x + b) followed by a vocabulary projection. W and b start
at zero, so an untrained head is the identity and predicts what the base model predicts next; the
projection is the base lm_head itself (`share_lm_head`, no extra vocabulary matrices) or a copy of
it per head. Every block has its own weights: the reference implementation's `[ResBlock(h)] * L`
repeats one block object L times, which silently shares its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch
from torch import nn

from draftheads.models.backbone import LAST, Backbone
from draftheads.models.heads.base import DraftHeads, HeadConfig, HeadOutput
from draftheads.models.heads.layers import ResBlock
from draftheads.models.registry import register_head


@dataclass
class MedusaConfig(HeadConfig):
    """Medusa-1 heads."""

    renamed = MappingProxyType({"num_layers": "head_layers"})

    head_type: Literal["medusa"] = "medusa"
    """Family tag."""
    head_layers: int = 1
    """Residual blocks per head (`num_layers` is read as this too, with a warning)."""
    share_lm_head: bool = True
    """Project with the base lm_head (frozen) instead of one trainable vocabulary matrix per head."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_layers < 0:
            raise ValueError(f"head_layers must be at least 0, got {self.head_layers}")


@register_head("medusa")
class MedusaHeads(DraftHeads):
    """K independent heads; drafting ignores the path (every depth reads the same hidden state)."""

    config_class = MedusaConfig

    def __init__(self, config: MedusaConfig, hidden_size: int, vocab_size: int):
        super().__init__(config, vocab_size)
        # One ResBlock object per (head, layer): a list comprehension, never `[block] * L`.
        self.blocks = nn.ModuleList(
            nn.Sequential(*[ResBlock(hidden_size) for _ in range(config.head_layers)]) for _ in range(config.num_heads)
        )
        self.projections = (
            None
            if config.share_lm_head
            else nn.ModuleList(nn.Linear(hidden_size, self.draft_vocab, bias=False) for _ in range(config.num_heads))
        )

    @classmethod
    def build(cls, config: MedusaConfig, backbone: Backbone) -> "MedusaHeads":
        """Heads for `backbone`; unshared projections start as copies of its lm_head (its draft
        vocabulary's rows)."""
        heads = cls(config, backbone.hidden_size, backbone.vocab_size)
        with torch.no_grad():
            for projection in heads.own_projections():
                projection.weight.copy_(backbone.lm_head.weight[heads.to_tokens(torch.arange(heads.draft_vocab))])
        return heads.to(device=backbone.lm_head.weight.device, dtype=backbone.lm_head.weight.dtype)

    def own_projections(self) -> list[nn.Linear]:
        """The per-head vocabulary matrices (unshared projections)."""
        return list(self.projections) if self.projections is not None else []

    def forward(
        self,
        features: dict[int, torch.Tensor],
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        depths: int | None = None,
    ) -> HeadOutput:
        """States of every head at every position."""
        hidden = features[LAST]
        return HeadOutput(states=[block(hidden) for block in self.blocks[: depths or self.config.num_heads]])

    def project(self, depth: int, states: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Logits of head `depth` (1-based) over the draft vocabulary."""
        if self.projections is None:
            return self.shared_projection(states, lm_head)
        return self.projections[depth - 1](states)

    def begin_draft(self, features: dict[int, torch.Tensor], input_ids: torch.Tensor, previous=None) -> torch.Tensor:
        """The state is the hidden state of the last accepted token, [hidden]."""
        return features[LAST][0, -1]

    def draft_step(self, state: torch.Tensor, paths: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Head d's log-probabilities, the same for every path (Medusa heads are parallel)."""
        depth = paths.shape[1]
        logits = self.project(depth, self.blocks[depth - 1](state), lm_head).float()
        return torch.log_softmax(logits, dim=-1).expand(paths.shape[0], -1)
