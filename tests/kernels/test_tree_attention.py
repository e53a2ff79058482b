"""The Triton tree attention (compiled on a GPU, interpreted on CPU) against its PyTorch reference and against plain
SDPA with a dense mask: chains, stars, deep and bushy trees, odd sizes, GQA ratios, fp32/fp16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from draftheads.decoding.tree import Tree
from draftheads.kernels.tree_attention import tree_attention, tree_attention_reference

pytest.importorskip("triton")

# Compiled kernels on a GPU, the interpreter on CPU (conftest sets TRITON_INTERPRET without CUDA).
ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
# bf16 `tl.dot` is wrong in the interpreter (the kernel reroutes it to fp32 there), so bf16 is
# checked where it is compiled.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])


def make_tree(kind: str, nodes: int) -> Tree:
    """A tree of exactly `nodes` nodes (root included)."""
    if nodes == 1:
        return Tree.chain(0)
    if kind == "chain":
        return Tree.chain(nodes - 1)
    if kind == "star":
        return Tree.from_paths([[r] for r in range(nodes - 1)])
    generator = torch.Generator().manual_seed(nodes)
    parents = [-1]
    for i in range(1, nodes):  # deep: mostly the previous node; bushy: any earlier node
        parents.append(
            i - 1 if kind == "deep" and torch.rand(1, generator=generator) < 0.7 else int(torch.randint(0, i, (1,), generator=generator))
        )
    depth = [0] * nodes
    for i in range(1, nodes):
        depth[i] = depth[parents[i]] + 1
    return Tree(torch.tensor(parents), torch.tensor(depth), torch.zeros(nodes, dtype=torch.long))


CASES = [  # (tree kind, T, prefix, GQA group)
    ("chain", 1, 0, 1),
    ("chain", 3, 1, 3),
    ("star", 17, 37, 4),
    ("deep", 17, 300, 1),
    ("bushy", 17, 0, 3),
    ("bushy", 3, 300, 4),
    ("star", 40, 37, 1),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d).removeprefix("torch.") for d in DTYPES])
@pytest.mark.parametrize(("kind", "nodes", "prefix", "group"), CASES)
def test_triton_tree_attention_matches_reference_and_sdpa(dtype, kind, nodes, prefix, group):
    tree = make_tree(kind, nodes)
    generator = torch.Generator().manual_seed(nodes * 7 + prefix)
    kv_heads, dim = 2, 64
    query = torch.randn(1, kv_heads * group, nodes, dim, generator=generator).to(DEVICE, dtype)
    keys = torch.randn(1, kv_heads, prefix + nodes, dim, generator=generator).to(DEVICE, dtype)
    values = torch.randn(1, kv_heads, prefix + nodes, dim, generator=generator).to(DEVICE, dtype)
    mask = tree.ancestor_mask().to(DEVICE)
    out = tree_attention(query, keys, values, mask, backend="triton")
    assert out.dtype == dtype and out.shape == query.shape
    # references in fp32 from the same (rounded) inputs
    reference = tree_attention_reference(query.float(), keys.float(), values.float(), mask)
    dense = torch.cat([torch.ones(nodes, prefix, dtype=torch.bool, device=DEVICE), mask], dim=1)
    sdpa = F.scaled_dot_product_attention(
        query.float(), keys.float().repeat_interleave(group, 1), values.float().repeat_interleave(group, 1), attn_mask=dense
    )
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]  # the output's own rounding
    torch.testing.assert_close(out.float(), reference, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(out.float(), sdpa, rtol=tolerance, atol=tolerance)


def test_reference_path_is_the_cpu_default():
    query, keys = torch.randn(1, 2, 3, 16), torch.randn(1, 2, 5, 16)
    mask = Tree.chain(2).ancestor_mask()
    assert torch.equal(tree_attention(query, keys, keys, mask), tree_attention_reference(query, keys, keys, mask))


@pytest.mark.parametrize("splits", [2, 3, 7])
@pytest.mark.parametrize(("kind", "nodes", "prefix"), [("bushy", 17, 300), ("chain", 1, 100), ("deep", 5, 37)])
def test_split_key_range_merges_to_the_same_result(splits, kind, nodes, prefix):
    """The flash-decoding path (the key range cut into parts merged afterwards), which the GPU uses
    for small trees over long prefixes."""
    from draftheads.kernels.tree_attention_triton import ancestor_bits, tree_attention_triton

    tree = make_tree(kind, nodes)
    generator = torch.Generator().manual_seed(splits)
    query = torch.randn(1, 6, nodes, 64, generator=generator).to(DEVICE)
    keys = torch.randn(1, 2, prefix + nodes, 64, generator=generator).to(DEVICE)
    values = torch.randn(1, 2, prefix + nodes, 64, generator=generator).to(DEVICE)
    mask = tree.ancestor_mask().to(DEVICE)
    out = tree_attention_triton(query, keys, values, ancestor_bits(mask), splits=splits)
    torch.testing.assert_close(out, tree_attention_reference(query, keys, values, mask), rtol=1e-5, atol=1e-5)
