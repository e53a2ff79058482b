"""EAGLE heads (Li et al., 2024; EAGLE-2, 2024; EAGLE-3, 2025): feature-level autoregression.

The draft model runs one decoder layer over pairs (feature f_i, embedding of token i+1): the pair
at position t predicts the feature of position t+1, whose projection gives token t+2. Drafting
depth d of a path feeds the layer its own prediction from depth d-1 together with the path's token,
attending over the pairs of the accepted sequence and the path's earlier nodes; the pairs of
accepted tokens keep their keys and values across decoding steps (the draft model's KV cache).

Two layouts, chosen by `fuse_layers`:
- EAGLE-1 (`fuse_layers: []`): f is the backbone's final normed hidden state; the pair is reduced
  by a linear layer over [e; f] (`fc`), the decoder layer has no input norm, and its output is
  projected by the base lm_head directly. Training regresses the output onto the backbone's next
  feature (`train.loss.feature_weight`) with uniform noise on the input features
  (`feature_noise`), and trains one step on the backbone's own features.
- EAGLE-3 (`fuse_layers: [low, mid, high]`): f is a linear fusion of three layers' outputs; the
  layer's attention reads [norm(e); norm(f)] (width 2H) with f as the residual, and its output goes
  through a final norm before the projection. `training_time_test` unrolls the layer over its own
  predictions for all `num_heads` depths in training, with the same attention pattern drafting
  uses (the sequence's pairs causally, then each earlier depth of the same position), and the
  trainer's per-depth decay weighs the steps. With a reduced draft vocabulary (`draft_vocab_size`)
  EAGLE-3 trains its own projection onto it (as EAGLE-3 checkpoints ship it, with `d2t`); EAGLE-1
  projects with the base lm_head's rows of those tokens.

Initialisation (ours): the fusion and `fc` start as selections of f (the high layer, the feature),
and the layer's residual branches are gated by learnable scalars that start at 0 (weights copied
from the backbone's last layer), so untrained heads predict what the base model predicts next and
training starts from a sensible draft. Converted checkpoints set the gates to 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from draftheads.models.backbone import LAST, Backbone
from draftheads.models.heads.base import DraftHeads, HeadConfig, HeadOutput
from draftheads.models.heads.layers import LLAMA_LAYER_NAMES, Shape, SharedEmbedding, appended, doc_mask, rope, shifted, split_heads
from draftheads.models.registry import register_head


@dataclass
class EagleConfig(HeadConfig):
    """EAGLE-1 and EAGLE-3 heads."""

    head_type: Literal["eagle"] = "eagle"
    """Family tag."""
    fuse_layers: list[int] = field(default_factory=list)
    """EAGLE-3: the backbone layers (low, middle, high; i = output of decoder layer i) fused into
    the draft feature. Empty: EAGLE-1, the final normed hidden state."""
    training_time_test: bool = False
    """Train every drafted depth on the layer's own predictions (EAGLE-3). Off: train depth 1 on
    the backbone's features only (EAGLE-1)."""
    feature_noise: float = 0.0
    """Half-width of the uniform noise added to the input features in training (EAGLE-1: the
    draft must cope with its own imperfect features at depth > 1)."""
    fc_bias: bool = True
    """EAGLE-1: bias in the pair-reducing linear layer (SafeAILab's checkpoints have one)."""
    init_from_last_layer: bool = True
    """Start the decoder layer from the backbone's last decoder layer (Llama-style names)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feature_noise < 0:
            raise ValueError(f"feature_noise must be at least 0, got {self.feature_noise}")
        if self.fuse_layers and len(set(self.fuse_layers)) != len(self.fuse_layers):
            raise ValueError(f"fuse_layers must be distinct, got {self.fuse_layers}")
        if LAST in self.fuse_layers:
            raise ValueError(
                "fuse_layers holds decoder layer indices (0..layers-1); the final normed state is EAGLE-1's feature (fuse_layers: [])"
            )

    @property
    def fused(self) -> bool:
        """EAGLE-3 layout."""
        return bool(self.fuse_layers)

    def trained_depths(self) -> int:
        """All drafted depths with training-time test, else depth 1."""
        return self.num_heads if self.training_time_test else 1

    def feature_layers(self) -> tuple[int, ...]:
        """The fused layers (EAGLE-3), else the final normed hidden state."""
        return tuple(self.fuse_layers) if self.fused else (LAST,)


class EagleLayer(nn.Module):
    """The draft decoder layer, in the EAGLE-1 or EAGLE-3 layout; attention is computed by the caller
    (the key sets differ between training and drafting): `pair` and `qkv` before it, `forward` after."""

    def __init__(self, shape: Shape, fused: bool, fc_bias: bool):
        super().__init__()
        self.shape, self.fused = shape, fused
        hidden = shape.hidden
        width = 2 * hidden if fused else hidden
        inner, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        if fused:
            self.embed_norm = nn.RMSNorm(hidden, eps=shape.eps)
            self.feature_norm = nn.RMSNorm(hidden, eps=shape.eps)
        else:
            self.fc = nn.Linear(2 * hidden, hidden, bias=fc_bias)
            with torch.no_grad():  # [e; f] -> f: the untrained layer carries the feature through
                self.fc.weight.zero_()
                self.fc.weight[:, hidden:].copy_(torch.eye(hidden))
                if self.fc.bias is not None:
                    self.fc.bias.zero_()
        self.q = nn.Linear(width, inner, bias=False)
        self.k = nn.Linear(width, kv, bias=False)
        self.v = nn.Linear(width, kv, bias=False)
        self.o = nn.Linear(inner, hidden, bias=False)
        self.post_norm = nn.RMSNorm(hidden, eps=shape.eps)
        self.gate_proj = nn.Linear(hidden, shape.intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, shape.intermediate, bias=False)
        self.down_proj = nn.Linear(shape.intermediate, hidden, bias=False)
        # one element, not a 0-dim scalar: DeepSpeed ZeRO-3 cannot partition a 0-dim parameter
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def pair(self, feature: torch.Tensor, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention input, residual) of pairs (feature, token embedding), each [B, T, H]."""
        if self.fused:
            return torch.cat([self.embed_norm(embedding), self.feature_norm(feature)], dim=-1), feature
        x = self.fc(torch.cat([embedding, feature], dim=-1))
        return x, x

    def qkv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries [B, heads, T, D] and keys/values [B, kv_heads, T, D] at `positions` [B, T] (RoPE)."""
        s = self.shape
        q = rope(split_heads(self.q(x), s.heads, s.head_dim), positions, s)
        k = rope(split_heads(self.k(x), s.kv_heads, s.head_dim), positions, s)
        return q, k, split_heads(self.v(x), s.kv_heads, s.head_dim)

    def forward(self, residual: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Output [B, T, H] from the residual and the attention's heads [B, heads, T, D]. This half
        is the module's forward because it reads the gates directly: a sharding wrapper (DeepSpeed
        ZeRO-3) gathers a module's own parameters only while its forward runs."""
        batch, _, length, _ = attention.shape
        x = residual + self.attn_gate * self.o(attention.transpose(1, 2).reshape(batch, length, -1))
        h = self.post_norm(x)
        return x + self.mlp_gate * self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    def copy_from(self, layer: nn.Module) -> bool:
        """Take a Llama-style decoder layer's weights when every name and shape fits (nothing is
        copied otherwise); with the EAGLE-3 layout its attention weights fill the feature half of
        the 2H-wide input (the embedding half starts at zero)."""
        source = dict(layer.named_parameters())
        hidden = self.shape.hidden
        pairs = []
        for mine, theirs in LLAMA_LAYER_NAMES.items():
            target, weight = getattr(self, mine).weight, source.get(f"{theirs}.weight")
            widened = self.fused and mine in ("q", "k", "v")
            if weight is None or weight.shape != ((target.shape[0], hidden) if widened else target.shape):
                return False
            pairs.append((target, weight, widened))
        with torch.no_grad():
            for target, weight, widened in pairs:
                if widened:
                    target.zero_()
                    target[:, hidden:].copy_(weight)
                else:
                    target.copy_(weight)
        return True


def _attend(q: torch.Tensor, shared: list[tuple], diagonal: list[tuple] = ()) -> torch.Tensor:
    """Softmax attention of queries q [B, heads, T, D] over blocks of keys and values kept per
    key/value head (grouped-query attention without repeating the keys: the drafting cache is
    read in place). `shared` blocks (keys, values, mask or None), keys [B or 1, kv, S, D], are seen
    by every query (a mask [B, 1, T, S] hides some); in `diagonal` blocks (keys, values), keys
    [B, kv, T, D], query t sees only key t. One fp32 softmax over all of them."""
    batch, heads, length, dim = q.shape
    kv = shared[0][0].shape[1]
    grouped = q.view(batch, kv, heads // kv, length, dim) * dim**-0.5
    scores = []
    for keys, _, mask in shared:
        block = grouped @ keys.unsqueeze(2).transpose(-1, -2)
        scores.append(block if mask is None else block.masked_fill(~mask.unsqueeze(2), float("-inf")))
    scores += [(grouped * keys.unsqueeze(2)).sum(-1, keepdim=True) for keys, _ in diagonal]
    weights = torch.softmax(torch.cat(scores, dim=-1).float(), dim=-1).to(q.dtype)
    out, start = 0, 0
    for keys, values, _ in shared:
        out = out + weights[..., start : start + keys.shape[-2]] @ values.unsqueeze(2)
        start += keys.shape[-2]
    for offset, (_, values) in enumerate(diagonal):
        out = out + weights[..., start + offset : start + offset + 1] * values.unsqueeze(2)
    return out.reshape(batch, heads, length, dim)


@dataclass
class EagleDraftState:
    """Drafting state: keys/values of the accepted sequence's pairs, the feature of the last
    accepted token (its pair waits for the next token), and per drafted path its nodes' keys and
    values and its last node's output."""

    length: int
    """Pairs cached (positions 0..length-1); the root's pair gets position `length`."""
    keys: torch.Tensor
    values: torch.Tensor
    """[1, kv_heads, length, D] each."""
    pending: torch.Tensor
    """[H]: the last accepted token's feature."""
    memo: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """path -> keys and values [kv_heads, depth, D] of its nodes (root first), and its last node's output [H]."""


@register_head("eagle")
class EagleHeads(DraftHeads):
    """Feature fusion (EAGLE-3) + one draft decoder layer, unrolled depth by depth."""

    config_class = EagleConfig

    def __init__(self, config: EagleConfig, shape: Shape, embed: nn.Module, vocab_size: int):
        super().__init__(config, vocab_size)
        self.shape = shape
        self.shared = SharedEmbedding(embed)
        hidden = shape.hidden
        self.fuse = None
        if config.fused:
            self.fuse = nn.Linear(len(config.fuse_layers) * hidden, hidden, bias=False)
            with torch.no_grad():  # untrained: the highest fused layer's output
                self.fuse.weight.zero_()
                self.fuse.weight[:, -hidden:].copy_(torch.eye(hidden))
        self.layer = EagleLayer(shape, config.fused, config.fc_bias)
        self.norm = nn.RMSNorm(hidden, eps=shape.eps) if config.fused else None
        own = config.fused and config.draft_vocab_size
        self.lm_head = nn.Linear(hidden, config.draft_vocab_size, bias=False) if own else None

    @classmethod
    def build(cls, config: EagleConfig, backbone: Backbone) -> "EagleHeads":
        """Heads for `backbone`: the layer from its last decoder layer, the final norm (EAGLE-3) from its own."""
        for layer in config.fuse_layers:
            if not 0 <= layer < backbone.num_layers:
                raise ValueError(
                    f"fuse_layers: layer {layer} is out of range ({backbone.num_layers} decoder layers: 0..{backbone.num_layers - 1})"
                )
        heads = cls(config, Shape.of(backbone), backbone.embed_tokens, backbone.vocab_size)
        if config.init_from_last_layer:
            heads.layer.copy_from(backbone.layers[-1])
        if heads.norm is not None and isinstance(getattr(backbone.final_norm, "weight", None), torch.Tensor):
            with torch.no_grad():
                heads.norm.weight.copy_(backbone.final_norm.weight)
        with torch.no_grad():
            for projection in heads.own_projections():
                projection.weight.copy_(backbone.lm_head.weight[heads.draft_to_token])
        return heads.to(device=backbone.lm_head.weight.device, dtype=backbone.lm_head.weight.dtype)

    def own_projections(self) -> list[nn.Linear]:
        """EAGLE-3's projection onto a reduced draft vocabulary."""
        return [self.lm_head] if self.lm_head is not None else []

    def _feature(self, features: dict[int, torch.Tensor]) -> torch.Tensor:
        if self.fuse is None:
            return features[LAST]
        return self.fuse(torch.cat([features[i] for i in self.config.fuse_layers], dim=-1))

    def forward(
        self,
        features: dict[int, torch.Tensor],
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        depths: int | None = None,
    ) -> HeadOutput:
        """Depth k at every position t: the layer unrolled k times from the pair (f_t, token t+1),
        each later depth on its own previous output and token t+k (what a drafted path holds).
        EAGLE-1 trains depth 1 only, but any depth can be asked for (eval's accuracy by depth)."""
        feature = self._feature(features)
        if self.training and self.config.feature_noise > 0:
            feature = feature + (torch.rand_like(feature) * 2 - 1) * self.config.feature_noise
        batch, length, _ = feature.shape
        if position_ids is None:
            position_ids = torch.arange(length, device=feature.device).expand(batch, -1)
        mask = doc_mask(position_ids)
        embeddings = self.shared.embed(input_ids).to(feature.dtype)
        states, diagonal = [], []
        sequence = None
        for depth in range(1, (depths or self.config.trained_depths()) + 1):
            x, residual = self.layer.pair(feature, shifted(embeddings, depth))
            q, k, v = self.layer.qkv(x, position_ids + depth - 1)
            if sequence is None:
                sequence = (k, v, mask)
            else:
                diagonal.append((k, v))
            # The pairs of the sequence up to t (same document), then depths 2..k of position t itself.
            feature = self.layer(residual, _attend(q, [sequence], diagonal))
            states.append(feature)
        # EAGLE-3's output lives in the fused space, not the backbone's final one: nothing to regress onto.
        return HeadOutput(states=states, predicted_features=None if self.config.fused else list(states))

    def project(self, depth: int, states: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Logits over the draft vocabulary (EAGLE-3 after its final norm)."""
        if self.norm is not None:
            states = self.norm(states)
        return self.lm_head(states) if self.lm_head is not None else self.shared_projection(states, lm_head)

    def begin_draft(
        self, features: dict[int, torch.Tensor], input_ids: torch.Tensor, previous: EagleDraftState | None = None
    ) -> EagleDraftState:
        """Cache the keys/values of the pairs the accepted tokens complete: (previous pending feature,
        first accepted token), ..., (second-last feature, last token); the last feature waits."""
        feature = self._feature(features)
        if previous is None:
            pair_features, pair_ids, start = feature[:, :-1], input_ids[:, 1:], 0
        else:
            pair_features = torch.cat([previous.pending[None, None], feature[:, :-1]], dim=1)
            pair_ids, start = input_ids, previous.length
        count = pair_features.shape[1]
        x, _ = self.layer.pair(pair_features, self.shared.embed(pair_ids.to(feature.device)).to(feature.dtype))
        positions, _ = appended(start, count, feature.device)
        _, k, v = self.layer.qkv(x, positions)
        if previous is not None:
            k, v = torch.cat([previous.keys, k], dim=2), torch.cat([previous.values, v], dim=2)
        return EagleDraftState(start + count, k, v, feature[0, -1])

    def max_draft_depth(self) -> int | None:
        """None: the draft layer runs again on its own output at every depth (EAGLE-2 drafts 5-6 deep
        from heads trained one step deep)."""
        return None

    def draft_step(self, state: EagleDraftState, paths: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Depth d log-probabilities for N paths [N, d] (root token first)."""
        outputs = self._nodes(state, paths)
        return torch.log_softmax(self.project(paths.shape[1], outputs, lm_head).float(), dim=-1)

    def _nodes(self, state: EagleDraftState, paths: torch.Tensor) -> torch.Tensor:
        """Outputs [N, H] of the paths' last nodes, memoising each path's keys, values and output."""
        depth = paths.shape[1]
        names = [tuple(p) for p in paths.tolist()]
        if all(n in state.memo for n in names):
            return torch.stack([state.memo[n][2] for n in names])
        count, device = paths.shape[0], state.pending.device
        feature = self._nodes(state, paths[:, :-1]) if depth > 1 else state.pending.expand(count, -1)
        x, residual = self.layer.pair(feature[:, None], self.shared.embed(paths[:, -1:].to(device)).to(feature.dtype))
        q, k, v = self.layer.qkv(x, torch.full((count, 1), state.length + depth - 1, device=device))
        if depth > 1:  # the keys/values of the path's earlier nodes (root first), then this node's
            parents = [state.memo[name[:-1]] for name in names]
            k = torch.cat([torch.stack([p[0] for p in parents]), k], dim=2)
            v = torch.cat([torch.stack([p[1] for p in parents]), v], dim=2)
        out = self.layer(residual, _attend(q, [(state.keys, state.values, None), (k, v, None)]))[:, 0]
        for i, name in enumerate(names):
            state.memo[name] = (k[i], v[i], out[i])
        return out

