"""Clover heads (Xiao et al., 2024; Clover-2, 2024): sequential draft heads with a regressive
connection, an attention decoder and an augmenting block. Our own formulation of the papers' design:

- Augmenting block: one pre-norm transformer decoder layer (causal self-attention with RoPE and
  GQA, SwiGLU MLP) over the backbone's final hidden states h, giving a, a view of the sequence
  tuned for drafting. Its weights are copied from the backbone's last decoder layer where the
  names and shapes match (Llama-style layers), and its two residual branches are scaled by
  learnable gates that start at 0, so the untrained block is the identity.
- Regressive connection + attention decoder: the drafting state starts at s_0 = a_t (position t,
  the last accepted token). Depth k takes the token of depth k-1 (the root token t+1 at depth 1,
  then the drafted ones), mixes its embedding with s_{k-1} into x_k, and lets x_k query the
  augmented sequence a_0..a_t (cross-attention, RoPE at position t+k, keys at their own
  positions). The answer updates the state through a gate: s_k = s_{k-1} + σ(G x_k) ⊙ O(attn).
  O starts at zero, so at initialisation every depth repeats the base model's next-token guess.
- Each depth then has its own residual block (as Medusa's), projected with the base lm_head.

Training teacher-forces exactly the tokens a drafted path holds (token t+k at depth k) and keeps
packed documents apart (attention stays within a document); drafting memoises s_k per path
prefix, and the augmenting block keeps its KV cache across decoding steps, so a step costs the
accepted tokens' block forward plus one small cross-attention per drafted node. `predicted_features`
(s_k, the state that stands for the sequence through token t+k) lets the trainer add Clover-2's
feature regression towards the backbone's hidden state at t+k (`train.loss.feature_weight`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from draftheads.models.backbone import LAST, Backbone
from draftheads.models.heads.base import DraftHeads, HeadConfig, HeadOutput
from draftheads.models.heads.layers import AugmentingBlock, ResBlock, Shape, SharedEmbedding, appended, doc_mask, rope, shifted, split_heads
from draftheads.models.registry import register_head


@dataclass
class CloverConfig(HeadConfig):
    """Clover heads."""

    head_type: Literal["clover"] = "clover"
    """Family tag."""
    augmenting_block: bool = True
    """Run one transformer layer over the backbone's hidden states before the heads."""
    init_from_last_layer: bool = True
    """Copy the augmenting block's weights from the backbone's last decoder layer (Llama-style names)."""
    head_layers: int = 1
    """Residual blocks per depth after the regressive update."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_layers < 0:
            raise ValueError(f"head_layers must be at least 0, got {self.head_layers}")


class RegressiveDecoder(nn.Module):
    """One regressive step: token embedding + previous state -> cross-attention over the augmented
    sequence -> gated residual update of the state."""

    def __init__(self, shape: Shape):
        super().__init__()
        self.shape = shape
        inner = shape.heads * shape.head_dim
        self.token_norm = nn.RMSNorm(shape.hidden, eps=shape.eps)
        self.state_norm = nn.RMSNorm(shape.hidden, eps=shape.eps)
        self.mix = nn.Linear(2 * shape.hidden, shape.hidden, bias=False)
        self.q = nn.Linear(shape.hidden, inner, bias=False)
        self.k = nn.Linear(shape.hidden, inner, bias=False)
        self.v = nn.Linear(shape.hidden, inner, bias=False)
        self.o = nn.Linear(inner, shape.hidden, bias=False)
        self.gate = nn.Linear(shape.hidden, shape.hidden)
        nn.init.zeros_(self.o.weight)  # untrained: s_k = s_{k-1}, the base model's own guess

    def keys(self, augmented: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (with RoPE) and values of the augmented states [B, T, H]: [B, heads, T, D] each."""
        s = self.shape
        k = split_heads(self.k(augmented), s.heads, s.head_dim)
        return rope(k, positions, s), split_heads(self.v(augmented), s.heads, s.head_dim)

    def step(
        self, state: torch.Tensor, token_embedding: torch.Tensor, positions: torch.Tensor,
        keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """New state [B, T, H] from `state` and the embedding of the token just drafted, querying at
        `positions` [B, T] the keys/values [B, heads, S, D] allowed by `mask` [B, 1, T, S]."""
        s = self.shape
        batch, length, _ = state.shape
        x = self.mix(torch.cat([self.token_norm(token_embedding), self.state_norm(state)], dim=-1))
        q = rope(split_heads(self.q(x), s.heads, s.head_dim), positions, s)
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        update = self.o(attn.transpose(1, 2).reshape(batch, length, -1))
        return state + torch.sigmoid(self.gate(x)) * update


@dataclass
class CloverDraftState:
    """Drafting state: the block's KV cache and the decoder's keys over everything accepted so far,
    the anchor state s_0 = a_t, and s_k memoised per drafted path prefix."""

    length: int
    """Tokens the state has seen (the next accepted token gets this position)."""
    block_cache: tuple[torch.Tensor, torch.Tensor] | None
    keys: torch.Tensor
    values: torch.Tensor
    anchor: torch.Tensor
    """[H]: a_t, the augmented state of the last accepted token."""
    memo: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)


@register_head("clover")
class CloverHeads(DraftHeads):
    """Augmenting block + regressive attention decoder + per-depth residual heads."""

    config_class = CloverConfig

    def __init__(self, config: CloverConfig, shape: Shape, embed: nn.Module, vocab_size: int):
        super().__init__(config, vocab_size)
        self.shape = shape
        self.shared = SharedEmbedding(embed)
        self.block = AugmentingBlock(shape) if config.augmenting_block else None
        self.decoder = RegressiveDecoder(shape)
        self.heads = nn.ModuleList(
            nn.Sequential(*[ResBlock(shape.hidden) for _ in range(config.head_layers)]) for _ in range(config.num_heads)
        )

    @classmethod
    def build(cls, config: CloverConfig, backbone: Backbone) -> "CloverHeads":
        """Heads for `backbone`; the augmenting block starts from its last layer's weights."""
        heads = cls(config, Shape.of(backbone), backbone.embed_tokens, backbone.vocab_size)
        if heads.block is not None and config.init_from_last_layer:
            heads.block.copy_from(backbone.layers[-1])
        return heads.to(device=backbone.lm_head.weight.device, dtype=backbone.lm_head.weight.dtype)

    def _augment(self, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, past=None):
        if self.block is None:
            return hidden, None
        return self.block(hidden, positions, mask, past)

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
        if position_ids is None:
            position_ids = torch.arange(length, device=hidden.device).expand(batch, -1)
        mask = doc_mask(position_ids)
        augmented, _ = self._augment(hidden, position_ids, mask)
        keys, values = self.decoder.keys(augmented, position_ids)
        embeddings = self.shared.embed(input_ids).to(hidden.dtype)
        state = augmented
        states, predicted = [], []
        for depth in range(1, (depths or self.config.num_heads) + 1):
            # Token t+depth (the path's token at depth-1) feeds depth `depth`.
            token = shifted(embeddings, depth)
            state = self.decoder.step(state, token, position_ids + depth, keys, values, mask)
            predicted.append(state)
            states.append(self.heads[depth - 1](state))
        return HeadOutput(states=states, predicted_features=predicted)

    def project(self, depth: int, states: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Logits of depth `depth` through the base lm_head (its draft vocabulary's rows)."""
        return self.shared_projection(states, lm_head)

    def begin_draft(
        self, features: dict[int, torch.Tensor], input_ids: torch.Tensor, previous: CloverDraftState | None = None
    ) -> CloverDraftState:
        """Extend the block cache and the decoder keys with the tokens just accepted."""
        hidden = features[LAST]
        count = hidden.shape[1]
        start = previous.length if previous is not None else 0
        positions, mask = appended(start, count, hidden.device)
        augmented, cache = self._augment(hidden, positions, mask, previous.block_cache if previous is not None else None)
        keys, values = self.decoder.keys(augmented, positions)
        if previous is not None:
            keys, values = torch.cat([previous.keys, keys], dim=2), torch.cat([previous.values, values], dim=2)
        return CloverDraftState(start + count, cache, keys, values, augmented[0, -1])

    def draft_step(self, state: CloverDraftState, paths: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Depth d log-probabilities for N paths [N, d]: s_d from s_{d-1} of each path's prefix."""
        depth = paths.shape[1]
        states = self._states(state, paths)
        logits = self.shared_projection(self.heads[depth - 1](states), lm_head).float()
        return torch.log_softmax(logits, dim=-1)

    def _states(self, state: CloverDraftState, paths: torch.Tensor) -> torch.Tensor:
        """s_d [N, H] for paths [N, d], memoised per path (the drafter extends paths depth by depth)."""
        depth = paths.shape[1]
        keys = [tuple(p) for p in paths.tolist()]
        if all(k in state.memo for k in keys):
            return torch.stack([state.memo[k] for k in keys])
        previous = self._states(state, paths[:, :-1]) if depth > 1 else state.anchor.expand(paths.shape[0], -1)
        token = self.shared.embed(paths[:, -1:].to(state.anchor.device)).to(state.anchor.dtype)  # [N, 1, H]
        position = torch.full((paths.shape[0], 1), state.length - 1 + depth, device=state.anchor.device)
        count = paths.shape[0]
        new = self.decoder.step(
            previous[:, None], token, position, state.keys.expand(count, -1, -1, -1), state.values.expand(count, -1, -1, -1), None
        )[:, 0]
        for k, value in zip(keys, new):
            state.memo[k] = value
        return new
