"""EAGLE-3's draft model written out from its description, independent of our implementation:
importer and exporter tests check our heads against it (importable as `reference_eagle`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb


def rotary(config, positions):
    return LlamaRotaryEmbedding(config)(torch.zeros(1, 1, 1), positions[None])



class Eagle3Reference(nn.Module):
    """EAGLE-3's draft model written out from its description (fusion, 2H-wide attention input,
    final norm, reduced vocabulary with d2t)."""

    def __init__(self, config, draft_vocab):
        super().__init__()
        h = config.hidden_size
        self.config = config
        self.fc = nn.Linear(3 * h, h, bias=False)
        self.input_layernorm, self.hidden_norm, self.post_attention_layernorm = (LlamaRMSNorm(h) for _ in range(3))
        heads, kv, dim = config.num_attention_heads, config.num_key_value_heads, h // config.num_attention_heads
        self.q_proj, self.k_proj = nn.Linear(2 * h, heads * dim, bias=False), nn.Linear(2 * h, kv * dim, bias=False)
        self.v_proj, self.o_proj = nn.Linear(2 * h, kv * dim, bias=False), nn.Linear(heads * dim, h, bias=False)
        self.mlp = LlamaMLP(config)
        self.norm = LlamaRMSNorm(h)
        self.lm_head = nn.Linear(h, draft_vocab, bias=False)

    def checkpoint(self, d2t):
        state = {
            k: v
            for k, v in self.state_dict().items()
            if not k.startswith(("q_proj", "k_proj", "v_proj", "o_proj", "mlp", "input_", "hidden_", "post_"))
        }
        for name, value in self.state_dict().items():
            if name.startswith(("q_proj", "k_proj", "v_proj", "o_proj")):
                state[f"midlayer.self_attn.{name}"] = value
            elif name.startswith(("mlp", "input_", "hidden_", "post_")):
                state[f"midlayer.{name}"] = value
        return state | {"d2t": d2t, "t2d": torch.zeros(self.config.vocab_size, dtype=torch.bool)}

    def layer(self, embeddings, hidden):
        length = hidden.shape[0]
        x = torch.cat([self.input_layernorm(embeddings), self.hidden_norm(hidden)], dim=-1)[None]
        heads, kv = self.config.num_attention_heads, self.config.num_key_value_heads
        dim = self.config.hidden_size // heads
        q = self.q_proj(x).view(1, length, heads, dim).transpose(1, 2)
        k = self.k_proj(x).view(1, length, kv, dim).transpose(1, 2)
        v = self.v_proj(x).view(1, length, kv, dim).transpose(1, 2)
        cos, sin = rotary(self.config, torch.arange(length))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(1, length, -1)
        h = hidden[None] + self.o_proj(attn)
        return (h + self.mlp(self.post_attention_layernorm(h)))[0]
