"""KV-cache compaction: after verification, move the accepted tree nodes' keys and values to sit
right after the committed prefix, in path order, so the cache is again one contiguous sequence.

This file holds the PyTorch reference; it runs on CPU and is what any GPU kernel is checked
against.
"""

from __future__ import annotations

import torch


def kv_compact_reference(cache: torch.Tensor, start: int, nodes: torch.Tensor) -> None:
    """In place: `cache[..., start + j, :] = cache[..., start + nodes[j], :]` for every j.

    `cache` is [B, H, capacity, D]; `nodes` [n] are tree-node offsets from `start`, increasing
    (a root-to-leaf path in parents-first order), so nodes[j] >= j. Advanced indexing gathers
    into a temporary first, so overlapping source and destination rows are safe.
    """
    count = nodes.numel()
    cache[:, :, start : start + count] = cache[:, :, start + nodes.to(cache.device)]
