"""Which implementation of a kernel runs: Triton on CUDA, the PyTorch reference elsewhere.

The choice is an explicit argument (`"auto"`, `"triton"`, `"reference"`) carried by the caller's
state (the engine's KV cache), never a module global. Forcing `"triton"` on a CPU tensor works
only under the Triton interpreter (`TRITON_INTERPRET=1`, set before the kernels are first used).
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "reference")


def triton_available() -> bool:
    """True when the `triton` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def resolve_backend(choice: str, device: torch.device) -> str:
    """The concrete backend ("triton" or "reference") for tensors on `device`."""
    if choice not in BACKENDS:
        raise ValueError(f"unknown kernel backend {choice!r}; choose one of {', '.join(BACKENDS)}")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if choice == "reference":
        return "reference"
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_available() and not interpreted else "reference"
    if not triton_available():
        raise ValueError("kernel backend 'triton' was asked for but the triton package is not installed")
    if device.type != "cuda" and not interpreted:
        raise ValueError(f"kernel backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1); the tensors are on {device}")
    return "triton"
