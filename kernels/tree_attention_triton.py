"""Triton tree attention: T tree-node queries over a cached prefix (all visible) and the tree's own
keys, visible by an ancestor bitmask derived from `parents` ([T, ceil(T/32)] int32 words; bit j of
row i: node i sees node j). No dense mask is ever built.

One program handles a block of queries of one (batch, query head); it streams the prefix keys and
values in blocks with an online softmax (fp32 running max, sum and accumulator), then the tree
part under the bitmask. Grouped-query attention maps query head h to key/value head h // group.
For fp32 inputs, and bf16 ones under the interpreter (which computes bf16 `tl.dot` wrongly), the dot
products run in fp32 with IEEE precision; fp16 inputs take the low-precision `tl.dot` path in the
interpreter too, so the CPU tests check it against the reference.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl



@triton.jit
def _tree_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, bits_ptr, part_ptr, stat_ptr,
    sq_b, sq_h, sq_t, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_t,
    num_heads, group, prefix, nodes, dim, words, scale_log2, chunk,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, SPLIT: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_t = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    kv_h = h // group
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < nodes
    col_ok = cols < dim
    q = tl.load(q_ptr + b * sq_b + h * sq_h + rows[:, None] * sq_t + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = k_ptr + b * sk_b + kv_h * sk_h
    v_base = v_ptr + b * sv_b + kv_h * sv_h
    m_i = tl.full([BLOCK_T], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_T], tl.float32)
    acc = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    total = prefix + nodes
    # split `pid_s` covers keys [lo, hi): with SPLIT the key range is cut so that small trees over
    # long prefixes still launch enough programs to fill the GPU
    lo = pid_s * chunk
    hi = tl.minimum(lo + chunk, total)
    for start in range(lo, hi, BLOCK_N):
        keys_at = start + tl.arange(0, BLOCK_N)
        key_ok = keys_at < hi
        k = tl.load(k_base + keys_at[:, None] * sk_n + cols[None, :], mask=key_ok[:, None] & col_ok[None, :], other=0.0)
        v = tl.load(v_base + keys_at[:, None] * sv_n + cols[None, :], mask=key_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * scale_log2
        # prefix keys are visible to every node; a tree key j is visible when row's bit j is set
        node = keys_at - prefix
        in_tree = (node >= 0) & key_ok
        word = tl.load(
            bits_ptr + rows[:, None] * words + (tl.maximum(node, 0) // 32)[None, :],
            mask=row_ok[:, None] & in_tree[None, :],
            other=0,
        )
        seen = ((word >> (tl.maximum(node, 0) % 32)[None, :]) & 1) != 0
        visible = (key_ok & (node < 0))[None, :] | (in_tree[None, :] & seen)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if UPCAST:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    if SPLIT:
        # partial results [B*H, splits, T, D] plus (max, sum) per row, merged by `_merge_splits`
        splits = tl.num_programs(2)
        base = (pid_bh * splits + pid_s) * nodes
        tl.store(part_ptr + (base + rows[:, None]) * dim + cols[None, :], acc, mask=row_ok[:, None] & col_ok[None, :])
        tl.store(stat_ptr + (base + rows) * 2, m_i, mask=row_ok)
        tl.store(stat_ptr + (base + rows) * 2 + 1, l_i, mask=row_ok)
    else:
        out = acc / tl.where(l_i == 0, 1.0, l_i)[:, None]
        tl.store(
            o_ptr + b * so_b + h * so_h + rows[:, None] * so_t + cols[None, :],
            out.to(o_ptr.dtype.element_ty),
            mask=row_ok[:, None] & col_ok[None, :],
        )


def ancestor_bits(tree_mask: torch.Tensor) -> torch.Tensor:
    """[T, ceil(T/32)] int32 words from a [T, T] bool ancestor mask (bit j of row i: i sees j)."""
    nodes = tree_mask.shape[-1]
    words = (nodes + 31) // 32
    padded = torch.zeros(nodes, words * 32, dtype=torch.int64, device=tree_mask.device)
    padded[:, :nodes] = tree_mask.reshape(nodes, nodes).long()
    weights = torch.ones(32, dtype=torch.int64, device=tree_mask.device) << torch.arange(32, device=tree_mask.device)
    packed = (padded.view(nodes, words, 32) * weights).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)  # two's complement


def tree_attention_triton(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    bits: torch.Tensor,
    scale: float | None = None,
    splits: int | None = None,
) -> torch.Tensor:
    """Same contract as `tree_attention_reference`, with the tree given as ancestor bits
    (`ancestor_bits`); the output is [B, H, T, D] in the query dtype. `splits` cuts the key range
    into that many parts merged afterwards (None: chosen from the launch size and the device)."""
    batch, heads, nodes, dim = query.shape
    kv_heads, total = keys.shape[1], keys.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} key/value heads")
    if query.stride(-1) != 1 or keys.stride(-1) != 1 or values.stride(-1) != 1:
        raise ValueError("tree_attention_triton needs the head dimension contiguous")
    scale = dim**-0.5 if scale is None else scale
    block_t, block_n = 16, 32
    block_d = max(16, triton.next_power_of_2(dim))
    # The interpreter computes fp16 `tl.dot` correctly (so the low-precision path runs, and is tested,
    # on CPU) but not bf16, which it upcasts.
    upcast = query.dtype == torch.float32 or (os.environ.get("TRITON_INTERPRET") == "1" and query.dtype == torch.bfloat16)
    programs = batch * heads * triton.cdiv(nodes, block_t)
    if splits is None:
        # about two waves of programs on the GPU, and no part shorter than 256 keys
        target = 2 * torch.cuda.get_device_properties(query.device).multi_processor_count if query.is_cuda else 1
        splits = max(1, min(triton.cdiv(target, programs), total // 256))
    chunk = triton.cdiv(triton.cdiv(total, splits), block_n) * block_n
    splits = triton.cdiv(total, chunk)
    out = torch.empty_like(query)
    split = splits > 1
    parts = query.new_empty((batch * heads, splits, nodes, dim), dtype=torch.float32) if split else out
    stats = query.new_empty((batch * heads, splits, nodes, 2), dtype=torch.float32) if split else out
    grid = (batch * heads, triton.cdiv(nodes, block_t), splits)
    _tree_attention_kernel[grid](
        query, keys, values, out, bits.contiguous(), parts, stats,
        query.stride(0), query.stride(1), query.stride(2),
        keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        heads, heads // kv_heads, total - nodes, nodes, dim, bits.shape[-1], scale * 1.4426950408889634, chunk,
        BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_D=block_d, UPCAST=upcast, SPLIT=split,
    )
    if split:
        out.copy_(_merge_splits(parts, stats).view(batch, heads, nodes, dim))
    return out


def _merge_splits(parts: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Combine per-split (accumulator, max, sum) of the online softmax: rescale every split to the
    global max (base 2, as the kernel computes) and normalise by the rescaled sums."""
    maxima, sums = stats[..., 0], stats[..., 1]
    top = maxima.amax(dim=1, keepdim=True)
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    weights = torch.exp2(maxima - top)  # -inf maxima (splits that saw nothing) weigh 0
    total = (weights * sums).sum(1)
    merged = (weights.unsqueeze(-1) * parts).sum(1)
    return merged / torch.where(total == 0, torch.ones_like(total), total).unsqueeze(-1)
