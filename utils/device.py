"""Device helpers shared by the engine, the eval and the benchmarks."""

from __future__ import annotations

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
