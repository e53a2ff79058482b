"""Hydra heads (Ankner et al., 2024): sequentially dependent draft heads, and Hydra++.

Head k reads the backbone's hidden state at t together with the embeddings of the tokens at depths
< k of the path it extends (the root t+1, then the drafted ones, so depth k sees t+1..t+k): unlike
Medusa's heads, each head knows what the heads before it guessed. Our formulation of the head is
u_k = a_t + P_k [e(t+1); ...; e(t+k)] followed by residual blocks and the base lm_head, where P_k
starts at zero; this is the paper's first MLP layer over the concatenation [h_t; e(t+1..t+k)] with
the block on h_t held at the identity, so untrained heads repeat the base model's next-token guess
(as Medusa's do) and training only has to learn what the path adds.

Hydra++ options, each its own switch:
- `prefix_attention`: one decoder layer over the backbone's hidden states before the heads (a_t is
  its output instead of h_t), started from the backbone's last layer with its residual branches
  gated at zero (the gated layer Clover's augmenting block uses). While drafting it keeps its KV
  cache across steps.
- `head_layers`: deeper residual MLP heads (the paper's Hydra++ uses 4).
- teacher distillation: the KL to the backbone's own distribution, which is the trainer's
  `train.loss.soft_label_weight` (1.0 in the Hydra++ recipe), not a head setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from draftheads.models.backbone import LAST, Backbone
from draftheads.models.heads.base import DraftHeads, HeadConfig, HeadOutput
from draftheads.models.heads.layers import AugmentingBlock, ResBlock, Shape, SharedEmbedding, appended, doc_mask, shifted
from draftheads.models.registry import register_head


@dataclass
class HydraConfig(HeadConfig):
    """Hydra and Hydra++ heads."""

    head_type: Literal["hydra"] = "hydra"
    """Family tag."""
    head_layers: int = 1
    """Residual blocks per head after the path-conditioned input layer (Hydra++: 4)."""
    prefix_attention: bool = False
    """Hydra++: run one decoder layer over the backbone's hidden states before the heads."""
    init_from_last_layer: bool = True
    """Start the prefix-attention layer from the backbone's last decoder layer (Llama-style names)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_layers < 0:
            raise ValueError(f"head_layers must be at least 0, got {self.head_layers}")


@dataclass
class HydraDraftState:
    """Drafting state: the prefix layer's KV cache and a_t of the last accepted token."""

    length: int
    """Tokens the state has seen (the next accepted token gets this position)."""
    block_cache: tuple[torch.Tensor, torch.Tensor] | None
    anchor: torch.Tensor
    """[H]: a_t."""


@register_head("hydra")
class HydraHeads(DraftHeads):
    """Optional prefix attention + one path-conditioned MLP head per depth."""

    config_class = HydraConfig

    def __init__(self, config: HydraConfig, shape: Shape, embed: nn.Module, vocab_size: int):
        super().__init__(config, vocab_size)
        self.shape = shape
        self.shared = SharedEmbedding(embed)
        self.block = AugmentingBlock(shape) if config.prefix_attention else None
        hidden = shape.hidden
        self.inputs = nn.ModuleList(nn.Linear(depth * hidden, hidden, bias=False) for depth in range(1, config.num_heads + 1))
        for layer in self.inputs:
            nn.init.zeros_(layer.weight)  # untrained: the path adds nothing, a_t predicts as the base does
        self.heads = nn.ModuleList(
            nn.Sequential(*[ResBlock(hidden) for _ in range(config.head_layers)]) for _ in range(config.num_heads)
        )

    @classmethod
    def build(cls, config: HydraConfig, backbone: Backbone) -> "HydraHeads":
        """Heads for `backbone`; the prefix layer starts from its last decoder layer."""
        heads = cls(config, Shape.of(backbone), backbone.embed_tokens, backbone.vocab_size)
        if heads.block is not None and config.init_from_last_layer:
            heads.block.copy_from(backbone.layers[-1])
        return heads.to(device=backbone.lm_head.weight.device, dtype=backbone.lm_head.weight.dtype)

    def _head(self, depth: int, anchor: torch.Tensor, path_embeddings: torch.Tensor) -> torch.Tensor:
        """State of head `depth` from a_t [..., H] and the path's embeddings [..., depth * H]."""
        return self.heads[depth - 1](anchor + self.inputs[depth - 1](path_embeddings))

    def forward(
        self,
        features: dict[int, torch.Tensor],
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        depths: int | None = None,
    ) -> HeadOutput:
        """Depth k at every position t, teacher-forced on tokens t+1..t+k (what a drafted path holds)."""
        hidden = features[LAST]
        batch, length, _ = hidden.shape
        anchor = hidden
        if self.block is not None:
            if position_ids is None:
                position_ids = torch.arange(length, device=hidden.device).expand(batch, -1)
            anchor, _ = self.block(hidden, position_ids, doc_mask(position_ids))
        embeddings = self.shared.embed(input_ids).to(hidden.dtype)
        count = depths or self.config.num_heads
        path = [shifted(embeddings, offset) for offset in range(1, count + 1)]
        states = [self._head(depth, anchor, torch.cat(path[:depth], dim=-1)) for depth in range(1, count + 1)]
        return HeadOutput(states=states)

    def project(self, depth: int, states: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Logits of depth `depth` through the base lm_head (its draft vocabulary's rows)."""
        return self.shared_projection(states, lm_head)

    def begin_draft(
        self, features: dict[int, torch.Tensor], input_ids: torch.Tensor, previous: HydraDraftState | None = None
    ) -> HydraDraftState:
        """Extend the prefix layer's cache with the tokens just accepted; a_t is the last one's."""
        hidden = features[LAST]
        start = previous.length if previous is not None else 0
        if self.block is None:
            return HydraDraftState(start + hidden.shape[1], None, hidden[0, -1])
        positions, mask = appended(start, hidden.shape[1], hidden.device)
        anchor, cache = self.block(hidden, positions, mask, previous.block_cache if previous is not None else None)
        return HydraDraftState(start + hidden.shape[1], cache, anchor[0, -1])

    def draft_step(self, state: HydraDraftState, paths: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Depth d log-probabilities for N paths [N, d] (root token first)."""
        depth = paths.shape[1]
        embeddings = self.shared.embed(paths.to(state.anchor.device)).to(state.anchor.dtype)  # [N, d, H]
        head = self._head(depth, state.anchor, embeddings.flatten(1))
        return torch.log_softmax(self.shared_projection(head, lm_head).float(), dim=-1)
