"""The Triton KV compaction (compiled on a GPU, interpreted on CPU) against its PyTorch reference, and the dispatcher."""

from __future__ import annotations

import pytest
import torch

from draftheads.kernels.dispatch import resolve_backend
from draftheads.kernels.kv_compact import kv_compact, kv_compact_reference

pytest.importorskip("triton")

# Compiled kernels on a GPU, the interpreter on CPU (conftest sets TRITON_INTERPRET without CUDA).
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def random_path(generator: torch.Generator, pending: int) -> torch.Tensor:
    """An increasing root-first node list, like an accepted tree path (node 0 is the root)."""
    chosen = torch.randperm(pending - 1, generator=generator)[: int(torch.randint(0, pending, (1,), generator=generator))] + 1
    return torch.cat([torch.tensor([0]), chosen.sort().values])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("layers", "heads", "dim", "start", "pending"), [(2, 3, 64, 0, 5), (3, 1, 17, 37, 17), (1, 2, 128, 300, 3)])
def test_triton_compaction_is_bit_exact(dtype, layers, heads, dim, start, pending):
    generator = torch.Generator().manual_seed(start + pending)
    buffer = torch.randn(layers, 2, 1, heads, start + pending + 4, dim, generator=generator).to(DEVICE, dtype)
    for _ in range(3):
        nodes = random_path(generator, pending).to(DEVICE)
        expected, actual = buffer.clone(), buffer.clone()
        kv_compact_reference(expected, start, nodes)
        kv_compact(actual, start, nodes, backend="triton")
        assert torch.equal(actual, expected)
        # untouched: the prefix, and everything after the kept rows
        assert torch.equal(actual[..., :start, :], buffer[..., :start, :])
        assert torch.equal(actual[..., start + nodes.numel() :, :], buffer[..., start + nodes.numel() :, :])


def test_overlapping_moves_are_safe():
    buffer = torch.arange(12.0, device=DEVICE).reshape(1, 1, 1, 1, 12, 1).repeat(1, 2, 1, 1, 1, 3)
    kv_compact(buffer, 2, torch.tensor([0, 1, 3, 4, 7], device=DEVICE), backend="triton")
    assert buffer[0, 0, 0, 0, :, 0].tolist() == [0, 1, 2, 3, 5, 6, 9, 7, 8, 9, 10, 11]


def test_dispatcher():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "reference"
    assert resolve_backend("reference", cpu) == "reference"
    if torch.cuda.is_available():  # compiled kernels: CPU tensors are refused, CUDA ones take Triton
        with pytest.raises(ValueError, match="needs a CUDA device"):
            resolve_backend("triton", cpu)
        assert resolve_backend("auto", DEVICE) == "triton"
    else:  # the interpreter is on in tests (conftest)
        assert resolve_backend("triton", cpu) == "triton"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        resolve_backend("cuda", cpu)
