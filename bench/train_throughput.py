"""Claim: what a Medusa-1 training step costs next to a bare backbone forward over the same batches.

One run, same batches: (a) the bare backbone forward with logits, as inference runs it, and
(b) a full frozen-backbone training step (backbone under no_grad + heads + losses + backward +
AdamW). Prints tokens/s of each and their ratio, and the share of the step spent in each part.

    python bench/train_throughput.py [--steps 5] [--batch 4] [--seq 256] [--heads 3]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from draftheads.models.backbone import LAST, BackboneConfig, load_backbone
from draftheads.models.draft_model import DraftModel
from draftheads.models.heads.medusa import MedusaConfig
from draftheads.train.losses import depth_loss_sums


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--heads", type=int, default=3)
    args = parser.parse_args()
    backbone = load_backbone(BackboneConfig(base="demo:smollm2-135m"))
    backbone.model.requires_grad_(False)
    heads = DraftModel.new(backbone, MedusaConfig(num_heads=args.heads)).heads.train()
    optimizer = torch.optim.AdamW(heads.parameters(), lr=1e-3)
    torch.manual_seed(0)
    batches = [torch.randint(0, backbone.vocab_size, (args.batch, args.seq)) for _ in range(args.steps + 1)]
    parts = {"backbone": 0.0, "heads+loss": 0.0, "backward+step": 0.0}
    bare = 0.0
    for i, ids in enumerate(batches):
        batch = {"input_ids": ids, "loss_mask": torch.ones_like(ids)}
        t0 = time.perf_counter()
        with torch.no_grad():
            backbone.model(ids)  # bare forward with logits
        t1 = time.perf_counter()
        with torch.no_grad():
            features = backbone.features(ids).features
        t2 = time.perf_counter()
        sums = depth_loss_sums(heads, heads(features, ids), batch, features[LAST], backbone.lm_head, 0.0, 2048)
        t3 = time.perf_counter()
        sum(sums).backward()
        optimizer.step()
        optimizer.zero_grad()
        t4 = time.perf_counter()
        if i == 0:
            continue  # warm-up
        bare += t1 - t0
        parts["backbone"] += t2 - t1
        parts["heads+loss"] += t3 - t2
        parts["backward+step"] += t4 - t3
    tokens = args.steps * args.batch * args.seq
    step = sum(parts.values())
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        f"demo model, {args.heads} Medusa heads (shared lm_head), batch {args.batch} x {args.seq} tokens, {args.steps} steps after warm-up"
    )
    print(f"bare backbone forward: {tokens / bare:.0f} tokens/s")
    print(f"training step:         {tokens / step:.0f} tokens/s")
    print(f"ratio training / bare forward: {bare / step:.2f}x")
    print("step breakdown: " + ", ".join(f"{k} {v / step:.0%}" for k, v in parts.items()))
    h, v = backbone.hidden_size, backbone.vocab_size
    body = sum(p.numel() for p in backbone.model.parameters()) - h * v
    print(
        f"per-token multiply-adds: backbone body {body / 1e6:.0f}M + lm_head {h * v / 1e6:.0f}M; "
        f"each head projection {h * v / 1e6:.0f}M forward, about 2x that backward"
    )


if __name__ == "__main__":
    main()
