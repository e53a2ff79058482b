"""Attention of T tree nodes over a cached prefix plus the tree itself.

Every node sees the whole committed prefix and, inside the tree, only itself and its ancestors
(`tree_mask[i, j]`). This file holds the PyTorch reference; it is what runs on CPU and what any
GPU kernel is checked against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from draftheads.kernels.dispatch import resolve_backend


def tree_attention_reference(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tree_mask: torch.Tensor | None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention output [B, H, T, D] for queries [B, H, T, D] over keys/values [B, Hkv, L+T, D].

    The last T key positions are the tree nodes themselves; `tree_mask` [T, T] (bool, True = may
    attend) restricts them, the first L are visible to every node. `None` means causal over the
    new positions (prefill, or a single autoregressive token). H may be a multiple of Hkv (GQA).
    """
    num_new = query.shape[-2]
    total = keys.shape[-2]
    if num_new == 1:
        mask = None  # a single node sees the prefix and itself: no mask, the fastest SDPA path
    elif tree_mask is None:
        mask = torch.ones(num_new, total, dtype=torch.bool, device=query.device).tril(total - num_new)
    else:
        tree_mask = tree_mask.reshape(num_new, num_new)
        prefix = torch.ones(num_new, total - num_new, dtype=torch.bool, device=query.device)
        mask = torch.cat([prefix, tree_mask.to(query.device)], dim=1)
    gqa = query.shape[1] != keys.shape[1]
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale, enable_gqa=gqa)


def tree_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tree_mask: torch.Tensor,
    bits: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Tree attention with the chosen backend (see `kernels.dispatch`). `tree_mask` [T, T] is the
    ancestor mask; `bits` its packed form (`ancestor_bits`), which the Triton kernel reads."""
    if resolve_backend(backend, query.device) == "reference":
        return tree_attention_reference(query, keys, values, tree_mask, scale)
    from draftheads.kernels.tree_attention_triton import ancestor_bits, tree_attention_triton

    return tree_attention_triton(query, keys, values, ancestor_bits(tree_mask) if bits is None else bits, scale)
