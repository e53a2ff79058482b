"""`draftheads tree --heads DIR --prompts FILE --budget N`: pick the static tree with the best
expected speedup on this machine and save it into the heads' config."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `tree`."""
    parser.add_argument("--heads", required=True, help="a local heads folder (the chosen tree is written into its config.json)")
    parser.add_argument("--base", help="base model (default: the one the heads were trained on)")
    parser.add_argument("--prompts", default="calibration",
                        help="prompts like the served ones, never the eval's (same formats as eval; default: the packaged calibration set)")
    parser.add_argument("--budget", type=int, default=32, help="largest tree to consider (drafted nodes)")
    parser.add_argument("--limit", type=int, default=8, help="calibration prompts to use")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="tokens the base model answers each calibration prompt with")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="auto: bf16 where the hardware computes it natively (as eval), else fp32",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the search, do not write the config")


def run(args: argparse.Namespace) -> int:
    """Calibrate, time, search and save."""
    from draftheads.eval.tree_search import choose_tree

    choose_tree(
        heads=args.heads, base=args.base, prompts=args.prompts, budget=args.budget, limit=args.limit,
        max_new_tokens=args.max_new_tokens, device=args.device, dtype=args.dtype, save=not args.dry_run,
    )
    return 0
