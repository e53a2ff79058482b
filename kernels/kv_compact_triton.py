"""Triton KV compaction: one program per (cache row, block of D) copies the accepted nodes in
increasing order. Copying j ascending is safe in place: the destination start+j is never a source
still to be read, because every later source start+nodes[j'] has nodes[j'] >= j' > j."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _kv_compact_kernel(cache_ptr, nodes_ptr, count, start, row_stride, pos_stride, dim, BLOCK_D: tl.constexpr):
    row = tl.program_id(0)
    offsets = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    inside = offsets < dim
    base = cache_ptr + row.to(tl.int64) * row_stride
    for j in range(count):
        node = tl.load(nodes_ptr + j)
        value = tl.load(base + (start + node).to(tl.int64) * pos_stride + offsets, mask=inside)
        tl.store(base + (start + j).to(tl.int64) * pos_stride + offsets, value, mask=inside)


def kv_compact_triton(cache: torch.Tensor, start: int, nodes: torch.Tensor) -> None:
    """Same contract as `kv_compact_reference`; `cache` must be contiguous (the engine's one
    all-layer buffer is)."""
    if not cache.is_contiguous():
        raise ValueError("kv_compact_triton needs a contiguous cache buffer")
    rows = cache.view(-1, cache.shape[-2], cache.shape[-1])
    nodes = nodes.to(device=cache.device, dtype=torch.int32).contiguous()
    dim = rows.shape[-1]
    block = triton.next_power_of_2(min(dim, 128))
    grid = (rows.shape[0], triton.cdiv(dim, block))
    _kv_compact_kernel[grid](rows, nodes, nodes.numel(), start, rows.stride(0), rows.stride(1), dim, BLOCK_D=block)
