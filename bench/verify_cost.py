"""Claim: what verifying K tree nodes costs against one token, per dtype, on this machine: the
curve `--tree auto` reads at start-up, measured the same way (one forward with logits through the
engine's own cache after a `--prefix`-token prefix, median of `--repeats`).

    python bench/verify_cost.py [--dtypes float32 bfloat16] [--nodes 1 2 4 8 16 32] [--prefix 300] [--device auto]
"""

from __future__ import annotations

import argparse

import torch

from draftheads.decoding.planning.costs import verify_costs
from draftheads.models.backbone import BackboneConfig, load_backbone
from draftheads.models.draft_model import DraftModel
from draftheads.models.heads.medusa import MedusaConfig
from draftheads.utils.device import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="demo:smollm2-135m")
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--nodes", nargs="*", type=int, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--prefix", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print("| dtype | " + " | ".join(f"{n} nodes" for n in args.nodes) + " |")
    print("| --- |" + " --- |" * len(args.nodes))
    for dtype in args.dtypes:
        backbone = load_backbone(BackboneConfig(base=args.base, dtype=dtype), device)
        draft = DraftModel.new(backbone, MedusaConfig(num_heads=1))  # verification needs no heads; the helper takes a draft model
        costs = verify_costs(draft, args.nodes, args.prefix, args.repeats)
        one = costs[args.nodes[0]]
        print(f"| {dtype} | " + " | ".join(f"{1000 * costs[n]:.1f} ms ({costs[n] / one:.2f}x)" for n in args.nodes) + " |")
    print(f"device {device}, {torch.get_num_threads()} threads, prefix {args.prefix} tokens, median of {args.repeats}")


if __name__ == "__main__":
    main()
