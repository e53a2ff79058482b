"""Pieces several head families share: the backbone's attention layout, rotary embeddings,
document masks for packed rows, a gated decoder layer, the zero-initialised residual block of
Medusa-style heads, and a holder for the backbone's token embedding (used, never owned).

The gated layer is one pre-norm decoder layer (causal self-attention with RoPE and GQA, SwiGLU MLP)
whose residual branches are scaled by learnable gates that start at 0, so an untrained layer is the
identity; its weights can be copied from a Llama-style decoder layer of the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from draftheads.models.backbone import Backbone
from draftheads.utils.errors import ModelLoadError


LLAMA_LAYER_NAMES = MappingProxyType(
    {
        "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
        "post_norm": "post_attention_layernorm",
        "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj",
    }
)
"""Submodules of our decoder layers -> those of a Llama-style decoder layer (HF transformers and the
reference draft models); the input norm differs per layer and is mapped where it exists."""


@dataclass(frozen=True)
class Shape:
    """The backbone's attention layout, which the heads' own layers copy."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    rope_theta: float
    inv_freq: tuple[float, ...]
    """Rotary frequency of each dimension pair, as the base's own RoPE type and scaling set them."""
    rope_scale: float = 1.0
    """What the base's RoPE type multiplies cos and sin by (yarn's attention factor; 1 otherwise)."""

    @classmethod
    def of(cls, backbone: Backbone) -> "Shape":
        """The layout of `backbone`'s decoder layers (Llama-style config names, with defaults)."""
        config = backbone.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        rope_params = getattr(config, "rope_parameters", None) or {}
        theta = float(rope_params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)
        inv_freq, scale = rope_frequencies(config, head_dim, theta)
        return cls(
            hidden=config.hidden_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate=getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
            eps=getattr(config, "rms_norm_eps", None) or 1e-6,
            rope_theta=theta,
            inv_freq=inv_freq,
            rope_scale=scale,
        )


def rope_frequencies(config, head_dim: int, theta: float) -> tuple[tuple[float, ...], float]:
    """The base's rotary frequencies and cos/sin factor, from transformers' own initialisation of
    its RoPE type (llama3, yarn, linear, ...), so draft layers see positions as the base does.
    Refuses, naming the reason, what a draft layer's fixed full-width rotation cannot reproduce."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    name = getattr(config, "model_type", "this model")
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type") or params.get("type") or "default"
    partial = getattr(config, "partial_rotary_factor", None) or params.get("partial_rotary_factor") or 1.0
    if partial != 1.0:
        raise ModelLoadError(f"{name}: partial rotary embeddings (partial_rotary_factor {partial}) are not supported by draft layers")
    if kind in ("dynamic", "longrope") or (kind != "default" and kind not in ROPE_INIT_FUNCTIONS):
        raise ModelLoadError(
            f"{name}: RoPE type '{kind}' (its frequencies change with the sequence length, or are unknown) is not supported by draft layers"
        )
    with torch.device("cpu"):  # numbers, not tensors of the module: on the CPU whatever the default device (meta, when shapes are planned)
        if kind == "default":  # Llama's, computed in float32 as transformers does (exact through the tuple)
            half = head_dim // 2
            return tuple((1.0 / theta ** (torch.arange(half, dtype=torch.float32) / half)).tolist()), 1.0
        inv_freq, scale = ROPE_INIT_FUNCTIONS[kind](config, torch.device("cpu"))
    return tuple(inv_freq.double().tolist()), float(scale)


def rope(x: torch.Tensor, positions: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Rotary position embedding (half-split layout, as Llama) of x [B, heads, T, D] at positions [B, T],
    with the base's frequencies (`Shape.inv_freq`)."""
    half = x.shape[-1] // 2
    inv = torch.tensor(shape.inv_freq, device=x.device, dtype=torch.float32)
    angles = positions[:, None, :, None].float() * inv  # [B, 1, T, half]
    cos, sin = (angles.cos() * shape.rope_scale).to(x.dtype), (angles.sin() * shape.rope_scale).to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def split_heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """[B, T, heads * D] -> [B, heads, T, D]."""
    return x.view(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)


def doc_mask(positions: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool: query i may see key j when j <= i within the same document (packed rows
    restart their position ids at 0 where a document begins)."""
    doc = (positions == 0).cumsum(-1)
    length = positions.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=positions.device).tril()
    return (causal & (doc[:, :, None] == doc[:, None, :]))[:, None]


def appended(start: int, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [1, count] of `count` tokens appended after `start` cached ones, and the mask
    [1, 1, count, start + count] that lets each see every cached token and the new ones causally
    (incremental drafting state, one document)."""
    positions = torch.arange(start, start + count, device=device)[None]
    mask = torch.ones(count, start + count, dtype=torch.bool, device=device).tril(start)[None, None]
    return positions, mask


def shifted(x: torch.Tensor, offset: int) -> torch.Tensor:
    """x [B, T, H] moved `offset` positions left (position t holds x[t + offset]), zero past the end:
    what a teacher-forced depth reads of the tokens after t (none past the row's end, where no
    target is trained either)."""
    return F.pad(x[:, offset:], (0, 0, 0, offset))


class AugmentingBlock(nn.Module):
    """One pre-norm decoder layer whose residual branches start gated at zero (identity)."""

    def __init__(self, shape: Shape):
        super().__init__()
        self.shape = shape
        inner, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        self.input_norm = nn.RMSNorm(shape.hidden, eps=shape.eps)
        self.q = nn.Linear(shape.hidden, inner, bias=False)
        self.k = nn.Linear(shape.hidden, kv, bias=False)
        self.v = nn.Linear(shape.hidden, kv, bias=False)
        self.o = nn.Linear(inner, shape.hidden, bias=False)
        self.post_norm = nn.RMSNorm(shape.hidden, eps=shape.eps)
        self.gate_proj = nn.Linear(shape.hidden, shape.intermediate, bias=False)
        self.up_proj = nn.Linear(shape.hidden, shape.intermediate, bias=False)
        self.down_proj = nn.Linear(shape.intermediate, shape.hidden, bias=False)
        # one element, not a 0-dim scalar: DeepSpeed ZeRO-3 cannot partition a 0-dim parameter
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, T, H] at positions [B, T]; `mask` [B, 1, T, past+T]; returns y and the keys/values
        of past + these positions (the block's KV cache)."""
        s = self.shape
        batch, length, _ = x.shape
        h = self.input_norm(x)
        q = rope(split_heads(self.q(h), s.heads, s.head_dim), positions, s)
        k = rope(split_heads(self.k(h), s.kv_heads, s.head_dim), positions, s)
        v = split_heads(self.v(h), s.kv_heads, s.head_dim)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        groups = s.heads // s.kv_heads
        attn = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), attn_mask=mask)
        x = x + self.attn_gate * self.o(attn.transpose(1, 2).reshape(batch, length, -1))
        h = self.post_norm(x)
        x = x + self.mlp_gate * self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
        return x, (k, v)

    def copy_from(self, layer: nn.Module) -> bool:
        """Take the weights of a Llama-style decoder layer when every name and shape matches."""
        names = {f"{mine}.weight": f"{theirs}.weight" for mine, theirs in LLAMA_LAYER_NAMES.items()}
        names["input_norm.weight"] = "input_layernorm.weight"
        source = dict(layer.named_parameters())
        ours = dict(self.named_parameters())
        if any(theirs not in source or source[theirs].shape != ours[mine].shape for mine, theirs in names.items()):
            return False
        with torch.no_grad():
            for mine, theirs in names.items():
                ours[mine].copy_(source[theirs])
        return True


class ResBlock(nn.Module):
    """x + SiLU(W x + b), with W and b zero so the block starts as the identity."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


class SharedEmbedding:
    """The backbone's token embedding, held without registering it: heads never own (or save)
    backbone parameters, and it stays frozen."""

    def __init__(self, embed: nn.Module):
        self.embed = embed
