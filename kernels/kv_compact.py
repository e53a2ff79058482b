"""KV-cache compaction: after verification, move the accepted tree nodes' keys and values to sit
right after the committed prefix, in path order, so the cache is again one contiguous sequence.

The cache is one buffer for all layers, keys and values ([rows, capacity, D] once the leading
layer/kv/batch/head dimensions are flattened), so a single launch compacts everything. The PyTorch
reference runs on CPU and is what the Triton kernel is checked against.
"""

from __future__ import annotations

import torch

from draftheads.kernels.dispatch import resolve_backend


def kv_compact_reference(cache: torch.Tensor, start: int, nodes: torch.Tensor) -> None:
    """In place: `cache[..., start + j, :] = cache[..., start + nodes[j], :]` for every j.

    `cache` is [..., capacity, D]; `nodes` [n] are tree-node offsets from `start`, increasing
    (a root-to-leaf path in parents-first order), so nodes[j] >= j. Advanced indexing gathers
    into a temporary first, so overlapping source and destination rows are safe.
    """
    count = nodes.numel()
    cache[..., start : start + count, :] = cache[..., start + nodes.to(cache.device), :]


def kv_compact(cache: torch.Tensor, start: int, nodes: torch.Tensor, backend: str = "auto") -> None:
    """Compact `cache` [..., capacity, D] in place with the chosen backend (see `kernels.dispatch`)."""
    if resolve_backend(backend, cache.device) == "reference":
        kv_compact_reference(cache, start, nodes)
        return
    from draftheads.kernels.kv_compact_triton import kv_compact_triton

    kv_compact_triton(cache, start, nodes)
