"""Claim: the Triton tree attention and KV compaction against their PyTorch references and SDPA.

On a GPU: times tree attention (ours, the reference, and SDPA with a dense mask) for T in
{1, 16, 64, 128} tree nodes over prefixes of {512, 2k, 8k} tokens, prints the achieved bandwidth
(bytes of K/V/Q/O moved per second) against the device's measured copy bandwidth, the ratio of
verifying 64 nodes to 1 node, and times compaction of a whole all-layer cache. On CPU it only
checks the kernels (in the Triton interpreter, small shapes) and says so.

    python bench/kernel_speed.py [--heads 32 --kv-heads 8 --dim 128 --dtype bfloat16 --layers 32]
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is compiled

from draftheads.decoding.tree import Tree  # noqa: E402
from draftheads.kernels.kv_compact import kv_compact  # noqa: E402
from draftheads.kernels.tree_attention import tree_attention, tree_attention_reference  # noqa: E402
from draftheads.kernels.tree_attention_triton import ancestor_bits  # noqa: E402


def bushy_tree(nodes: int) -> Tree:
    """A Medusa-like tree: a few candidates per depth, `nodes` nodes in all."""
    paths, frontier = [], [()]
    while len(paths) < nodes - 1:
        path = frontier.pop(0)
        for r in range(4):
            if len(paths) < nodes - 1:
                paths.append(path + (r,))
                frontier.append(path + (r,))
    return Tree.from_paths([list(p) for p in paths])


def cuda_time(fn, repeats: int = 50) -> float:
    """Median milliseconds of fn() with CUDA events."""
    times = []
    for _ in range(repeats + 5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times[5:])[len(times[5:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=("float16", "bfloat16", "float32"))
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if not torch.cuda.is_available():
        tree = bushy_tree(17)
        q = torch.randn(1, 6, tree.size, 64)
        k, v = torch.randn(1, 2, 64 + tree.size, 64), torch.randn(1, 2, 64 + tree.size, 64)
        mask = tree.ancestor_mask()
        error = (tree_attention(q, k, v, mask, backend="triton") - tree_attention_reference(q, k, v, mask)).abs().max()
        buffer = torch.randn(2, 2, 1, 2, 96, 64)
        expected = buffer.clone()
        nodes = torch.tensor([0, 2, 5, 9])
        kv_compact(expected, 64, nodes, backend="reference")
        kv_compact(buffer, 64, nodes, backend="triton")
        print(f"no GPU: checked only (Triton interpreter). tree attention max |error| {float(error):.2e}; "
              f"compaction bit-exact: {torch.equal(buffer, expected)}. Timings need a CUDA device.")
        return
    device = torch.device("cuda")
    size = 256 * 2**20
    src, dst = torch.empty(size, dtype=torch.uint8, device=device), torch.empty(size, dtype=torch.uint8, device=device)
    copy_gbs = 2 * size / cuda_time(lambda: dst.copy_(src)) / 1e6
    print(
        f"{torch.cuda.get_device_name(0)}: measured copy bandwidth {copy_gbs:.0f} GB/s; "
        f"{args.heads} heads / {args.kv_heads} kv heads x {args.dim}, {args.dtype}"
    )
    print(f"{'prefix':>6} {'T':>4} {'triton ms':>9} {'ref ms':>8} {'sdpa ms':>8} {'GB/s':>7} {'% copy':>6}")
    one_node = {}
    for prefix in (512, 2048, 8192):
        for nodes in (1, 16, 64, 128):
            tree = bushy_tree(nodes)
            q = torch.randn(1, args.heads, nodes, args.dim, device=device, dtype=dtype)
            k = torch.randn(1, args.kv_heads, prefix + nodes, args.dim, device=device, dtype=dtype)
            v = torch.randn_like(k)
            mask = tree.ancestor_mask().to(device)
            bits = ancestor_bits(mask)
            ours = cuda_time(lambda: tree_attention(q, k, v, mask, bits, backend="triton"))
            ref = cuda_time(lambda: tree_attention_reference(q, k, v, mask))
            dense = torch.cat([torch.ones(nodes, prefix, dtype=torch.bool, device=device), mask], 1)
            sdpa = cuda_time(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=True))
            moved = (2 * k.numel() + 2 * q.numel()) * k.element_size()
            gbs = moved / ours / 1e6
            if nodes == 1:
                one_node[prefix] = ours
            print(f"{prefix:>6} {nodes:>4} {ours:>9.4f} {ref:>8.4f} {sdpa:>8.4f} {gbs:>7.0f} {100 * gbs / copy_gbs:>5.0f}%"
                  + (f"  64 nodes / 1 node: {ours / one_node[prefix]:.2f}x" if nodes == 64 else ""))
    buffer = torch.randn(args.layers, 2, 1, args.kv_heads, 4096 + 128, args.dim, device=device, dtype=dtype)
    nodes = torch.tensor([0, 3, 9, 17, 40, 90], device=device)
    ours = cuda_time(lambda: kv_compact(buffer, 4096, nodes, backend="triton"))
    ref = cuda_time(lambda: kv_compact(buffer, 4096, nodes, backend="reference"))
    print(f"compaction of {nodes.numel()} nodes over {args.layers} layers: triton {ours:.4f} ms (one launch), reference {ref:.4f} ms")


if __name__ == "__main__":
    main()
