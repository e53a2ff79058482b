"""Schedules: learning rate (linear warmup, then cosine, linear or constant; per parameter group
for joint training) and the head-loss weight ramp of Medusa-2."""

from __future__ import annotations

import math

import torch


def lr_lambda(step: int, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int, kind: str, min_ratio: float, heads_only_steps: int = 0):
    """A LambdaLR stepping once per optimizer step, one multiplier per parameter group: the heads
    (always the first group) and, in joint training, the backbone (see `joint_lr_lambdas`)."""
    lambdas = joint_lr_lambdas(warmup, total, kind, min_ratio, heads_only_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas[: len(optimizer.param_groups)])


def ramp(step: int, steps: int, kind: str) -> float:
    """A 0 → 1 ramp over `steps` steps (constant: 1 throughout; sine: sin(π/2 · progress))."""
    if kind == "constant" or steps <= 0:
        return 1.0
    progress = min(1.0, (step + 1) / steps)
    return progress if kind == "linear" else math.sin(0.5 * math.pi * progress)


def joint_lr_lambdas(warmup: int, total: int, kind: str, min_ratio: float, heads_only_steps: int):
    """LambdaLR multipliers for [heads group, backbone group]: the heads follow the run's schedule;
    the backbone stays at 0 through the heads-only stage, then runs its own warmup and decay over
    the joint steps (so it starts gently whatever the heads did before)."""

    def heads(step: int) -> float:
        return lr_lambda(step, warmup, total, kind, min_ratio)

    def backbone(step: int) -> float:
        if step < heads_only_steps:
            return 0.0
        return lr_lambda(step - heads_only_steps, warmup, total - heads_only_steps, kind, min_ratio)

    return [heads, backbone]
